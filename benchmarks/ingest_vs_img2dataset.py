"""Download throughput: ``emo8 ingest urls`` vs img2dataset doing the same work on the same local URL list.

Equal work (printed beside the figures, see :data:`EQUAL_WORK`). emo8 fetches politely, decodes every image to
validate it (not an image, corrupt, truncated, too small, decompression bomb), computes its signals and hashes,
and stores the original bytes. img2dataset's configuration for that job is ``img2dataset``: ``skip_reencode=True``,
``resize_mode=no``, ``min_image_size=64``, ``max_image_area=1e8``, ``max_aspect_ratio=8`` (emo8's defaults), which
decodes every image with OpenCV, rejects what does not decode or fails the checks, and writes the original bytes
of a JPEG. ``img2dataset-store-only`` (``disable_all_reencoding=True``) never decodes, so it stores a truncated
file, an HTML error page or a 1-pixel image as if it were a picture: it is reported as a reference for the cost
of fetching and writing alone, not as the equal-work peer. Both write ``output_format=files`` with
``compute_hash=sha256``. All get the same budget: 2 worker processes and 64 requests in flight (``--tools`` picks
the peers). img2dataset is pinned (``img2dataset==1.47.0``) and runs from its own virtual environment
(``.venv-peers/img2dataset``, created on first use). emo8 runs with every check on: robots.txt, X-Robots-Tag,
the SSRF guard (loopback allowed explicitly), retries, size caps, full validation (one decode) with its signals
(pHash, dHash, pixel hash, colourfulness) and the transactional catalog; its per-host limit is raised to the
global limit because every URL is on one host. ``--emo8-tree DIR`` runs emo8 from another checkout, and
``--emo8-baseline DIR`` adds one more tool, ``emo8-baseline``, run from an older checkout in the same alternation:
before/after figures under the same conditions.

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

Every run must keep every image (an input error, a server that did not come up or a peer that failed to decode
stops the benchmark rather than timing failures).

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
import urllib.request
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

#: img2dataset's options for the equal-work job (emo8's ValidationConfig defaults: min side, bomb limit, aspect).
PEER_CHECKS = ["--skip_reencode", "True", "--min_image_size", "64", "--max_image_area", "100000000",
               "--max_aspect_ratio", "8"]  # fmt: skip
PEER_COMMON = (
    f"--output_format files --resize_mode no --compute_hash sha256 --processes_count {PROCESSES} "
    f"--thread_count {IN_FLIGHT // PROCESSES} --distributor multiprocessing"
)

#: What each tool is asked to do (printed beside its figures).
CONFIG = {
    "emo8": (
        f"emo8 ingest urls --workers {PROCESSES} --concurrency {IN_FLIGHT} --per-host {IN_FLIGHT} "
        "--allow-private-networks: robots.txt + X-Robots-Tag + SSRF guard + retries + size cap, one decode per "
        "image for validation and signals (pHash, dHash, pixel hash, colourfulness), original bytes stored "
        "by sha256, SQLite catalog"
    ),
    "emo8-baseline": "the same emo8 command, run from the --emo8-baseline checkout (before/after)",
    "img2dataset": (
        f"{PEER_PIN} {PEER_COMMON} {' '.join(PEER_CHECKS)}: every image decoded (OpenCV, full size) and checked "
        "(undecodable, truncated, side < 64, area > 1e8 px, aspect > 8; OpenCV's own 2^30-pixel bomb limit), "
        "the original bytes of a JPEG written unchanged; X-Robots-Tag honoured (its default), no robots.txt"
    ),
    "img2dataset-store-only": (
        f"{PEER_PIN} {PEER_COMMON} --disable_all_reencoding True: no decode and no check, every 2xx body "
        "written as it came (reference only: not the same job)"
    ),
}

#: The equal-work decision, printed beside the figures.
EQUAL_WORK = (
    "Equal work: emo8 decodes every image to validate it and stores the original bytes. img2dataset's "
    "configuration for that job is `skip_reencode` with `resize_mode=no` and the same size, area and aspect "
    "limits (tool `img2dataset`): its source (resizer.py) decodes every image with cv2.imdecode, rejects what does "
    "not decode or fails the checks, and returns the original bytes when the input is already a JPEG without alpha "
    "(a PNG, WebP or an image with alpha is re-encoded to JPEG; every input here is a JPEG). "
    "`disable_all_reencoding` returns the body before any decode, so it stores corrupt, truncated, non-image and "
    "tiny files: `img2dataset-store-only` is a reference for fetching and writing alone, not the equal-work peer."
)


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


def www_dir(side: int | None) -> Path:
    """Where the served images are cached: as the photos come, or scaled to a long side of ``side`` px."""
    return WWW if side is None else WORK / f"www-{side}"


def _scaled(image: Image.Image, side: int | None) -> Image.Image:
    if side is None:
        return image
    scale = side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def make_images(count: int, side: int | None = None) -> Path:
    """Make sure the cache for ``side`` holds images ``0 .. count-1`` (only the missing ones are written)."""
    www = www_dir(side)
    www.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (www / f"{i:06d}.jpg").exists()]
    if not missing:
        return www
    sources = sorted(PHOTOS.glob("*.jpg"))
    if len(sources) != 972:
        raise SystemExit(f"expected 972 photos under {PHOTOS}, found {len(sources)}")
    images = [_scaled(Image.open(p).convert("RGB"), side) for p in sources]
    for i in missing:
        path = www / f"{i:06d}.jpg"
        tmp = path.with_suffix(".part")
        tmp.write_bytes(_variant(images[i % len(images)], i))
        tmp.rename(path)
    return www


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def image_server(www: Path = WWW) -> Iterator[int]:
    """Serve ``www`` on a free loopback port in a child process; yield the port once it serves an image."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(www), str(port)])
    try:
        for _ in range(300):
            if server.poll() is not None:
                raise SystemExit(f"the loopback image server exited ({server.returncode})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/img/000000.jpg", timeout=1) as reply:
                    reply.read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("the loopback image server did not come up in 30 s")
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


