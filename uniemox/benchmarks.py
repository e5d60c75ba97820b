"""Downstream benchmarks: class lists, layout adapters, the 2-class polarity mode and deterministic splits.

A benchmark is a :class:`BenchmarkSpec` in :data:`BENCHMARKS` (name -> class list, layout, split ratios, the
polarity of each class). :func:`open_benchmark` reads one split of one dataset into a :class:`LabeledSource`:
integer labels in the spec's class order, an image loader, stable ids and, where the data has them, Emo8's vote
distributions and domains. Layouts (a registry, :data:`ADAPTERS`):

* ``hf``: a Hugging Face dataset with an Image column and a ClassLabel column: an Emo8 release directory
  (``data/{train,validation,test}-*.parquet``), a ``save_to_disk`` directory, any directory of parquet shards, or
  a Hub id;
* ``imagefolder``: ``<root>/{train,val,test}/<class>/*.jpg`` (also ``<root>/<name>/{train,val,test}/...``, the
  public UniEmoX code's tree);
* ``emoset``: EmoSet's JSON layout (``info.json``, ``{train,val,test}.json`` = ``[[emotion, image, annotation],
  ...]``, ``annotation/<emotion>/*.json``, ``image/<emotion>/*.jpg``).

The 8 Mikels datasets (Emo8, FI, EmoSet) share Emo8's class order, so a model trained on one evaluates on another
without any mapping. :func:`split_dataset` makes the documented train/val/test split of a dataset that ships
without one, from its content alone (sha256 of the files), so the same files give the same split anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emo8.core.taxonomy import EMOTIONS, NEGATIVE, POSITIVE

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
SPLIT_NAMES = ("train", "val", "test")
#: Other names a split goes by in the layouts we read (Hugging Face says "validation").
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {"train": ("train",), "val": ("val", "validation", "valid"),
                                             "test": ("test",)}  # fmt: skip
POLARITY_CLASSES = ("positive", "negative")


class BenchmarkError(ValueError):
    """Data that does not fit the named benchmark (unknown class folder, missing split, wrong layout...)."""


class MissingSplitError(BenchmarkError):
    """The data has no such split (fine-tuning runs on without validation or test split, with a warning)."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: its classes (the model's output order), layout, split ratios and class polarity.

    ``polarity`` maps each class to ``"positive"``/``"negative"``, or to None when the class has no polarity
    (it is left out in the 2-class mode); empty = the dataset has no 2-class mode. ``aliases`` maps other folder
    or label spellings (lower case) to a class name.
    """

    name: str
    classes: tuple[str, ...]
    layout: str
    split_ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    polarity: dict[str, str | None] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def class_index(self, label: str) -> int | None:
        key = str(label).strip().lower().replace(" ", "_")
        key = self.aliases.get(key, key)
        lowered = [c.lower() for c in self.classes]
        return lowered.index(key) if key in lowered else None


_MIKELS_POLARITY: dict[str, str | None] = {e: ("positive" if e in POSITIVE else "negative") for e in EMOTIONS}
assert set(_MIKELS_POLARITY) == POSITIVE | NEGATIVE

#: The registry of benchmarks (the paper's seven, plus the generic layouts ``hf`` and ``imagefolder``, whose
#: classes come from the data).
BENCHMARKS: dict[str, BenchmarkSpec] = {}


def register_benchmark(spec: BenchmarkSpec) -> BenchmarkSpec:
    BENCHMARKS[spec.name] = spec
    return spec


for _spec in (
    BenchmarkSpec("emo8", EMOTIONS, "hf", (0.8, 0.1, 0.1), _MIKELS_POLARITY,
                  description="Emo8 release (HF parquet); label_distribution and domain when present"),
    BenchmarkSpec("fi", EMOTIONS, "imagefolder", (0.8, 0.05, 0.15), _MIKELS_POLARITY,
                  description="FI (Flickr & Instagram), Mikels 8, split 80/5/15"),
    BenchmarkSpec("emoset", EMOTIONS, "emoset", (0.8, 0.05, 0.15), _MIKELS_POLARITY,
                  description="EmoSet-118K JSON layout, Mikels 8 (ships with splits)"),
    BenchmarkSpec("emotion6", ("anger", "disgust", "fear", "joy", "sadness", "surprise"), "imagefolder",
                  aliases={"happiness": "joy", "happy": "joy", "sad": "sadness"}, description="Emotion6"),
    BenchmarkSpec("unbiasedemo", ("anger", "fear", "joy", "love", "sadness", "surprise"), "imagefolder",
                  aliases={"happiness": "joy", "happy": "joy", "sad": "sadness"}, description="UnbiasedEmo"),
    BenchmarkSpec("caer-s", ("anger", "disgust", "fear", "happy", "neutral", "sad", "surprise"), "imagefolder",
                  aliases={"happiness": "happy", "joy": "happy", "sadness": "sad"},
                  description="CAER-S (context-aware emotion recognition, static frames)"),
    BenchmarkSpec("heco", ("surprise", "excitement", "happiness", "peace", "disgust", "anger", "fear", "sadness"),
                  "imagefolder",
                  polarity={"surprise": None, "excitement": "positive", "happiness": "positive",
                            "peace": "positive", "disgust": "negative", "anger": "negative", "fear": "negative",
                            "sadness": "negative"},
                  aliases={"happy": "happiness", "sad": "sadness"}, description="HECO (context emotions)"),
    BenchmarkSpec("hf", (), "hf", description="any Hugging Face dataset: Image column + ClassLabel column"),
    BenchmarkSpec("imagefolder", (), "imagefolder", description="any ImageFolder tree (classes = folder names)"),
):  # fmt: skip
    register_benchmark(_spec)


def get_benchmark(name: str) -> BenchmarkSpec:
    key = name.strip().lower().replace("_", "-")
    key = {"caers": "caer-s", "unbiased-emo": "unbiasedemo", "emoset-118k": "emoset"}.get(key, key)
    if key not in BENCHMARKS:
        raise BenchmarkError(f"unknown dataset {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


# --- labelled data --------------------------------------------------------------------------------------------


@dataclass
class LabeledSource:
    """One split of a benchmark: labels in ``classes`` order, an image loader and per-item extras."""

    dataset: str
    split: str
    classes: tuple[str, ...]
    labels: np.ndarray  # (N,) int64
    ids: list[str]
    loader: Callable[[int], Image.Image]
    soft: np.ndarray | None = None  # (N, C) float32 vote distributions (rows sum to 1), Emo8 only
    domains: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, index: int) -> Image.Image:
        return self.loader(index).convert("RGB")

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabeledSource:
        idx = [int(i) for i in indices]
        base = self.loader
        return replace(
            self,
            labels=self.labels[idx],
            ids=[self.ids[i] for i in idx],
            loader=_SubsetLoader(base, idx),
            soft=None if self.soft is None else self.soft[idx],
            domains=None if self.domains is None else [self.domains[i] for i in idx],
        )


class _SubsetLoader:
    """Picklable index remapping (DataLoader workers pickle the loader)."""

    def __init__(self, base: Callable[[int], Image.Image], indices: list[int]) -> None:
        self.base, self.indices = base, indices

    def __call__(self, i: int) -> Image.Image:
        return self.base(self.indices[i])


class _FileLoader:
    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __call__(self, i: int) -> Image.Image:
        with Image.open(self.files[i]) as img:
            img.load()
            return img


class _HFLoader:
    def __init__(self, ds: Any, column: str) -> None:
        self.ds, self.column = ds.select_columns([column]), column

    def __call__(self, i: int) -> Image.Image:
        img = self.ds[i][self.column]
        return img if isinstance(img, Image.Image) else Image.open(img["path"])


def _split_dirs(root: Path, split: str) -> list[Path]:
    if split not in SPLIT_ALIASES:
        raise BenchmarkError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_NAMES)}")
    return [root / a for a in SPLIT_ALIASES[split] if (root / a).is_dir()]


# --- adapters -------------------------------------------------------------------------------------------------

Adapter = Callable[[str, str, BenchmarkSpec, dict[str, Any]], LabeledSource]
#: layout name -> adapter(data path or Hub id, split, spec, options) -> LabeledSource
ADAPTERS: dict[str, Adapter] = {}


def register_adapter(layout: str) -> Callable[[Adapter], Adapter]:
    def wrap(fn: Adapter) -> Adapter:
        ADAPTERS[layout] = fn
        return fn

    return wrap


def _map_labels(spec: BenchmarkSpec, names: Sequence[str], where: str) -> list[int]:
    out = []
    for name in names:
        idx = spec.class_index(name)
        if idx is None:
            raise BenchmarkError(
                f"{where}: class {name!r} is not one of {spec.name}'s classes ({', '.join(spec.classes)})"
            )
        out.append(idx)
    return out


@register_adapter("imagefolder")
def _imagefolder(data: str, split: str, spec: BenchmarkSpec, opts: dict[str, Any]) -> LabeledSource:
    root = Path(data).expanduser()
    if not root.is_dir():
        raise BenchmarkError(f"{data} is not a directory (expected <root>/{{train,val,test}}/<class>/*.jpg)")
    dirs = _split_dirs(root, split)
    if not dirs and (root / spec.name).is_dir():  # the public code's <root>/<name>/{train,val,test}/<class>/
        dirs = _split_dirs(root / spec.name, split)
    if not dirs:
        raise MissingSplitError(
            f"{root} has no {split!r} split folder; expected {root}/{split}/<class>/*.jpg"
            + (
                f" (make one with `uniemox data split {spec.name} --src RAW --out DIR`)"
                if spec.classes
                else ""
            )
        )
    class_dirs = sorted(d for base in dirs for d in base.iterdir() if d.is_dir())
    classes = spec.classes or tuple(sorted({d.name for d in class_dirs}))
    spec = replace(spec, classes=classes)
    files: list[Path] = []
    labels: list[int] = []
    for d, idx in zip(class_dirs, _map_labels(spec, [d.name for d in class_dirs], str(root)), strict=True):
        found = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        files += found
        labels += [idx] * len(found)
    if not files:
        raise BenchmarkError(f"no images under {', '.join(map(str, dirs))}")
    ids = [f.relative_to(root).as_posix() for f in files]
    return LabeledSource(spec.name, split, classes, np.asarray(labels, np.int64), ids, _FileLoader(files))


@register_adapter("emoset")
def _emoset(data: str, split: str, spec: BenchmarkSpec, opts: dict[str, Any]) -> LabeledSource:
    root = Path(data).expanduser()
    if not (root / "info.json").is_file():
        raise BenchmarkError(f"{root} is not EmoSet's layout (no info.json)")
    listing = next((root / f"{a}.json" for a in SPLIT_ALIASES.get(split, ()) if (root / f"{a}.json").is_file()),
                   None)  # fmt: skip
    if listing is None:
        raise MissingSplitError(f"{root} has no {split}.json")
    files: list[Path] = []
    names: list[str] = []
    for entry in json.loads(listing.read_text()):
        emotion, image = (
            (entry["emotion"], entry["image"]) if isinstance(entry, dict) else (entry[0], entry[1])
        )
        files.append(root / image)
        names.append(emotion)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise BenchmarkError(f"{listing} lists {len(missing)} images that do not exist, e.g. {missing[0]}")
    labels = np.asarray(_map_labels(spec, names, str(listing)), np.int64)
    ids = [f.relative_to(root).as_posix() for f in files]
    return LabeledSource(spec.name, split, spec.classes, labels, ids, _FileLoader(files))


def _hf_dataset(data: str, split: str) -> Any:
    import datasets

    from uniemox.datapath import check_data_path

    check_data_path(data)  # one release: never a workspace or a tree of several releases
    path = Path(data).expanduser()
    aliases = SPLIT_ALIASES.get(split, (split,))
    if not path.exists():
        if "/" not in data or data.startswith((".", "/", "~")):
            raise BenchmarkError(f"{data} is neither a directory nor a Hugging Face Hub id (owner/name)")
        dsd = datasets.load_dataset(data)
    elif any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
        dsd = datasets.load_from_disk(str(path))
    else:
        shards = sorted(path.rglob("*.parquet"))
        if not shards:
            raise BenchmarkError(f"{path} holds no Hugging Face dataset (no parquet shards, no save_to_disk)")
        by_split = {a: [str(s) for s in shards if s.name.startswith(f"{a}-") or s.parent.name == a]
                    for a in aliases}  # fmt: skip
        chosen = next((fs for fs in by_split.values() if fs), None)
        if chosen is None:
            raise MissingSplitError(f"{path} has no {split!r} parquet shards ({split}-*.parquet)")
        return datasets.load_dataset("parquet", data_files=chosen, split="train")
    if isinstance(dsd, datasets.Dataset):
        return dsd
    name = next((a for a in aliases if a in dsd), None)
    if name is None:
        raise MissingSplitError(f"{data} has no {split!r} split; it has {', '.join(dsd)}")
    return dsd[name]


@register_adapter("hf")
def _hf(data: str, split: str, spec: BenchmarkSpec, opts: dict[str, Any]) -> LabeledSource:
    import datasets

    ds = _hf_dataset(data, split)
    image_col = opts.get("image_col") or next(
        (k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None
    )
    label_col = opts.get("label_col") or next(
        (k for k in ("label", *ds.features) if isinstance(ds.features.get(k), datasets.ClassLabel)), None
    )
    if image_col not in ds.features or label_col not in ds.features:
        raise BenchmarkError(
            f"{data} needs an Image column and a ClassLabel column; it has {dict(ds.features)} "
            "(name them with --image-col/--label-col)"
        )
    feature = ds.features[label_col]
    names = list(getattr(feature, "names", []) or [])
    if not names:
        raise BenchmarkError(f"column {label_col!r} of {data} is not a ClassLabel (no class names)")
    classes = spec.classes or tuple(names)
    spec = replace(spec, classes=classes)
    remap = np.asarray(_map_labels(spec, names, f"{data} column {label_col}"), np.int64)
    raw = np.asarray(ds[label_col], np.int64)
    keep = np.flatnonzero(raw >= 0)  # -1 = no label
    labels = remap[raw[keep]]
    cols = set(ds.column_names)
    soft: np.ndarray | None = None
    if "label_distribution" in cols:
        dists = ds["label_distribution"]
        soft = np.zeros((len(raw), len(classes)), np.float32)
        for i, d in enumerate(dists):
            if d is None or len(d) != len(names) or not np.isfinite(np.sum(d)) or float(np.sum(d)) <= 0:
                soft[i, remap[raw[i]] if raw[i] >= 0 else 0] = 1.0  # no votes: the hard label
            else:
                soft[i, remap] = np.asarray(d, np.float32) / float(np.sum(d))
        soft = soft[keep]
    domain_col = list(ds["domain"]) if "domain" in cols else None
    domains = [domain_col[i] for i in keep] if domain_col is not None else None
    id_col = next((c for c in ("sha256", "id", "image_id") if c in cols), None)
    ids = [str(x) for x in ds[id_col]] if id_col else [f"{split}/{i}" for i in range(len(raw))]
    ids = [ids[i] for i in keep]
    loader: Callable[[int], Image.Image] = _HFLoader(ds, str(image_col))
    if len(keep) != len(raw):
        loader = _SubsetLoader(loader, [int(i) for i in keep])
    return LabeledSource(spec.name, split, classes, labels, ids, loader, soft, domains)


def open_benchmark(
    dataset: str,
    data: str | os.PathLike[str],
    split: str = "train",
    *,
    polarity: bool = False,
    image_col: str | None = None,
    label_col: str | None = None,
) -> LabeledSource:
    """Read one split (``train``/``val``/``test``) of ``dataset`` from ``data`` (a path or a Hub id)."""
    spec = get_benchmark(dataset)
    source = ADAPTERS[spec.layout](str(data), split, spec, {"image_col": image_col, "label_col": label_col})
    if len(source) == 0:
        raise BenchmarkError(f"the {split} split of {data} is empty")
    return to_polarity(source) if polarity else source


# --- polarity and cross-dataset mapping -----------------------------------------------------------------------


def polarity_map(dataset: str, classes: Sequence[str]) -> dict[str, str | None]:
    """Class -> positive/negative/None for ``dataset``; raises when the dataset has no 2-class mode."""
    spec = BENCHMARKS.get(dataset)
    table = dict(spec.polarity) if spec is not None and spec.polarity else {}
    if not table and set(classes) == set(EMOTIONS):
        table = dict(_MIKELS_POLARITY)
    if not table or not set(classes) <= set(table):
        raise BenchmarkError(
            f"{dataset} has no 2-class polarity mode (defined for the 8-class datasets: "
            f"{', '.join(n for n, s in BENCHMARKS.items() if s.polarity)})"
        )
    return table


def to_polarity(source: LabeledSource) -> LabeledSource:
    """The 2-class (positive, negative) view; classes without a polarity (HECO's surprise) are left out."""
    if source.classes == POLARITY_CLASSES:
        return source
    table = polarity_map(source.dataset, source.classes)
    target = np.asarray([POLARITY_CLASSES.index(p) if p else -1 for p in (table[c] for c in source.classes)])
    new = target[source.labels]
    keep = np.flatnonzero(new >= 0)
    out = source.subset(keep) if len(keep) != len(new) else replace(source)
    out.labels, out.classes = new[keep], POLARITY_CLASSES
    if out.soft is not None:
        soft = np.zeros((len(out.labels), 2), np.float32)
        for c, t in enumerate(target):
            if t >= 0:
                soft[:, t] += out.soft[:, c]
        out.soft = soft / np.clip(soft.sum(1, keepdims=True), 1e-12, None)
    return out


def class_mapping(model_classes: Sequence[str], data_classes: Sequence[str]) -> np.ndarray:
    """(len(data_classes), len(model_classes)) 0/1 matrix: which model outputs make up each data class.

    Identical names map one to one (the Mikels 8 of Emo8, FI and EmoSet); a 2-class dataset is evaluated with an
    8-class Mikels model by summing each polarity's probabilities. Anything else raises with both lists.
    """
    m = np.zeros((len(data_classes), len(model_classes)), np.float32)
    lowered = [c.lower() for c in model_classes]
    if all(c.lower() in lowered for c in data_classes):
        for i, c in enumerate(data_classes):
            m[i, lowered.index(c.lower())] = 1
        return m
    if tuple(data_classes) == POLARITY_CLASSES and set(model_classes) == set(EMOTIONS):
        for j, c in enumerate(model_classes):
            m[POLARITY_CLASSES.index(_MIKELS_POLARITY[c] or ""), j] = 1
        return m
    raise BenchmarkError(
        f"the model's classes ({', '.join(model_classes)}) do not cover the data's ({', '.join(data_classes)}); "
        "cross-dataset evaluation maps classes by name (the Mikels 8 of Emo8, FI and EmoSet map one to one) "
        "or 8 Mikels classes to the 2 polarities (--polarity)"
    )


# --- deterministic splits -------------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``n * ratios`` (sums to ``n``); a non-empty class keeps >= 1 train item."""
    raw = [n * r for r in ratios]
    counts = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))[: n - sum(counts)]:
        counts[i] += 1
    if n and counts[0] == 0:
        j = max(range(len(counts)), key=lambda i: counts[i])
        counts[j] -= 1
        counts[0] += 1
    return counts


