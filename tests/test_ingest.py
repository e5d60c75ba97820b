"""Ingest end to end: real files, a real loopback HTTP server, a killed process, a full disk."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from aiohttp import web
from httpfixtures import Handler, LoopbackServer, delayed, distinct_jpegs, respond
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.ingest.download import DownloadConfig
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer({"/robots.txt": respond(b"", status=404)}) as srv:
        yield srv


def _jpeg(data: bytes, headers: dict[str, str] | None = None) -> Handler:
    return respond(data, content_type="image/jpeg", headers=headers)


def _options(**download: object) -> IngestOptions:
    config = DownloadConfig(allow_private_networks=True, backoff_base=0.01, retries=1, **download)  # type: ignore[arg-type]
    return IngestOptions(download=config, workers=2, progress=False, commit_every=16)


def _png_bomb(side: int = 40_000) -> bytes:
    raw = zlib.compress(b"\x00" * 1024)  # a tiny IDAT; the header is what matters

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _write_list(path: Path, urls: list[str]) -> Path:
    path.write_text("url,caption\n" + "".join(f"{u},caption {i}\n" for i, u in enumerate(urls)))
    return path


# -- folders --------------------------------------------------------------------------------------------------


def test_folder_ingest_validates_stores_and_is_idempotent(ws: Workspace, sample_paths: list[Path]) -> None:
    folder = sample_paths[0].parent
    source = create_source("folder", directory=str(folder), domain="mixed")
    summary = ingest(ws, source, _options())
    assert summary.new == len(sample_paths) and summary.statuses == {"valid": len(sample_paths)}
    items = ws.items()
    assert (items.status == "valid").all()
    assert (
        items.phash.str.len().eq(16).all()
        and items.width.gt(0).all()
        and items.brightness.between(0, 1).all()
    )
    for row in items.itertuples():
        path = ws.object_path(row.sha256, row.format)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256
    again = ingest(ws, create_source("folder", directory=str(folder)), _options())
    assert (again.new, again.known, again.processed) == (0, len(sample_paths), 0)
    assert len(ws.items()) == len(sample_paths)


def test_same_bytes_from_a_url_and_a_file_are_one_item(
    ws: Workspace, server: LoopbackServer, sample_paths: list[Path], tmp_path: Path
) -> None:
    for i, path in enumerate(sample_paths[:5]):
        server.routes[f"/img/{i}.jpg"] = _jpeg(path.read_bytes())
    url_list = _write_list(tmp_path / "urls.csv", [server.url(f"/img/{i}.jpg") for i in range(5)])
    ingest(ws, create_source("urls", path=str(url_list)), _options())
    folder = tmp_path / "local"
    folder.mkdir()
    for path in sample_paths[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    summary = ingest(ws, create_source("folder", directory=str(folder), license="CC0-1.0"), _options())
    assert summary.merged == 3
    items = ws.items()
    assert len(items) == 5 and (items.status == "valid").all()
    assert items.license.notna().sum() == 3  # the file origins filled the licence in
    origins = ws.origins()
    assert len(origins) == 8
    assert origins.groupby("item_id").size().max() == 2
    assert len(list(ws.objects_dir.rglob("*.jpg"))) == 5


# -- URLs: every kind of bad input, one list -------------------------------------------------------------------


def test_url_ingest_records_every_failure_with_a_reason(
    ws: Workspace, server: LoopbackServer, sample_paths: list[Path], tmp_path: Path
) -> None:
    good = sample_paths[0].read_bytes()
    server.routes.update({
        "/good.jpg": _jpeg(good),
        "/html.jpg": _jpeg(b"<!doctype html><html><body>login</body></html>"),
        "/truncated.jpg": _jpeg(good[: len(good) // 2]),
        "/empty.jpg": _jpeg(b""),
        "/bomb.png": respond(_png_bomb(), content_type="image/png"),
        "/noai.jpg": _jpeg(sample_paths[1].read_bytes(), {"X-Robots-Tag": "noai"}),
        "/gone.jpg": respond(b"gone", status=404),
    })  # fmt: skip
    names = ["good", "html", "truncated", "empty", "bomb", "noai", "gone", "good"]
    exts = {"bomb": "png"}
    urls = [server.url(f"/{n}.{exts.get(n, 'jpg')}") for n in names]
    url_list = _write_list(tmp_path / "urls.csv", urls)
    with open(url_list, "a") as handle:
        handle.write("not-a-url,broken row\n")
    summary = ingest(ws, create_source("urls", path=str(url_list)), _options())
    assert summary.new == 8 and summary.known == 1  # the repeated URL is one origin
    items = ws.items().set_index("url")
    got = {
        u.rsplit("/", 1)[-1]: (s, None if pd.isna(r) else r)
        for u, s, r in zip(items.index, items.status, items.reason, strict=True)
        if isinstance(u, str)
    }
    assert got == {
        "good.jpg": ("valid", None),
        "html.jpg": ("invalid", "not_an_image"),
        "truncated.jpg": ("invalid", "truncated"),
        "empty.jpg": ("failed", "empty_body"),
        "bomb.png": ("invalid", "decompression_bomb"),
        "noai.jpg": ("skipped", "x_robots_tag"),
        "gone.jpg": ("failed", "http_404"),
    }
    malformed = ws.items(where="url IS NULL")
    assert malformed.reason.tolist() == ["malformed_row"]
    assert items.loc[server.url("/gone.jpg"), "http_status"] == 404
    assert len(list(ws.objects_dir.rglob("*.*"))) == 1  # only the valid image is stored


def test_retry_failed_refetches_only_failed_items(
    ws: Workspace, server: LoopbackServer, sample_paths: list[Path], tmp_path: Path
) -> None:
    server.routes["/later.jpg"] = respond(b"not yet", status=404)
    url_list = _write_list(tmp_path / "urls.csv", [server.url("/later.jpg")])
    ingest(ws, create_source("urls", path=str(url_list)), _options())
    assert ws.items().reason.tolist() == ["http_404"]
    server.routes["/later.jpg"] = _jpeg(sample_paths[2].read_bytes())
    ingest(ws, create_source("urls", path=str(url_list)), _options())  # a plain re-run does not retry
    assert ws.items().status.tolist() == ["failed"]
    options = _options()
    options.retry_failed = True
    ingest(ws, create_source("urls", path=str(url_list)), options)
    assert ws.items().status.tolist() == ["valid"]


# -- a killed process ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_half_way_then_rerun_accounts_for_every_url_once(
    tmp_path: Path, sample_paths: list[Path]
) -> None:
    images = distinct_jpegs(sample_paths, 160)
    routes = {f"/i/{i}.jpg": delayed(_jpeg(data), 0.03) for i, data in enumerate(images)}
    routes["/robots.txt"] = respond("User-agent: *\nAllow: /\n", content_type="text/plain")
    with LoopbackServer(routes) as srv:
        urls = [srv.url(f"/i/{i}.jpg") for i in range(len(images))]
        url_list = _write_list(tmp_path / "urls.csv", urls + urls[:10])  # duplicates too
        Workspace.init(tmp_path / "ws")
        cmd = [
            sys.executable,
            "-m",
            "emo8",
            "ingest",
            "urls",
            str(url_list),
            "-w",
            str(tmp_path / "ws"),
            "--allow-private-networks",
            "--concurrency",
            "2",
            "--per-host",
            "2",
            "--workers",
            "1",
            "--quiet",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                with sqlite3.connect(tmp_path / "ws" / "catalog.sqlite", timeout=5) as db:
                    done = db.execute("SELECT COUNT(*) FROM items WHERE status = 'valid'").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if done >= 20:
                break
        assert proc.poll() is None, "ingest finished before it could be killed; slow the server down"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ws = Workspace.open(tmp_path / "ws")
        partial = ws.items()
        assert 20 <= (partial.status == "valid").sum() < len(images)
        assert (partial.status == "pending").sum() > 0
        stored = set(partial.loc[partial.status == "valid", "url"])
        srv.reset_stats()
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
        assert rerun.returncode == 0, rerun.stderr
        # the re-run downloaded exactly what the killed run had not stored yet, each image once
        fetched = Counter(q.path for q in srv.requests if q.path.startswith("/i/"))
        assert set(fetched.values()) == {1}
        assert {srv.url(path) for path in fetched} == set(urls) - stored
        items = ws.items()
        origins = ws.origins()
        assert sorted(origins.url) == sorted(urls)  # every URL exactly once
        assert len(items) == len(images) and (items.status == "valid").all()
        assert items.sha256.is_unique
        for row in items.itertuples():
            assert (
                hashlib.sha256(ws.object_path(row.sha256, row.format).read_bytes()).hexdigest() == row.sha256
            )


# -- a full disk (a real, tiny tmpfs; needs root) ---------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def test_full_disk_gives_a_clear_error_and_loses_nothing(tiny_disk: Path, sample_paths: list[Path]) -> None:
    ws = Workspace.init(tiny_disk / "ws")
    source = create_source("folder", directory=str(sample_paths[0].parent))
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "folder", str(sample_paths[0].parent), "-w", str(ws.root), "-q"])
    assert result.exit_code == 1
    assert "disk full" in result.output or "disk is full" in result.output
    partial = ws.items()
    assert len(partial) == len(sample_paths)
    stored = partial[partial.status == "valid"]
    for row in stored.itertuples():  # whatever was committed has its bytes
        assert ws.object_path(row.sha256, row.format).exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    summary = ingest(ws, source, _options())
    assert summary.new == 0
    assert (ws.items().status == "valid").all() and len(ws.items()) == len(sample_paths)


# -- the CLI and the demo -----------------------------------------------------------------------------------


def test_cli_init_ingest_status(tmp_path: Path, sample_paths: list[Path]) -> None:
    runner = CliRunner()
    ws_path = str(tmp_path / "ws")
    assert runner.invoke(app, ["init", ws_path]).exit_code == 0
    folder = tmp_path / "awe"
    folder.mkdir()
    for path in sample_paths[:4]:
        (folder / path.name).write_bytes(path.read_bytes())
    result = runner.invoke(
        app, ["ingest", "folder", str(tmp_path), "-r", "--label-from-dir", "-w", ws_path, "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "4 new" in result.output and "valid=4" in result.output
    result = runner.invoke(app, ["status", "--json"], env={"EMO8_WORKSPACE": ws_path})
    counts = json.loads(result.output)
    assert counts["status"] == {"valid": 4} and counts["weak_label"] == {"awe": 4}
    missing = runner.invoke(app, ["status", "-w", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not an Emo8 workspace" in missing.output


@pytest.mark.slow
def test_cli_ingest_openverse_end_to_end(tmp_path: Path, sample_paths: list[Path]) -> None:
    """Search results from a local server in Openverse's wire format, images fetched from the same server."""

    async def search(request: web.Request) -> web.Response:
        page = int(request.query.get("page", 1))
        results = [
            {"id": f"id-{i}", "title": f"storm {i}", "url": server.url(f"/img/{i}.jpg"), "creator": "ann",
             "license": "by", "license_version": "4.0", "foreign_landing_url": "https://example.org/x",
             "tags": [{"name": "storm"}]}
            for i in range(3 * (page - 1), 3 * page)
        ]  # fmt: skip
        return web.json_response(
            {"result_count": 6, "page_count": 2, "page_size": 3, "page": page, "results": results}
        )

    routes: dict[str, Handler] = {"/v1/images/": search, "/robots.txt": respond(b"", status=404)}
    routes.update({f"/img/{i}.jpg": _jpeg(path.read_bytes()) for i, path in enumerate(sample_paths[:6])})
    with LoopbackServer(routes) as server:
        ws_path = str(tmp_path / "ws")
        runner = CliRunner()
        runner.invoke(app, ["init", ws_path])
        args = ["ingest", "openverse", "--query", "storm", "--label", "fear", "--max", "5", "--api-url",
                server.base_url, "--allow-private-networks", "-w", ws_path, "-q"]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    items = Workspace.open(ws_path).items()
    assert len(items) == 5 and (items.status == "valid").all()
    assert set(items.license) == {"CC-BY-4.0"} and set(items.weak_label) == {"fear"}
    assert set(items.keyword) == {"storm"} and set(items.author) == {"ann"}