def run_measured(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, float]:
    """Run ``cmd``; return (wall s, CPU s of the process tree, peak tree RSS in MB)."""
    started = time.perf_counter()
    before = os.times()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
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


#: Where the tools write (``--scratch``): emptied before each run, outside the timed part.
SCRATCH: dict[str, Path] = {"dir": WORK}


def run_img2dataset(url_list: Path, count: int, decode: bool = True) -> Run:
    out = SCRATCH["dir"] / "img2dataset-out"
    shutil.rmtree(out, ignore_errors=True)
    mode = PEER_CHECKS if decode else ["--disable_all_reencoding", "True"]
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
    return _checked(
        Run("img2dataset" if decode else "img2dataset-store-only", count, wall, cpu, rss, ok, load)
    )


def run_img2dataset_store_only(url_list: Path, count: int) -> Run:
    return run_img2dataset(url_list, count, decode=False)


#: Checkout emo8 runs from (``--emo8-tree``) and the older one of ``emo8-baseline`` (``--emo8-baseline``).
EMO8_TREES: dict[str, Path] = {"emo8": ROOT}


def run_emo8(url_list: Path, count: int, tool: str = "emo8") -> Run:
    out = SCRATCH["dir"] / f"{tool}-ws"
    shutil.rmtree(out, ignore_errors=True)
    tree = EMO8_TREES[tool]
    emo8 = [
        sys.executable,
        "-m",
        "emo8",
    ]  # run from ``tree``: ``-m`` puts the working directory first on the path
    subprocess.run([*emo8, "init", str(out)], check=True, capture_output=True, cwd=tree)
    cmd = [
        *emo8, "ingest", "urls", str(url_list), "-w", str(out), "--allow-private-networks",
        "--concurrency", str(IN_FLIGHT), "--per-host", str(IN_FLIGHT), "--workers", str(PROCESSES), "--quiet",
    ]  # fmt: skip
    load = os.getloadavg()[0]
    wall, cpu, rss = run_measured(cmd, cwd=tree)
    status = json.loads(
        subprocess.run([*emo8, "status", "-w", str(out), "--json"], capture_output=True, cwd=tree).stdout
    )
    return _checked(Run(tool, count, wall, cpu, rss, int(status["status"].get("valid", 0)), load))


def run_emo8_baseline(url_list: Path, count: int) -> Run:
    return run_emo8(url_list, count, "emo8-baseline")


def _checked(run: Run) -> Run:
    """Stop when a run did not keep every image: a rate over failures would be meaningless."""
    if run.ok != run.count:
        raise SystemExit(f"{run.tool} kept {run.ok} of {run.count} images; see {WORK} (the run is not timed)")
    return run