@dataclass
class SplitResult:
    out: Path
    counts: dict[str, dict[str, int]]  # split -> class -> images
    duplicates: int  # files whose exact content appeared earlier (kept in the same split)


def split_dataset(
    dataset: str,
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    ratios: tuple[float, float, float] | None = None,
    copy: bool = False,
) -> SplitResult:
    """``<src>/<class>/**/*.jpg`` -> ``<out>/{train,val,test}/<class>/...`` with the dataset's documented ratios.

    Stratified by class; inside a class, files are ordered by sha256(seed, sha256(content)), so the split depends
    on the files' bytes and the seed only (not on names, paths or listing order); identical files share a split.
    Files are hard-linked (copied with ``copy=True`` or across file systems). Idempotent: an existing output that
    matches is left alone; one that differs is an error (nothing is overwritten).
    """
    spec = get_benchmark(dataset)
    ratios = ratios or spec.split_ratios
    if len(ratios) != 3 or abs(sum(ratios) - 1) > 1e-6 or min(ratios) < 0:
        raise BenchmarkError(f"split ratios {ratios} must be three non-negative shares summing to 1")
    src_path, out_path = Path(src).expanduser(), Path(out).expanduser()
    if not src_path.is_dir():
        raise BenchmarkError(f"{src_path} is not a directory (expected <src>/<class>/*.jpg)")
    class_dirs = sorted(d for d in src_path.iterdir() if d.is_dir())
    if spec.classes:
        _map_labels(spec, [d.name for d in class_dirs], str(src_path))
    plan: list[tuple[Path, Path]] = []
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLIT_NAMES}
    duplicates = 0
    for d in class_dirs:
        files = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        by_content: dict[str, list[Path]] = {}
        for f in files:
            by_content.setdefault(_file_sha256(f), []).append(f)
        duplicates += len(files) - len(by_content)
        order = sorted(by_content, key=lambda h: hashlib.sha256(f"{seed}:{h}".encode()).hexdigest())
        sizes = split_counts(len(order), ratios)
        start = 0
        for split, size in zip(SPLIT_NAMES, sizes, strict=True):
            chosen = order[start : start + size]
            start += size
            counts[split][d.name] = sum(len(by_content[h]) for h in chosen)
            for h in chosen:
                for f in by_content[h]:
                    plan.append((f, out_path / split / d.name / f.relative_to(d)))
    if not plan:
        raise BenchmarkError(f"no images under {src_path}/<class>/")
    clashes = [dst for s, dst in plan if dst.exists() and dst.stat().st_size != s.stat().st_size]
    if clashes:
        raise BenchmarkError(
            f"{out_path} already holds different files (e.g. {clashes[0]}); choose another --out"
        )
    for s, dst in plan:
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copy2(s, dst)
        else:
            try:
                os.link(s, dst)
            except OSError:
                shutil.copy2(s, dst)
    manifest = {"dataset": spec.name, "seed": seed, "ratios": list(ratios), "counts": counts,
                "duplicates": duplicates}  # fmt: skip
    (out_path / "split.json").write_text(json.dumps(manifest, indent=2))
    return SplitResult(out_path, counts, duplicates)
