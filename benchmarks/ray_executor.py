"""Ingest through the ``local`` and the ``ray`` executor: the same loopback URL list, the same machine.

The images, the loopback server and the measurement (wall time, CPU-seconds of the whole process tree, peak RSS)
are those of ``ingest_vs_img2dataset.py`` (imported, not copied). Each run is ``emo8 ingest urls`` in a fresh
workspace with every check on (robots.txt, X-Robots-Tag, SSRF guard with loopback allowed, validation and
signals); ``--executor ray`` starts its own local Ray instance with the machine's CPUs, so its figures include
Ray's start-up and shutdown, which are also measured alone (``ray.init`` + ``ray.shutdown`` with nothing to do).
``ray-cluster`` joins a Ray instance started beforehand (``ray start --head``, the machine's CPUs) with
``--ray-address auto``, as a job on a running cluster does; its CPU-seconds add those the cluster's processes
(GCS, raylet, workers) spent during the run to the driver's; what those processes spend while the instance is idle
is measured too (``ray_idle_cpu_per_s``) and reported apart. A job on a running cluster leaves its ingest actors
up for the next job (``EMO8_RAY_KEEP_ALIVE``, the default): ``ray-cluster`` is such a next job (its first run
may start them: ``fresh_actors`` counts the actor processes each run started), and ``ray-cluster-fresh`` a job
that starts its own actors and ends them (``EMO8_RAY_KEEP_ALIVE=0``: the first job on a cluster, or one after the
kept actors ended). Runs alternate (local, ray, ray-cluster, local, ...).
Each executor also runs a list of ``--small`` images: the cost of a run with almost nothing to do (process start,
imports, Ray's worker processes) is reported as ``fixed_*``, and the cost of each further image as ``marginal_*``.

    nice .venv/bin/python benchmarks/ray_executor.py [--count 5000] [--small 100] [--repeats 2]

Results: printed, and ``benchmarks/out/ray_executor.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
from ingest_vs_img2dataset import (
    IN_FLIGHT,
    PROCESSES,
    WORK,
    image_server,
    make_images,
    run_measured,
)
from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
EXECUTORS = ("local", "ray", "ray-cluster", "ray-cluster-fresh")
RAY_CLI = [str(Path(sys.executable).parent / "ray")]
IDLE_S = 10.0
RAY_JOIN = "import ray; ray.init(address='auto', log_to_driver=False); ray.shutdown()"
#: The head's address, which ``--ray-address auto`` reads; removed with the head it names.
CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
RAY_START = (
    "import os, ray; ray.init(address='local', num_cpus=os.cpu_count(), include_dashboard=False, "
    "log_to_driver=False); "
    "ray.shutdown()"
)


class ClusterCpu:
    """CPU-seconds spent by the processes of a running Ray instance (GCS, raylet, workers) while it is active.

    Polled every 50 ms, last value kept per process: a job's workers exit with the job, before anyone could ask.
    """

    def __init__(self) -> None:
        self.actors: set[int] = set()  # the ingest actors' processes seen
        self.start = self._sample()
        self.seen = dict(self.start)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for proc in psutil.process_iter(["cmdline", "cpu_times"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.info["cpu_times"] and ("ray::" in cmdline or "site-packages/ray/" in cmdline):
                out[proc.pid] = proc.info["cpu_times"].user + proc.info["cpu_times"].system
                if cmdline.startswith("ray::IngestActor"):
                    self.actors.add(proc.pid)
        return out

    def _poll(self) -> None:
        while not self.stop.wait(0.05):
            self.seen.update(self._sample())

    def __enter__(self) -> ClusterCpu:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.seen.update(self._sample())

    @property
    def seconds(self) -> float:
        return sum(v - self.start.get(pid, 0.0) for pid, v in self.seen.items())


def url_list_for(count: int, port: int) -> Path:
    """This benchmark's own URL list of ``count`` images (not shared with ``ingest_vs_img2dataset.py``'s lists,
    which name another run's server when both benchmarks run at once)."""
    path = WORK / f"ray-urls-{count}.csv"
    path.write_text("url\n" + "".join(f"http://127.0.0.1:{port}/img/{i:06d}.jpg\n" for i in range(count)))
    return path


