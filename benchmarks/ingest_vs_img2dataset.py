"""Download throughput: ``emo8 ingest urls`` vs img2dataset doing the same work on the same local URL list.

Equal work. emo8 stores every downloaded image's original bytes unchanged (content-addressed by sha256), so
img2dataset runs in the configuration that does the same: ``output_format=files``, ``resize_mode=no`` and
``disable_all_reencoding=True`` (no decode, no re-encode), ``compute_hash=sha256``; and, as ``img2dataset-decode``,
with ``skip_reencode=True`` and ``min_image_size=64`` instead (every image decoded and checked, as emo8's validation
does, the original bytes still stored unchanged). All get the same budget: 2 worker processes and 64 requests in
flight (``--tools`` picks the peers). img2dataset is pinned (``img2dataset==1.47.0``) and runs from its own virtual
environment (``.venv-peers/img2dataset``, created on first use). emo8 runs with every check on: robots.txt,
X-Robots-Tag, the SSRF guard (loopback allowed explicitly), retries, size caps, full validation (one decode) with
its signals (pHash, dHash, pixel hash, colourfulness) and the transactional catalog; its per-host limit is raised
to the global limit because every URL is on one host. Each tool's configuration is printed beside its figures.

Input: a loopback HTTP server (aiohttp, its own process, the same for both tools) serves distinct JPEGs made from
../shared/data/photos-dev: image ``i`` is photo ``i % 972`` with one pixel nudged (position and amount depend on
``i``) re-encoded at quality 85-94, so every image has distinct bytes and distinct pixels. They are cached under
``benchmarks/out/ingest/www`` (made once; a larger count only adds the missing ones).

Steady state and start-up are reported apart: ``--counts`` (default 20000) are timed from ``--repeats`` alternating
runs (emo8, img2dataset, emo8, ...), reported as median and spread (min-max); ``--startup-count`` images (default
200) measure the fixed cost. Per run: images/s, CPU-seconds of the whole process tree (user + system, children
included: the larger of the kernel's accounting of waited-for children and the per-process times polled every
50 ms), images per CPU-second and peak RSS of the process tree; the load average is recorded beside each run
(the machine may be shared; images per CPU-second is the less load-sensitive figure).

    nice .venv/bin/python benchmarks/ingest_vs_img2dataset.py [--counts 20000 100000] [--repeats 3]

Results: printed, and ``benchmarks/out/ingest_vs_img2dataset.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
from machine import cpu_model
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos-dev" / "images"
WORK = ROOT / "benchmarks" / "out" / "ingest"
WWW = WORK / "www"
PEER_VENV = ROOT / ".venv-peers" / "img2dataset"
PEER_PIN = "img2dataset==1.47.0"
PROCESSES = 2
IN_FLIGHT = 64

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

#: What each tool is asked to do (printed beside its figures).
CONFIG = {
    "emo8": (
        f"emo8 ingest urls --workers {PROCESSES} --concurrency {IN_FLIGHT} --per-host {IN_FLIGHT} "
        "--allow-private-networks: robots.txt + X-Robots-Tag + SSRF guard + retries + size cap, one decode per "
        "image for validation and signals (pHash, dHash, pixel hash, colourfulness), original bytes stored "
        "by sha256, SQLite catalog"
    ),
    "img2dataset": (
        f"{PEER_PIN} --output_format files --resize_mode no --disable_all_reencoding True --compute_hash sha256 "
        f"--processes_count {PROCESSES} --thread_count {IN_FLIGHT // PROCESSES} --distributor multiprocessing: "
        "original bytes written unchanged, X-Robots-Tag honoured (its default), no robots.txt, no decode"
    ),
    "img2dataset-decode": (
        f"{PEER_PIN} as above but --skip_reencode True --min_image_size 64 instead of --disable_all_reencoding: "
        "every image decoded (OpenCV) and checked for size, area and aspect ratio, the original bytes written "
        "unchanged; the closest to emo8's one validation decode"
    ),
}


def _variant(image: Image.Image, i: int) -> bytes:
    """Photo ``image`` with one pixel nudged by ``i`` and re-encoded: distinct bytes and pixels per ``i``."""
    image = image.copy()
    w, h = image.size
    k = i // 972
    xy = (k % w, (k // w) % h)
    r, g, b = image.getpixel(xy)  # type: ignore[misc]
    image.putpixel(xy, ((r + 37 + k) % 256, (g + 101) % 256, b))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85 + i % 10)
    return buffer.getvalue()


def make_images(count: int) -> Path:
    """Make sure ``WWW`` holds images ``0 .. count-1`` (cached, only the missing ones are written)."""
    WWW.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (WWW / f"{i:06d}.jpg").exists()]
    if not missing:
        return WWW
    sources = sorted(PHOTOS.glob("*.jpg"))
    if len(sources) != 972:
        raise SystemExit(f"expected 972 photos under {PHOTOS}, found {len(sources)}")
    images = [Image.open(p).convert("RGB") for p in sources]
    for i in missing:
        path = WWW / f"{i:06d}.jpg"
        tmp = path.with_suffix(".part")
        tmp.write_bytes(_variant(images[i % len(images)], i))
        tmp.rename(path)
    return WWW


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def image_server() -> Iterator[int]:
    """Serve :data:`WWW` on a free loopback port in a child process; yield the port once it accepts connections."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(WWW), str(port)])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait()


