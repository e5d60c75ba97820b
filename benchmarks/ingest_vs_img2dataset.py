"""Download throughput: ``emo8 ingest urls`` vs img2dataset on the same local URL list, in one run.

A loopback HTTP server (aiohttp, its own process) serves at least 5,000 distinct JPEGs made from
../shared/data/photos-dev (each photo re-encoded at several qualities and crops). Both tools fetch the same list
with the same budget: 2 worker processes and 64 requests in flight. img2dataset runs from its own virtual
environment (``.venv-peers/img2dataset``, created on first use) with ``output_format=files`` and
``resize_mode=no``. emo8 runs with every check on: robots.txt, X-Robots-Tag, the SSRF guard (loopback allowed
explicitly), retries, size caps, full validation and signals (pHash, dHash, pixel hash, colourfulness) and the
transactional catalog. Its per-host limit is raised to the global limit because every URL is on one host.

Prints images/s for each, the ratio emo8/img2dataset and the peak RSS of each process tree.

    .venv/bin/python benchmarks/ingest_vs_img2dataset.py [--count 5000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from machine import cpu_model
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos-dev" / "images"
WORK = ROOT / "benchmarks" / "out" / "ingest"
PEER_VENV = ROOT / ".venv-peers" / "img2dataset"

SERVER = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    app = web.Application()
    async def robots(request):
        return web.Response(text="User-agent: *\\nAllow: /\\n")
    app.router.add_get("/robots.txt", robots)
    app.router.add_static("/img/", sys.argv[1])
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None)
    """
)


def make_images(count: int) -> Path:
    """Write ``count`` distinct JPEGs (re-encodings and crops of the dev photos) once; return their folder."""
    www = WORK / f"www-{count}"
    if www.is_dir() and len(list(www.iterdir())) == count:
        return www
    shutil.rmtree(www, ignore_errors=True)
    www.mkdir(parents=True)
    sources = sorted(PHOTOS.glob("*.jpg"))
    if not sources:
        raise SystemExit(f"no photos under {PHOTOS}; this benchmark needs ../shared/data/photos-dev")
    images = [Image.open(p).convert("RGB") for p in sources]
    for i in range(count):
        image = images[i % len(images)]
        variant = i // len(images)
        crop = variant % 3
        if crop:
            w, h = image.size
            image = image.crop((crop * 4, crop * 4, w - crop * 4, h - crop * 4))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90 - variant)
        (www / f"{i:06d}.jpg").write_bytes(buffer.getvalue())
    return www


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_peer() -> Path:
    """Create the img2dataset virtual environment on first use; return its img2dataset executable."""
    exe = PEER_VENV / "bin" / "img2dataset"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", "img2dataset"], check=True)
    return exe


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds of the whole process tree
    rss: float  # peak RSS of the process tree, MB
    ok: int  # images fetched and kept


def run_measured(cmd: list[str]) -> tuple[float, float, float, str]:
    """Run ``cmd``; return (wall s, CPU s of the process tree, peak tree RSS in MB, output tail)."""
    started = time.perf_counter()
    before = os.times()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - started
    after = os.times()  # children's times are counted once they have been waited for
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{output[-3000:]}")
    return wall, cpu, peak / 1e6, output[-2000:]


def run_img2dataset(url_list: Path, out: Path) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        str(ensure_peer()), "--url_list", str(url_list), "--input_format", "csv", "--url_col", "url",
        "--output_format", "files", "--output_folder", str(out), "--resize_mode", "no",
        "--processes_count", "2", "--thread_count", "32", "--number_sample_per_shard", "1000",
        "--distributor", "multiprocessing", "--enable_wandb", "False",
    ]  # fmt: skip
    wall, cpu, rss, _ = run_measured(cmd)
    ok = sum(json.loads(p.read_text()).get("successes", 0) for p in out.glob("*_stats.json"))
    return Run(wall, cpu, rss, ok)


def run_emo8(url_list: Path, out: Path) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    emo8 = [sys.executable, "-m", "emo8"]
    subprocess.run([*emo8, "init", str(out)], check=True, capture_output=True)
    cmd = [
        *emo8, "ingest", "urls", str(url_list), "-w", str(out), "--allow-private-networks",
        "--concurrency", "64", "--per-host", "64", "--workers", "2", "--quiet",
    ]  # fmt: skip
    wall, cpu, rss, _ = run_measured(cmd)
    status = json.loads(
        subprocess.run([*emo8, "status", "-w", str(out), "--json"], capture_output=True).stdout
    )
    return Run(wall, cpu, rss, int(status["status"].get("valid", 0)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    load = os.getloadavg()
    www = make_images(args.count)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(www), str(port)])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        url_list = WORK / f"urls-{args.count}.csv"
        with open(url_list, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["url", "caption"])
            for name in sorted(os.listdir(www)):
                writer.writerow([f"http://127.0.0.1:{port}/img/{name}", name])
        results: dict[str, list[Run]] = {"img2dataset": [], "emo8": []}
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            results["img2dataset"].append(run_img2dataset(url_list, WORK / "img2dataset-out"))
            results["emo8"].append(run_emo8(url_list, WORK / "emo8-ws"))
    finally:
        server.terminate()
        server.wait()

    cpu = cpu_model()
    print(f"\n{args.count} JPEGs from a loopback server; CPU: {cpu}, {os.cpu_count()} cores")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"{'tool':<12} {'wall s':>8} {'images/s':>9} {'CPU s':>7} {'images/CPU s':>13} {'ok':>6} {'peak RSS MB':>12}"
    )
    best = {tool: min(runs, key=lambda r: r.wall) for tool, runs in results.items()}  # best of the repeats
    for tool, r in best.items():
        rates = f"{r.ok / r.wall:>9.1f} {r.cpu:>7.1f} {r.ok / r.cpu:>13.1f}"
        print(f"{tool:<12} {r.wall:>8.2f} {rates} {r.ok:>6} {r.rss:>12.0f}")
    a, b = best["emo8"], best["img2dataset"]
    print(f"ratio emo8/img2dataset, images/s: {(a.ok / a.wall) / (b.ok / b.wall):.2f}")
    print(f"ratio emo8/img2dataset, images per CPU second: {(a.ok / a.cpu) / (b.ok / b.cpu):.2f}")


if __name__ == "__main__":
    main()