RUNNERS = {
    "emo8": run_emo8,
    "emo8-baseline": run_emo8_baseline,
    "img2dataset": run_img2dataset,
    "img2dataset-store-only": run_img2dataset_store_only,
}


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
    parser.add_argument(
        "--tools",
        nargs="+",
        choices=[t for t in CONFIG if t != "emo8-baseline"],
        default=["emo8", "img2dataset", "img2dataset-store-only"],
    )
    parser.add_argument("--emo8-tree", type=Path, default=ROOT, help="checkout emo8 runs from")
    parser.add_argument(
        "--side",
        type=int,
        help="scale the photos to this long side in px (Lanczos; default: as they come, about 275 x 240)",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=WORK,
        help="where the tools write their outputs (e.g. a tmpfs, when deleting 100,000s of files is slow)",
    )
    parser.add_argument(
        "--emo8-baseline",
        type=Path,
        help="an older checkout, run as the extra tool emo8-baseline (before/after)",
    )
    args = parser.parse_args()
    tools = ["emo8", *(t for t in args.tools if t != "emo8")]
    EMO8_TREES["emo8"] = args.emo8_tree.resolve()
    SCRATCH["dir"] = args.scratch.resolve()
    SCRATCH["dir"].mkdir(parents=True, exist_ok=True)
    if args.emo8_baseline is not None:
        EMO8_TREES["emo8-baseline"] = args.emo8_baseline.resolve()
        tools.insert(1, "emo8-baseline")

    ensure_peer()
    t0 = time.perf_counter()
    www = make_images(max([*args.counts, args.startup_count]), args.side)
    print(f"input ready in {time.perf_counter() - t0:.0f} s", flush=True)
    plan = [(args.startup_count, args.startup_repeats)] + [(c, args.repeats) for c in args.counts]
    runs: list[Run] = []
    with image_server(www) as port:
        for count, repeats in plan:
            url_list = url_list_for(count, port)
            for _ in range(repeats):  # alternating, so machine noise hits every tool alike
                for runner in (RUNNERS[t] for t in tools):
                    run = runner(url_list, count)
                    runs.append(run)
                    print(
                        f"  {run.tool:<22} n={count:<7} {run.rate:8.1f} images/s {run.per_cpu:8.1f} images/CPU-s "
                        f"ok={run.ok} rss={run.rss:.0f} MB load={run.load:.2f}",
                        flush=True,
                    )

    report: dict[str, object] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "command": " ".join(sys.argv),
        "niceness": os.nice(0),
        "scratch": str(SCRATCH["dir"]),
        "side": args.side,
        "emo8_trees": {t: str(p) for t, p in EMO8_TREES.items() if t in tools},
        "equal_work": EQUAL_WORK,
        "config": {t: CONFIG[t] for t in tools},
        "runs": [asdict(r) for r in runs],
        "summary": {},
    }
    summary: dict[str, object] = {}
    size = (
        "photos as they come (about 275 x 240)" if args.side is None else f"photos scaled to {args.side} px"
    )
    print(f"\nJPEGs ({size}) from a loopback server; CPU: {report['cpu']}, {os.cpu_count()} cores (shared)")
    print(textwrap.fill(EQUAL_WORK, 116, initial_indent="  ", subsequent_indent="  "))
    for tool in tools:
        print(f"  {tool}: {CONFIG[tool]}")
    header = f"{'n':>7} {'tool':<22} {'images/s median (min-max)':>28} {'images/CPU-s median (min-max)':>31}"
    print(header + f" {'CPU ms/image':>12} {'peak RSS MB':>11} {'load':>5}")
    for count, _ in plan:
        per_tool = {t: summarise([r for r in runs if r.tool == t and r.count == count]) for t in tools}
        for tool, s in per_tool.items():
            ips, ipc = s["images_per_s"], s["images_per_cpu_s"]
            assert isinstance(ips, dict) and isinstance(ipc, dict)
            cms, rss, load = s["cpu_ms_per_image"], s["peak_rss_mb"], s["load_1min"]
            assert isinstance(cms, dict) and isinstance(rss, dict) and isinstance(load, dict)
            print(
                f"{count:>7} {tool:<22} {ips['median']:>9.1f} ({ips['min']:.1f}-{ips['max']:.1f}){'':>6}"
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
            role = {"img2dataset": " (equal work)", "img2dataset-store-only": " (store-only reference)"}
            print(
                f"{count:>7} ratio emo8/{peer}{role.get(peer, '')} (medians): images/s {r['images_per_s']:.2f}, "
                f"images per CPU-s {r['images_per_cpu_s']:.2f}"
            )
        summary[str(count)] = {**per_tool, "ratio_emo8_over": ratios}
        if "emo8-baseline" in per_tool:
            new, old = per_tool["emo8"]["images_per_cpu_s"], per_tool["emo8-baseline"]["images_per_cpu_s"]
            assert isinstance(new, dict) and isinstance(old, dict)
            repeats = min(
                len([r for r in runs if r.count == count and r.tool == t]) for t in ("emo8", "emo8-baseline")
            )
            beyond = repeats > 1 and (new["min"] > old["max"] or new["max"] < old["min"])
            verdict = (
                "one run each: no spread to judge the noise by"
                if repeats < 2
                else "beyond the noise: the ranges do not overlap"
                if beyond
                else "within the noise: the ranges overlap"
            )
            print(
                f"{count:>7} before/after images per CPU-s: {old['median']:.1f} ({old['min']:.1f}-{old['max']:.1f})"
                f" -> {new['median']:.1f} ({new['min']:.1f}-{new['max']:.1f}); {verdict}"
            )
            summary[str(count)]["before_after_beyond_noise"] = beyond  # type: ignore[index]
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
