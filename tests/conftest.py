"""Shared fixtures: the bundled real sample images and fresh workspaces."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from emo8 import Workspace

SAMPLES = Path(__file__).resolve().parents[1] / "emo8" / "samples"


@pytest.fixture(scope="session")
def sample_rows() -> list[dict[str, str]]:
    """Rows of the bundled sample manifest (81 real images)."""
    with open(SAMPLES / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def sample_paths(sample_rows: list[dict[str, str]]) -> list[Path]:
    return [SAMPLES / row["file"] for row in sample_rows]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A fresh, empty workspace."""
    return Workspace.init(tmp_path / "ws")
