"""Release throughput: MB/s of parquet written by ``emo8 release`` and ``datasets.load_dataset`` time, 10,000 items.

The catalog is synthesised from the bundled sample images: item ``i`` is sample ``i % n`` with a unique trailer
after the image data (so every item has its own sha256 and stored object, as distinct images would), a random
64-bit pHash (copies of one sample would otherwise be near-duplicates that the split keeps together), a settled
label with 3 votes, a domain, a licence and person boxes. Then, each timed on its own:

1. ``emo8 split`` (grouping, stratification, leak check);
2. ``emo8 release --format hf`` (parquet with embedded image bytes, card, manifest, CHANGELOG): MB/s of parquet;
3. ``datasets.load_dataset(release dir)`` into a fresh cache (the Arrow conversion included), then a second,
   cached load;
4. a second ``release`` of the same catalog to another directory, checked byte-identical.

    .venv/bin/python benchmarks/release_throughput.py [--items 10000] [--out benchmarks/out/release]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_model

from emo8 import Workspace
from emo8.core.catalog import ItemOutcome, OriginRecord
from emo8.core.taxonomy import EMOTIONS
from emo8.release.publish import ReleaseConfig, release
from emo8.release.split import assign_splits

SAMPLES = Path(__file__).resolve().parents[1] / "emo8" / "samples"
DOMAINS = ("cartoon", "natural", "realistic", "scifi", "advertising")


def synthesise(root: Path, items: int, seed: int = 0) -> Workspace:
    """A workspace of ``items`` valid, labelled items made of the bundled samples (see the module docstring)."""
    import csv

    with open(SAMPLES / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    blobs = [(SAMPLES / r["file"]).read_bytes() for r in rows]
    rng = np.random.default_rng(seed)
    ws = Workspace.init(root)
    records, outcomes = [], []
    for i in range(items):
        base = i % len(rows)
        data = (
            blobs[base] + f"emo8-bench-{i}".encode()
        )  # bytes after the JPEG end marker: ignored by decoders
        sha, _ = ws.objects.put(data, "jpeg")
        key = f"bench://{i}"
        records.append(
            OriginRecord(key, "urls", url=f"https://example.org/img/{i}.jpg", license=rows[base]["license"],
                         author=f"author-{i % 997}", title=f"image {i}", domain=DOMAINS[i % len(DOMAINS)])
        )  # fmt: skip
        outcomes.append((key, sha, base))
    ws.catalog.register(records)
    from emo8.core.catalog import item_id_for

    ws.catalog.apply(
        ItemOutcome(
            item_id_for(key),
            "valid",
            sha256=sha,
            signals={
                "width": int(rows[base]["width"]),
                "height": int(rows[base]["height"]),
                "format": "jpeg",
                "brightness": float(rng.uniform(0.2, 0.8)),
                "colorfulness": float(rng.uniform(5, 80)),
                "phash": f"{int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)):016x}",
            },
        )
        for key, sha, base in outcomes
    )
    ids = [item_id_for(key) for key, _, _ in outcomes]
    labels = [EMOTIONS[int(rng.integers(0, 8))] for _ in ids]
    ws.catalog.ensure_columns(
        {"label": "TEXT", "label_distribution": "TEXT", "num_votes": "INTEGER", "agreement": "REAL",
         "settled": "INTEGER", "person_boxes": "TEXT"}
    )  # fmt: skip
    ws.catalog.update_items(
        ids,
        {
            "label": labels,
            "label_distribution": [
                json.dumps([1.0 if e == lab else 0.0 for e in EMOTIONS]) for lab in labels
            ],
            "num_votes": [3] * len(ids),
            "agreement": [1.0] * len(ids),
            "settled": [1] * len(ids),
            "person_boxes": [
                "[[10.0, 10.0, 100.0, 150.0, 0.9]]" if i % 3 == 0 else "[]" for i in range(len(ids))
            ],
        },
    )
    return ws


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/release"))
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

    started = time.perf_counter()
    ws = synthesise(args.out / "ws", args.items)
    synth = time.perf_counter() - started

    started = time.perf_counter()
    split, _ = assign_splits(ws)
    split_s = time.perf_counter() - started

    import datasets  # imported before timing the release (a one-off ~2-5 s the release would otherwise carry)

    started = time.perf_counter()
    result = release(ws, ReleaseConfig("1.0.0"))
    release_s = time.perf_counter() - started
    mb = result.parquet_bytes / 1e6
    image_mb = sum(ws.object_path(s, "jpeg").stat().st_size for s in ws.items(["sha256"])["sha256"]) / 1e6

    cache = args.out / "hf-cache"
    started = time.perf_counter()
    ds = datasets.load_dataset(str(result.path), cache_dir=str(cache))
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    datasets.load_dataset(str(result.path), cache_dir=str(cache))
    reload_s = time.perf_counter() - started
    rows = sum(len(ds[s]) for s in ds)
    started = time.perf_counter()
    first = ds["train"][0]
    decode_s = time.perf_counter() - started

    started = time.perf_counter()
    again = release(ws, ReleaseConfig("1.0.0", out=args.out / "again"))
    again_s = time.perf_counter() - started
    identical = tree_digest(result.path) == tree_digest(again.path)

    report = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "datasets": datasets.__version__,
        "items": args.items,
        "synthesise_s": round(synth, 2),
        "split_s": round(split_s, 2),
        "split_counts": split.counts,
        "leak_check": split.leaks.summary(),
        "release_s": round(release_s, 2),
        "parquet_mb": round(mb, 1),
        "image_mb": round(image_mb, 1),
        "parquet_mb_per_s": round(mb / release_s, 1),
        "items_per_s": round(args.items / release_s, 1),
        "shards": sum(f.endswith(".parquet") for f in result.files),
        "load_dataset_s": round(load_s, 2),
        "load_dataset_cached_s": round(reload_s, 2),
        "rows_loaded": rows,
        "first_row_decode_s": round(decode_s, 4),
        "first_row_label": ds["train"].features["label"].names[first["label"]],
        "second_release_s": round(again_s, 2),
        "byte_identical": identical,
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