#: Each run's workspace, kept until the benchmark ends: deleting the previous run's 5,000 files just before a run
#: made ext4 slow to create the next run's files (its inode allocator skips recently deleted inodes; profiled:
#: 5-10 times the system CPU per write), which charged one run for another's clean-up.
RUN_DIRS: list[Path] = []


def run_ingest(url_list: Path, executor: str) -> dict[str, float | int | str]:
    """One ``emo8 ingest urls`` run with ``executor`` in a fresh workspace; wall, CPU, RSS and valid count."""
    variant, executor = executor, executor.split("-")[0]
    extra = ["--ray-address", "auto"] if variant.startswith("ray-cluster") else []
    os.environ["EMO8_RAY_KEEP_ALIVE"] = "0" if variant == "ray-cluster-fresh" else "120"
    out = WORK / f"ray-bench-{variant}-{len(RUN_DIRS)}"
    shutil.rmtree(out, ignore_errors=True)  # left by an interrupted benchmark
    RUN_DIRS.append(out)
    emo8 = [sys.executable, "-m", "emo8"]
    subprocess.run([*emo8, "init", str(out)], check=True, capture_output=True)
    cmd = [
        *emo8, "ingest", "urls", str(url_list), "-w", str(out), "--allow-private-networks",
        "--concurrency", str(IN_FLIGHT), "--per-host", str(IN_FLIGHT), "--workers", str(PROCESSES),
        "--executor", executor, *extra, "--quiet",
    ]  # fmt: skip
    load = os.getloadavg()[0]
    with ClusterCpu() as cluster:
        wall, cpu, rss = run_measured(cmd)
    cluster_cpu = cluster.seconds if extra else 0.0
    fresh = sum(1 for pid in cluster.seen if pid not in cluster.start and pid in cluster.actors)
    with contextlib.closing(sqlite3.connect(out / "catalog.sqlite")) as db:
        ok = int(db.execute("SELECT COUNT(*) FROM items WHERE status = 'valid'").fetchone()[0])
    return {"executor": variant, "wall_s": wall, "cpu_s": cpu + cluster_cpu, "cluster_cpu_s": cluster_cpu,
            "rss_mb": rss, "ok": ok, "load": load, "fresh_actors": fresh}  # fmt: skip


