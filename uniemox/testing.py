"""Tiny datasets and configs built from the bundled real sample images (emo8/samples), for tests, benchmarks
and smoke runs on CPU. Labels are assigned deterministically (index modulo 8): the images are real, the
emotions are not."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import emo8
from emo8.core.taxonomy import EMOTIONS
from uniemox.config import DataConfig, ModelConfig, OptimConfig, PretrainConfig, TeacherConfig

SAMPLES = Path(emo8.__file__).parent / "samples"

#: A CLIP small enough to run randomly initialised in tests (open_clip model-config format).
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def sample_rows(n: int) -> list[dict[str, str]]:
    """The first ``n`` rows of the bundled manifest (file, domain, category, ...)."""
    with (SAMPLES / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    if n > len(rows):
        raise ValueError(f"only {len(rows)} sample images are bundled")
    return rows[:n]


def person_boxes_for(i: int, width: int, height: int) -> list[list[float]]:
    """Every other image gets two boxes (the second more confident), the others none."""
    if i % 2:
        return []
    return [
        [0.0, 0.0, width * 0.5, height * 0.5, 0.6],
        [width * 0.25, height * 0.2, width * 0.75, height * 0.9, 0.9],
    ]


def sample_records(n: int) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(sample_rows(n)):
        w, h = int(row["width"]), int(row["height"])
        out.append(
            {
                "path": SAMPLES / row["file"],
                "label": i % len(EMOTIONS),
                "domain": row["domain"],
                "title": f"{row['category']} {Path(row['file']).stem}",
                "brightness": (i * 37 % 100) / 100,
                "colorfulness": float(i * 53 % 100 * 1.2),  # Hasler & Suesstrunk's scale, as Emo8 stores it
                "person_boxes": person_boxes_for(i, w, h),
            }
        )
    return out


def make_hf_dataset(out: Path, n: int = 16, fmt: str = "disk") -> Path:
    """A Hugging Face dataset (``save_to_disk`` or one parquet shard) with Emo8's release columns."""
    import datasets

    recs = sample_records(n)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(EMOTIONS)),
            "domain": datasets.Value("string"),
            "title": datasets.Value("string"),
            "brightness": datasets.Value("float32"),
            "colorfulness": datasets.Value("float32"),
            "person_boxes": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
        }
    )
    data = {k: [r[k] for r in recs] for k in features if k != "image"}
    data["image"] = [{"bytes": Path(r["path"]).read_bytes(), "path": None} for r in recs]
    ds = datasets.Dataset.from_dict(data, features=features)
    if fmt == "disk":
        datasets.DatasetDict({"train": ds}).save_to_disk(str(out))
    else:
        out.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(out / "train-00000-of-00001.parquet"))
    return out


def make_imagefolder(out: Path, n: int = 16) -> Path:
    """``out/train/<emotion>/<file>.jpg``."""
    for r in sample_records(n):
        dst = out / "train" / EMOTIONS[r["label"]] / Path(r["path"]).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(Path(r["path"]).read_bytes())
    return out


def make_emoset(out: Path, n: int = 16) -> Path:
    """EmoSet's layout: info.json, train.json, annotation/<emotion>/*.json, image/<emotion>/*.jpg (its
    brightness and colorfulness in [0, 1])."""
    entries = []
    for i, r in enumerate(sample_records(n)):
        emotion, stem = EMOTIONS[r["label"]], f"{EMOTIONS[r['label']]}_{i:05d}"
        image, annotation = f"image/{emotion}/{stem}.jpg", f"annotation/{emotion}/{stem}.json"
        (out / image).parent.mkdir(parents=True, exist_ok=True)
        (out / annotation).parent.mkdir(parents=True, exist_ok=True)
        (out / image).write_bytes(Path(r["path"]).read_bytes())
        ann = {"image_id": stem, "emotion": emotion, "brightness": r["brightness"],
               "colorfulness": r["colorfulness"] / 120, "scene": "amusement_park", "object": ["person", "tree"],
               "facial_expression": "happy", "human_action": "running"}  # fmt: skip
        (out / annotation).write_text(json.dumps(ann))
        entries.append([emotion, image, annotation])
    (out / "info.json").write_text(json.dumps({"label2idx": {e: i for i, e in enumerate(EMOTIONS)}}))
    (out / "train.json").write_text(json.dumps(entries))
    return out


def tiny_teacher(dir: Path) -> Path:
    """Write the tiny CLIP's open_clip model config; pass its path as the teacher architecture."""
    path = dir / "uniemox-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    return path


def tiny_config(data: Path, out: Path, teacher_json: Path, **overrides: Any) -> PretrainConfig:
    """A 32 px, patch 8, 32-d, 2-layer student with the tiny random CLIP: seconds per few steps on CPU."""
    cfg = PretrainConfig(
        out=str(out),
        data=DataConfig(path=str(data), num_workers=0),
        model=ModelConfig(
            name="mae_vit_tiny_patch16",
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            decoder_embed_dim=32,
            decoder_depth=1,
            decoder_num_heads=2,
        ),
        teacher=TeacherConfig(arch=str(teacher_json), pretrained="random"),
        optim=OptimConfig(batch_size=4, base_lr=1e-3, warmup_steps=2),
        max_steps=6,
        ckpt_every=3,
        log_every=1,  # a log row (and so a history entry) per step
        keep_checkpoints=0,
        progress=False,
        tensorboard=False,
        device="cpu",
    )
    for key, value in overrides.items():
        obj: Any = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, leaf, value)
    return cfg
