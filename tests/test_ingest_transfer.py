"""The shared memory hand-off of downloaded bodies to the decode workers (emo8.ingest.transfer): allocation,
release and merging of free space, the refusal of bad use, and an ingest whose batches do not all fit (the
rest spooled to files) that ends exactly like one without the arena."""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
from httpfixtures import LoopbackServer, respond
from PIL import Image

from emo8 import Workspace
from emo8.ingest.download import DownloadConfig
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source
from emo8.ingest.transfer import Shared, TransferArena, attach, read_shared


def test_place_copies_bodies_contiguously_and_release_merges_free_space() -> None:
    arena = TransferArena(100)
    first = arena.place([b"abc", b"defgh"])
    assert first is not None
    region, shared = first
    assert region == (0, 8) and shared == [Shared(0, 3), Shared(3, 5)]
    assert arena.memory[0:8] == b"abcdefgh"
    second = arena.place([b"x" * 40])
    third = arena.place([b"y" * 52])  # exactly the rest
    assert second is not None and third is not None and arena.free_bytes == 0
    assert arena.place([b"z"]) is None  # full: nothing copied, nothing allocated
    arena.release(second[0])
    assert arena.place([b"w" * 41]) is None  # 40 free bytes in one piece
    arena.release(first[0])  # merges with the freed 40 after it
    again = arena.place([b"v" * 48])
    assert again is not None and again[0] == (0, 48)
    arena.release(again[0])
    arena.release(third[0])  # merges with both neighbours: one free region again
    assert arena.free_bytes == 100 and arena.place([b"u" * 100]) is not None
    arena.close()


def test_bad_use_is_refused() -> None:
    with pytest.raises(ValueError, match="positive size"):
        TransferArena(0)
    arena = TransferArena(16)
    assert arena.place([]) is None and arena.place([b""]) is None
    placed = arena.place([b"abcd"])
    assert placed is not None
    arena.release(placed[0])
    with pytest.raises(ValueError, match="released twice"):
        arena.release(placed[0])
    arena.close()


def _read_in_worker(source: Shared) -> bytes:
    return read_shared(source)


def test_forked_workers_read_what_the_parent_placed_after_they_started() -> None:
    arena = TransferArena(1 << 16)
    fork = get_context("fork")
    with ProcessPoolExecutor(1, mp_context=fork, initializer=attach, initargs=(arena.memory,)) as pool:
        pool.submit(int).result()  # the worker exists before the bytes are written
        placed = arena.place([b"first body", b"second"])
        assert placed is not None
        assert list(pool.map(_read_in_worker, placed[1])) == [b"first body", b"second"]
    arena.close()


def _noise_png(seed: int, side: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def _ingest(ws: Workspace, url_list: Path, transfer_mb: int) -> dict[str, object]:
    options = IngestOptions(
        download=DownloadConfig(allow_private_networks=True, retries=0),
        workers=2,
        progress=False,
        batch_size=2,
        transfer_mb=transfer_mb,
    )
    summary = ingest(ws, create_source("urls", path=str(url_list)), options)
    assert not any(p.is_file() for p in ws.objects.tmp.iterdir()) if ws.objects.tmp.exists() else True
    columns = ["sha256", "status", "reason", "width", "height", "phash", "dhash", "pixel_hash", "brightness"]
    items = ws.items().sort_values(["sha256", "reason"])[columns]
    items = items.astype(object).where(items.notna(), None)  # NaN != NaN would fail any comparison
    return {"statuses": dict(summary.statuses), "items": items.to_dict("records")}


def test_batches_that_do_not_fit_are_spooled_and_the_outcome_is_the_same(
    tmp_path: Path, sample_paths: list[Path]
) -> None:
    big = [_noise_png(i, 700) for i in range(2)]  # about 1.5 MB each: never fits a 1 MiB arena
    assert all(len(b) > 1 << 20 for b in big)
    bodies = {f"/s{i}.jpg": p.read_bytes() for i, p in enumerate(sample_paths[:5])}
    bodies.update({f"/big{i}.png": b for i, b in enumerate(big)})
    routes = {"/robots.txt": respond(b"", status=404)}
    routes.update({path: respond(data, content_type="image/jpeg") for path, data in bodies.items()})
    routes["/bad.jpg"] = respond(b"\xff\xd8\xff" + b"\0" * 64, content_type="image/jpeg")
    results = []
    with LoopbackServer(routes) as server:
        url_list = tmp_path / "urls.csv"
        url_list.write_text("url\n" + "".join(f"{server.url(path)}\n" for path in [*bodies, "/bad.jpg"]))
        for transfer_mb in (1, 0):
            ws = Workspace.init(tmp_path / f"ws-{transfer_mb}")
            results.append(_ingest(ws, url_list, transfer_mb))
            stored = sorted(p.read_bytes() for p in ws.objects.root.rglob("*") if p.is_file())
            assert stored == sorted(bodies.values())
    assert results[0] == results[1]
    assert results[0]["statuses"] == {"valid": 7, "invalid": 1}