def start_head() -> subprocess.Popen[bytes]:
    """``ray start --head --block`` in its own process group (so that exactly its processes are stopped later);
    returns once a driver can join it with ``address="auto"``."""
    CURRENT_CLUSTER.unlink(missing_ok=True)
    head = subprocess.Popen(
        [*RAY_CLI, "start", "--head", "--block", f"--num-cpus={os.cpu_count()}", "--include-dashboard=false",
         "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    for _ in range(240):
        if CURRENT_CLUSTER.exists() and head.poll() is None:
            probe = subprocess.run([sys.executable, "-c", RAY_JOIN], capture_output=True, timeout=120)
            if probe.returncode == 0:
                return head
        time.sleep(0.5)
    stop_head(head)
    raise SystemExit("the Ray head did not start")


def stop_head(head: subprocess.Popen[bytes]) -> None:
    """Stop the head's process group (GCS, raylet, workers): SIGTERM, then SIGKILL after 10 s."""
    CURRENT_CLUSTER.unlink(missing_ok=True)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, sig)
        try:
            head.wait(10)
            break
        except subprocess.TimeoutExpired:
            continue


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--small", type=int, default=100, help="list size of the fixed-cost runs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ray_executor.json")
    args = parser.parse_args()

    make_images(args.count)
    runs: list[dict[str, float | int | str]] = []
    with image_server() as port:
        lists = {n: url_list_for(n, port) for n in (args.small, args.count)}
        startup = [run_measured([sys.executable, "-c", RAY_START]) for _ in range(args.repeats)]
        head = start_head()
        try:
            with ClusterCpu() as idle:  # what the running instance's own processes spend while nothing runs
                time.sleep(IDLE_S)
            idle_rate = idle.seconds / IDLE_S
            for _ in range(args.repeats):
                for executor in EXECUTORS:
                    for n, url_list in lists.items():
                        r = {**run_ingest(url_list, executor), "count": n}
                        runs.append(r)
                        print(
                            f"  {executor:<17} n={n:<6} wall {r['wall_s']:.2f} s, CPU {r['cpu_s']:.1f} s, "
                            f"{1000 * float(r['cpu_s']) / max(1, int(r['ok'])):.2f} CPU-ms/image, ok={r['ok']}, "
                            f"rss {float(r['rss_mb']):.0f} MB, load {float(r['load']):.2f}, "
                            f"fresh actors {r['fresh_actors']}",
                            flush=True,
                        )
        finally:
            stop_head(head)
            for out in RUN_DIRS:
                shutil.rmtree(out, ignore_errors=True)

    def median(executor: str, key: str, count: int = args.count) -> float:
        return statistics.median(
            float(r[key]) for r in runs if r["executor"] == executor and r["count"] == count
        )

    start_wall = statistics.median(s[0] for s in startup)
    start_cpu = statistics.median(s[1] for s in startup)
    extra = args.count - args.small
    summary = {
        executor: {
            "wall_s": round(median(executor, "wall_s"), 2),
            "cpu_s": round(median(executor, "cpu_s"), 2),
            "cpu_ms_per_image": round(1000 * median(executor, "cpu_s") / args.count, 3),
            "images_per_s": round(args.count / median(executor, "wall_s"), 1),
            # the cost of a run with almost nothing to do (process start, imports, Ray workers) ...
            "fixed_wall_s": round(median(executor, "wall_s", args.small), 2),
            "fixed_cpu_s": round(median(executor, "cpu_s", args.small), 2),
            # ... and what each further image costs
            "marginal_cpu_ms_per_image": round(
                1000 * (median(executor, "cpu_s") - median(executor, "cpu_s", args.small)) / extra, 3
            ),
            "marginal_wall_ms_per_image": round(
                1000 * (median(executor, "wall_s") - median(executor, "wall_s", args.small)) / extra, 3
            ),
        }
        for executor in EXECUTORS
    }
    background = idle_rate * median("ray-cluster", "wall_s")
    summary["ray-cluster"]["background_cpu_s"] = round(background, 2)
    summary["ray-cluster"]["cpu_ms_per_image_without_background"] = round(
        1000 * (median("ray-cluster", "cpu_s") - background) / args.count, 3
    )
    ratio = median("ray", "wall_s") / median("local", "wall_s")
    ratio_cluster = median("ray-cluster", "wall_s") / median("local", "wall_s")
    ratio_fresh = median("ray-cluster-fresh", "wall_s") / median("local", "wall_s")
    ratio_warm = (median("ray", "wall_s") - start_wall) / median("local", "wall_s")
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "command": " ".join(sys.argv),
        "count": args.count,
        "small": args.small,
        "runs": runs,
        "ray_start_stop": {"wall_s": round(start_wall, 2), "cpu_s": round(start_cpu, 2)},
        "ray_idle_cpu_per_s": round(idle_rate, 3),
        "summary": summary,
        "ray_over_local_wall": round(ratio, 3),
        "ray_over_local_wall_without_start": round(ratio_warm, 3),
        "ray_cluster_over_local_wall": round(ratio_cluster, 3),
        "ray_cluster_fresh_over_local_wall": round(ratio_fresh, 3),
        "ray_cluster_over_local_marginal_wall": round(
            summary["ray-cluster"]["marginal_wall_ms_per_image"]
            / summary["local"]["marginal_wall_ms_per_image"],
            3,
        ),
    }
    print(
        f"\n{args.count} JPEGs from a loopback server; CPU: {report['cpu']}, {os.cpu_count()} cores (shared)"
    )
    for executor, s in summary.items():
        print(f"  {executor:<17} {s}")
    print(f"  Ray start + stop alone: {start_wall:.1f} s wall, {start_cpu:.1f} CPU-s; "
          f"a running instance's own processes, idle: {idle_rate:.2f} CPU-s per second")  # fmt: skip
    print(f"  ray / local wall time: {ratio:.2f} (without Ray's start-up: {ratio_warm:.2f}; target <= 1.3)")
    print(f"  ray-cluster (already running) / local wall time: {ratio_cluster:.2f}; "
          f"per further image: {report['ray_cluster_over_local_marginal_wall']:.2f}; "
          f"with actors started for the job (ray-cluster-fresh): {ratio_fresh:.2f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
