"""Ingest through the ``local`` and the ``ray`` executor: the same loopback URL list, the same machine.

The images, the loopback server and the measurement (wall time, CPU-seconds of the whole process tree, peak RSS)
are those of ``ingest_vs_img2dataset.py`` (imported, not copied). Each run is ``emo8 ingest urls`` in a fresh
workspace with every check on (robots.txt, X-Robots-Tag, SSRF guard with loopback allowed, validation and
signals); ``--executor ray`` starts its own local Ray instance with the machine's CPUs, so its figures include
Ray's start-up and shutdown, which are also measured alone (``ray.init`` + ``ray.shutdown`` with nothing to do).
``ray-cluster`` joins a Ray instance started beforehand (``ray start --head``, the machine's CPUs) with
``--ray-address auto``, as a job on a running cluster does; its CPU-seconds add those the cluster's processes
(GCS, raylet, workers) spent during the run to the driver's. Runs alternate (local, ray, ray-cluster, local, ...).

    nice .venv/bin/python benchmarks/ray_executor.py [--count 5000] [--repeats 2]

Results: printed, and ``benchmarks/out/ray_executor.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
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
from ingest_vs_img2dataset import url_list_for as _url_list_for
from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
EXECUTORS = ("local", "ray", "ray-cluster")
RAY_CLI = [str(Path(sys.executable).parent / "ray")]
RAY_START = (
    "import os, ray; ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False); "
    "ray.shutdown()"
)


class ClusterCpu:
    """CPU-seconds spent by the processes of a running Ray instance (GCS, raylet, workers) while it is active.

    Polled every 50 ms, last value kept per process: a job's workers exit with the job, before anyone could ask.
    """

    def __init__(self) -> None:
        self.start = self._sample()
        self.seen = dict(self.start)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _sample() -> dict[int, float]:
        out: dict[int, float] = {}
        for proc in psutil.process_iter(["cmdline", "cpu_times"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.info["cpu_times"] and ("ray::" in cmdline or "site-packages/ray/" in cmdline):
                out[proc.pid] = proc.info["cpu_times"].user + proc.info["cpu_times"].system
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


def run_ingest(url_list: Path, executor: str) -> dict[str, float | int | str]:
    """One ``emo8 ingest urls`` run with ``executor`` in a fresh workspace; wall, CPU, RSS and valid count."""
    variant, executor = executor, executor.split("-")[0]
    extra = ["--ray-address", "auto"] if variant == "ray-cluster" else []
    out = WORK / f"ray-bench-{variant}"
    shutil.rmtree(out, ignore_errors=True)
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
    cpu += cluster.seconds if extra else 0.0
    status = json.loads(
        subprocess.run([*emo8, "status", "-w", str(out), "--json"], capture_output=True).stdout
    )
    ok = int(status["status"].get("valid", 0))
    return {"executor": variant, "wall_s": wall, "cpu_s": cpu, "rss_mb": rss, "ok": ok, "load": load}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ray_executor.json")
    args = parser.parse_args()

    make_images(args.count)
    runs: list[dict[str, float | int | str]] = []
    with image_server() as port:
        url_list = _url_list_for(args.count, port)
        startup = [run_measured([sys.executable, "-c", RAY_START]) for _ in range(args.repeats)]
        subprocess.run([*RAY_CLI, "start", "--head", f"--num-cpus={os.cpu_count()}", "--include-dashboard=false",
                        "--disable-usage-stats"], check=True, capture_output=True)  # fmt: skip
        try:
            for _ in range(args.repeats):
                for executor in EXECUTORS:
                    r = run_ingest(url_list, executor)
                    runs.append(r)
                    print(
                        f"  {executor:<6} n={args.count} wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, "
                        f"{1000 * float(r['cpu_s']) / max(1, int(r['ok'])):.2f} CPU-ms/image, ok={r['ok']}, "
                        f"rss {float(r['rss_mb']):.0f} MB, load {float(r['load']):.2f}",
                        flush=True,
                    )
        finally:
            subprocess.run([*RAY_CLI, "stop", "--force"], capture_output=True)

    def median(executor: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs if r["executor"] == executor)

    start_wall = statistics.median(s[0] for s in startup)
    start_cpu = statistics.median(s[1] for s in startup)
    summary = {
        executor: {
            "wall_s": round(median(executor, "wall_s"), 2),
            "cpu_s": round(median(executor, "cpu_s"), 2),
            "cpu_ms_per_image": round(1000 * median(executor, "cpu_s") / args.count, 3),
            "images_per_s": round(args.count / median(executor, "wall_s"), 1),
        }
        for executor in EXECUTORS
    }
    ratio = median("ray", "wall_s") / median("local", "wall_s")
    ratio_cluster = median("ray-cluster", "wall_s") / median("local", "wall_s")
    ratio_warm = (median("ray", "wall_s") - start_wall) / median("local", "wall_s")
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "command": " ".join(sys.argv),
        "count": args.count,
        "runs": runs,
        "ray_start_stop": {"wall_s": round(start_wall, 2), "cpu_s": round(start_cpu, 2)},
        "summary": summary,
        "ray_over_local_wall": round(ratio, 3),
        "ray_over_local_wall_without_start": round(ratio_warm, 3),
        "ray_cluster_over_local_wall": round(ratio_cluster, 3),
    }
    print(
        f"\n{args.count} JPEGs from a loopback server; CPU: {report['cpu']}, {os.cpu_count()} cores (shared)"
    )
    for executor, s in summary.items():
        print(f"  {executor:<6} {s}")
    print(f"  Ray start + stop alone: {start_wall:.1f} s wall, {start_cpu:.1f} CPU-s")
    print(f"  ray / local wall time: {ratio:.2f} (without Ray's start-up: {ratio_warm:.2f}; target <= 1.3)")
    print(f"  ray-cluster (already running) / local wall time: {ratio_cluster:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
