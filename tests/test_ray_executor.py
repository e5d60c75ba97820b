"""The Ray executor on a real local Ray instance (2 CPUs) against a real loopback HTTP server.

Same catalog rows as the local executor (hostile servers included), per-host limits across workers, a killed
worker retried without loss or duplicates, a killed driver finished by a re-run; embeddings equal to the local ones
bit for bit; the same person detections.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from dedupfixtures import ingest_folder
from httpfixtures import Handler, LoopbackServer, delayed, distinct_jpegs, redirect, respond, sequence, stall

from emo8 import Workspace
from emo8.core.catalog import SIGNAL_COLUMNS
from emo8.core.executor import ExecutorConfig, ExecutorError, check_executor
from emo8.embed.run import EmbedConfig, embed, load_embeddings
from emo8.ingest.download import DownloadConfig
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.slow

ROW_COLUMNS = ["item_id", "url", "status", "reason", "http_status", "sha256", *SIGNAL_COLUMNS]


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[str]:
    """One local Ray instance for the module; yields its address for subprocess drivers."""
    # address="local": always a new instance, even when another one runs on this machine
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _jpeg(data: bytes) -> Handler:
    return respond(data, content_type="image/jpeg")


def _options(executor: ExecutorConfig, guard: bool = False, **download: object) -> IngestOptions:
    config = DownloadConfig(
        allow_private_networks=not guard, backoff_base=0.01, retries=1, total_timeout=1.0, **download
    )  # type: ignore[arg-type]
    return IngestOptions(download=config, workers=2, progress=False, commit_every=8, executor=executor)


def _write_list(path: Path, urls: list[str]) -> Path:
    path.write_text("url,caption\n" + "".join(f"{u},caption {i}\n" for i, u in enumerate(urls)))
    return path


def _ingest(root: Path, url_list: Path, options: IngestOptions) -> pd.DataFrame:
    ws = Workspace.init(root)
    ingest(ws, create_source("urls", path=str(url_list)), options)
    return ws.items()[ROW_COLUMNS].sort_values("item_id").reset_index(drop=True)


def _assert_objects_match(root: Path) -> None:
    ws = Workspace.open(root)
    items = ws.items()
    for row in items[items.status == "valid"].itertuples():
        assert hashlib.sha256(ws.object_path(row.sha256, row.format).read_bytes()).hexdigest() == row.sha256


RAY = ExecutorConfig("ray", chunk_size=4)


def test_ray_ingest_gives_the_local_catalog_rows_with_hostile_servers(
    tmp_path: Path, sample_paths: list[Path]
) -> None:
    *images, busy = distinct_jpegs(sample_paths, 13)
    routes: dict[str, Handler] = {f"/i/{i}.jpg": _jpeg(data) for i, data in enumerate(images)}
    routes["/robots.txt"] = respond("User-agent: *\nDisallow: /private/\n", content_type="text/plain")
    routes["/private/x.jpg"] = _jpeg(images[0])
    routes["/noai.jpg"] = respond(images[1], content_type="image/jpeg", headers={"X-Robots-Tag": "noai"})
    routes["/not-an-image.jpg"] = respond(b"<html>nope</html>", content_type="image/jpeg")
    routes["/stall.jpg"] = stall(30.0)
    with LoopbackServer(routes) as srv:
        # 429 with Retry-After, then the image: a fresh sequence per run (each executor sees the same server)
        def hostile() -> None:
            srv.routes["/busy.jpg"] = sequence(
                respond(b"", status=429, headers={"Retry-After": "1"}), _jpeg(busy)
            )

        paths = [f"/i/{i}.jpg" for i in range(len(images))]
        paths += [
            "/missing.jpg",
            "/busy.jpg",
            "/stall.jpg",
            "/private/x.jpg",
            "/noai.jpg",
            "/not-an-image.jpg",
        ]
        url_list = _write_list(tmp_path / "urls.csv", [srv.url(p) for p in paths] + ["not a url"])
        hostile()
        local = _ingest(tmp_path / "local", url_list, _options(ExecutorConfig()))
        hostile()
        remote = _ingest(tmp_path / "ray", url_list, _options(RAY))
    by_url = dict(zip(remote.url, zip(remote.status, remote.reason, strict=True), strict=True))
    assert by_url[srv.url("/missing.jpg")] == ("failed", "http_404")
    assert by_url[srv.url("/busy.jpg")] == ("valid", None)
    assert by_url[srv.url("/stall.jpg")] == ("failed", "timeout")
    assert by_url[srv.url("/private/x.jpg")] == ("skipped", "robots_txt")
    assert by_url[srv.url("/noai.jpg")] == ("skipped", "x_robots_tag")
    assert by_url[srv.url("/not-an-image.jpg")][0] == "invalid"
    assert (remote.status == "valid").sum() == len(images) + 1
    pd.testing.assert_frame_equal(local, remote)
    _assert_objects_match(tmp_path / "ray")


def test_ssrf_guard_runs_in_every_worker(tmp_path: Path, sample_paths: list[Path]) -> None:
    image = distinct_jpegs(sample_paths, 1)[0]
    routes = {"/a.jpg": _jpeg(image), "/hop.jpg": redirect("http://10.0.0.1/x.jpg")}
    with LoopbackServer(routes) as srv:
        url_list = _write_list(tmp_path / "urls.csv", [srv.url("/a.jpg"), srv.url("/hop.jpg")])
        local = _ingest(tmp_path / "local", url_list, _options(ExecutorConfig(), guard=True))
        remote = _ingest(tmp_path / "ray", url_list, _options(RAY, guard=True))
        assert not srv.requests  # loopback refused before a byte left
    assert set(remote.reason) == {"private_address"} and set(remote.status) == {"skipped"}
    pd.testing.assert_frame_equal(local, remote)


def test_per_host_limits_hold_across_ray_workers(tmp_path: Path, sample_paths: list[Path]) -> None:
    routes = _slow_images(sample_paths, 24, 0.05)
    images = [k for k in routes if k.startswith("/i/")]
    with LoopbackServer(routes) as srv:
        url_list = _write_list(tmp_path / "urls.csv", [srv.url(f"/i/{i}.jpg") for i in range(len(images))])
        # one host dealt over 2 sub-shards (2 CPUs): unless their per-host limits add up to 2, 4 run at once
        config = ExecutorConfig("ray", shards=4, chunk_size=4)
        items = _ingest(tmp_path / "ws", url_list, _options(config, per_host_concurrency=2))
        assert srv.max_inflight <= 2
        assert Counter(r.path for r in srv.requests if r.path.startswith("/i/")) == {
            f"/i/{i}.jpg": 1 for i in range(len(images))
        }
    assert (items.status == "valid").all() and len(items) == len(images)


def _ingest_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::") and "ingest_chunk" in cmdline:
            found.append(proc)
    return found


def _slow_images(sample_paths: list[Path], count: int, delay: float) -> dict[str, Handler]:
    """``count`` distinct JPEGs at ``/i/<n>.jpg``, each answered after ``delay`` seconds; no robots.txt."""
    routes: dict[str, Handler] = {
        f"/i/{i}.jpg": delayed(_jpeg(d), delay) for i, d in enumerate(distinct_jpegs(sample_paths, count))
    }
    routes["/robots.txt"] = respond(b"", status=404)
    return routes


def _ingest_in_thread(
    root: Path, url_list: Path, config: ExecutorConfig
) -> tuple[threading.Thread, list[pd.DataFrame]]:
    """An ingest (one request at a time to the host) running in a thread; its rows land in the list."""
    result: list[pd.DataFrame] = []
    run = threading.Thread(
        target=lambda: result.append(_ingest(root, url_list, _options(config, per_host_concurrency=1)))
    )
    run.start()
    return run, result


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(
    tmp_path: Path, sample_paths: list[Path]
) -> None:
    routes = _slow_images(sample_paths, 40, 0.1)
    images = [k for k in routes if k.startswith("/i/")]
    killed: list[int] = []
    with LoopbackServer(routes) as srv:
        url_list = _write_list(tmp_path / "urls.csv", [srv.url(f"/i/{i}.jpg") for i in range(len(images))])
        run, result = _ingest_in_thread(tmp_path / "ws", url_list, ExecutorConfig("ray", chunk_size=20))
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            workers = _ingest_workers()
            if workers and len(srv.requests) > 3:
                workers[0].send_signal(signal.SIGKILL)
                killed.append(workers[0].pid)
            time.sleep(0.05)
        run.join(120)
        assert killed and not run.is_alive()
        fetched = Counter(r.path for r in srv.requests if r.path.startswith("/i/"))
    items = result[0]
    assert len(items) == len(images) and (items.status == "valid").all() and items.sha256.is_unique
    assert set(fetched) == {f"/i/{i}.jpg" for i in range(len(images))}
    assert max(fetched.values()) == 2  # the killed chunk was fetched again
    _assert_objects_match(tmp_path / "ws")


def test_a_killed_driver_is_finished_by_a_rerun(
    tmp_path: Path, sample_paths: list[Path], ray_instance: str
) -> None:
    routes = _slow_images(sample_paths, 80, 0.1)
    images = [k for k in routes if k.startswith("/i/")]
    with LoopbackServer(routes) as srv:
        urls = [srv.url(f"/i/{i}.jpg") for i in range(len(images))]
        url_list = _write_list(tmp_path / "urls.csv", urls)
        Workspace.init(tmp_path / "ws")
        cmd = [sys.executable, "-m", "emo8", "ingest", "urls", str(url_list), "-w", str(tmp_path / "ws"),
               "--allow-private-networks", "--per-host", "1", "--quiet",
               "--executor", "ray", "--ray-address", ray_instance]  # fmt: skip
        env = {
            **os.environ,
            "EMO8_RAY_CHUNK_SIZE": "8",
        }  # results come back (and are committed) every 8 items
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        ws = Workspace.open(tmp_path / "ws")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(ws.catalog.path) and (ws.items().status == "valid").sum() >= 10:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = ws.items()
        assert 10 <= (partial.status == "valid").sum() < len(images)
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert rerun.returncode == 0, rerun.stderr
    items = ws.items()
    assert sorted(ws.origins().url) == sorted(urls)
    assert len(items) == len(images) and (items.status == "valid").all() and items.sha256.is_unique
    _assert_objects_match(tmp_path / "ws")


def test_unknown_executor_is_a_clear_error_before_anything_is_registered(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match=r"Unknown executor 'spark'.*local, ray"):
        check_executor(ExecutorConfig("spark"))
    ws = Workspace.init(tmp_path / "ws")
    url_list = _write_list(tmp_path / "urls.csv", ["http://127.0.0.1:9/a.jpg"])
    with pytest.raises(ExecutorError):
        ingest(ws, create_source("urls", path=str(url_list)), _options(ExecutorConfig("spark")))
    assert ws.items().empty


def test_ray_embeddings_equal_the_local_ones_bit_for_bit_and_stay_incremental(
    tmp_path: Path, sample_paths: list[Path]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sample_paths[:10]:
        shutil.copy(path, folder / path.name)
    stores = {}
    for kind in ("local", "ray"):
        ws = Workspace.init(tmp_path / kind)
        ingest_folder(ws, folder)
        config = EmbedConfig(device="cpu", workers=0, batch_size=4, shard_size=4, dtype="float32",
                             compact=False, progress=False, executor=ExecutorConfig(kind))  # fmt: skip
        summary = embed(ws, config)
        assert summary.new == 10 and not summary.failed
        stores[kind] = ws
    local_ids, local = load_embeddings(stores["local"], "efficientnet-lite0")
    ray_ids, remote = load_embeddings(stores["ray"], "efficientnet-lite0")
    assert ray_ids == local_ids
    assert np.asarray(remote).tobytes() == np.asarray(local).tobytes()  # bit for bit
    # incremental: two more images, only they are embedded, by the same batches as a local run would use
    for path in sample_paths[10:12]:
        shutil.copy(path, folder / path.name)
    ingest_folder(stores["ray"], folder)
    again = embed(stores["ray"], EmbedConfig(device="cpu", workers=0, batch_size=4, dtype="float32",
                                            progress=False, executor=RAY))  # fmt: skip
    assert again.new == 2 and again.total == 12


def test_ray_person_detection_stores_what_the_local_one_stores(
    tmp_path: Path, sample_paths: list[Path]
) -> None:
    from emo8.label.people import DetectConfig, detect_people, detections

    folder = tmp_path / "in"
    folder.mkdir()
    samples = Path(__file__).resolve().parents[1] / "emo8" / "samples" / "images"
    for name in [
        "skm-0007.jpg",
        "mpl-0001.jpg",
        "ocv-0002.jpg",
        "lom-0005.jpg",
        "lom-0006.jpg",
        "pla-0009.jpg",
    ]:
        shutil.copy(samples / name, folder / name)  # two faces (astronaut, Hopper), a team, landscapes
    found = {}
    for kind in ("local", "ray"):
        ws = Workspace.init(tmp_path / kind)
        ingest_folder(ws, folder)
        config = DetectConfig(
            backend="opencv-haar-face", batch_size=2, progress=False, executor=ExecutorConfig(kind)
        )
        summary = detect_people(ws, config)
        assert summary.processed == 6 and summary.errors == 0
        rows = sorted(detections(ws), key=lambda r: r["item_id"])
        found[kind] = [{k: v for k, v in r.items() if k != "created_at"} for r in rows]
        again = detect_people(ws, config)  # incremental: nothing left to do
        assert again.processed == 0 and again.already == 6
    assert found["ray"] == found["local"] and any(r["num_faces"] for r in found["local"])


def _drain(queue: Any) -> list[list[tuple[str, str | None, str | None]]]:
    chunks = []
    while chunk := queue.take():
        chunks.append(chunk)
    return chunks


def test_every_host_belongs_to_one_shard_or_splits_its_limits() -> None:
    from emo8.ingest.ray import host_of, plan_shards

    urls = [f"http://h{i % 7}.example/{i}.jpg" for i in range(70)]
    pending = pd.DataFrame({"item_id": [f"id{i}" for i in range(70)], "url": urls, "source_path": None})
    config = DownloadConfig(per_host_concurrency=4, per_host_rate=2.0)
    plan = plan_shards(pending, 3, 4, config)
    assert len({id(s.chunks) for s in plan}) == len(plan)  # enough hosts: no two shards share a queue
    owners: dict[str, set[int]] = {}
    taken = []
    for index, shard in enumerate(plan):
        assert shard.download == config
        for chunk in _drain(shard.chunks):
            assert len(chunk) <= 4
            taken += [r[0] for r in chunk]
            for _, url, _ in chunk:
                owners.setdefault(host_of(url), set()).add(index)
    assert len(owners) == 7 and all(len(v) == 1 for v in owners.values())
    assert sorted(taken) == sorted(pending.item_id)
    # one host, four shards: four sub-shards, sharing the host's queue, whose limits sum to the host's
    single = plan_shards(
        pending.assign(url=[f"http://one.example/{i}.jpg" for i in range(70)]), 4, 100, config
    )
    assert len(single) == 4 and len({id(s.chunks) for s in single}) == 1
    assert sum(s.download.per_host_concurrency for s in single) <= 4
    assert sum(s.download.per_host_rate or 0 for s in single) <= 2.0
    assert sorted(r[0] for c in _drain(single[0].chunks) for r in c) == sorted(pending.item_id)


def test_shared_queues_deal_smaller_chunks_as_they_empty() -> None:
    """Full chunks while much is left, then smaller ones down to MIN_CHUNK: the shards sharing a queue finish
    together instead of one waiting for another's last full chunk."""
    from emo8.ingest.ray import MIN_CHUNK, ChunkQueue

    rows = [(f"id{i}", f"http://one.example/{i}.jpg", None) for i in range(5000)]
    sizes = [len(c) for c in _drain(ChunkQueue(rows, 256, consumers=2))]
    assert sum(sizes) == 5000
    assert sizes[0] == 256 and sizes == sorted(sizes, reverse=True)
    assert sizes[-2] <= MIN_CHUNK < 256
    assert [len(c) for c in _drain(ChunkQueue(rows[:10], 256))] == [10]
    assert not ChunkQueue([], 256).take()


