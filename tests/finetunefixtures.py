"""Miniature copies of every downstream layout, made from the real photos bundled in emo8/samples.

The emotion labels are assigned (index modulo the class count): the images are real, the emotions are not. The
"separable" task is real: clip-art and cut-outs flattened onto white ("bright") versus paintings and photos
("dark")."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from emo8.core.taxonomy import EMOTIONS
from uniemox.testing import SAMPLES

SPLITS = ("train", "val", "test")


def sample_files() -> list[dict[str, str]]:
    with (SAMPLES / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def split_of(i: int) -> str:
    """Round ``i`` of a class: 5 of 8 train, 1 of 8 val, 2 of 8 test."""
    return ("train", "train", "train", "val", "train", "test", "train", "test")[i % 8]


def make_imagefolder(root: Path, classes: tuple[str, ...], n: int = 48, upper: bool = False) -> Path:
    """``root/{train,val,test}/<class>/*.jpg`` with ``n`` images, class = index mod len(classes)."""
    for i, row in enumerate(sample_files()[:n]):
        cls = classes[i % len(classes)]
        folder = cls.capitalize() if upper else cls
        dst = root / split_of(i // len(classes)) / folder / Path(row["file"]).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((SAMPLES / row["file"]).read_bytes())
    return root


def make_separable(root: Path) -> Path:
    """Two classes a tiny ViT can tell apart: bright (clip-art, cut-outs on white) vs dark (paintings, photos);
    24 images each, 14 train / 3 val / 7 test per class."""
    rows = sample_files()
    bright = [r for r in rows if r["domain"] in ("clipart", "cutout")][:24]
    dark = ([r for r in rows if r["domain"] == "painting"] + [r for r in rows if r["domain"] == "photo"])[:24]
    for cls, chosen in (("bright", bright), ("dark", dark)):
        for j, row in enumerate(chosen):
            split = "train" if j < 14 else "val" if j < 17 else "test"
            dst = root / split / cls / Path(row["file"]).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes((SAMPLES / row["file"]).read_bytes())
    return root


def make_emoset(root: Path, n: int = 48) -> Path:
    """EmoSet's layout with train/val/test listings."""
    entries: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    for i, row in enumerate(sample_files()[:n]):
        emotion, stem = EMOTIONS[i % 8], f"{EMOTIONS[i % 8]}_{i:05d}"
        image, annotation = f"image/{emotion}/{stem}.jpg", f"annotation/{emotion}/{stem}.json"
        (root / image).parent.mkdir(parents=True, exist_ok=True)
        (root / annotation).parent.mkdir(parents=True, exist_ok=True)
        (root / image).write_bytes((SAMPLES / row["file"]).read_bytes())
        (root / annotation).write_text(json.dumps({"image_id": stem, "emotion": emotion, "scene": "park"}))
        entries[split_of(i // 8)].append([emotion, image, annotation])
    (root / "info.json").write_text(json.dumps({"label2idx": {e: i for i, e in enumerate(EMOTIONS)}}))
    for split, listing in entries.items():
        (root / f"{split}.json").write_text(json.dumps(listing))
    return root


def vote_distribution(i: int) -> list[float]:
    """A made-up 5-vote distribution whose majority is EMOTIONS[i % 8]."""
    d = np.zeros(8)
    d[i % 8] = 3
    d[(i + 1) % 8] = 2
    return list(d / d.sum())


def make_emo8_release(root: Path, n: int = 48, with_missing_votes: bool = True) -> Path:
    """An Emo8 release as ``emo8 release`` writes it: data/{train,validation,test}-00000-of-00001.parquet."""
    import datasets

    from emo8.release.publish import features

    feats = features()
    keep = ("image", "label", "label_distribution", "domain", "sha256")
    sub = datasets.Features({k: feats[k] for k in keep})
    by_split: dict[str, dict[str, list[Any]]] = {
        s: {k: [] for k in keep} for s in ("train", "validation", "test")
    }
    for i, row in enumerate(sample_files()[:n]):
        split = {"val": "validation"}.get(split_of(i // 8), split_of(i // 8))
        data = (SAMPLES / row["file"]).read_bytes()
        rec = by_split[split]
        rec["image"].append({"bytes": data, "path": None})
        rec["label"].append(i % 8)
        rec["label_distribution"].append(None if with_missing_votes and i % 7 == 6 else vote_distribution(i))
        rec["domain"].append(row["domain"])
        rec["sha256"].append(f"{i:064x}")
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, rec in by_split.items():
        datasets.Dataset.from_dict(rec, features=sub).to_parquet(
            str(root / "data" / f"{split}-00000-of-00001.parquet")
        )
    return root


def make_hf_disk(root: Path, classes: tuple[str, ...] = ("calm", "tense", "playful"), n: int = 24) -> Path:
    """A ``save_to_disk`` DatasetDict with columns ``img`` (Image) and ``mood`` (ClassLabel)."""
    import datasets

    feats = datasets.Features({"img": datasets.Image(), "mood": datasets.ClassLabel(names=list(classes))})
    parts: dict[str, dict[str, list[Any]]] = {s: {"img": [], "mood": []} for s in SPLITS}
    for i, row in enumerate(sample_files()[:n]):
        split = split_of(i // len(classes))
        parts[split]["img"].append({"bytes": (SAMPLES / row["file"]).read_bytes(), "path": None})
        parts[split]["mood"].append(i % len(classes))
    datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(p, features=feats) for s, p in parts.items()}
    ).save_to_disk(str(root))
    return root
