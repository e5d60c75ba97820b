"""The object store elsewhere than ``<workspace>/objects``: a directory, fsspec's local filesystem (``file://``) and
its in-process memory filesystem (``memory://``), all with the local executor.

Every stage that opens images reads through the store: ingest writes (from files and from a loopback server),
embeddings and person detection read, and the results equal those of a default workspace bit for bit.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest
from dedupfixtures import ingest_folder
from httpfixtures import LoopbackServer, distinct_jpegs, respond

from emo8 import Workspace, WorkspaceError
from emo8.core.workspace import ObjectStore, read_location
from emo8.embed.run import EmbedConfig, embed, load_embeddings
from emo8.ingest.download import DownloadConfig
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source
from emo8.label.people import DetectConfig, detect_people, detections

SAMPLES = Path(__file__).resolve().parents[1] / "emo8" / "samples" / "images"
NAMES = ["skm-0007.jpg", "mpl-0001.jpg", "ocv-0002.jpg", "lom-0005.jpg", "pla-0009.jpg"]  # two with faces


@pytest.fixture(params=["directory", "file", "memory"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the objects live: a directory outside the workspace, a ``file://`` URL, a ``memory://`` URL."""
    if request.param == "directory":
        yield str(tmp_path / "shared" / "objects")
    elif request.param == "file":
        yield (tmp_path / "bucket" / "emo8").as_uri()
    else:
        name = f"memory://emo8-test-{uuid.uuid4().hex}"
        yield name
        fs, base = fsspec.core.url_to_fs(name)
        if fs.exists(base):
            fs.rm(base, recursive=True)


def _listing(url_or_dir: str) -> dict[str, bytes]:
    """Every object under the store, by name (``ab/<sha>.jpg``), read with fsspec independently of emo8."""
    fs, base = fsspec.core.url_to_fs(url_or_dir)
    base = base.rstrip("/")
    return {p[len(base) + 1 :]: fs.cat_file(p) for p in fs.find(base) if "/." not in p[len(base) :]}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "in"
    out.mkdir()
    for name in NAMES:
        shutil.copy(SAMPLES / name, out / name)
    return out


def test_ingest_writes_into_the_store_idempotently_and_every_reader_finds_the_bytes(
    tmp_path: Path, objects: str, folder: Path
) -> None:
    ws = Workspace.init(tmp_path / "ws", objects=objects)
    assert Workspace.open(ws.root).config["objects"] == objects.rstrip("/")  # recorded in emo8.json
    ingest_folder(ws, folder)
    items = ws.items()
    assert (items.status == "valid").all() and len(items) == len(NAMES)
    stored = _listing(objects)
    assert sorted(stored) == sorted(f"{s[:2]}/{s}.jpg" for s in items.sha256)
    assert all(hashlib.sha256(data).hexdigest() == name[3:-4] for name, data in stored.items())
    assert not [p for p in (tmp_path / "ws" / "objects").rglob("*") if p.is_file()]  # nothing written locally
    row = items.iloc[0]
    data = (folder / Path(row.source_path).name).read_bytes()
    assert ws.read_object(row.sha256, row.format) == data
    with ws.objects.open(row.sha256, row.format) as handle:
        assert handle.read() == data
    location = ws.objects.location(row.sha256, row.format)
    got = read_location(location)  # bytes from a URL; a local path as is (the fast path, no copy)
    assert got == data if "://" in location else Path(got).read_bytes() == data  # type: ignore[arg-type]
    assert ws.object_path(row.sha256, row.format).read_bytes() == data  # a local file (cached for URL stores)
    # idempotent: the same bytes again are not rewritten, a re-run stores nothing
    assert ws.objects.put(data, "jpeg") == (row.sha256, False)
    again = ingest(
        ws, create_source("folder", directory=str(folder)), IngestOptions(workers=1, progress=False)
    )
    assert again.bytes_stored == 0 and _listing(objects) == stored
    # deletion removes the object and its cached copy; a missing object reads as missing
    assert ws.objects.delete(row.sha256, row.format)
    assert not ws.objects.exists(row.sha256, row.format)
    assert not ws.object_path(row.sha256, row.format).exists()
    with pytest.raises(FileNotFoundError):
        ws.read_object(row.sha256, row.format)


def test_downloads_land_in_the_store(tmp_path: Path, objects: str, sample_paths: list[Path]) -> None:
    images = distinct_jpegs(sample_paths, 6)
    routes = {f"/i/{i}.jpg": respond(d, content_type="image/jpeg") for i, d in enumerate(images)}
    routes["/robots.txt"] = respond(b"", status=404)
    with LoopbackServer(routes) as srv:
        url_list = tmp_path / "urls.csv"
        url_list.write_text("url\n" + "".join(srv.url(f"/i/{i}.jpg") + "\n" for i in range(len(images))))
        for transfer_mb in (64, 0):  # bodies through shared memory, and through spooled files
            ws = Workspace.init(tmp_path / f"ws{transfer_mb}", objects=f"{objects}/{transfer_mb}")
            options = IngestOptions(
                download=DownloadConfig(allow_private_networks=True), workers=2, progress=False,
                transfer_mb=transfer_mb,
            )  # fmt: skip
            summary = ingest(ws, create_source("urls", path=str(url_list)), options)
            assert summary.statuses["valid"] == len(images)
            assert sorted(_listing(f"{objects}/{transfer_mb}").values()) == sorted(images)
            assert not [p for p in ws.tmp_dir.rglob("*") if p.is_file()]  # no spooled file left behind


