"""A real, labelled workspace for the audit/split/release/take-down tests.

The 80 bundled sample images are ingested once per session (a real folder ingest); each test gets a copy. Labels
stand in for finished annotation rounds: every sample's manifest ``category`` is mapped to an emotion (the mapping
is arbitrary; what matters is that images of one category look alike, so a probe on image embeddings can learn it),
and the columns the dedup, people and annotation stages write are filled with plausible values.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from emo8 import Workspace
from emo8.core.taxonomy import EMOTIONS
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source

SAMPLES = Path(__file__).resolve().parents[1] / "emo8" / "samples"

__all__ = [
    "_labelled_template",
    "_plain_template",
    "_variants_template",
    "copy_workspace",
    "labelled_ws",
    "plain_ws",
    "variants_ws",
]

#: Sample category -> the emotion that stands in for its label.
CATEGORY_EMOTION = {
    "painting": "awe",
    "animals": "amusement",
    "landscape": "contentment",
    "people": "excitement",
    "body": "fear",
    "building": "sadness",
    "objects": "disgust",
    "numbers": "anger",
}

#: The columns later pipeline stages add (dedup, people, suggestions, annotation aggregate).
STAGE_COLUMNS = {
    "dup_of": "TEXT",
    "dup_tier": "TEXT",
    "dup_score": "REAL",
    "person_boxes": "TEXT",
    "num_faces": "INTEGER",
    "suggested_label": "TEXT",
    "suggestion_probs": "TEXT",
    "suggestion_entropy": "REAL",
    "label": "TEXT",
    "label_distribution": "TEXT",
    "num_votes": "INTEGER",
    "agreement": "REAL",
    "settled": "INTEGER",
    "unsettled_reason": "TEXT",
}


def one_hot(label: str, agreement: float = 1.0) -> list[float]:
    """A soft label with ``agreement`` on ``label`` and the rest spread evenly."""
    rest = (1.0 - agreement) / (len(EMOTIONS) - 1)
    return [agreement if e == label else rest for e in EMOTIONS]


def _ingest(root: Path, sample_paths: list[Path]) -> Workspace:
    incoming = root / "incoming"
    incoming.mkdir(parents=True)
    for path in sample_paths:
        shutil.copy(path, incoming / path.name)
    ws = Workspace.init(root / "ws")
    ingest(ws, create_source("folder", directory=str(incoming)), IngestOptions(workers=1, progress=False))
    return ws


def annotate_like_a_round(ws: Workspace, sample_rows: list[dict[str, str]]) -> None:
    """Fill the stage columns: manifest metadata, stand-in labels (settled, 3 votes), no duplicates."""
    ws.catalog.ensure_columns(STAGE_COLUMNS)
    by_name = {Path(r["file"]).name: r for r in sample_rows}
    items = ws.items(["item_id", "source_path", "width", "height"], where="status = 'valid'")
    ids, values = [], {k: [] for k in ("domain", "license", "author", "label", "label_distribution",
                                       "num_votes", "agreement", "settled", "person_boxes", "num_faces")}  # fmt: skip
    for item_id, path, width, height in items.itertuples(index=False):
        row = by_name[Path(path).name]
        label = CATEGORY_EMOTION.get(row["category"])
        ids.append(item_id)
        values["domain"].append(row["domain"])
        values["license"].append(row["license"])
        values["author"].append(row["attribution"] or None)
        values["label"].append(label)
        values["label_distribution"].append(json.dumps(one_hot(label)) if label else None)
        values["num_votes"].append(3 if label else 0)
        values["agreement"].append(1.0 if label else None)
        values["settled"].append(1 if label else 0)
        people = row["category"] in ("people", "body")
        values["person_boxes"].append(
            json.dumps([[0.1 * width, 0.1 * height, 0.9 * width, 0.9 * height, 0.97]]) if people else "[]"
        )
        values["num_faces"].append(1 if people else 0)
    ws.catalog.update_items(ids, values)


def _checkpoint(ws: Workspace) -> None:
    ws.catalog.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ws.catalog.close()


#: Templates built in this session. Every test module star-imports these fixtures, which makes each module's copy
#: a fixture of its own; the cache makes a template be built once per session all the same.
_TEMPLATES: dict[str, Path] = {}


@pytest.fixture(scope="session")
def _plain_template(tmp_path_factory: pytest.TempPathFactory, sample_paths: list[Path]) -> Path:
    if "plain" not in _TEMPLATES:
        ws = _ingest(tmp_path_factory.mktemp("plain"), sample_paths)
        _checkpoint(ws)
        _TEMPLATES["plain"] = ws.root
    return _TEMPLATES["plain"]


@pytest.fixture(scope="session")
def _labelled_template(
    tmp_path_factory: pytest.TempPathFactory, _plain_template: Path, sample_rows: list[dict[str, str]]
) -> Path:
    if "labelled" in _TEMPLATES:
        return _TEMPLATES["labelled"]
    root = tmp_path_factory.mktemp("labelled") / "ws"
    shutil.copytree(_plain_template, root)
    ws = Workspace.open(root)
    annotate_like_a_round(ws, sample_rows)
    _checkpoint(ws)
    _TEMPLATES["labelled"] = root
    return root


def _copy(template: Path, dest: Path) -> Workspace:
    shutil.copytree(template, dest)
    return Workspace.open(dest)


@pytest.fixture
def plain_ws(_plain_template: Path, tmp_path: Path) -> Workspace:
    """The samples ingested, nothing else (no labels)."""
    return _copy(_plain_template, tmp_path / "plain")


@pytest.fixture
def labelled_ws(_labelled_template: Path, tmp_path: Path) -> Workspace:
    """The samples ingested and labelled as if an annotation round had settled them."""
    return _copy(_labelled_template, tmp_path / "labelled")


#: Near-duplicate variants made of a few sample photos (file stem suffix -> transform).
VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "half": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "q30": lambda im: im,  # re-encoded at JPEG quality 30 below
    "flip": ImageOps.mirror,
}
VARIANT_BASES = 4
EMBED_MODEL = "efficientnet-lite0"


def make_variants(sample_rows: list[dict[str, str]], samples: Path, out: Path) -> dict[str, str]:
    """Write near-duplicate variants of the first :data:`VARIANT_BASES` large photos to ``out``; return
    ``{variant file name: base file name}``."""
    out.mkdir(parents=True, exist_ok=True)
    bases = [r for r in sample_rows if r["domain"] == "photo" and int(r["width"]) >= 300][:VARIANT_BASES]
    made = {}
    for row in bases:
        source = samples / row["file"]
        with Image.open(source) as im:
            rgb = im.convert("RGB")
        for name, transform in VARIANTS.items():
            target = out / f"{source.stem}-{name}.jpg"
            transform(rgb).save(target, quality=30 if name == "q30" else 90)
            made[target.name] = source.name
    return made


@pytest.fixture(scope="session")
def _variants_template(
    tmp_path_factory: pytest.TempPathFactory, _labelled_template: Path, sample_rows: list[dict[str, str]]
) -> Path:
    from emo8.embed.run import EmbedConfig, embed

    if "variants" in _TEMPLATES:
        return _TEMPLATES["variants"]
    base = tmp_path_factory.mktemp("variants")
    root = base / "ws"
    shutil.copytree(_labelled_template, root)
    ws = Workspace.open(root)
    make_variants(sample_rows, SAMPLES, base / "incoming")
    ingest(
        ws,
        create_source("folder", directory=str(base / "incoming")),
        IngestOptions(workers=1, progress=False),
    )
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than oversubscribing the (shared, small) CI machine
    try:
        embed(ws, EmbedConfig(model=EMBED_MODEL, progress=False, workers=0, batch_size=32))
    finally:
        torch.set_num_threads(threads)
    _checkpoint(ws)
    _TEMPLATES["variants"] = root
    return root


@pytest.fixture
def variants_ws(_variants_template: Path, tmp_path: Path) -> Workspace:
    """The labelled samples plus near-duplicate variants (half size, JPEG q30, mirrored) of 4 photos, not deduped,
    and EfficientNet-Lite0 embeddings (real offline weights) of everything."""
    return _copy(_variants_template, tmp_path / "variants")


def variant_pairs(ws: Workspace) -> list[tuple[str, str, str]]:
    """``(variant item id, base item id, transform)`` for every variant in ``ws``."""
    items = ws.items(["item_id", "source_path"], where="status IN ('valid', 'duplicate', 'removed')")
    by_name = {Path(p).name: i for i, p in zip(items["item_id"], items["source_path"], strict=True)}
    pairs = []
    for name, item_id in by_name.items():
        stem = Path(name).stem
        for transform in VARIANTS:
            if stem.endswith(f"-{transform}"):
                base = stem[: -len(transform) - 1] + ".jpg"
                pairs.append((item_id, by_name[base], transform))
    return sorted(pairs)


@pytest.fixture
def copy_workspace(tmp_path: Path) -> Callable[[Workspace, str], Workspace]:
    """Copy a workspace (to compare two runs from the same state)."""

    def copy(ws: Workspace, name: str) -> Workspace:
        _checkpoint(ws)
        return _copy(ws.root, tmp_path / name)

    return copy