def test_executor_core_imports_no_stage_and_local_runs_never_import_ray() -> None:
    """The kind registry lives in core (imports flow down only); each stage owns its Ray module, loaded on demand."""
    code = (
        "import sys, emo8.core.executor as e; "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] != ['emo8', 'core'] and m.startswith('emo8.'))); "
        "import emo8.ingest.run, emo8.embed.run, emo8.label.people; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]", out[0]  # core.executor pulled in no stage
    assert out[1] == "False"  # registering the ray implementations does not import Ray
    from emo8.embed.run import EMBED_EXECUTORS
    from emo8.ingest.run import INGEST_EXECUTORS
    from emo8.label.people import DETECT_EXECUTORS

    for registry, module in [(INGEST_EXECUTORS, "emo8.ingest.ray"), (EMBED_EXECUTORS, "emo8.embed.ray"),
                             (DETECT_EXECUTORS, "emo8.label.people_ray")]:  # fmt: skip
        assert registry.kinds == ["local", "ray"]
        assert registry.get(ExecutorConfig("ray")).__module__ == module
    with pytest.raises(ExecutorError, match="Unknown executor 'spark'"):
        INGEST_EXECUTORS.get(ExecutorConfig("spark"))


#: A driver process for the killed-actor test: the real embedding actor, slowed to one batch per 0.4 s so that the
#: test can kill it mid-run; everything Ray does happens in this process and ends with it.
_SLOW_EMBED_DRIVER = """
import sys, time
import emo8.embed.ray as on_ray
from emo8 import Workspace
from emo8.core.executor import ExecutorConfig
from emo8.embed.run import EmbedConfig, embed

class SlowEncodeBatches(on_ray.EncodeBatches):
    def __call__(self, rows):
        time.sleep(0.4)
        return super().__call__(rows)

on_ray.EncodeBatches = SlowEncodeBatches
config = EmbedConfig(device="cpu", workers=0, batch_size=2, shard_size=2, dtype="float32", compact=False,
                     progress=False, executor=ExecutorConfig("ray", ray_address=sys.argv[2]))
summary = embed(Workspace.open(sys.argv[1]), config)
print("RESULT", summary.new, len(summary.failed))
"""