def ensure_peer() -> Path:
    """Create the img2dataset virtual environment (pinned version) on first use; return its executable."""
    exe = PEER_VENV / "bin" / "img2dataset"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", PEER_PIN], check=True)
    return exe


@dataclass
class Run:
    tool: str
    count: int
    wall: float  # seconds
    cpu: float  # user + system seconds of the whole process tree
    rss: float  # peak RSS of the process tree, MB
    ok: int  # images fetched and kept
    load: float  # 1-minute load average when the run started

    @property
    def rate(self) -> float:
        return self.ok / self.wall

    @property
    def per_cpu(self) -> float:
        return self.ok / self.cpu


def run_measured(cmd: list[str]) -> tuple[float, float, float]:
    """Run ``cmd``; return (wall s, CPU s of the process tree, peak tree RSS in MB)."""
    started = time.perf_counter()
    before = os.times()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    peak = 0
    seen: dict[int, float] = {}  # pid -> last CPU seconds seen, for processes nobody waits for
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        rss = 0
        for p in tree:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    seen[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        peak = max(peak, rss)
        time.sleep(0.05)
    wall = time.perf_counter() - started
    after = os.times()  # children's (and their waited-for children's) times
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    # a child that was never waited for is missing from os.times(); the polled per-process times catch it
    polled = sum(v for pid, v in seen.items() if pid != root.pid) + seen.get(root.pid, 0.0)
    cpu = max(cpu, polled)
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{output[-3000:]}")
    return wall, cpu, peak / 1e6


def run_img2dataset(url_list: Path, count: int, decode: bool = False) -> Run:
    out = WORK / "img2dataset-out"
    shutil.rmtree(out, ignore_errors=True)
    mode = (
        ["--skip_reencode", "True", "--min_image_size", "64"]
        if decode
        else ["--disable_all_reencoding", "True"]
    )
    cmd = [
        str(ensure_peer()), "--url_list", str(url_list), "--input_format", "csv", "--url_col", "url",
        "--output_format", "files", "--output_folder", str(out), "--resize_mode", "no", *mode,
        "--compute_hash", "sha256",
        "--processes_count", str(PROCESSES), "--thread_count", str(IN_FLIGHT // PROCESSES),
        "--number_sample_per_shard", "1000", "--distributor", "multiprocessing", "--enable_wandb", "False",
    ]  # fmt: skip
    load = os.getloadavg()[0]
    wall, cpu, rss = run_measured(cmd)
    ok = sum(json.loads(p.read_text()).get("successes", 0) for p in out.glob("*_stats.json"))
    return Run("img2dataset-decode" if decode else "img2dataset", count, wall, cpu, rss, ok, load)


def run_img2dataset_decode(url_list: Path, count: int) -> Run:
    return run_img2dataset(url_list, count, decode=True)


def run_emo8(url_list: Path, count: int) -> Run:
    out = WORK / "emo8-ws"
    shutil.rmtree(out, ignore_errors=True)
    emo8 = [sys.executable, "-m", "emo8"]
    subprocess.run([*emo8, "init", str(out)], check=True, capture_output=True)
    cmd = [
        *emo8, "ingest", "urls", str(url_list), "-w", str(out), "--allow-private-networks",
        "--concurrency", str(IN_FLIGHT), "--per-host", str(IN_FLIGHT), "--workers", str(PROCESSES), "--quiet",
    ]  # fmt: skip
    load = os.getloadavg()[0]
    wall, cpu, rss = run_measured(cmd)
    status = json.loads(
        subprocess.run([*emo8, "status", "-w", str(out), "--json"], capture_output=True).stdout
    )
    return Run("emo8", count, wall, cpu, rss, int(status["status"].get("valid", 0)), load)


RUNNERS = {"emo8": run_emo8, "img2dataset": run_img2dataset, "img2dataset-decode": run_img2dataset_decode}


def url_list_for(count: int, port: int) -> Path:
    path = WORK / f"urls-{count}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "caption"])
        for i in range(count):
            writer.writerow([f"http://127.0.0.1:{port}/img/{i:06d}.jpg", f"image {i}"])
    return path


def summarise(runs: list[Run]) -> dict[str, object]:
    """Median and spread (min-max) of a tool's repeats at one count."""

    def stat(values: list[float]) -> dict[str, float]:
        return {
            "median": round(statistics.median(values), 2),
            "min": round(min(values), 2),
            "max": round(max(values), 2),
        }

    return {
        "runs": len(runs),
        "ok": [r.ok for r in runs],
        "images_per_s": stat([r.rate for r in runs]),
        "images_per_cpu_s": stat([r.per_cpu for r in runs]),
        "cpu_ms_per_image": stat([1000 * r.cpu / r.ok for r in runs]),
        "wall_s": stat([r.wall for r in runs]),
        "peak_rss_mb": stat([r.rss for r in runs]),
        "load_1min": stat([r.load for r in runs]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[20000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--startup-count", type=int, default=200)
    parser.add_argument("--startup-repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "out" / "ingest_vs_img2dataset.json"
    )
    parser.add_argument("--tools", nargs="+", choices=list(CONFIG), default=list(CONFIG))
    args = parser.parse_args()
    tools = ["emo8", *(t for t in args.tools if t != "emo8")]

    ensure_peer()
    t0 = time.perf_counter()
    make_images(max([*args.counts, args.startup_count]))
    print(f"input ready in {time.perf_counter() - t0:.0f} s", flush=True)
    plan = [(args.startup_count, args.startup_repeats)] + [(c, args.repeats) for c in args.counts]
    runs: list[Run] = []
    with image_server() as port:
        for count, repeats in plan:
            url_list = url_list_for(count, port)
            for _ in range(repeats):  # alternating, so machine noise hits every tool alike
                for runner in (RUNNERS[t] for t in tools):
                    run = runner(url_list, count)
                    runs.append(run)
                    print(
                        f"  {run.tool:<12} n={count:<7} {run.rate:8.1f} images/s {run.per_cpu:8.1f} images/CPU-s "
                        f"ok={run.ok} rss={run.rss:.0f} MB load={run.load:.2f}",
                        flush=True,
                    )

    report: dict[str, object] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "command": " ".join(sys.argv),
        "config": {t: CONFIG[t] for t in tools},
        "runs": [asdict(r) for r in runs],
        "summary": {},
    }
    summary: dict[str, object] = {}
    print(f"\nJPEGs from a loopback server; CPU: {report['cpu']}, {os.cpu_count()} cores (shared)")
    for tool in tools:
        print(f"  {tool}: {CONFIG[tool]}")
    header = f"{'n':>7} {'tool':<18} {'images/s median (min-max)':>28} {'images/CPU-s median (min-max)':>31}"
    print(header + f" {'CPU ms/image':>12} {'peak RSS MB':>11} {'load':>5}")
    for count, _ in plan:
        per_tool = {t: summarise([r for r in runs if r.tool == t and r.count == count]) for t in tools}
        for tool, s in per_tool.items():
            ips, ipc = s["images_per_s"], s["images_per_cpu_s"]
            assert isinstance(ips, dict) and isinstance(ipc, dict)
            cms, rss, load = s["cpu_ms_per_image"], s["peak_rss_mb"], s["load_1min"]
            assert isinstance(cms, dict) and isinstance(rss, dict) and isinstance(load, dict)
            print(
                f"{count:>7} {tool:<18} {ips['median']:>9.1f} ({ips['min']:.1f}-{ips['max']:.1f}){'':>6}"
                f" {ipc['median']:>9.1f} ({ipc['min']:.1f}-{ipc['max']:.1f}){'':>8}"
                f" {cms['median']:>12.2f} {rss['median']:>11.0f} {load['median']:>5.2f}"
            )
        e = per_tool["emo8"]
        ratios = {
            peer: {
                key: round(e[key]["median"] / per_tool[peer][key]["median"], 2)  # type: ignore[index]
                for key in ("images_per_s", "images_per_cpu_s")
            }
            for peer in tools[1:]
        }
        for peer, r in ratios.items():
            print(
                f"{count:>7} ratio emo8/{peer} (medians): images/s {r['images_per_s']:.2f}, "
                f"images per CPU-s {r['images_per_cpu_s']:.2f}"
            )
        summary[str(count)] = {**per_tool, "ratio_emo8_over": ratios}
    # steady state without the fixed cost: extra images per extra CPU-second from the start-up run to each count
    start = args.startup_count
    for count, _ in plan[1:]:
        marginal = {}
        for tool in tools:
            cpu = {
                n: statistics.median(r.cpu for r in runs if r.tool == tool and r.count == n)
                for n in (start, count)
            }
            ok = {
                n: statistics.median(r.ok for r in runs if r.tool == tool and r.count == n)
                for n in (start, count)
            }
            marginal[tool] = round((ok[count] - ok[start]) / (cpu[count] - cpu[start]), 1)
        marginal_ratios = {peer: round(marginal["emo8"] / marginal[peer], 2) for peer in tools[1:]}
        print(
            f"{count:>7} marginal images per CPU-s ({start} -> {count}, start-up removed): "
            + ", ".join(f"{t} {v:.1f}" for t, v in marginal.items())
            + "; emo8 over "
            + ", ".join(f"{peer} {v:.2f}" for peer, v in marginal_ratios.items())
        )
        summary[str(count)]["marginal_images_per_cpu_s"] = {**marginal, "emo8_over": marginal_ratios}  # type: ignore[index]
    report["summary"] = summary
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
