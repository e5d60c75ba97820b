"""Dedup at scale: 1,000,000 synthetic embeddings and 1,000,000 synthetic 64-bit hashes with planted near-duplicates.

Each part runs in its own process (so its peak RSS is its own) and goes through the same search and clustering code
as ``emo8 dedup``:

* ``embeddings``: 1M x 512-d L2-normalised float16 vectors in a memory-mapped .npy on disk, drawn around 4,096
  centres (cosine between two vectors of one centre ~0.5), plus ``--planted`` near-duplicate pairs whose cosine is
  uniform in [S + 0.01, 0.995]; :func:`emo8.similarity.cosine_pairs` at S (IVF partition + FAISS range search), then
  :func:`emo8.similarity.guarded_clusters`.
* ``hashes``: 1M 64-bit codes, half uniform and half around 10,000 centres (16 random bit flips each, so codes of one
  centre are ~27 bits apart), plus ``--planted`` pairs 0..D bits apart, plus ``--blob`` codes that are all one code
  (blank placeholders: uncapped they alone would make ``blob**2 / 2`` pairs); :func:`emo8.similarity.hamming_pairs`
  at D (multi-index hashing, exact, each code keeping ``emo8 dedup``'s default ``max_neighbours`` best-ranked
  matches), then the clustering, which must put the whole blob in one cluster.

Reported per part: wall time (generation excluded, timed separately), peak RSS, recall of the planted pairs, other
pairs found. Targets on the 2-core machine: <= 10 minutes and <= 6 GB RSS each, planted-pair recall >= 0.99.

Run: ``nice .venv/bin/python benchmarks/dedup_scale.py`` (``--n 100000`` for a quick run). Results:
``benchmarks/out/dedup_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import cpu_model  # noqa: E402

from emo8.dedup import EMBED_MIN_SIMILARITY, MAX_NEIGHBOURS, PHASH_MAX_DISTANCE  # noqa: E402
from emo8.similarity import TIER_PRIORITY, Edges, SearchConfig, cosine_pairs, guarded_clusters, hamming_pairs  # noqa: E402

OUT = REPO / "benchmarks" / "out"


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def _recall(
    found_i: np.ndarray, found_j: np.ndarray, a: np.ndarray, b: np.ndarray, n: int
) -> tuple[float, int]:
    found = np.minimum(found_i, found_j) * n + np.maximum(found_i, found_j)
    planted = np.minimum(a, b) * n + np.maximum(a, b)
    hit = np.isin(planted, found)
    return float(hit.mean()), len(np.setdiff1d(found, planted))


def make_embeddings(
    path: Path, n: int, dim: int, planted: int, s: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Write the vectors to ``path`` block by block; return the planted pairs."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4096, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    base = n - planted
    step = 65536
    for start in range(0, base, step):
        end = min(base, start + step)
        x = centres[rng.integers(0, len(centres), end - start)]
        x = x + rng.standard_normal((end - start, dim)).astype(np.float32) / np.sqrt(dim)
        out[start:end] = x / np.linalg.norm(x, axis=1, keepdims=True)
    src = np.sort(rng.choice(base, planted, replace=False))
    dst = np.arange(base, n)
    for start in range(0, planted, step):
        sl = slice(start, min(planted, start + step))
        x = np.asarray(out[src[sl]], np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        u = rng.standard_normal(x.shape).astype(np.float32)
        u -= (u * x).sum(1, keepdims=True) * x
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        cos = rng.uniform(s + 0.01, 0.995, (len(x), 1)).astype(np.float32)
        out[dst[sl]] = cos * x + np.sqrt(1 - cos**2) * u
    out.flush()
    del out
    return src, dst


def part_embeddings(args: argparse.Namespace) -> dict[str, Any]:
    s = args.min_similarity
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        path = Path(tmp) / "emb.npy"
        t0 = time.perf_counter()
        src, dst = make_embeddings(path, args.n, args.dim, args.planted, s, args.seed)
        t_gen = time.perf_counter() - t0
        rss_gen = _rss_gb()
        matrix = np.load(path, mmap_mode="r")
        t0 = time.perf_counter()
        config = SearchConfig(
            memory_budget_gb=args.memory_budget_gb, nprobe=args.nprobe, max_neighbours=MAX_NEIGHBOURS
        )
        pairs = cosine_pairs(matrix, s, config=config)
        t_search = time.perf_counter() - t0
        edges = Edges.build([(TIER_PRIORITY["semantic"], pairs.i, pairs.j, pairs.value)])
        clusters = guarded_clusters(args.n, edges, np.arange(args.n))
        t_total = time.perf_counter() - t0
        recall, other = _recall(pairs.i, pairs.j, src, dst, args.n)
        return {
            "part": "embeddings", "n": args.n, "dim": args.dim, "dtype": "float16 memmap", "planted": args.planted,
            "min_similarity": s, "nprobe": args.nprobe, "memory_budget_gb": args.memory_budget_gb,
            "generate_seconds": round(t_gen, 1), "search_seconds": round(t_search, 1),
            "search_and_cluster_seconds": round(t_total, 1), "pairs": len(pairs), "other_pairs": other,
            "planted_recall": recall, "clusters": len(clusters.sizes()),
            "peak_rss_gb": round(_rss_gb(), 2), "rss_after_generation_gb": round(rss_gen, 2),
        }  # fmt: skip


def part_hashes(args: argparse.Namespace) -> dict[str, Any]:
    d = args.max_distance
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    n, planted = args.n, args.planted
    base = n - planted
    codes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    codes |= rng.integers(0, 2, n).astype(np.uint64)
    half = base // 2
    centres = codes[:10_000].copy()
    owner = rng.integers(0, len(centres), base - half)
    flips = np.zeros(base - half, np.uint64)
    for _ in range(16):
        flips ^= np.uint64(1) << rng.integers(0, 64, base - half).astype(np.uint64)
    codes[half:base] = centres[owner] ^ flips
    blob = np.arange(args.blob)  # taken from the uniform half, never a planted source
    codes[blob] = codes[0]
    src = np.sort(args.blob + rng.choice(base - args.blob, planted, replace=False))
    dst = np.arange(base, n)
    masks = np.zeros(planted, np.uint64)
    for k in range(planted):
        for bit in rng.choice(64, int(rng.integers(0, d + 1)), replace=False):
            masks[k] |= np.uint64(1) << np.uint64(int(bit))
    codes[dst] = codes[src] ^ masks
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    config = SearchConfig(max_neighbours=MAX_NEIGHBOURS)
    pairs = hamming_pairs(codes, d, config=config, priority=np.arange(n))
    t_search = time.perf_counter() - t0
    score = (1.0 - pairs.value / 64.0).astype(np.float32)
    edges = Edges.build([(TIER_PRIORITY["perceptual"], pairs.i, pairs.j, score)])
    clusters = guarded_clusters(n, edges, np.arange(n))
    t_total = time.perf_counter() - t0
    recall, other = _recall(pairs.i, pairs.j, src, dst, n)
    return {
        "part": "hashes", "n": n, "planted": planted, "max_distance": d, "generate_seconds": round(t_gen, 1),
        "search_seconds": round(t_search, 1), "search_and_cluster_seconds": round(t_total, 1), "pairs": len(pairs),
        "other_pairs": other, "planted_recall": recall, "clusters": len(clusters.sizes()),
        "blob": args.blob, "blob_canonicals": len(np.unique(clusters.canonical[blob])), "capped": pairs.capped,
        "max_neighbours": MAX_NEIGHBOURS, "peak_rss_gb": round(_rss_gb(), 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["embeddings", "hashes", "both"], default="both")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--planted", type=int, default=20_000)
    parser.add_argument(
        "--blob", type=int, default=20_000, help="hashes that are all one code (placeholders)"
    )
    parser.add_argument("--min-similarity", type=float, default=EMBED_MIN_SIMILARITY["efficientnet-lite0"])
    parser.add_argument("--max-distance", type=int, default=PHASH_MAX_DISTANCE)
    parser.add_argument("--nprobe", type=int, default=SearchConfig().nprobe)
    parser.add_argument("--memory-budget-gb", type=float, default=SearchConfig().memory_budget_gb)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT / "dedup_scale.json")
    args = parser.parse_args()
    if args.part != "both":
        result = part_embeddings(args) if args.part == "embeddings" else part_hashes(args)
        print(json.dumps(result))
        return
    results = []
    for part in ("hashes", "embeddings"):
        cmd = [sys.executable, __file__, "--part", part] + [
            a for a in sys.argv[1:] if not a.startswith("--part")
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["process_wall_seconds"] = round(time.perf_counter() - t0, 1)
        results.append(result)
        print(json.dumps(result, indent=1), flush=True)
    report = {"cpu": cpu_model(), "cores": os.cpu_count(), "command": " ".join(sys.argv), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for r in results:
        ok = r["search_and_cluster_seconds"] <= 600 and r["peak_rss_gb"] <= 6 and r["planted_recall"] >= 0.99
        print(f"{r['part']}: {r['search_and_cluster_seconds']}s, peak RSS {r['peak_rss_gb']} GB, "
              f"planted recall {r['planted_recall']:.4f} -> {'OK' if ok else 'MISSED'}")  # fmt: skip
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
