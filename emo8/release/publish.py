"""Versioned releases: a Hugging Face dataset in the Hub's layout, a dataset card, a manifest and a CHANGELOG.

:func:`release` writes ``releases/X.Y.Z/``::

    README.md                                   dataset card: YAML metadata + a datasheet from the catalog's numbers
    data/train-00000-of-00001.parquet           image bytes embedded; see FEATURES
    data/validation-00000-of-00001.parquet
    data/test-00000-of-00001.parquet
    manifest.json                               sha256 -> split, label (and every file's sha256)
    CHANGELOG.md                                this release vs the previous one, then the older entries
    imagefolder/emo8/{train,val,test}/<class>/<sha256>.jpg     with --format imagefolder|both

so that ``datasets.load_dataset("releases/X.Y.Z")`` loads a ``DatasetDict`` with the class names intact, and the
directory can be pushed to the Hub as it is (:mod:`emo8.release.hub`).

What is released: ``valid`` items (never duplicates, contaminated or taken-down items) with a settled annotated
label (optionally also an agreement floor), or, with ``allow_weak_labels`` (bootstrapping only), a weak label from
their source. A release reads what earlier stages recorded and only verifies it (:mod:`emo8.release.inputs`):
splits come from :mod:`emo8.release.split` (items without one are assigned first, with the workspace's split
settings, unless ``assign_splits`` is off: then :class:`StaleInput`) and are verified free of cross-split
near-duplicates; a copy of a taken-down image that the catalog does not mark removed stops it (:class:`StaleInput`).
When ``emo8 build`` made the workspace, the card and manifest cite its record (:mod:`emo8.core.buildinfo`).

Reproducible: two runs on the same catalog write byte-identical files. Nothing depends on the clock (the card's
date is ``SOURCE_DATE_EPOCH`` when set, else the date of the newest catalog change among the released items before
the release assigned any missing splits),
rows are sorted by (split, sha256), and parquet is written with fixed settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from emo8.core import takedown
from emo8.core.curation import (
    LabelPolicy,
    cluster_ids,
    dedup_pairs,
    dedup_thresholds,
    frame,
    json_list,
    label_distribution,
    present,
    resolve_labels,
    workspace_embeddings,
)
from emo8.core.progress import stage_bar
from emo8.core.taxonomy import EMOTIONS
from emo8.core.workspace import Workspace
from emo8.release.inputs import (
    build_citation,
    dedup_coverage_warning,
    missing_splits,
    unrecorded_takedown_copies,
)
from emo8.release.split import SPLITS, LeakReport, assign_splits, find_leaks, stored_config

#: ImageFolder directory names of the splits (the layout the public UniEmoX fine-tuning code reads).
IMAGEFOLDER_SPLITS = {"train": "train", "validation": "val", "test": "test"}

#: Release formats; ``both`` = all of them.
FORMATS = ("hf", "imagefolder")

_VERSION = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")

_COLUMNS = (
    "status", "url", "source", "source_path", "sha256", "format", "width", "height", "license", "author", "title",
    "domain", "weak_label", "brightness", "colorfulness", "phash", "pixel_hash", "meta", "updated_at", "dup_of",
    "cluster_id", "person_boxes", "label", "label_distribution", "num_votes", "agreement", "settled",
    "unsettled_reason", "imported_label", "split", "label_method",
)  # fmt: skip

#: Released columns, in order, with what each holds (the card lists these descriptions).
FEATURE_DOCS: dict[str, str] = {
    "image": "the image, original bytes as ingested (JPEG, PNG, WebP, GIF, BMP or TIFF)",
    "label": "the emotion: ClassLabel of the 8 Mikels emotions",
    "label_distribution": "the soft label: share of annotator votes per emotion, in class order (null without votes)",
    "num_votes": "annotator votes behind the label (0 for imported and weak labels)",
    "agreement": "share of votes for the final label (null without votes)",
    "domain": "style/domain of the image (cartoon, natural, realistic, scifi, advertising, or the source's own)",
    "source": "the source adapter that found it (folder, urls, openverse, hf)",
    "source_url": "where it was published: the image URL or its landing page (null for local files)",
    "license": "licence of the image (SPDX-like id where known)",
    "author": "creator / rights holder",
    "title": "title or caption from the source",
    "sha256": "sha256 of the image bytes (the item's id across releases)",
    "phash": "64-bit perceptual hash, 16 hex characters",
    "width": "width in pixels (after EXIF orientation)",
    "height": "height in pixels (after EXIF orientation)",
    "brightness": "mean luma in [0, 1]",
    "colorfulness": "Hasler and Suesstrunk colourfulness",
    "person_boxes": "detected people, [[x0, y0, x1, y1, score], ...] in pixels (null: detection did not run)",
    "cluster_id": "sha256 of the canonical image of its dedup cluster (its own sha256 when it has no duplicates)",
    "label_source": "where the label comes from: annotation (settled rounds), imported (a curator's label file) "
    "or weak (source metadata, bootstrap only)",
}


class ReleaseError(RuntimeError):
    """A release that cannot be written (bad version, existing release, leaks, nothing to release...)."""


class NothingToRelease(ReleaseError):
    """The catalog has no item with a releasable label; the message says what the catalog does have."""


class StaleInput(ReleaseError):
    """What an earlier stage records is missing or out of date (items without a split, copies of taken-down images
    the catalog does not mark removed); the message names the command that settles it."""


@dataclass(frozen=True)
class ReleaseConfig:
    """What to release, and how.

    Parameters
    ----------
    version
        Semantic version ``X.Y.Z``; releases are immutable (``overwrite`` to rewrite one, e.g. for a rebuild).
    formats
        Names from :data:`FORMATS`.
    labels
        :class:`~emo8.core.curation.LabelPolicy`: agreement floor, weak-label bootstrap.
    out
        Release directory; default ``<workspace>/releases/<version>``.
    imagefolder_out
        ImageFolder root; default ``<out>/imagefolder`` (the tree is ``<root>/emo8/{train,val,test}/<class>/``).
    max_shard_bytes
        Upper bound of image bytes per parquet shard (the Hub's default shard size is 500 MB).
    rows_per_group
        Parquet row-group size (small groups keep random access and the Hub's viewer cheap for image data).
    name, repo_id, license
        The card's pretty name, the Hub repo it is meant for (usage snippet), the dataset-level licence id
        (``other``: each image carries its own licence in the ``license`` column).
    allow_leaks
        Write even if cross-split near-duplicates are found (never by default).
    assign_splits
        Items without a split get one first, with the workspace's split settings (what ``emo8 split`` would do);
        False: such items stop the release with :class:`StaleInput` (a release then writes nothing to the catalog).
    progress
        Show a progress bar while the images are written.
    """

    version: str
    formats: tuple[str, ...] = ("hf",)
    labels: LabelPolicy = field(default_factory=LabelPolicy)
    out: Path | None = None
    imagefolder_out: Path | None = None
    max_shard_bytes: int = 500 * 1024 * 1024
    rows_per_group: int = 100
    overwrite: bool = False
    name: str = "Emo8"
    repo_id: str | None = None
    license: str = "other"
    allow_leaks: bool = False
    assign_splits: bool = True
    progress: bool = True

    def validate(self) -> None:
        if not _VERSION.match(self.version):
            raise ReleaseError(f"version must be X.Y.Z (semantic versioning), got {self.version!r}")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise ReleaseError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)} or both")


def parse_formats(text: str) -> tuple[str, ...]:
    """``hf``, ``imagefolder`` or ``both`` (or a comma-separated list) -> format names."""
    if text == "both":
        return FORMATS
    return tuple(f.strip() for f in text.split(",") if f.strip())


def version_key(version: str) -> tuple[int, int, int]:
    """Sort key of an ``X.Y.Z`` version."""
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"not a version: {version!r}")
    return (int(match[1]), int(match[2]), int(match[3]))


@dataclass
class ReleaseResult:
    """What :func:`release` wrote."""

    version: str
    path: Path
    splits: dict[str, int]
    classes: dict[str, int]
    files: list[str]
    parquet_bytes: int
    label_sources: dict[str, int]
    held_back: dict[str, int]
    excluded_takedown: int
    newly_split: int
    leaks: LeakReport
    previous: str | None
    changes: dict[str, int]
    imagefolder: Path | None = None
    warnings: list[str] = field(default_factory=list)
    #: Released images whose licence is unknown (see :func:`unknown_licence`).
    unknown_licences: int = 0
    #: How the workspace was built (``pipeline file (sha256 prefix)``), when ``emo8 build`` recorded it.
    build: str | None = None


# -- selecting rows -------------------------------------------------------------------------------------------------


def releasable(ws: Workspace, policy: LabelPolicy) -> tuple[pd.DataFrame, dict[str, int]]:
    """Return ``(rows, held_back)``: the ``valid`` items that have a releasable label under ``policy`` (with
    ``release_label`` and ``label_source`` columns), and counts of labelled items held back, by reason.

    Raises
    ------
    NothingToRelease
        If no item qualifies; the message says what the catalog holds and how to get labels.
    """
    items = frame(ws, _COLUMNS, where="status = 'valid'").reset_index(drop=True)
    resolved = _with_unsettled(items, resolve_labels(items, policy))
    items = pd.concat([items, resolved], axis=1)
    held = Counter(str(h) for h in resolved["held_back"] if present(h))
    rows = items[items["release_label"].notna()].reset_index(drop=True)
    if rows.empty:
        annotated = int(items["label"].map(present).sum())
        weak = int(items["weak_label"].map(present).sum())
        held_text = held_back_text(held)
        hint = (
            " Weak labels are not released by default; `--allow-weak-labels` ships them for bootstrapping."
            if weak and not policy.allow_weak_labels
            else ""
        )
        raise NothingToRelease(
            f"nothing to release: {len(items)} valid items, none with a settled label "
            f"({annotated} with an annotated label; held back: {held_text}; {weak} with a weak label only)."
            f"{hint} Run annotation rounds (`emo8 annotate push/pull/aggregate`) or import labels first."
        )
    return rows, dict(held)


def _with_unsettled(items: pd.DataFrame, resolved: pd.DataFrame) -> pd.DataFrame:
    """Count annotated items that did not settle (a tie, "none / unclear" won, too few votes...) as held back, by
    their ``unsettled_reason``, whether or not aggregation left them a label, unless another label of theirs (an
    imported or a weak one) is released."""
    settled = pd.to_numeric(items["settled"], errors="coerce")
    votes = pd.to_numeric(items["num_votes"], errors="coerce").fillna(0)
    annotated = (votes > 0) | items["unsettled_reason"].map(present) | items["label"].map(present)
    unsettled = (settled == 0) & annotated & resolved["release_label"].isna()
    reasons = [f"unsettled:{why}" if present(why) else "unsettled" for why in items["unsettled_reason"]]
    held = resolved["held_back"].where(~unsettled, pd.Series(reasons, index=items.index, dtype=object))
    return resolved.assign(held_back=held)


def held_back_text(held: dict[str, int]) -> str:
    """``{"unsettled:tie": 3, "low_agreement": 1}`` -> ``"low agreement 1, unsettled (tie) 3"`` ("none" if empty)."""
    parts = []
    for key, count in sorted(held.items()):
        kind, _, why = key.partition(":")
        name = kind.replace("_", " ") + (f" ({why.replace('_', ' ')})" if why else "")
        parts.append(f"{name} {count}")
    return ", ".join(parts) or "none"


#: Licence values that say nothing about the rights (besides an empty cell).
UNKNOWN_LICENCES = frozenset({"", "unknown", "(unknown)", "none", "n/a", "na", "null", "?"})


def unknown_licence(value: Any) -> bool:
    """Whether a ``license`` cell leaves the image's licence unknown."""
    return not present(value) or str(value).strip().lower() in UNKNOWN_LICENCES


def _release_date(rows: pd.DataFrame) -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.strip().isdigit():
        return datetime.fromtimestamp(int(epoch), tz=timezone.utc).date().isoformat()
    stamps = [str(s) for s in rows["updated_at"] if present(s)]
    return max(stamps)[:10] if stamps else "unknown"


def _source_url(url: Any, meta: Any) -> str | None:
    if present(url):
        return str(url)
    try:
        decoded = json.loads(meta) if present(meta) else {}
    except (TypeError, ValueError):
        decoded = {}
    if isinstance(decoded, dict):
        for key in ("landing_url", "foreign_landing_url", "page_url", "source_page"):
            if present(decoded.get(key)):
                return str(decoded[key])
    return None


def _opt_float(value: Any) -> float | None:
    return float(value) if present(value) else None


def _opt_int(value: Any) -> int | None:
    return int(value) if present(value) else None


def _boxes(value: Any) -> list[list[float]] | None:
    decoded = json_list(value)
    if decoded is None:
        return None if not present(value) else []
    boxes = []
    for box in decoded:
        if isinstance(box, (list, tuple)) and len(box) >= 4:
            boxes.append([float(v) for v in box[:5]])
    return boxes


def _records(rows: pd.DataFrame, clusters: dict[str, str]) -> list[dict[str, Any]]:
    """One dict per row, every released column except the image bytes."""
    out = []
    for r in rows.itertuples(index=False):
        weak = r.label_source != "annotation"  # weak or imported: no votes behind it
        votes = _opt_int(r.num_votes)
        out.append(
            {
                "label": EMOTIONS.index(r.release_label),
                "label_distribution": None if weak else label_distribution(r.label_distribution),
                "num_votes": 0 if weak else (votes if votes is not None else 0),
                "agreement": None if weak else _opt_float(r.agreement),
                "domain": r.domain if present(r.domain) else None,
                "source": r.source,
                "source_url": _source_url(r.url, r.meta),
                "license": r.license if present(r.license) else None,
                "author": r.author if present(r.author) else None,
                "title": r.title if present(r.title) else None,
                "sha256": r.sha256,
                "phash": r.phash if present(r.phash) else None,
                "width": _opt_int(r.width),
                "height": _opt_int(r.height),
                "brightness": _opt_float(r.brightness),
                "colorfulness": _opt_float(r.colorfulness),
                "person_boxes": _boxes(r.person_boxes),
                "cluster_id": clusters.get(str(r.item_id), r.sha256),
                "label_source": r.label_source,
                "_split": r.split,
                "_format": r.format,
                "_item_id": str(r.item_id),
                "_method": r.label_method
                if r.label_source == "annotation" and present(r.label_method)
                else None,
            }
        )
    return out


def features() -> Any:
    """The release's ``datasets.Features`` (see :data:`FEATURE_DOCS`)."""
    from datasets import ClassLabel, Features, Image, List, Value

    string = Value("string")
    return Features(
        {
            "image": Image(),
            "label": ClassLabel(names=list(EMOTIONS)),
            "label_distribution": List(Value("float32"), length=len(EMOTIONS)),
            "num_votes": Value("int32"),
            "agreement": Value("float32"),
            "domain": string,
            "source": string,
            "source_url": string,
            "license": string,
            "author": string,
            "title": string,
            "sha256": string,
            "phash": string,
            "width": Value("int32"),
            "height": Value("int32"),
            "brightness": Value("float32"),
            "colorfulness": Value("float32"),
            "person_boxes": List(List(Value("float32"))),
            "cluster_id": string,
            "label_source": string,
        }
    )


# -- writers --------------------------------------------------------------------------------------------------------


@dataclass
class _Context:
    ws: Workspace
    config: ReleaseConfig
    out: Path
    records: list[dict[str, Any]]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    split_bytes: dict[str, int] = field(default_factory=dict)
    parquet_bytes: int = 0
    imagefolder: Path | None = None
    advance: Callable[[int], None] = field(default=lambda n: None)

    def image_path(self, record: dict[str, Any]) -> Path:
        return self.ws.object_path(record["sha256"], record["_format"])

    def by_split(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        for split in SPLITS:
            rows = [r for r in self.records if r["_split"] == split]
            if rows:
                yield split, rows


Writer = Callable[[_Context], None]
#: Format name -> writer.
WRITERS: dict[str, Writer] = {}


def writer(name: str) -> Callable[[Writer], Writer]:
    """Decorator: register a release format writer under ``name``."""

    def register(fn: Writer) -> Writer:
        WRITERS[name] = fn
        return fn

    return register


def _shards(rows: list[dict[str, Any]], sizes: list[int], max_bytes: int) -> list[list[dict[str, Any]]]:
    """Cut ``rows`` into the fewest contiguous shards of about equal bytes, none above ``max_bytes``
    (unless a single image is larger)."""
    total = sum(sizes)
    count = max(1, math.ceil(total / max_bytes))
    target = total / count
    shards: list[list[dict[str, Any]]] = [[]]
    filled = 0
    for row, size in zip(rows, sizes, strict=True):
        if shards[-1] and filled + size > target * 1.0001 and len(shards) < count:
            shards.append([])
            filled = 0
        shards[-1].append(row)
        filled += size
    return shards


@writer("hf")
def _write_hf(ctx: _Context) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    feats = features()
    schema = feats.arrow_schema
    columns = [name for name in feats if name != "image"]
    data_dir = ctx.out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in ctx.by_split():
        sizes = [ctx.image_path(r).stat().st_size for r in rows]
        shards = _shards(rows, sizes, ctx.config.max_shard_bytes)
        split_bytes = 0
        for index, shard in enumerate(shards):
            name = f"data/{split}-{index:05d}-of-{len(shards):05d}.parquet"
            with pq.ParquetWriter(
                ctx.out / name, schema, compression="snappy", write_statistics=True, use_dictionary=True
            ) as out:
                for start in range(0, len(shard), ctx.config.rows_per_group):
                    group = shard[start : start + ctx.config.rows_per_group]
                    images = [
                        {"bytes": ctx.image_path(r).read_bytes(), "path": _image_name(r)} for r in group
                    ]
                    arrays = {"image": images, **{c: [r[c] for r in group] for c in columns}}
                    table = pa.Table.from_pydict(arrays, schema=schema)
                    ctx.advance(len(group))
                    split_bytes += table.nbytes
                    out.write_table(table, row_group_size=ctx.config.rows_per_group)
            ctx.parquet_bytes += (ctx.out / name).stat().st_size
        ctx.split_bytes[split] = split_bytes


def _image_name(record: dict[str, Any]) -> str:
    from emo8.core.imaging import FORMAT_EXTENSIONS

    return f"{record['sha256']}{FORMAT_EXTENSIONS.get(record['_format'] or '', '.bin')}"


@writer("imagefolder")
def _write_imagefolder(ctx: _Context) -> None:
    root = (ctx.config.imagefolder_out or ctx.out / "imagefolder") / "emo8"
    for split, rows in ctx.by_split():
        for record in rows:
            target = root / IMAGEFOLDER_SPLITS[split] / EMOTIONS[record["label"]] / f"{record['sha256']}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_as_jpeg(ctx.image_path(record).read_bytes(), record["_format"]))
            ctx.advance(1)
    ctx.imagefolder = root


def _as_jpeg(data: bytes, fmt: str | None) -> bytes:
    """The bytes as a JPEG that any loader shows upright: JPEGs without an EXIF rotation unchanged, anything else
    decoded (orientation applied, alpha on white) and encoded at quality 95 (deterministic)."""
    from PIL import Image

    from emo8.core.imaging import load_rgb

    if fmt == "jpeg":
        with Image.open(io.BytesIO(data)) as im:
            orientation = im.getexif().get(0x0112, 1)
        if orientation in (None, 1):
            return data
    buffer = io.BytesIO()
    load_rgb(data).save(buffer, format="JPEG", quality=95, subsampling=0)
    return buffer.getvalue()


# -- card, manifest, changelog --------------------------------------------------------------------------------------


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    bounds += [(10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
    return next((name for limit, name in bounds if n < limit), "n>1T")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@dataclass
class _CardFacts:
    """Numbers the card reports beyond the released rows."""

    catalog_status: dict[str, int]
    held_back: dict[str, int]
    excluded_takedown: int
    takedowns: int
    leaks: LeakReport
    date: str
    previous: str | None
    changes: dict[str, int]
    #: :func:`emo8.release.inputs.build_citation`: the pipeline file, code version and steps (None: built by hand).
    build: dict[str, Any] | None = None


def _card(ctx: _Context, facts: _CardFacts) -> str:
    import yaml
    from datasets import DatasetInfo, SplitDict, SplitInfo

    cfg = ctx.config
    records = ctx.records
    n = len(records)
    present_splits = [s for s, _ in ctx.by_split()]
    split_counts = Counter(r["_split"] for r in records)
    splits = SplitDict()
    for s in present_splits:
        splits.add(SplitInfo(name=s, num_bytes=ctx.split_bytes.get(s, 0), num_examples=split_counts[s]))
    info = DatasetInfo(
        features=features(),
        splits=splits,
        download_size=ctx.parquet_bytes,
        dataset_size=sum(ctx.split_bytes.values()),
    )
    sources = Counter(r["label_source"] for r in records)
    creators = []
    if sources.get("annotation"):
        creators.append("crowdsourced")
    if sources.get("imported"):
        creators.append("other")
    if sources.get("weak"):
        creators.append("found")
    metadata: dict[str, Any] = {
        "license": cfg.license,
        "license_name": "per-image" if cfg.license == "other" else None,
        "license_details": (
            "Each image keeps its own licence (column `license`); see the licence table in the card."
            if cfg.license == "other"
            else None
        ),
        "pretty_name": cfg.name,
        "task_categories": ["image-classification"],
        "task_ids": ["multi-class-image-classification"],
        "size_categories": [_size_category(n)],
        "annotations_creators": creators,
        "source_datasets": ["original"],
        "tags": ["emotion", "visual-emotion-analysis", "mikels-emotions", "emo8"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*"} for s in present_splits],
            }
        ],
        "dataset_info": info._to_yaml_dict(),
    }
    metadata = {k: v for k, v in metadata.items() if v is not None}
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{front}---\n\n{_datasheet(ctx, facts)}"


def _datasheet(ctx: _Context, facts: _CardFacts) -> str:
    cfg, records = ctx.config, ctx.records
    n = len(records)
    present_splits = [s for s, _ in ctx.by_split()]
    by_class_split = Counter((EMOTIONS[r["label"]], r["_split"]) for r in records)
    class_rows = [
        [e, *(by_class_split[(e, s)] for s in present_splits), sum(by_class_split[(e, s)] for s in SPLITS)]
        for e in EMOTIONS
    ]
    class_rows.append(
        ["**total**", *(sum(by_class_split[(e, s)] for e in EMOTIONS) for s in present_splits), n]
    )
    domains = Counter(r["domain"] or "(none)" for r in records)
    sources = Counter(r["source"] for r in records)
    licences = Counter(r["license"] if not unknown_licence(r["license"]) else "(unknown)" for r in records)
    unknown = licences.get("(unknown)", 0)
    label_sources = Counter(r["label_source"] for r in records)
    votes = [r["num_votes"] for r in records if r["label_source"] == "annotation"]
    agreements = [r["agreement"] for r in records if r["agreement"] is not None]
    widths = [r["width"] for r in records if r["width"]]
    heights = [r["height"] for r in records if r["height"]]
    boxes_known = [r for r in records if r["person_boxes"] is not None]
    with_people = sum(1 for r in boxes_known if r["person_boxes"])
    clusters = Counter(r["cluster_id"] for r in records)
    radius = facts.leaks.phash_max_distance
    dedup = ctx.ws.config.get("dedup") or {}
    status = facts.catalog_status
    repo = cfg.repo_id or "ORG/emo8"
    weak_note = ""
    if label_sources.get("weak"):
        weak_note = (
            f"\n\n**Bootstrap release.** {label_sources['weak']} of {n} labels are *weak labels* taken from source "
            "metadata (folder names, search queries, dataset labels), not settled human annotations "
            "(`label_source = weak`). Use them for bootstrapping, not for evaluation."
        )
    previous = (
        f"The previous release is {facts.previous}; CHANGELOG.md lists what changed "
        f"({', '.join(f'{k}: {v}' for k, v in facts.changes.items())})."
        if facts.previous
        else "This is the first release."
    )
    sections = [
        f"# {cfg.name} {cfg.version}",
        f"A visual-emotion dataset: {n} images labelled with one of the 8 Mikels emotions "
        f"({', '.join(EMOTIONS)}), in {len(domains)} styles/domains, built and audited with the `emo8` toolkit. "
        f"Release date: {facts.date}.{weak_note}",
        "## Usage",
        "```python\nfrom datasets import load_dataset\n\n"
        f'ds = load_dataset("{repo}", revision="v{cfg.version}")\n'
        f'# or, from a local copy: load_dataset("releases/{cfg.version}")\n'
        'names = ds["train"].features["label"].names\n```',
        "## Motivation",
        "Emo8 supports image emotion classification and the pretraining of emotion-aware visual representations "
        "(UniEmoX). It covers several styles (cartoon, natural, realistic, science fiction, advertising) so that "
        "models are not trained and evaluated on photographs only.",
        "## Composition",
        f"{n} images; one row per distinct image (sha256 of the bytes). Splits by class:",
        _table(["emotion", *present_splits, "total"], class_rows),
        "Domains: " + ", ".join(f"{k} {v}" for k, v in sorted(domains.items())) + ".",
        "Sources: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())) + ".",
        f"Image size: width median {_median(widths)} (min {min(widths, default=0)}, max {max(widths, default=0)}), "
        f"height median {_median(heights)} (min {min(heights, default=0)}, max {max(heights, default=0)}).",
        f"People: detection ran on {len(boxes_known)} images; {with_people} have at least one person box.",
        "Columns:",
        "\n".join(f"- `{name}`: {doc}" for name, doc in FEATURE_DOCS.items()),
        "## Collection process",
        "Images were collected from the sources above (keyword-seeded search of openly licensed images, URL "
        "lists, local folders, existing datasets) by a polite crawler that honours robots.txt and X-Robots-Tag "
        "(noai, noimageai), records every origin, and validates every image (format by magic bytes, "
        "decompression bombs, truncation, size and aspect limits). Catalog status at release time: "
        + ", ".join(f"{k} {v}" for k, v in sorted(status.items()))
        + ".",
        "## Preprocessing and cleaning",
        (
            f"Duplicates: exact (bytes, pixels), perceptual (pHash within {dedup.get('phash_max_distance')} bits) "
            f"and semantic (embedding cosine >= {dedup.get('embed_min_similarity')}, {dedup.get('model')}) "
            "duplicates are grouped into clusters and only each cluster's canonical image is released "
            f"({status.get('duplicate', 0)} duplicates excluded; {len(clusters)} clusters released). "
            if dedup
            else "Deduplication (`emo8 dedup`) has not been run on this catalog: copies of one image may appear "
            f"more than once (the split still keeps pHash-near copies, within {radius} bits, in one split). "
        )
        + f"Images that duplicate benchmark test sets are excluded ({status.get('contaminated', 0)} contaminated). "
        f"Take-downs: {facts.takedowns} request(s) honoured; {facts.excluded_takedown} matching images excluded "
        f"({status.get('removed', 0)} removed in all). The image bytes are released as ingested (no resizing).",
        f"Splits are group-aware (a dedup cluster, a source page and an author stay in one split), stratified by "
        f"label x domain, and stable across releases. Leak check: {facts.leaks.summary()}.",
        "## Annotation",
        _annotation_text(ctx, facts, label_sources, votes, agreements),
        "## Uses",
        "Intended: training and evaluating image emotion classifiers and emotion-aware representations"
        + (
            "; studying annotation agreement (use `label_distribution`, `agreement`)"
            if label_sources.get("annotation")
            else ""
        )
        + ". Emotion is subjective and culturally dependent: the labels are what "
        + ("the annotators perceived" if label_sources.get("annotation") else "the sources implied")
        + ", not a ground truth about the depicted people. Do not use the dataset to infer the emotions, identity "
        "or any sensitive attribute of depicted persons, or for surveillance.",
        "## Distribution",
        "Licences of the released images (each row carries its own `license`, `author` and `source_url`; "
        "attribution is required by most of them):",
        *(
            [
                f"**{unknown} of {n} images have no known licence** (`license` is null or says unknown): their "
                "redistribution rights are unclear. Check them, or leave them out, before publishing."
            ]
            if unknown
            else []
        ),
        _table(
            ["licence", "images"],
            [[k, v] for k, v in sorted(licences.items(), key=lambda kv: (-kv[1], kv[0]))],
        ),
        "## How this release was built",
        _provenance_text(facts.build),
        "## Maintenance",
        f"Versioned releases (semantic versioning; tag `v{cfg.version}` on the Hub), each with a manifest "
        f"(sha256 -> split, label) and a CHANGELOG against the previous one. {previous} Rights holders can ask "
        "for an image to be taken down; it and every copy of it are removed from all later releases, and the "
        "CHANGELOG lists the removal by hash.",
    ]
    return "\n\n".join(sections) + "\n"


def _provenance_text(build: dict[str, Any] | None) -> str:
    """The card's build section: the pipeline file (path, sha256), the code version and a table of the steps."""
    if build is None:
        return (
            "Built with individual `emo8` commands (no `emo8 build` record in the workspace): the commands and "
            "their settings are not recorded here."
        )
    pipeline = build["pipeline"]
    rows = [
        [f"`{s['name']}`", f"`{s['stage']}`", _settings_cell(str(s.get("stage")), s["settings"])]
        for s in build["steps"]
    ]
    text = (
        f"Built by `emo8 build` from the pipeline file `{pipeline['path']}` (sha256 `{pipeline['sha256']}`) "
        f"with emo8 {build.get('code_version') or 'of an unrecorded version'}. The steps and their settings "
        "(`manifest.json` holds the build record, the pipeline file's text included):"
    )
    return text + "\n\n" + _table(["step", "stage", "settings"], rows) if rows else text


#: Longest value a card's build table shows of one setting (the manifest has them all).
_CELL_VALUE_LIMIT = 60


def _settings_cell(stage: str, settings: dict[str, Any]) -> str:
    """The settings of one step that differ from the stage's defaults (all of them when the stage is not
    registered here), as ``a=1, b=[2, 3]`` for a Markdown table cell: long values cut (a text keeps its end, where
    a path names its file), ``|`` escaped."""
    from emo8.core.stage import STAGES

    model = STAGES[stage].settings if stage in STAGES else None
    parts = []
    for key, value in sorted(settings.items()):
        text = json.dumps(value, default=str)
        info = model.model_fields.get(key) if model is not None else None
        if info is not None and not info.is_required():
            default = list(info.default) if isinstance(info.default, tuple) else info.default
            if text == json.dumps(default, default=str):
                continue
        if len(text) > _CELL_VALUE_LIMIT and isinstance(value, str):  # a path's end says more than its start
            text = f'"...{value[-(_CELL_VALUE_LIMIT - 5) :]}"'
        elif len(text) > _CELL_VALUE_LIMIT:
            text = text[: _CELL_VALUE_LIMIT - 3] + "..."
        parts.append(f"{key}={text}")
    return (", ".join(parts) or "defaults").replace("|", "\\|")


def annotation_rounds(ws: Workspace, item_ids: set[str]) -> dict[str, Any]:
    """What the annotation tables say about the rounds behind ``item_ids``: round names, where the votes came from
    (Label Studio servers or export files), annotators, votes and gold items. Empty without annotation tables."""
    db = ws.catalog.connect()
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "annotations" not in tables:
        return {}
    votes = [
        (str(r[0]), str(r[1]), str(r[2]))
        for r in db.execute(
            "SELECT round, item_id, annotator FROM annotations WHERE deleted_at IS NULL "
            "AND COALESCE(was_cancelled, 0) = 0"
        )
        if str(r[1]) in item_ids
    ]
    rounds = sorted({v[0] for v in votes})
    origins: dict[str, str | None] = {}
    if "annotation_rounds" in tables:
        origins = {str(r[0]): r[1] for r in db.execute("SELECT round, pulled_from FROM annotation_rounds")}
    gold = 0
    if "annotation_tasks" in tables and rounds:
        marks = ", ".join("?" * len(rounds))
        gold = int(
            db.execute(
                f"SELECT COUNT(*) FROM annotation_tasks WHERE is_gold = 1 AND round IN ({marks})", rounds
            ).fetchone()[0]
        )
    from_files = sum(1 for r in rounds if str(origins.get(r) or "").startswith("file:"))
    return {
        "rounds": rounds,
        "from_files": from_files,
        "from_servers": len(rounds) - from_files,
        "annotators": len({v[2] for v in votes}),
        "votes": len(votes),
        "gold_items": gold,
    }


def _annotation_text(
    ctx: _Context, facts: _CardFacts, label_sources: Counter[str], votes: list[int], agreements: list[float]
) -> str:
    """The card's Annotation section: how each released label was made, with counts, and what was held back."""
    cfg, records = ctx.config, ctx.records
    n = len(records)
    names = {"annotation": "annotation rounds", "imported": "imported labels", "weak": "weak labels"}
    methods = ", ".join(
        f"{names.get(k, k)} {v}" for k, v in sorted(label_sources.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    parts = [f"How the {n} released labels were made: {methods}."]
    annotated = label_sources.get("annotation", 0)
    if annotated:
        info = annotation_rounds(
            ctx.ws, {r["_item_id"] for r in records if r["label_source"] == "annotation"}
        )
        aggregation = Counter(
            r["_method"] or "unrecorded method" for r in records if r["label_source"] == "annotation"
        )
        rounds = info.get("rounds", [])
        where = []
        if info.get("from_servers"):
            where.append(f"{info['from_servers']} pulled from a Label Studio server")
        if info.get("from_files"):
            where.append(f"{info['from_files']} imported from Label Studio export files")
        text = (
            f"**Annotation rounds ({annotated} labels).** "
            + (
                f"{len(rounds)} round(s) ({', '.join(rounds)}; {'; '.join(where) or 'origin unrecorded'}), "
                f"{info.get('annotators', 0)} annotator(s), {info.get('votes', 0)} votes on the released images; "
                if rounds
                else "The votes themselves are not in the catalog (labels aggregated elsewhere); "
            )
            + f"votes per image: median {_median(votes)}. "
            + (
                f"{info['gold_items']} gold item(s) with known answers were mixed in to score the annotators. "
                if info.get("gold_items")
                else "No gold items were used. "
            )
            + "Votes were aggregated into a final label, a vote distribution and an agreement score ("
            + ", ".join(f"{k} {v}" for k, v in sorted(aggregation.items()))
            + "); only settled items are released"
            + (
                f" with agreement >= {cfg.labels.min_agreement}"
                if cfg.labels.min_agreement is not None
                else ""
            )
            + f". Agreement: mean {_fmt(statistics.fmean(agreements) if agreements else None)}, "
            f"median {_fmt(statistics.median(agreements) if agreements else None)}."
        )
        parts.append(text)
    if label_sources.get("imported"):
        parts.append(
            f"**Imported labels ({label_sources['imported']}).** A curator's label file (`emo8 labels import`); "
            "no annotator votes behind them (`num_votes` 0, `agreement` null)."
        )
    if label_sources.get("weak"):
        parts.append(
            f"**Weak labels ({label_sources['weak']}).** Taken from source metadata (folder names, search "
            "queries, dataset labels) and checked by nobody (`num_votes` 0, `agreement` null)."
        )
    parts.append(f"Labelled items held back: {held_back_text(facts.held_back)}.")
    return "\n\n".join(parts)


def _median(values: list[Any]) -> str:
    return str(statistics.median(values)) if values else "n/a"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_items(ctx: _Context) -> dict[str, Any]:
    """The manifest's content part: sha256 -> split, label, label source; rows per split."""
    return {
        "splits": {s: len(rows) for s, rows in ctx.by_split()},
        "items": {
            r["sha256"]: {
                "split": r["_split"],
                "label": EMOTIONS[r["label"]],
                "label_source": r["label_source"],
            }
            for r in sorted(ctx.records, key=lambda r: r["sha256"])
        },
    }


def _manifest(ctx: _Context, facts: _CardFacts, content: dict[str, Any]) -> dict[str, Any]:
    files = {}
    for path in sorted(p for p in ctx.out.rglob("*") if p.is_file() and "imagefolder" not in p.parts):
        rel = path.relative_to(ctx.out).as_posix()
        if rel != "manifest.json":
            files[rel] = {"sha256": _file_sha256(path), "bytes": path.stat().st_size}
    return {
        "name": ctx.config.name,
        "version": ctx.config.version,
        "date": facts.date,
        "classes": list(EMOTIONS),
        "previous": facts.previous,
        "leak_check": facts.leaks.summary(),
        "build": facts.build,
        "files": files,
        **content,
    }


def previous_release(ws: Workspace, version: str) -> tuple[str, dict[str, Any], Path] | None:
    """The newest local release older than ``version``: ``(version, manifest, directory)``, or None."""
    found = []
    for manifest in ws.releases_dir.glob("*/manifest.json"):
        name = manifest.parent.name
        if _VERSION.match(name) and version_key(name) < version_key(version):
            found.append((version_key(name), name, manifest))
    if not found:
        return None
    _key, name, manifest = max(found)
    return name, json.loads(manifest.read_text()), manifest.parent


@dataclass
class Changes:
    """The difference between two manifests."""

    added: list[str]
    removed: list[str]
    relabelled: list[tuple[str, str, str]]
    moved: list[tuple[str, str, str]]

    def counts(self) -> dict[str, int]:
        return {
            "added": len(self.added),
            "removed": len(self.removed),
            "relabelled": len(self.relabelled),
            "moved": len(self.moved),
        }


def diff(old: dict[str, Any], new: dict[str, Any]) -> Changes:
    """Compare the ``items`` of two manifests (sha256 -> split, label)."""
    a, b = old.get("items", {}), new.get("items", {})
    return Changes(
        added=sorted(set(b) - set(a)),
        removed=sorted(set(a) - set(b)),
        relabelled=sorted(
            (h, a[h]["label"], b[h]["label"]) for h in set(a) & set(b) if a[h]["label"] != b[h]["label"]
        ),
        moved=sorted(
            (h, a[h]["split"], b[h]["split"]) for h in set(a) & set(b) if a[h]["split"] != b[h]["split"]
        ),
    )


#: Entries listed one by one per changelog section (the full lists are the manifests' difference).
CHANGELOG_LIST_LIMIT = 25


def _removal_reasons(ws: Workspace, hashes: list[str]) -> dict[str, str]:
    if not hashes:
        return {}
    takedowns = takedown.removal_reasons(ws)
    items = frame(ws, ["sha256", "status", "reason", "dup_of", "label", "settled", "weak_label"])
    by_sha = {str(r.sha256): r for r in items.itertuples(index=False) if present(r.sha256)}
    reasons = {}
    for h in hashes:
        if h in takedowns:
            reasons[h] = f"take-down {takedowns[h]}"
            continue
        row = by_sha.get(h)
        if row is None:
            reasons[h] = "no longer in the catalog"
        elif row.status != "valid":
            reasons[h] = str(row.status) + (f" ({row.reason})" if present(row.reason) else "")
        else:
            reasons[h] = "label not releasable (unsettled, below the agreement floor, or weak)"
    return reasons


def _changelog(
    ctx: _Context, previous: tuple[str, dict[str, Any], Path] | None, manifest: dict[str, Any], date: str
) -> str:
    cfg = ctx.config
    header = f"# Changelog: {cfg.name}\n"
    lines = [f"## {cfg.version} ({date})", ""]
    splits = manifest["splits"]
    lines.append(f"{sum(splits.values())} images: " + ", ".join(f"{s} {n}" for s, n in splits.items()) + ".")
    older = ""
    if previous is None:
        lines += ["", "First release."]
    else:
        prev_version, prev_manifest, prev_dir = previous
        changes = diff(prev_manifest, manifest)
        counts = changes.counts()
        lines += [
            "",
            f"Compared with {prev_version}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".",
            "",
        ]
        old, new = prev_manifest.get("items", {}), manifest["items"]
        per_class = []
        for e in EMOTIONS:
            before = sum(1 for v in old.values() if v["label"] == e)
            after = sum(1 for v in new.values() if v["label"] == e)
            per_class.append(
                [
                    e,
                    before,
                    after,
                    f"{after - before:+d}",
                    sum(1 for h in changes.added if new[h]["label"] == e),
                    sum(1 for h in changes.removed if old[h]["label"] == e),
                    sum(1 for _h, _a, b in changes.relabelled if b == e),
                    sum(1 for _h, a, _b in changes.relabelled if a == e),
                ]
            )
        lines += [
            _table(
                [
                    "class",
                    prev_version,
                    cfg.version,
                    "change",
                    "added",
                    "removed",
                    "relabelled in",
                    "relabelled out",
                ],
                per_class,
            ),
            "",
        ]
        reasons = _removal_reasons(ctx.ws, changes.removed)
        taken = [h for h in changes.removed if reasons.get(h, "").startswith("take-down")]
        if taken:
            lines += ["### Removed by take-down (listed by hash)", ""]
            lines += [f"- `{h}` ({reasons[h]})" for h in taken]
            lines.append("")
        other = [h for h in changes.removed if h not in set(taken)]
        lines += _listing("Removed", [f"`{h}` ({reasons.get(h, 'unknown')})" for h in other])
        lines += _listing("Added", [f"`{h}` ({new[h]['label']}, {new[h]['split']})" for h in changes.added])
        lines += _listing("Relabelled", [f"`{h}`: {a} -> {b}" for h, a, b in changes.relabelled])
        lines += _listing("Moved between splits", [f"`{h}`: {a} -> {b}" for h, a, b in changes.moved])
        prev_log = prev_dir / "CHANGELOG.md"
        if prev_log.is_file():
            text = prev_log.read_text()
            older = text[len(header) :] if text.startswith(header) else text
    body = "\n".join(lines).rstrip() + "\n"
    return header + "\n" + body + ("\n" + older.lstrip("\n") if older else "")


def _listing(title: str, entries: list[str]) -> list[str]:
    if not entries:
        return []
    shown = entries[:CHANGELOG_LIST_LIMIT]
    lines = [f"### {title} ({len(entries)})", "", *(f"- {e}" for e in shown)]
    if len(entries) > len(shown):
        lines.append(f"- ... and {len(entries) - len(shown)} more (compare the two manifest.json files)")
    return [*lines, ""]


# -- the release -----------------------------------------------------------------------------------------------------


def release(ws: Workspace, config: ReleaseConfig) -> ReleaseResult:
    """Write release ``config.version`` of the workspace's labelled items.

    Parameters
    ----------
    ws
        The workspace.
    config
        :class:`ReleaseConfig`.

    Returns
    -------
    :class:`ReleaseResult`.

    Raises
    ------
    NothingToRelease
        If no item has a releasable label (the message explains what the catalog holds).
    ReleaseError
        On an invalid version or format, an existing release without ``overwrite``, or cross-split
        near-duplicates without ``allow_leaks``.
    """
    config.validate()
    out = (config.out or ws.releases_dir / config.version).resolve()
    if out.exists() and not config.overwrite:
        raise ReleaseError(
            f"release {config.version} already exists at {out}; releases are immutable (--overwrite)"
        )
    rows, held = releasable(ws, config.labels)
    date = _release_date(rows)  # before this run's own split assignment stamps the rows with today
    newly_split = 0
    unsplit = missing_splits(rows)
    if unsplit and not config.assign_splits:
        raise StaleInput(
            f"{unsplit} releasable item(s) have no split: run `emo8 split` first (or let the release assign "
            "them with the workspace's split settings: --assign-splits)"
        )
    if unsplit:  # what `emo8 split` would do, with its stored settings (it re-applies the take-downs first)
        result, _ = assign_splits(ws, dataclasses.replace(stored_config(ws), progress=config.progress))
        newly_split = result.new
        rows, held = releasable(ws, config.labels)
    copies = unrecorded_takedown_copies(ws, rows)
    if copies:
        raise StaleInput(
            f"{sum(copies.values())} releasable item(s) are copies of taken-down images ("
            + ", ".join(f"{k}: {v}" for k, v in copies.items())
            + ") that the catalog does not mark removed yet: run `emo8 split` (it applies every recorded "
            "take-down first), then release again"
        )
    excluded = int(ws.catalog.counts("reason", where="status = 'removed'").get("takedown", 0))
    embeddings = workspace_embeddings(ws)
    radius, similarity = dedup_thresholds(ws, embeddings[0] if embeddings else None)
    leaks = find_leaks(rows, radius, embeddings, similarity if embeddings else None, pairs=dedup_pairs(ws))
    stale_dedup = dedup_coverage_warning(ws, rows)
    if not leaks.clean and not config.allow_leaks:
        raise ReleaseError(
            f"{len(leaks.leaks)} near-duplicate pairs cross split boundaries (e.g. {leaks.leaks[0]}); "
            "run `emo8 split` (it keeps near-duplicates together) or pass --allow-leaks"
        )
    rows = rows.assign(_order=rows["split"].map(SPLITS.index)).sort_values(
        ["_order", "sha256"], kind="stable"
    )
    everything = frame(ws, ["sha256", "dup_of", "cluster_id", "status"])
    roots = cluster_ids(everything)
    sha_of = dict(zip(everything["item_id"].astype(str), everything["sha256"], strict=True))
    clusters = {
        str(i): str(sha_of.get(r) or sha_of.get(str(i)))
        for i, r in zip(everything["item_id"], roots, strict=True)
    }
    records = _records(rows, clusters)
    unknown = sum(1 for r in records if unknown_licence(r["license"]))
    previous = previous_release(ws, config.version)
    status_counts = ws.catalog.counts("status")
    taken = takedown.records(ws)
    facts = _CardFacts(
        catalog_status=status_counts,
        held_back=held,
        excluded_takedown=excluded,
        takedowns=int(taken["takedown_id"].nunique()) if not taken.empty else 0,
        leaks=leaks,
        date=date,
        previous=previous[0] if previous else None,
        changes={},
        build=build_citation(ws),
    )

    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    ctx = _Context(ws, config, staging, records)
    try:
        with stage_bar(
            "release", len(records) * len(config.formats), config.progress, f"writing {config.version}"
        ) as advance:
            ctx.advance = advance
            for name in config.formats:
                WRITERS[name](ctx)
        if "hf" in config.formats:
            content = _manifest_items(ctx)
            if previous is not None:
                facts.changes = diff(previous[1], content).counts()
            (staging / "README.md").write_text(_card(ctx, facts))
            (staging / "CHANGELOG.md").write_text(_changelog(ctx, previous, content, facts.date))
            manifest = _manifest(ctx, facts, content)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    warnings_first = [stale_dedup] if stale_dedup else []
    imagefolder = None
    if ctx.imagefolder is not None:
        rel = ctx.imagefolder.relative_to(staging) if ctx.imagefolder.is_relative_to(staging) else None
        imagefolder = out / rel if rel is not None else ctx.imagefolder
    return ReleaseResult(
        version=config.version,
        path=out,
        splits={s: sum(1 for r in records if r["_split"] == s) for s in SPLITS},
        classes={e: sum(1 for r in records if r["label"] == i) for i, e in enumerate(EMOTIONS)},
        files=sorted(
            p.relative_to(out).as_posix()
            for p in out.rglob("*")
            if p.is_file() and "imagefolder" not in p.parts
        ),
        parquet_bytes=ctx.parquet_bytes,
        label_sources=dict(Counter(r["label_source"] for r in records)),
        held_back=held,
        excluded_takedown=excluded,
        newly_split=newly_split,
        leaks=leaks,
        previous=facts.previous,
        changes=facts.changes,
        imagefolder=imagefolder,
        warnings=warnings_first
        + [
            f"split {s!r} is empty and is left out of the release"
            for s in SPLITS
            if not any(r["_split"] == s for r in records)
        ]
        + (
            [
                f"{unknown} of {len(records)} released images have no known licence: check their rights before "
                "publishing (the card says so too)"
            ]
            if unknown
            else []
        ),
        unknown_licences=unknown,
        build=(
            f"{facts.build['pipeline']['path']} (sha256 {str(facts.build['pipeline']['sha256'])[:12]})"
            if facts.build
            else None
        ),
    )
