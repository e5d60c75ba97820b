"""A workspace of the 81 bundled sample images with real EfficientNet-Lite0 embeddings, for the suggest/select tests.

Built once per test session (ingest + embed, cached at module level so that every test module importing the fixture
shares it); each test gets a copy. Labels stand in for emotions: the manifest ``category`` of the categories with at
least :data:`MIN_CATEGORY_SIZE` samples is mapped to an emotion. The mapping is arbitrary; what matters is that
images of one category look alike, so suggestions learnt from embeddings can beat chance.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from emo8 import Workspace
from emo8.core.taxonomy import EMOTIONS
from emo8.embed.run import EmbedConfig, embed
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source

__all__ = ["category_labels", "copy_workspace", "lite0_template", "lite0_ws"]

MODEL = "efficientnet-lite0"
MIN_CATEGORY_SIZE = 5
_CACHE: dict[str, Path] = {}


def category_labels(ws: Workspace, sample_rows: list[dict[str, str]]) -> dict[str, str]:
    """``{item_id: emotion}`` for the samples whose category has >= MIN_CATEGORY_SIZE images (one emotion per
    category, in order of category size)."""
    sizes = Counter(r["category"] for r in sample_rows)
    big = [c for c, n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])) if n >= MIN_CATEGORY_SIZE]
    emotion_of = {c: EMOTIONS[i] for i, c in enumerate(big[: len(EMOTIONS)])}
    by_name = {Path(r["file"]).name: r["category"] for r in sample_rows}
    items = ws.items(["item_id", "source_path"], where="status = 'valid'")
    out = {}
    for item_id, path in zip(items["item_id"], items["source_path"], strict=True):
        category = by_name[Path(path).name]
        if category in emotion_of:
            out[item_id] = emotion_of[category]
    return out


def copy_workspace(template: Path, dest: Path) -> Workspace:
    shutil.copytree(template, dest)
    return Workspace.open(dest)


@pytest.fixture(scope="session")
def lite0_template(tmp_path_factory: pytest.TempPathFactory, sample_paths: list[Path]) -> Path:
    """The samples ingested from a folder and embedded with EfficientNet-Lite0 (real weights)."""
    if "lite0" not in _CACHE:
        base = tmp_path_factory.mktemp("lite0")
        incoming = base / "incoming"
        incoming.mkdir()
        for path in sample_paths:
            shutil.copy(path, incoming / path.name)
        ws = Workspace.init(base / "ws")
        ingest(ws, create_source("folder", directory=str(incoming)), IngestOptions(workers=1, progress=False))
        embed(ws, EmbedConfig(model=MODEL, device="cpu", workers=0, progress=False))
        ws.catalog.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ws.catalog.close()
        _CACHE["lite0"] = ws.root
    return _CACHE["lite0"]


@pytest.fixture
def lite0_ws(lite0_template: Path, tmp_path: Path) -> Workspace:
    """A fresh copy of the embedded sample workspace."""
    return copy_workspace(lite0_template, tmp_path / "lite0")
