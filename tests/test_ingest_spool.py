"""Ingest hot path: spooled downloads (moved into the store or deleted, never left in tmp/) and the batched
catalog apply (same results as applying outcomes one by one: merges inside one batch, re-hashed items)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from httpfixtures import LoopbackServer, respond
from PIL import Image

from emo8 import Workspace
from emo8.core.catalog import ItemOutcome, OriginRecord, item_id_for
from emo8.core.imaging import ValidationConfig
from emo8.ingest.download import DownloadConfig
from emo8.ingest.run import IngestOptions, Spooled, check_and_store, ingest, spool
from emo8.ingest.sources import create_source


def _jpeg(seed: int) -> bytes:
    image = Image.new("RGB", (96, 80), (seed * 40 % 256, 90, 160))
    image.putpixel((3, 4), (255, 255, seed % 256))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _tmp_files(ws: Workspace) -> list[Path]:
    return [p for p in ws.objects.tmp.iterdir() if p.is_file()] if ws.objects.tmp.exists() else []


def test_spooled_valid_image_is_moved_into_the_store(ws: Workspace) -> None:
    data = _jpeg(1)
    spooled = spool(data, ws.objects)
    assert isinstance(spooled, Spooled) and Path(spooled.path).read_bytes() == data
    checked = check_and_store(spooled, ValidationConfig(), ws.objects)
    assert checked.info is not None and checked.info.ok
    assert checked.new_bytes == len(data)
    assert checked.sha256 is not None
    assert ws.objects.path(checked.sha256, "jpeg").read_bytes() == data
    assert not Path(spooled.path).exists()
    assert _tmp_files(ws) == []


def test_spooled_duplicate_and_invalid_bytes_are_deleted_not_stored(ws: Workspace) -> None:
    data = _jpeg(2)
    first = check_and_store(spool(data, ws.objects), ValidationConfig(), ws.objects)
    again = check_and_store(spool(data, ws.objects), ValidationConfig(), ws.objects)
    assert first.new_bytes == len(data) and again.new_bytes == 0 and again.sha256 == first.sha256
    bad = check_and_store(spool(b"<html>not an image</html>", ws.objects), ValidationConfig(), ws.objects)
    assert bad.info is not None and not bad.info.ok and bad.info.reason == "not_an_image"
    assert bad.new_bytes == 0
    assert _tmp_files(ws) == []
    stored = [p for p in ws.objects.root.rglob("*") if p.is_file()]
    assert len(stored) == 1


def test_spool_of_unwritable_tmp_hands_back_the_bytes(ws: Workspace, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    store = type(ws.objects)(ws.objects.root, blocker / "tmp")  # tmp cannot be created under a file
    assert spool(b"abc", store) == b"abc"


def _origin(i: int) -> OriginRecord:
    return OriginRecord(
        origin_key=f"http://example.org/{i}.jpg", source="urls", url=f"http://example.org/{i}.jpg"
    )


def test_one_batch_merges_equal_bytes_like_separate_batches(ws: Workspace) -> None:
    ws.catalog.register([_origin(i) for i in range(4)])
    ids = [item_id_for(_origin(i).origin_key) for i in range(4)]
    merged = ws.catalog.apply(
        [
            ItemOutcome(ids[0], "valid", sha256="aa" * 32, signals={"width": 10}),
            ItemOutcome(ids[1], "valid", sha256="aa" * 32),  # same bytes as ids[0], same batch
            ItemOutcome(ids[2], "invalid", "truncated", "cut short"),
            ItemOutcome("not-an-item", "valid", sha256="bb" * 32),
            ItemOutcome(ids[3], "valid", sha256="cc" * 32),
        ]
    )
    assert merged == {ids[1]: ids[0]}
    items = ws.items().set_index("item_id")
    assert sorted(items.index) == sorted([ids[0], ids[2], ids[3]])
    assert items.loc[ids[0], "width"] == 10 and items.loc[ids[0], "status"] == "valid"
    assert items.loc[ids[2], "status"] == "invalid" and items.loc[ids[2], "reason"] == "truncated"
    assert sorted(ws.origins(ids[0]).origin_key) == sorted([_origin(0).origin_key, _origin(1).origin_key])


def test_an_item_whose_bytes_changed_no_longer_attracts_merges(ws: Workspace) -> None:
    ws.catalog.register([_origin(i) for i in range(3)])
    ids = [item_id_for(_origin(i).origin_key) for i in range(3)]
    ws.catalog.apply([ItemOutcome(ids[0], "valid", sha256="aa" * 32)])
    # in one batch: ids[0] is re-fetched with other bytes, then ids[1] arrives with ids[0]'s old bytes
    merged = ws.catalog.apply(
        [ItemOutcome(ids[0], "valid", sha256="dd" * 32), ItemOutcome(ids[1], "valid", sha256="aa" * 32)]
    )
    assert merged == {}
    sha = dict(zip(ws.items().item_id, ws.items().sha256, strict=True))
    assert (sha[ids[0]], sha[ids[1]]) == ("dd" * 32, "aa" * 32)
    # and a third item with ids[0]'s new bytes merges into it
    assert ws.catalog.apply([ItemOutcome(ids[2], "valid", sha256="dd" * 32)]) == {ids[2]: ids[0]}


@pytest.mark.parametrize("transfer_mb", [64, 0])  # bodies through shared memory, or spooled to files
def test_url_ingest_leaves_no_spooled_file_behind(
    ws: Workspace, sample_paths: list[Path], tmp_path: Path, transfer_mb: int
) -> None:
    good = [p.read_bytes() for p in sample_paths[:3]]
    routes = {"/robots.txt": respond(b"", status=404)}
    routes.update({f"/{i}.jpg": respond(data, content_type="image/jpeg") for i, data in enumerate(good)})
    routes["/copy.jpg"] = respond(good[0], content_type="image/jpeg")  # same bytes as /0.jpg
    routes["/html.jpg"] = respond(b"<!doctype html><p>login</p>", content_type="image/jpeg")
    with LoopbackServer(routes) as server:
        names = ["0", "1", "2", "copy", "html"]
        url_list = tmp_path / "urls.csv"
        url_list.write_text("url\n" + "".join(f"{server.url(f'/{n}.jpg')}\n" for n in names))
        options = IngestOptions(
            download=DownloadConfig(allow_private_networks=True, retries=0),
            workers=2,
            progress=False,
            batch_size=2,
            transfer_mb=transfer_mb,
        )
        summary = ingest(ws, create_source("urls", path=str(url_list)), options)
    assert summary.statuses["valid"] == 4 and summary.statuses["invalid"] == 1 and summary.merged == 1
    assert _tmp_files(ws) == []
    stored = sorted(p.read_bytes() for p in ws.objects.root.rglob("*") if p.is_file())
    assert stored == sorted(good)
