"""Near-duplicate benchmark: clusters as a user sees them, on a wide suite of real-world edits and hard negatives.

Built from ../shared/data/photos-dev (clip-art, photos, paintings and their tiles, cartoons). Each base image gets
the edits of :data:`EDITS` (parameters drawn per base from a seeded generator, so crop positions, angles, colours
and texts vary): crops at several positions and sizes, padding and letterboxing to other aspect ratios, a meme
caption bar, overlaid text, borders, a watermark, small and 90-degree rotations, a mirror image, tone and colour
changes, greyscale, a screenshot on a larger canvas, a low-quality JPEG and a small re-encode. Hard negatives:

* *template*: one greeting-card frame (border, title, ornaments) around different base images: a card is a copy of
  the image inside it (like a screenshot), but two cards with different images are not duplicates;
* *same subject*: the bases themselves (photos-dev groups images by category: several apples, hands, animals);
* *tiles*: tiles of one painting share a provenance ``group`` but are distinct images (unless pixels are equal);
* *distractors*: further photos-dev images with no copy at all.

Bases are split by index into a **tuning** half (even positions) and a **test** half (odd positions); the defaults
were set on the tuning half and the tables of docs/dedup.md are the test half. The systems:

* ``emo8``: the real pipeline on a workspace (``ingest`` -> ``embed --model efficientnet-lite0`` -> ``dedup`` with
  its defaults); clusters read back from the catalog (``dup_of``);
* ``emo8 without verification``: the same, tiers exact + perceptual + semantic at the previous default cosine
  0.79, no geometric verification;
* ``plain SIFT``: the same grey-zone candidates, a pair kept when >= 10 SIFT matches pass the ratio test (no
  geometry), then connected components;
* imagededup PHash and CNN (its own venv ``.venv-peers-imagededup``, :data:`PEER_PINS`; skipped with a message
  when absent), connected components of each method's pairs and of their union, at imagededup's default
  thresholds and at union thresholds chosen on the tuning half (the CNN is the same EfficientNet-Lite0).

Reported per system and split: **cluster pair precision and recall** (every pair of images inside a predicted
cluster is a predicted pair; a true pair is two images of one group), per edit kind (recall: (original, edit) pairs
sharing a cluster; precision: predicted pairs involving that edit kind), false merges among hard negatives, and
verification throughput (pairs/s).

Run: ``nice .venv/bin/python benchmarks/neardup.py --bases 60`` (about 1,400 images). Results:
``benchmarks/out/neardup.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import cpu_model  # noqa: E402

from emo8 import Workspace  # noqa: E402
from emo8.core.imaging import ValidationConfig  # noqa: E402
from emo8.core.similarity import components, cosine_pairs, hamming_pairs  # noqa: E402
from emo8.dedup.tiers import DedupConfig, dedup  # noqa: E402
from emo8.dedup.verify import FeatureCache, VerifyConfig, _ratio_matches  # noqa: E402
from emo8.embed.encoders import lite0_weights_path  # noqa: E402
from emo8.embed.run import EmbedConfig, embed  # noqa: E402
from emo8.ingest.run import IngestOptions, ingest  # noqa: E402
from emo8.ingest.sources import create_source  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "photos-dev"
OUT = REPO / "benchmarks" / "out"

#: imagededup's pinned install (its own virtual environment; timm for the shared EfficientNet-Lite0).
PEER_PINS = "imagededup==0.3.3.post2 timm==1.0.31"

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def _crop(lo: float, hi: float, where: str) -> Edit:
    """Keep a random share in [lo, hi] of each side, at the centre, a random corner, or anywhere."""

    def edit(im: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = im.size
        keep = rng.uniform(lo, hi)
        cw, ch = max(16, round(w * keep)), max(16, round(h * keep))
        if where == "centre":
            left, top = (w - cw) // 2, (h - ch) // 2
        elif where == "corner":
            left = 0 if rng.random() < 0.5 else w - cw
            top = 0 if rng.random() < 0.5 else h - ch
        else:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return im.crop((left, top, left + cw, top + ch))

    return edit


def _pad(aspect: float | None) -> Edit:
    """Pad to a square (``None``) or to a canvas of another aspect ratio (letterbox / pillarbox)."""

    def edit(im: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = im.size
        colour = tuple(int(c) for c in rng.choice([[0, 0, 0], [255, 255, 255], [40, 40, 40]]))
        if aspect is None:
            cw = ch = max(w, h)
        else:
            target = aspect if w >= h else 1 / aspect
            cw, ch = (max(w, round(h * target)), h) if w / h < target else (w, max(h, round(w / target)))
        out = Image.new("RGB", (cw, ch), colour)
        out.paste(im, ((cw - w) // 2, (ch - h) // 2))
        return out

    return edit


WORDS = [
    "when you see it",
    "monday again",
    "me irl",
    "nobody:",
    "this is fine",
    "so true",
    "big mood",
    "wait for it",
]


def _caption(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    bar = max(16, h // 5)
    out = Image.new("RGB", (w, h + bar), (255, 255, 255))
    top = rng.random() < 0.5
    out.paste(im, (0, bar if top else 0))
    draw = ImageDraw.Draw(out)
    text = str(rng.choice(WORDS))
    draw.text((max(2, w // 20), (0 if top else h) + bar // 5), text, fill=(0, 0, 0), font=_font(bar * 3 // 5))
    return out


def _overlay_text(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = im.copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    size = max(10, h // 9)
    for k, y in enumerate((h // 12, h - size - h // 12)):
        text = str(rng.choice(WORDS)).upper()
        x = max(2, w // 10)
        for dx, dy in ((-1, -1), (1, 1), (-1, 1), (1, -1)):
            draw.text((x + dx * 2, y + dy * 2), text, fill=(0, 0, 0), font=_font(size))
        draw.text((x, y), text, fill=(255, 255, 255), font=_font(size))
        del k
    return out


def _border(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    width = max(3, round(max(im.size) * rng.uniform(0.04, 0.1)))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    return ImageOps.expand(im, border=width, fill=colour)


def _watermark(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = im.convert("RGBA")
    w, h = out.size
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = max(10, h // 10)
    text = f"(c) {rng.choice(['stock', 'photo', 'memes', 'pics'])}.example"
    x = int(rng.integers(0, max(1, w // 3)))
    y = int(rng.integers(h // 2, max(h // 2 + 1, h - size)))
    draw.text((x, y), text, fill=(255, 255, 255, 150), font=_font(size))
    return Image.alpha_composite(out, layer).convert("RGB")


def _rotate(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = float(rng.uniform(3, 12)) * (1 if rng.random() < 0.5 else -1)
    return im.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))


def _tone(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.75, 1.25))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.7, 1.3))
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.5, 1.6))
    gamma = rng.uniform(0.7, 1.4)
    return im.point(lambda v: round(255 * (v / 255) ** gamma))


def _screenshot(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The image shown at 50-80% size on a larger 'browser window' with a title bar, text lines and a side panel."""
    w, h = im.size
    scale = rng.uniform(0.5, 0.8)
    cw, ch = round(w / scale) + 40, round(h / scale) + 60
    canvas = Image.new("RGB", (cw, ch), (245, 245, 245))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, cw, 30], fill=(60, 60, 70))
    draw.text(
        (10, 8), "https://social.example/post/" + str(int(rng.integers(1e5, 1e6))), fill=(220, 220, 220)
    )
    for k in range(4):
        draw.rectangle([20, ch - 20 - 12 * k, 20 + int(rng.integers(cw // 4, cw // 2)), ch - 14 - 12 * k],
                       fill=(190, 190, 190))  # fmt: skip
    left, top = int(rng.integers(10, max(11, cw - w - 10))), 40
    canvas.paste(im, (left, top))
    return canvas


def _small(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    f = rng.uniform(0.2, 0.35)
    return im.resize((max(24, round(im.width * f)), max(24, round(im.height * f))), Image.Resampling.BILINEAR)


#: edit kind -> (function, JPEG quality of the saved file)
EDITS: dict[str, tuple[Edit, int]] = {
    "crop_border": (_crop(0.86, 0.94, "centre"), 90),
    "crop_corner": (_crop(0.7, 0.85, "corner"), 90),
    "crop_half": (_crop(0.55, 0.68, "any"), 90),
    "pad_square": (_pad(None), 90),
    "letterbox": (_pad(16 / 9), 90),
    "caption_bar": (_caption, 90),
    "overlay_text": (_overlay_text, 90),
    "border": (_border, 90),
    "watermark": (_watermark, 90),
    "rotate": (_rotate, 90),
    "rotate90": (lambda im, rng: im.rotate(90 if rng.random() < 0.5 else 270, expand=True), 90),
    "flip": (lambda im, rng: ImageOps.mirror(im), 90),
    "tone": (_tone, 90),
    "grey": (lambda im, rng: ImageOps.grayscale(im).convert("RGB"), 90),
    "screenshot": (_screenshot, 90),
    "jpeg_low": (lambda im, rng: im, 15),
    "small": (_small, 60),
}


def _template(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A fixed greeting-card frame with a base image inside (hard negatives: same template, other content)."""
    card = Image.new("RGB", (480, 600), (250, 236, 210))
    draw = ImageDraw.Draw(card)
    draw.rectangle([12, 12, 468, 588], outline=(150, 40, 40), width=10)
    for x, y in ((30, 30), (430, 30), (30, 550), (430, 550)):
        draw.ellipse([x, y, x + 22, y + 22], fill=(200, 120, 40))
    draw.text((120, 40), "Happy Birthday!", fill=(150, 40, 40), font=_font(34))
    draw.text((150, 540), "with love from all of us", fill=(90, 60, 60), font=_font(16))
    inner = ImageOps.pad(im, (400, 420), color=(250, 236, 210))
    card.paste(inner, (40, 100))
    return card


def _read_rows(data: Path) -> list[dict[str, str]]:
    with open(data / "provenance.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def build_set(data: Path, bases: int, distractors: int, templates: int, folder: Path) -> list[dict[str, Any]]:
    """Write bases, their edits, template cards and distractors into ``folder``; one record per file."""
    rows = _read_rows(data)
    picked = [rows[k * len(rows) // bases] for k in range(bases)] if bases and bases < len(rows) else rows
    picked_files = {r["file"] for r in picked}
    rest = [r for r in rows if r["file"] not in picked_files]
    extra = [rest[k * len(rest) // distractors] for k in range(distractors)] if distractors else []
    records: list[dict[str, Any]] = []
    group_of_pixels: dict[str, str] = {}
    for index, row in enumerate(picked):
        stem = Path(row["file"]).stem
        split = "tune" if index % 2 == 0 else "test"
        group = group_of_pixels.setdefault(row["pixel_sha256"], stem)
        base = Image.open(data / row["file"]).convert("RGB")
        shutil.copy(data / row["file"], folder / f"{stem}__orig.jpg")
        meta = {"group": group, "split": split, "painting": row.get("group") or "", "negative": ""}
        records.append({"file": f"{stem}__orig.jpg", "edit": "orig", **meta})
        rng = np.random.default_rng(index)
        for name, (fn, quality) in EDITS.items():
            fn(base, rng).save(folder / f"{stem}__{name}.jpg", quality=quality)
            records.append({"file": f"{stem}__{name}.jpg", "edit": name, **meta})
        if index < templates:
            _template(base, rng).save(folder / f"{stem}__card.jpg", quality=90)
            records.append({"file": f"{stem}__card.jpg", "edit": "template", "group": group, "split": split,
                            "painting": "", "negative": "template"})  # fmt: skip
    for index, row in enumerate(extra):
        stem = Path(row["file"]).stem
        group = group_of_pixels.setdefault(row["pixel_sha256"], stem)
        shutil.copy(data / row["file"], folder / f"{stem}__distractor.jpg")
        records.append({"file": f"{stem}__distractor.jpg", "edit": "distractor", "group": group,
                        "split": "tune" if index % 2 == 0 else "test", "painting": row.get("group") or "",
                        "negative": "distractor"})  # fmt: skip
    return records


# -- evaluation -------------------------------------------------------------------------------------------------


def cluster_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Every pair of indices sharing a label (the pairs a user sees inside the clusters)."""
    out: set[tuple[int, int]] = set()
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        members = np.sort(members)
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                out.add((int(members[a]), int(members[b])))
    return out


def evaluate(records: list[dict[str, Any]], labels: np.ndarray, subset: np.ndarray) -> dict[str, Any]:
    """Cluster pair precision / recall over the images of ``subset`` (a bool mask), per edit kind too."""
    idx = np.flatnonzero(subset)
    groups = np.array([r["group"] for r in records])
    edits = np.array([r["edit"] for r in records])
    predicted = {p for p in cluster_pairs(labels[idx])}
    predicted = {(int(idx[a]), int(idx[b])) for a, b in predicted}
    true = {
        (int(idx[a]), int(idx[b])) for a, b in cluster_pairs(np.unique(groups[idx], return_inverse=True)[1])
    }
    tp = len(predicted & true)
    res: dict[str, Any] = {
        "images": len(idx), "true_pairs": len(true), "predicted_pairs": len(predicted),
        "precision": tp / len(predicted) if predicted else 1.0, "recall": tp / len(true) if true else 1.0,
    }  # fmt: skip
    origin = {groups[k]: k for k in idx if edits[k] == "orig"}
    per: dict[str, Any] = {}
    for edit in EDITS:
        ks = [k for k in idx if edits[k] == edit]
        hits = [labels[k] == labels[origin[groups[k]]] for k in ks if groups[k] in origin]
        involved = [p for p in predicted if edits[p[0]] == edit or edits[p[1]] == edit]
        false = sum(1 for p in involved if groups[p[0]] != groups[p[1]])
        per[edit] = {"recall": float(np.mean(hits)) if hits else 1.0,
                     "precision": 1 - false / len(involved) if involved else 1.0}  # fmt: skip
    res["per_edit"] = per
    false_pairs = predicted - true
    kinds: dict[str, int] = {}
    for a, b in false_pairs:
        ra, rb = records[a], records[b]
        if "template" in (ra["negative"], rb["negative"]):
            kind = "template"
        elif ra["painting"] and ra["painting"] == rb["painting"]:
            kind = "tiles of one painting"
        elif "distractor" in (ra["negative"], rb["negative"]):
            kind = "distractor"
        else:
            kind = "distinct bases"
        kinds[kind] = kinds.get(kind, 0) + 1
    res["false_pairs_by_kind"] = kinds
    return res


# -- systems ------------------------------------------------------------------------------------------------------


def run_emo8(folder: Path, records: list[dict[str, Any]], work: Path, workers: int) -> dict[str, Any]:
    ws = Workspace.init(work / "ws")
    t0 = time.perf_counter()
    ingest(ws, create_source("folder", directory=str(folder)),
           IngestOptions(workers=workers, progress=False, validation=ValidationConfig(min_side=16)))  # fmt: skip
    t_ingest = time.perf_counter() - t0
    t0 = time.perf_counter()
    embed(ws, EmbedConfig(device="cpu", workers=max(0, workers - 1), progress=False))
    t_embed = time.perf_counter() - t0
    origins = ws.origins()  # files with identical bytes are one item with several origins
    position = {Path(str(p)).name: str(i) for i, p in zip(origins.item_id, origins.source_path, strict=True)}
    out: dict[str, Any] = {"ingest_s": t_ingest, "embed_s": t_embed}
    configs = {
        "emo8": DedupConfig(
            workers=workers, device="cpu", dry_run=True, verification=VerifyConfig(workers=workers)
        ),
        "emo8 without verification": DedupConfig(
            tiers=("exact", "perceptual", "semantic"),
            embed_min_similarity=0.79,
            dry_run=True,
            workers=workers,
            device="cpu",
        ),
    }
    for name, config in configs.items():
        t0 = time.perf_counter()
        result = dedup(ws, config)
        frame = result.frame
        head = frame.dup_of.fillna(frame.item_id).to_numpy()
        codes = {v: k for k, v in enumerate(dict.fromkeys(head))}
        by_item = dict(zip(frame.item_id, (codes[h] for h in head), strict=True))
        labels = np.full(len(records), -1, np.int64)
        next_label = len(codes)
        for k, r in enumerate(records):
            item = position.get(r["file"])
            if item is not None and item in by_item:
                labels[k] = by_item[item]
            else:  # not ingested (rejected) or not a candidate: a cluster of its own
                labels[k] = next_label
                next_label += 1
        out[name] = {"labels": labels, "seconds": time.perf_counter() - t0, "report": {
            k: result.report.get(k) for k in ("verification", "pairs_per_tier", "clusters", "timings")}}  # fmt: skip
    out["ws"] = ws
    out["position"] = position
    return out


def run_plain_sift(ws: Workspace, records: list[dict[str, Any]], position: dict[str, str], min_matches: int = 10,
                   workers: int = 1) -> dict[str, Any]:  # fmt: skip
    """Plain SIFT: the grey-zone candidates of dedup (cosine top-k and loose pHash), kept when >= ``min_matches``
    descriptors pass the ratio test, with no geometric check; then connected components."""
    from emo8.dedup import tiers as dedup_mod

    ctx = dedup_mod._load_context(ws, DedupConfig())
    i, j, _cos = dedup_mod._grey_zone(replace_ctx(ctx))
    cache = FeatureCache(VerifyConfig())
    t0 = time.perf_counter()
    keep = []
    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        fa, fb = cache.features(ctx.path(a)), cache.features(ctx.path(b))
        keep.append(fa is not None and fb is not None and len(_ratio_matches(fa, fb, 0.8)) >= min_matches)
    seconds = time.perf_counter() - t0
    mask = np.array(keep, bool)
    n = len(ctx.items)
    labels_items = components(n, [np.stack([i[mask], j[mask]], axis=1)])
    ids = ctx.items.item_id.tolist()
    item_label = dict(zip(ids, labels_items.tolist(), strict=True))
    labels = np.full(len(records), -1, np.int64)
    nxt = int(labels_items.max()) + 1 if n else 0
    for k, r in enumerate(records):
        item = position.get(r["file"])
        if item is not None and item in item_label:
            labels[k] = item_label[item]
        else:
            labels[k] = nxt
            nxt += 1
    return {
        "labels": labels,
        "seconds": seconds,
        "pairs": len(i),
        "pairs_per_second": len(i) / max(seconds, 1e-9),
    }


def replace_ctx(ctx: Any) -> Any:
    """The context with every candidate in the grey zone (nothing accepted without verification)."""
    ctx.min_similarity = 2.0
    ctx.config = replace(ctx.config, phash_max_distance=-1)
    return ctx


def _pr(labels: np.ndarray, truth: np.ndarray, subset: np.ndarray) -> tuple[float, float]:
    """Cluster pair precision and recall over ``subset`` (the quick form of :func:`evaluate`, for sweeps)."""
    idx = np.flatnonzero(subset)
    predicted = cluster_pairs(labels[idx])
    true = cluster_pairs(truth[idx])
    tp = len(predicted & true)
    return (tp / len(predicted) if predicted else 1.0), (tp / len(true) if true else 1.0)


def choose_on_tuning(
    labels_for: Callable[[Any], np.ndarray],
    grid: list[Any],
    records: list[dict[str, Any]],
    min_precision: float,
) -> tuple[Any, float, float]:
    """The setting of ``grid`` with the best tuning-half recall among those with tuning-half precision >=
    ``min_precision`` (the test half is never looked at); ``(setting, precision, recall)``."""
    truth = np.unique([r["group"] for r in records], return_inverse=True)[1]
    tune = np.array([r["split"] == "tune" for r in records])
    best: tuple[Any, float, float] = (grid[0], 0.0, -1.0)
    for setting in grid:
        precision, recall = _pr(labels_for(setting), truth, tune)
        if precision >= min_precision and recall > best[2]:
            best = (setting, precision, recall)
    return best


def run_imagededup(python: Path, folder: Path, records: list[dict[str, Any]], workers: int, tmp: Path,
                   max_distance: int = 10, min_similarity: float = 0.9,
                   min_precision: float = 0.99) -> dict[str, Any] | None:  # fmt: skip
    """imagededup's PHash (its default distance <= 10) and CNN (its default cosine >= 0.9), the CNN fed the same
    EfficientNet-Lite0 weights as emo8 (through imagededup's ``CustomModel``, with the model's own timm
    evaluation transform); connected components of each method's pairs and of the union of both, at imagededup's
    defaults and at the union thresholds chosen on the tuning half. None when its venv is missing."""
    if not python.exists():
        hint = "python3 -m venv .venv-peers-imagededup && .venv-peers-imagededup/bin/pip install " + PEER_PINS
        print(f"imagededup skipped: no venv at {python} (create it with `{hint}`)", flush=True)
        return None
    job = {
        "image_dir": str(folder),
        "workers": workers,
        "max_distance": max_distance,
        "min_similarity": min_similarity,
        "weights": str(lite0_weights_path()),
        "hashes": True,
        "cnn": True,
        "cnn_workers": max(0, workers - 1),
    }
    job_path, out_path = tmp / "job.json", tmp / "imagededup.json"
    job_path.write_text(json.dumps(job))
    proc = subprocess.run([str(python), str(REPO / "benchmarks" / "_imagededup_runner.py"), str(job_path),
                           str(out_path)], capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        print(f"imagededup failed, skipped:\n{proc.stderr[-2000:]}", flush=True)
        return None
    result = json.loads(out_path.read_text())
    index = {r["file"]: k for k, r in enumerate(records)}
    n = len(records)
    codes = np.zeros(n, np.uint64)
    for name, code in result["phash"]["codes"].items():
        codes[index[name]] = np.uint64(int(code, 16))
    hp = hamming_pairs(codes, 16)  # the loosest radius of the sweep; smaller radii filter it
    matrix = np.load(out_path.with_suffix(".cnn.npy")).astype(np.float32)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    full = np.zeros((n, matrix.shape[1]), np.float32)
    full[[index[name] for name in result["cnn"]["names"]]] = matrix
    cp = cosine_pairs(full, 0.7)

    def hash_edges(d: int) -> np.ndarray:
        keep = hp.value <= d
        return np.stack([hp.i[keep], hp.j[keep]], axis=1)

    def cnn_edges(s: float) -> np.ndarray:
        keep = cp.value >= s
        return np.stack([cp.i[keep], cp.j[keep]], axis=1)

    def union(setting: tuple[int, float]) -> np.ndarray:
        return components(n, [hash_edges(setting[0]), cnn_edges(setting[1])])

    grid = [(d, round(s, 2)) for d in range(0, 17) for s in np.arange(0.70, 1.0, 0.01)]
    (d_t, s_t), _, _ = choose_on_tuning(union, grid, records, min_precision)
    print(f"imagededup union thresholds chosen on the tuning half: PHash <= {d_t}, CNN >= {s_t}", flush=True)
    return {
        "imagededup PHash": {"labels": components(n, [hash_edges(max_distance)]), "setting": f"D<={max_distance}"},
        "imagededup CNN": {"labels": components(n, [cnn_edges(min_similarity)]), "setting": f"S>={min_similarity}"},
        "imagededup union, defaults": {"labels": union((max_distance, min_similarity)),
                                       "setting": f"PHash D<={max_distance} | CNN S>={min_similarity}"},
        "imagededup union, tuned": {"labels": union((d_t, s_t)), "setting": f"PHash D<={d_t} | CNN S>={s_t}"},
        "timings": {k: {t: v for t, v in result[k].items() if t.endswith("seconds")} for k in ("phash", "cnn")},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--bases", type=int, default=60, help="base images evenly spread over photos-dev (0 = all)"
    )
    parser.add_argument("--distractors", type=int, default=40)
    parser.add_argument(
        "--templates", type=int, default=20, help="bases that also appear inside a card template"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--imagededup-python", type=Path, default=REPO / ".venv-peers-imagededup/bin/python")
    parser.add_argument("--out", type=Path, default=OUT / "neardup.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="neardup-"))
    folder = tmp / "images"
    folder.mkdir()
    t0 = time.perf_counter()
    records = build_set(args.data, args.bases, args.distractors, args.templates, folder)
    print(f"built {len(records)} images in {time.perf_counter() - t0:.0f}s", flush=True)
    systems: dict[str, Any] = {}
    emo8 = run_emo8(folder, records, tmp, args.workers)
    for name in ("emo8", "emo8 without verification"):
        systems[name] = emo8[name]
    print(f"emo8 done ({emo8['emo8']['seconds']:.0f}s dedup)", flush=True)
    systems["plain SIFT"] = run_plain_sift(emo8["ws"], records, emo8["position"], workers=args.workers)
    print("plain SIFT done", flush=True)
    peers = run_imagededup(args.imagededup_python, folder, records, args.workers, tmp)
    peer_timings = peers.pop("timings", None) if peers else None
    if peers:
        systems.update(peers)
    split = np.array([r["split"] for r in records])
    results: dict[str, Any] = {}
    for name, system in systems.items():
        results[name] = {s: evaluate(records, system["labels"], split == s) for s in ("tune", "test")}
        results[name]["all"] = evaluate(records, system["labels"], np.ones(len(records), bool))
    report = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "command": " ".join(sys.argv), "images": len(records),
        "bases": args.bases, "edits": list(EDITS), "results": results,
        "emo8": {k: emo8["emo8"]["report"].get(k) for k in ("verification", "pairs_per_tier", "clusters", "timings")},
        "emo8_seconds": {"ingest": emo8["ingest_s"], "embed": emo8["embed_s"], "dedup": emo8["emo8"]["seconds"]},
        "plain_sift": {k: systems["plain SIFT"][k] for k in ("pairs", "pairs_per_second", "seconds")},
        "settings": {name: system.get("setting", "defaults") for name, system in systems.items()},
        "imagededup_timings": peer_timings,
    }  # fmt: skip
    args.out.write_text(
        json.dumps(report, indent=1, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    )
    print(f"\n{len(records)} images; CPU {report['cpu']} x{report['cores']}")
    for s in ("tune", "test"):
        print(f"\n[{s}] cluster pair precision / recall")
        print(f"{'edit':<14}" + "".join(f"{n[:24]:>26}" for n in results))
        for edit in EDITS:
            cells = [results[n][s]["per_edit"][edit] for n in results]
            print(f"{edit:<14}" + "".join(f"{c['recall']:>14.3f} /{c['precision']:>9.3f}" for c in cells))
        print(f"{'ALL':<14}" + "".join(
            f"{results[n][s]['recall']:>14.3f} /{results[n][s]['precision']:>9.3f}" for n in results))  # fmt: skip
        for n in results:
            print(f"  {n}: false pairs by kind {results[n][s]['false_pairs_by_kind']}")
    print("\nemo8 verification:", json.dumps(report["emo8"]["verification"]))
    print(
        "emo8 seconds:", json.dumps(report["emo8_seconds"]), "plain SIFT:", json.dumps(report["plain_sift"])
    )
    print(f"\nwritten {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