def _encode_actors() -> dict[int, psutil.Process]:
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if "EncodeBatches" in " ".join(proc.info["cmdline"] or []) and proc.info["cmdline"][0].startswith(
                "ray::"
            ):
                found[proc.pid] = proc
    return found


def test_ray_embedding_survives_a_killed_actor(
    tmp_path: Path, sample_paths: list[Path], ray_instance: str
) -> None:
    """The driver runs in a subprocess (nothing of its Ray job can outlive it in pytest); the test SIGKILLs the
    embedding actor once the first shard is committed. Ray Data restarts it and recomputes the lost batch: every
    item is embedded once, with exactly the local numbers."""
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sample_paths[:20]:
        shutil.copy(path, folder / path.name)
    ws = Workspace.init(tmp_path / "ws")
    ingest_folder(ws, folder)
    shards = tmp_path / "ws" / "embeddings"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_EMBED_DRIVER, str(ws.root), ray_instance],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    killed: list[int] = []
    seen_after: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            actors = _encode_actors()
            if not killed and actors and len(list(shards.rglob("shard-*.npy"))) >= 1:
                pid, actor = next(iter(actors.items()))
                actor.send_signal(signal.SIGKILL)
                killed.append(pid)
            elif killed:
                seen_after.update(set(actors) - set(killed))
            time.sleep(0.1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert killed, "no embedding actor was seen before the run ended"
    assert proc.returncode == 0, err[-3000:]
    assert [line.split() for line in out.splitlines() if line.startswith("RESULT")] == [["RESULT", "20", "0"]]
    assert seen_after, "no actor ran after the kill"  # Ray Data restarted it
    ids, matrix = load_embeddings(ws, "efficientnet-lite0")
    assert len(ids) == 20 and len(set(ids)) == 20  # nothing lost, nothing twice
    local = Workspace.init(tmp_path / "local")
    ingest_folder(local, folder)
    embed(local, EmbedConfig(device="cpu", workers=0, batch_size=2, dtype="float32", progress=False))
    local_ids, local_matrix = load_embeddings(local, "efficientnet-lite0")
    assert ids == local_ids and np.asarray(matrix).tobytes() == np.asarray(local_matrix).tobytes()


def test_ray_workers_write_and_read_an_object_store_at_a_url(
    tmp_path: Path, sample_paths: list[Path]
) -> None:
    """Ray workers store downloads straight into a ``file://`` store and embed from it; the same rows and the same
    numbers as the local executor with the default store."""
    images = distinct_jpegs(sample_paths, 8)
    routes: dict[str, Handler] = {f"/i/{i}.jpg": _jpeg(d) for i, d in enumerate(images)}
    routes["/robots.txt"] = respond(b"", status=404)
    bucket = (tmp_path / "bucket" / "objects").as_uri()
    with LoopbackServer(routes) as srv:
        url_list = _write_list(tmp_path / "urls.csv", [srv.url(f"/i/{i}.jpg") for i in range(len(images))])
        local = _ingest(tmp_path / "local", url_list, _options(ExecutorConfig()))
        Workspace.init(tmp_path / "ray", objects=bucket)
        remote = _ingest(tmp_path / "ray", url_list, _options(RAY))
    pd.testing.assert_frame_equal(local, remote)
    stored = sorted(p.name for p in (tmp_path / "bucket" / "objects").rglob("*.jpg"))
    assert stored == sorted(f"{s}.jpg" for s in remote.sha256)
    assert not [p for p in (tmp_path / "ray" / "objects").rglob("*") if p.is_file()]  # nothing kept locally
    vectors = {}
    for kind, executor in (("local", ExecutorConfig()), ("ray", RAY)):
        ws = Workspace.open(tmp_path / kind)
        config = EmbedConfig(device="cpu", workers=0, batch_size=4, dtype="float32", progress=False,
                             executor=executor)  # fmt: skip
        assert embed(ws, config).new == len(images)
        ids, matrix = load_embeddings(ws, "efficientnet-lite0")
        vectors[kind] = (ids, np.asarray(matrix).tobytes())
    assert vectors["ray"] == vectors["local"]


def test_a_kind_whose_module_cannot_load_is_a_clear_error() -> None:
    from emo8.core.executor import StageExecutors

    stage: StageExecutors[object] = StageExecutors("demo")
    stage.register("local", print)
    stage.register("ray", "emo8.no_such_module:run")
    assert stage.get(ExecutorConfig()) is print
    with pytest.raises(ExecutorError, match=r"ray executor for demo cannot be loaded .*emo8\[ray\]"):
        stage.get(ExecutorConfig("ray"))
    other: StageExecutors[object] = StageExecutors("other")
    other.register("local", print)
    with pytest.raises(ExecutorError, match="cannot run on the 'ray' executor: choose one of local"):
        other.get(ExecutorConfig("ray"))


def _ingest_actors() -> dict[int, psutil.Process]:
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if " ".join(proc.info["cmdline"] or []).startswith("ray::IngestActor"):
                found[proc.pid] = proc
    return found


def _cli_ingest(url_list: Path, root: Path, address: str, keep_alive: str) -> None:
    if not root.exists():
        Workspace.init(root)
    cmd = [sys.executable, "-m", "emo8", "ingest", "urls", str(url_list), "-w", str(root), "--allow-private-networks",
           "--per-host", "2", "--quiet", "--executor", "ray", "--ray-address", address]  # fmt: skip
    env = {**os.environ, "EMO8_RAY_CHUNK_SIZE": "4", "EMO8_RAY_KEEP_ALIVE": keep_alive}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def _kept_actors() -> dict[str, Any]:
    """The ingest actors kept on the test's cluster, by name."""
    kept = {}
    for found in ray.util.list_named_actors(all_namespaces=True):
        if found["name"].startswith("emo8-ingest-"):
            with contextlib.suppress(ValueError):  # it ended meanwhile
                kept[found["name"]] = ray.get_actor(found["name"], namespace=found["namespace"])
    return kept


def _end_kept_actors() -> None:
    for actor in _kept_actors().values():
        ray.kill(actor, no_restart=True)


def test_the_next_job_on_a_cluster_reuses_the_kept_actors_within_the_per_host_limits(
    tmp_path: Path, sample_paths: list[Path], ray_instance: str
) -> None:
    """Two jobs joining one cluster: the second one runs on the actors the first one left (no new worker process),
    and the host never sees more than its per-host limit, within a job or across both."""
    routes = _slow_images(sample_paths, 32, 0.05)
    images = [k for k in routes if k.startswith("/i/")]
    _end_kept_actors()  # those of earlier tests
    try:
        with LoopbackServer(routes) as srv:
            urls = [srv.url(f"/i/{i}.jpg") for i in range(len(images))]
            first = _write_list(tmp_path / "first.csv", urls[:16])
            second = _write_list(tmp_path / "second.csv", urls[16:])
            _cli_ingest(first, tmp_path / "ws", ray_instance, keep_alive="120")
            kept = {name: ray.get(actor.pid.remote()) for name, actor in _kept_actors().items()}
            assert len(kept) == 2  # one per CPU of the cluster, still up after the job
            running = set(_ingest_actors())
            _cli_ingest(second, tmp_path / "ws", ray_instance, keep_alive="120")
            assert {name: ray.get(actor.pid.remote()) for name, actor in _kept_actors().items()} == kept
            assert set(_ingest_actors()) <= running  # no new actor process
            assert srv.max_inflight <= 2
            assert Counter(r.path for r in srv.requests if r.path.startswith("/i/")) == {
                f"/i/{i}.jpg": 1 for i in range(len(images))
            }
    finally:
        _end_kept_actors()
    items = Workspace.open(tmp_path / "ws").items()
    assert len(items) == len(images) and (items.status == "valid").all()


def test_kept_actors_end_themselves_once_idle(
    tmp_path: Path, sample_paths: list[Path], ray_instance: str
) -> None:
    images = distinct_jpegs(sample_paths, 4)
    routes: dict[str, Handler] = {f"/i/{i}.jpg": _jpeg(d) for i, d in enumerate(images)}
    routes["/robots.txt"] = respond(b"", status=404)
    _end_kept_actors()  # those of earlier tests, kept for longer
    try:
        with LoopbackServer(routes) as srv:
            url_list = _write_list(
                tmp_path / "urls.csv", [srv.url(f"/i/{i}.jpg") for i in range(len(images))]
            )
            _cli_ingest(url_list, tmp_path / "ws", ray_instance, keep_alive="1")
        pids = {ray.get(actor.pid.remote()) for actor in _kept_actors().values()}
        assert len(pids) == 2
        deadline = time.monotonic() + 60
        while (_kept_actors() or pids & set(_ingest_actors())) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _kept_actors() and not pids & set(_ingest_actors()), (
            "the kept actors did not end once idle"
        )
    finally:
        _end_kept_actors()


def test_an_actor_dead_for_good_is_replaced_and_its_chunks_run_again(
    tmp_path: Path, sample_paths: list[Path]
) -> None:
    """One shard, one restart allowed: the actor is killed twice mid-chunk, so Ray gives up on it; the driver
    starts a new actor and sends it the lost chunks. Nothing is lost or stored twice."""
    routes = _slow_images(sample_paths, 30, 0.1)
    images = [k for k in routes if k.startswith("/i/")]
    killed: list[int] = []
    with LoopbackServer(routes) as srv:
        url_list = _write_list(tmp_path / "urls.csv", [srv.url(f"/i/{i}.jpg") for i in range(len(images))])
        config = ExecutorConfig("ray", shards=1, chunk_size=5, task_retries=1)
        run, result = _ingest_in_thread(tmp_path / "ws", url_list, config)
        deadline = time.monotonic() + 120
        seen = 0
        while len(killed) < 2 and run.is_alive() and time.monotonic() < deadline:
            busy = [p for p in _ingest_workers() if p.pid not in killed]
            if busy and len(srv.requests) > seen + 2:
                busy[0].send_signal(signal.SIGKILL)
                killed.append(busy[0].pid)
                seen = len(srv.requests)
            time.sleep(0.05)
        run.join(120)
        assert len(killed) == 2 and not run.is_alive()
    items = result[0]
    assert len(items) == len(images) and (items.status == "valid").all() and items.sha256.is_unique
    _assert_objects_match(tmp_path / "ws")


_JOIN_DRIVER = """
import os, sys
from emo8.core.executor import TASK_EVENTS, ExecutorConfig, ray_session
with ray_session(ExecutorConfig("ray", ray_address=sys.argv[1])) as session:
    import ray
    print("JOINED", session.joined, ray.is_initialized(), os.environ.get(TASK_EVENTS))
"""


@pytest.mark.parametrize("user_value", [None, "1000"])
def test_a_joining_driver_leaves_the_task_events_setting_as_it_found_it(
    ray_instance: str, user_value: str | None
) -> None:
    """The driver turns its own task events off for ray.init only, and never overrides a value the user set."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_task_events_report_interval_ms"}
    if user_value is not None:
        env["RAY_task_events_report_interval_ms"] = user_value
    done = subprocess.run([sys.executable, "-c", _JOIN_DRIVER, ray_instance], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line for line in done.stdout.splitlines() if line.startswith("JOINED")] == [
        f"JOINED True True {user_value}"
    ]


def test_ray_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMO8_RAY_SHARDS", "3")
    monkeypatch.setenv("EMO8_RAY_KEEP_ALIVE", "0")
    assert (ExecutorConfig("ray").shards, ExecutorConfig("ray").keep_alive) == (3, 0.0)
    monkeypatch.delenv("EMO8_RAY_SHARDS")
    monkeypatch.delenv("EMO8_RAY_KEEP_ALIVE")
    assert (ExecutorConfig("ray").shards, ExecutorConfig("ray").keep_alive) == (None, 120.0)


@pytest.mark.parametrize(("name", "value"), [("EMO8_RAY_KEEP_ALIVE", "abc"), ("EMO8_RAY_SHARDS", "2.5")])
def test_a_malformed_ray_variable_stops_only_a_ray_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert ExecutorConfig("local").keep_alive == 120.0 and ExecutorConfig("local").shards is None
    with pytest.raises(ExecutorError, match=f"{name}='{value}'"):
        ExecutorConfig("ray")
    env = {**os.environ, name: value}
    urls = tmp_path / "urls.csv"
    urls.write_text("url\nhttp://127.0.0.1:9/a.jpg\n")
    cli = [sys.executable, "-m", "emo8"]
    assert subprocess.run([*cli, "--help"], env=env, capture_output=True).returncode == 0
    subprocess.run([*cli, "init", str(tmp_path / "ws")], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [*cli, "ingest", "urls", str(urls), "-w", str(tmp_path / "ws"), "--executor", "ray"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert name in done.stdout + done.stderr and "Traceback" not in done.stderr