@pytest.mark.slow
def test_embeddings_and_people_read_from_the_store_equal_a_default_workspace(
    tmp_path: Path, objects: str, folder: Path
) -> None:
    found = {}
    for where, location in (("default", None), ("store", objects)):
        ws = Workspace.init(tmp_path / where, objects=location)
        ingest_folder(ws, folder)
        config = EmbedConfig(device="cpu", workers=0, batch_size=2, dtype="float32", progress=False)
        assert embed(ws, config).new == len(NAMES)
        ids, vectors = load_embeddings(ws, "efficientnet-lite0")
        people = detect_people(ws, DetectConfig(backend="opencv-haar-face", batch_size=2, progress=False))
        assert people.processed == len(NAMES) and people.errors == 0
        rows = sorted(detections(ws), key=lambda r: r["item_id"])
        found[where] = (ids, np.asarray(vectors).tobytes(), [(r["item_id"], r["face_boxes"]) for r in rows])
    assert found["store"] == found["default"]
    assert any(faces for _, faces in found["store"][2])


def test_bad_store_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="cannot use 'nosuchscheme://x' as the object store"):
        Workspace.init(tmp_path / "a", objects="nosuchscheme://x")
    assert not (tmp_path / "a").exists()  # nothing created
    Workspace.init(tmp_path / "b")
    with pytest.raises(WorkspaceError, match="cannot be moved"):
        Workspace.init(tmp_path / "b", objects=str(tmp_path / "elsewhere"))


def test_a_store_value_travels_to_other_processes(tmp_path: Path) -> None:
    """Workers get the store by pickling: the same root, cache and URL; memory:// says it is not shared."""
    import pickle

    store = ObjectStore.at((tmp_path / "bucket").as_uri(), tmp_path / "ws")
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store and clone.shared
    digest, new = clone.put(b"\xff\xd8bytes", "jpeg")
    assert new and store.read(digest, "jpeg") == b"\xff\xd8bytes"
    assert not ObjectStore.at("memory://x", tmp_path / "ws").shared


def test_a_memory_store_is_refused_by_the_ray_executor(tmp_path: Path, folder: Path) -> None:
    """memory:// lives in this process: Ray workers could never see it, so ingest says so before fetching."""
    from emo8.core.executor import ExecutorConfig, ExecutorError

    pytest.importorskip("ray")
    ws = Workspace.init(tmp_path / "ws", objects=f"memory://emo8-test-{uuid.uuid4().hex}")
    options = IngestOptions(workers=1, progress=False, executor=ExecutorConfig("ray"))
    with pytest.raises(ExecutorError, match="lives in this process only"):
        ingest(ws, create_source("folder", directory=str(folder)), options)
    assert set(ws.items().status) == {"pending"}  # registered, nothing lost: a local run finishes them
    ingest(ws, create_source("folder", directory=str(folder)), IngestOptions(workers=1, progress=False))
    assert set(ws.items().status) == {"valid"}


def test_init_puts_the_objects_where_asked_and_a_purged_takedown_deletes_them_there(
    tmp_path: Path, objects: str, folder: Path
) -> None:
    """`emo8 init --objects URL` records the store; `emo8 takedown --purge` deletes the bytes at the URL, not only
    a cached copy (the store is where the bytes live, wherever that is)."""
    from typer.testing import CliRunner

    from emo8.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["init", str(tmp_path / "ws"), "--objects", objects])
    assert result.exit_code == 0, result.output
    assert "objects:" in result.output
    ws = Workspace.open(tmp_path / "ws")
    assert ws.config["objects"] == objects.rstrip("/")
    ingest_folder(ws, folder)
    row = ws.items().iloc[0]
    ws.object_path(row.sha256, row.format)  # a reader cached a copy on this machine (URL stores)
    result = runner.invoke(
        app, ["takedown", "-w", str(ws.root), "--sha256", row.sha256, "--reason", "test", "--purge"]
    )
    assert result.exit_code == 0, result.output
    assert f"{row.sha256[:2]}/{row.sha256}.jpg" not in _listing(objects)
    assert not ws.objects.path(row.sha256, row.format).exists()  # the cached copy too
    assert len(_listing(objects)) == len(NAMES) - 1  # the other images stay
    # a second init cannot move the store
    result = runner.invoke(app, ["init", str(tmp_path / "ws"), "--objects", str(tmp_path / "elsewhere")])
    assert result.exit_code == 2 and "cannot be moved" in result.output
