"""Suggestion learning curve, labels saved by active selection, and person-detection throughput, on photos-dev.

Emotion labels cannot be had offline, so the photos-dev ``category`` column stands in for them: the 8 largest
categories (664 images) are mapped one-to-one onto the 8 emotions (arbitrarily; the mapping only matters for the
stage's 8-way storage). Everything runs through the real pipeline: ``ingest folder`` and ``embed
efficientnet-lite0`` into a workspace under benchmarks/out/suggest (kept, so re-runs skip the embedding), then the
suggest/select/detect-people library functions.

1. Learning curve: for n = 2, 5, 10, 20 labelled items per class (5 random draws each), the accuracy, macro-F1 and
   ECE on every other image of the 8 classes of kNN, the linear probe and the pooled, calibrated combination
   (min_labels_per_class lowered to 2 so the probe runs from the first point), against the best constant
   predictor (the test set's majority class) and uniform random guessing.
2. Selection: a stratified 30 % test split is set aside (status ``removed`` in a copy of the workspace, so it is
   never selectable). Each run starts from 2 (then 5) labels per class, runs ``emo8 suggest``, lets ``emo8 select`` pick
   a budget of B items by each strategy, "annotates" them with their category, and scores suggestions fitted on
   the enlarged label set on the test split. 5 seeds per strategy.
3. Person detection: images/s of each backend through ``detect-people`` on the same images (torchvision models
   with random weights: throughput only), and how often each finds something in the ``people`` category vs in
   ``landscape`` images (a sanity check, not a benchmark of detection quality).

    .venv/bin/python benchmarks/suggest_curve.py [--budget 40] [--draws 5] [--detect-limit 120]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_model

from emo8 import Workspace
from emo8.core.taxonomy import EMOTIONS
from emo8.embed.run import EmbedConfig, embed
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source
from emo8.label.people import DetectConfig, detect_people
from emo8.label.selection import SelectConfig, select
from emo8.label.suggest import (
    KnnSource,
    ProbeSource,
    SourceContext,
    SuggestConfig,
    classification_metrics,
    fit_suggester,
    import_labels,
    load_embeddings,
    suggest,
)

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos-dev"
WORK = ROOT / "benchmarks" / "out" / "suggest"
MODEL = "efficientnet-lite0"
CURVE_POINTS = (2, 5, 10, 20)
STRATEGIES = ("random", "uncertainty", "balanced", "diverse")


def build_workspace() -> tuple[Workspace, dict[str, str]]:
    """Ingest photos-dev and embed it (incremental: a re-run reuses the stored embeddings).

    Returns the workspace and ``{item_id: category}``.
    """
    ws = Workspace.init(WORK / "ws")
    t0 = time.perf_counter()
    summary = ingest(
        ws,
        create_source("folder", directory=str(PHOTOS / "images")),
        IngestOptions(workers=max(1, os.cpu_count() or 1), progress=False),
    )
    print(f"ingest: {summary.new} new, {summary.processed} processed in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    emb = embed(ws, EmbedConfig(model=MODEL, device="cpu", workers=1, progress=False))
    print(f"embed {MODEL}: {emb.new} new of {emb.total} in {time.perf_counter() - t0:.1f}s")
    with open(PHOTOS / "manifest.csv", newline="") as handle:
        category = {Path(r["file"]).name: r["category"] for r in csv.DictReader(handle)}
    items = ws.items(["item_id", "source_path"], where="status = 'valid'")
    return ws, {
        i: category[Path(p).name] for i, p in zip(items["item_id"], items["source_path"], strict=True)
    }


def class_map(categories: dict[str, str]) -> dict[str, str]:
    """The 8 largest categories -> the 8 emotions."""
    top = [c for c, _ in sorted(Counter(categories.values()).items(), key=lambda kv: (-kv[1], kv[0]))[:8]]
    return {c: EMOTIONS[i] for i, c in enumerate(top)}


def fmt_row(cells: list[Any], widths: list[int]) -> str:
    return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(fmt_row(header, widths))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(fmt_row(row, widths))


def mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


# -- 1. learning curve -------------------------------------------------------------------------------------------


def learning_curve(x: np.ndarray, y: np.ndarray, draws: int) -> dict[str, Any]:
    config = SuggestConfig(min_labels_per_class=2, folds=5)
    ctx = SourceContext(n_classes=len(EMOTIONS))
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for n in CURVE_POINTS:
        per: dict[str, list[dict[str, Any]]] = {}
        for draw in range(draws):
            rng = np.random.default_rng(1000 * n + draw)
            train = np.concatenate(
                [rng.choice(np.flatnonzero(y == c), n, replace=False) for c in np.unique(y)]
            )
            test = np.setdiff1d(np.arange(len(y)), train)
            t0 = time.perf_counter()
            knn = KnnSource(len(EMOTIONS), config.k, config.knn_temperature).fit(x[train], y[train])
            probe = ProbeSource(len(EMOTIONS), config.probe_c).fit(x[train], y[train])
            combined = fit_suggester(x[train], y[train], config, ctx)
            fit_s = time.perf_counter() - t0
            outputs = {
                "knn": knn.predict(x[test]),
                "probe": probe.predict(x[test]),
                "combined": combined.predict(x[test]),
            }
            counts = np.bincount(y[test], minlength=len(EMOTIONS))
            majority = np.zeros((len(test), len(EMOTIONS)))
            majority[:, counts.argmax()] = 1.0
            outputs["majority (test prior)"] = majority
            guess = rng.integers(0, len(np.unique(y)), len(test))
            outputs["random"] = np.eye(len(EMOTIONS))[np.unique(y)[guess]]
            for name, probs in outputs.items():
                per.setdefault(name, []).append(classification_metrics(probs, y[test]))
            per.setdefault("_fit_seconds", []).append({"seconds": fit_s})
            per.setdefault("_weights", []).append(combined.pooling.as_dict())
        results[n] = per
    rows = []
    for n, per in results.items():
        for name in ("knn", "probe", "combined", "majority (test prior)", "random"):
            ms = per[name]
            ece = mean_sd([m["ece"] for m in ms]) if name in ("knn", "probe", "combined") else "-"
            rows.append(
                [n, name, mean_sd([m["accuracy"] for m in ms]), mean_sd([m["macro_f1"] for m in ms]), ece]
            )
    print(
        f"\n## Learning curve ({len(np.unique(y))} classes, {len(y)} images; mean ± sd over {draws} draws)\n"
    )
    print_table(["labels/class", "method", "accuracy", "macro-F1", "ECE"], rows)
    return {
        str(n): {
            k: v
            if k.startswith("_")
            else {m: float(np.mean([r[m] for r in v])) for m in ("accuracy", "macro_f1")}
            for k, v in per.items()
        }
        for n, per in results.items()
    }


# -- 2. selection -------------------------------------------------------------------------------------------------


def selection_benchmark(
    ws: Workspace, labels: dict[str, str], budget: int, draws: int, seed_per_class: int = 2
) -> dict[str, list[dict[str, float]]]:
    from sklearn.model_selection import train_test_split

    ids = sorted(labels)
    y_all = np.array([EMOTIONS.index(labels[i]) for i in ids])
    pool_ids, test_ids = train_test_split(ids, test_size=0.3, stratify=y_all, random_state=0)
    al_root = WORK / "al-ws"
    shutil.rmtree(al_root, ignore_errors=True)
    ws.catalog.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copytree(ws.root, al_root)
    al = Workspace.open(al_root)
    keep = set(pool_ids)
    everything = al.items(["item_id"])["item_id"].tolist()
    al.catalog.update_items(
        [i for i in everything if i not in keep], {"status": ["removed"] * (len(everything) - len(keep))}
    )
    emb_ids, matrix = load_embeddings(al, MODEL)
    row = {item_id: k for k, item_id in enumerate(emb_ids)}
    x_test = np.asarray(matrix[[row[i] for i in test_ids]], dtype=np.float32)
    y_test = np.array([EMOTIONS.index(labels[i]) for i in test_ids])
    config = SuggestConfig(model=MODEL, min_labels_per_class=2)
    out: dict[str, list[dict[str, float]]] = {}
    csv_path = WORK / "labels.csv"
    al.catalog.ensure_columns({"imported_label": "TEXT"})
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        by_class: dict[str, list[str]] = {}
        for i in pool_ids:
            by_class.setdefault(labels[i], []).append(i)
        seed_ids = [
            str(s) for e in EMOTIONS for s in rng.choice(sorted(by_class[e]), seed_per_class, replace=False)
        ]
        for strategy in STRATEGIES:
            db = al.catalog.connect()
            db.execute("DELETE FROM selections")
            db.execute("UPDATE items SET imported_label = NULL")
            write_labels(csv_path, {i: labels[i] for i in seed_ids})
            import_labels(al, csv_path)
            t0 = time.perf_counter()
            suggest(al, config, progress=False)
            chosen = select(
                al, SelectConfig(budget=budget, strategy=strategy, round=f"r{draw}", seed=draw)
            ).item_ids
            seconds = time.perf_counter() - t0
            labelled = seed_ids + chosen
            write_labels(csv_path, {i: labels[i] for i in labelled})
            import_labels(al, csv_path)
            x = np.asarray(matrix[[row[i] for i in labelled]], dtype=np.float32)
            y = np.array([EMOTIONS.index(labels[i]) for i in labelled])
            model = fit_suggester(x, y, config, SourceContext(n_classes=len(EMOTIONS)))
            metrics = classification_metrics(model.predict(x_test), y_test)
            classes = len(set(y[len(seed_ids) :].tolist()))
            out.setdefault(strategy, []).append(
                {"accuracy": float(metrics["accuracy"]), "macro_f1": float(metrics["macro_f1"]),
                 "classes_in_selection": classes, "suggest_select_seconds": seconds}
            )  # fmt: skip
    rows = []
    for strategy, runs in out.items():
        rows.append([
            strategy,
            mean_sd([r["accuracy"] for r in runs]),
            mean_sd([r["macro_f1"] for r in runs]),
            f"{np.mean([r['classes_in_selection'] for r in runs]):.1f}",
            f"{np.mean([r['suggest_select_seconds'] for r in runs]):.1f}",
        ])  # fmt: skip
    base = seed_per_class * len(EMOTIONS)
    print(
        f"\n## One selection round: {base} seed labels + budget {budget}, test split {len(test_ids)} images "
        f"(mean ± sd over {draws} seeds)\n"
    )
    print_table(["strategy", "accuracy", "macro-F1", "classes picked", "suggest+select s"], rows)
    return out


def write_labels(path: Path, labels: dict[str, str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "label"])
        writer.writerows(sorted(labels.items()))


# -- 3. person detection -----------------------------------------------------------------------------------------


DETECT_BACKENDS: list[tuple[str, dict[str, Any]]] = [
    ("opencv-hog", {}),
    ("opencv-haar-face", {}),
    ("mtcnn", {}),
    ("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", {"random_init": True}),
    ("torchvision:fasterrcnn_resnet50_fpn", {"random_init": True, "limit": 8}),
]


def detection_benchmark(ws: Workspace, categories: dict[str, str], limit: int) -> list[dict[str, Any]]:
    """images/s of each backend on the same images: every ``people`` and ``landscape`` image plus others up to
    ``limit``."""
    people = sorted(i for i, c in categories.items() if c == "people")
    scenery = sorted(i for i, c in categories.items() if c == "landscape")
    others = sorted(i for i, c in categories.items() if c not in ("people", "landscape"))
    chosen = (people + scenery + others)[: max(limit, len(people) + len(scenery))]
    root = WORK / "detect-ws"
    shutil.rmtree(root, ignore_errors=True)
    ws.catalog.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copytree(ws.root, root, ignore=shutil.ignore_patterns("embeddings"))
    dws = Workspace.open(root)
    keep = set(chosen)
    everything = dws.items(["item_id"])["item_id"].tolist()
    dws.catalog.update_items(
        [i for i in everything if i not in keep], {"status": ["removed"] * (len(everything) - len(keep))}
    )
    results = []
    for backend, settings in DETECT_BACKENDS:
        options = dict(settings)
        sub_limit = options.pop("limit", None)
        if sub_limit is not None:  # slow model: time it on the first sub_limit images only
            sub = set(chosen[:sub_limit])
            dws.catalog.update_items(
                [i for i in chosen if i not in sub], {"status": ["removed"] * (len(chosen) - len(sub))}
            )
        try:
            summary = detect_people(dws, DetectConfig(backend=backend, progress=False, **options))
        except Exception as exc:  # a backend whose package is missing is reported, not fatal
            results.append({"backend": backend, "error": f"{type(exc).__name__}: {exc}"})
            continue
        finally:
            if sub_limit is not None:
                dws.catalog.update_items(chosen, {"status": ["valid"] * len(chosen)})
        rows = sqlite3.connect(dws.catalog.path).execute(
            "SELECT item_id, person_boxes FROM people_detections WHERE backend = ?", (summary.backend,)
        )
        found = {item_id: bool(json.loads(boxes or "[]")) for item_id, boxes in rows}
        hit_people = np.mean([found[i] for i in people if i in found]) if people else float("nan")
        hit_scenery = np.mean([found[i] for i in scenery if i in found]) if scenery else float("nan")
        rest = [found[i] for i in chosen if i in found and categories[i] != "people"]
        hit_rest = float(np.mean(rest)) if rest else float("nan")
        results.append({
            "backend": backend + (" (random weights)" if options.get("random_init") else ""),
            "images": summary.processed,
            "seconds": round(summary.seconds, 1),
            "images_per_second": round(summary.images_per_second, 2),
            "people_with_box": round(float(hit_people), 3),
            "landscape_with_box": round(float(hit_scenery), 3),
            "non_people_with_box": round(hit_rest, 3),
        })  # fmt: skip
    print(
        f"\n## Person detection ({len(people)} 'people' + {len(scenery)} 'landscape' + others; max side 640)\n"
    )
    print_table(
        ["backend", "images", "images/s", "'people' with a box", "landscapes with a box", "non-people with a box"],
        [
            [r["backend"], r.get("images", "-"), r.get("images_per_second", r.get("error", "-")),
             r.get("people_with_box", "-"), r.get("landscape_with_box", "-"), r.get("non_people_with_box", "-")]
            for r in results
        ],
    )  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seed-per-class", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--detect-limit", type=int, default=120)
    parser.add_argument("--skip", nargs="*", default=[], choices=["curve", "select", "detect"])
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; load average {os.getloadavg()}")
    ws, categories = build_workspace()
    mapping = class_map(categories)
    labels = {i: mapping[c] for i, c in categories.items() if c in mapping}
    print(
        "classes: "
        + ", ".join(f"{c} -> {e} ({sum(v == c for v in categories.values())})" for c, e in mapping.items())
    )
    emb_ids, matrix = load_embeddings(ws, MODEL)
    row = {item_id: k for k, item_id in enumerate(emb_ids)}
    ids = sorted(labels)
    x = np.asarray(matrix[[row[i] for i in ids]], dtype=np.float32)
    y = np.array([EMOTIONS.index(labels[i]) for i in ids])
    report: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "mapping": mapping}
    if "curve" not in args.skip:
        report["curve"] = learning_curve(x, y, args.draws)
    if "select" not in args.skip:
        report["selection"] = {
            str(n): selection_benchmark(ws, labels, args.budget, args.draws, n) for n in args.seed_per_class
        }
    if "detect" not in args.skip:
        report["detection"] = detection_benchmark(ws, categories, args.detect_limit)
    report["seconds"] = round(time.perf_counter() - started, 1)
    (WORK / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\ntotal {report['seconds']}s; report: {WORK / 'report.json'}")


if __name__ == "__main__":
    main()
