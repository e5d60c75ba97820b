"""Person-detection check: precision and recall of "has a person" for every ``emo8 detect-people`` backend.

Ground truth: ``benchmarks/data/people_labels.csv``, images of ../shared/data/photos-dev labelled by looking at
them (``has_person`` 1 = a real or depicted human whose body or face is clearly visible; see the notes in
docs/suggest.md). The file fixes a ``tune`` / ``test`` split by provenance group (tiles of one painting stay on one
side): thresholds and combinations were chosen on ``tune`` only, ``test`` is the held-out report.

Each backend runs through :func:`emo8.label.people.create_detector` on the images as ``detect-people`` decodes them
(``load_rgb``, longer side <= 640); an image "has a person" when the backend returns at least one person box.
A spec ``KEY@T`` runs ``KEY`` with ``--threshold T``. Throughput is decode + detect on one thread.

Run: ``nice .venv/bin/python benchmarks/people_check.py`` (``--limit 100`` for a quick look; ``--backends``
to choose; ``--show-errors`` lists the false positives and misses). Results: ``benchmarks/out/people_check.json``.
The sweep behind ``mtcnn+hog``'s HOG margin: ``--backends mtcnn+hog@1.0 mtcnn+hog@1.5 mtcnn+hog@2.0 mtcnn+hog@2.5``,
read the ``tune F1`` column (never ``test``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import cpu_model  # noqa: E402

from emo8.core.imaging import load_rgb  # noqa: E402
from emo8.label.people import DEFAULT_BACKEND, DetectConfig, create_detector  # noqa: E402

PHOTOS = REPO.parent / "shared" / "data" / "photos-dev"
LABELS = REPO / "benchmarks" / "data" / "people_labels.csv"
BACKENDS = [
    "opencv-hog",
    "opencv-hog@1.0",
    "opencv-hog@2.0",
    "opencv-haar-face",
    "mtcnn",
    "hog+face",
    "mtcnn+hog",
]


@dataclass
class Score:
    """Confusion counts of one backend on one subset."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    false_positives: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)

    def add(self, name: str, truth: bool, predicted: bool) -> None:
        if truth and predicted:
            self.tp += 1
        elif predicted:
            self.fp += 1
            self.false_positives.append(name)
        elif truth:
            self.fn += 1
            self.misses.append(name)
        else:
            self.tn += 1

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def read_labels(path: Path) -> list[dict[str, str]]:
    """The rows of the labels file; raise ``ValueError`` on a malformed one."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows, start=2):
        if (
            row.get("has_person") not in ("0", "1")
            or row.get("split") not in ("tune", "test")
            or not row.get("file")
        ):
            raise ValueError(f"{path}:{i}: need file, has_person 0/1 and split tune/test, got {row}")
    return rows


def parse_spec(spec: str) -> DetectConfig:
    """``KEY`` or ``KEY@THRESHOLD`` -> the backend's config."""
    key, _, threshold = spec.partition("@")
    return DetectConfig(backend=key, score_threshold=float(threshold) if threshold else None, progress=False)


def run_backend(spec: str, rows: list[dict[str, str]], photos: Path) -> tuple[dict[str, Score], float]:
    """Scores per split (and ``all``) and images per second of one backend spec."""
    config = parse_spec(spec)
    detector = create_detector(config)
    scores = {"tune": Score(), "test": Score(), "all": Score()}
    started = time.perf_counter()
    for row in rows:
        image = np.asarray(load_rgb(photos / "images" / row["file"], max_side=config.max_side))
        found = bool(detector.detect(image).person_boxes)
        truth = row["has_person"] == "1"
        for split in (row["split"], "all"):
            scores[split].add(row["file"], truth, found)
    return scores, len(rows) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="photos-dev folder (with images/)")
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--backends", nargs="+", default=BACKENDS, help="KEY or KEY@THRESHOLD")
    parser.add_argument("--limit", type=int, default=None, help="first N labelled images only")
    parser.add_argument("--show-errors", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "people_check.json")
    args = parser.parse_args(argv)
    if not (args.photos / "images").is_dir():
        print(f"error: {args.photos}/images not found; pass --photos PATH to photos-dev", file=sys.stderr)
        return 2
    import cv2
    import torch

    torch.set_num_threads(1)  # one thread each, as the numbers say (detect-people's --workers adds threads)
    cv2.setNumThreads(1)
    rows = read_labels(args.labels)[: args.limit]
    positives = {
        s: sum(r["has_person"] == "1" for r in rows if s in ("all", r["split"]))
        for s in ("tune", "test", "all")
    }
    counts = {s: sum(s in ("all", r["split"]) for r in rows) for s in ("tune", "test", "all")}
    print(f"# people check: {counts['all']} labelled images ({positives['all']} with a person); "
          f"tune {counts['tune']} ({positives['tune']}), test {counts['test']} ({positives['test']}); "
          f"CPU {cpu_model()}, 1 thread; default backend {DEFAULT_BACKEND}\n")  # fmt: skip
    print(
        "| backend | test P | test R | test F1 | tune F1 | all P | all R | all F1 | false pos. (all) | images/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    report: dict[str, Any] = {"cpu": cpu_model(), "images": counts, "positives": positives, "backends": {}}
    for spec in args.backends:
        scores, rate = run_backend(spec, rows, args.photos)
        te, tu, al = scores["test"], scores["tune"], scores["all"]
        print(f"| {spec} | {te.precision:.2f} | {te.recall:.2f} | {te.f1:.2f} | {tu.f1:.2f} | {al.precision:.2f} | "
              f"{al.recall:.2f} | {al.f1:.2f} | {al.fp} | {rate:.1f} |", flush=True)  # fmt: skip
        report["backends"][spec] = {
            "images_per_s": rate,
            **{s: {"precision": v.precision, "recall": v.recall, "f1": v.f1, "tp": v.tp, "fp": v.fp, "fn": v.fn,
                   "false_positives": v.false_positives, "misses": v.misses} for s, v in scores.items()},
        }  # fmt: skip
        if args.show_errors:
            print(
                f"  {spec} false positives: {' '.join(al.false_positives)}\n  misses: {' '.join(al.misses)}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
