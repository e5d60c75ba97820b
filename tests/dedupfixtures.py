"""A workspace of the bundled samples plus transformed copies of some of them, embedded with EfficientNet-Lite0.

Built once per session on top of the embedded sample workspace of suggestfixtures (so the 81 samples are embedded
once for the whole suite; only the copies are embedded here, which also exercises incremental embedding). Each test
gets a fresh copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageOps
from suggestfixtures import copy_workspace, lite0_template

from emo8 import Workspace
from emo8.embed.run import EmbedConfig, embed
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source

__all__ = ["COPIED", "DupSet", "dup_template", "dup_ws", "ingest_folder", "lite0_template", "make_copy"]

#: Samples that get transformed copies (a photo, a painting, a clip-art, a cartoon-like wallpaper...).
COPIED = ("skm-0009.jpg", "gcq-0034.jpg", "gcq-0191.jpg", "lom-0005.jpg", "ocl-0083.jpg")

#: transform -> (function, the tier expected to catch it)
TRANSFORMS: dict[str, tuple[Callable[[Image.Image], Image.Image], str]] = {
    "half": (lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS), "perceptual"),
    "q30": (lambda im: im, "perceptual"),
    "flip": (ImageOps.mirror, "semantic"),
}

_CACHE: dict[str, Path] = {}
_COPIES: dict[str, tuple[str, str]] = {}


@dataclass(frozen=True)
class DupSet:
    """The template workspace and, per copy file name, ``(original file name, transform)``."""

    root: Path
    copies: dict[str, tuple[str, str]]


def make_copy(src: Path, transform: str, dest: Path) -> None:
    image = Image.open(src).convert("RGB")
    fn, _ = TRANSFORMS[transform]
    fn(image).save(dest, quality=30 if transform == "q30" else 92)


def ingest_folder(ws: Workspace, folder: Path) -> None:
    ingest(ws, create_source("folder", directory=str(folder)), IngestOptions(workers=1, progress=False))


@pytest.fixture(scope="session")
def dup_template(
    lite0_template: Path, tmp_path_factory: pytest.TempPathFactory, sample_paths: list[Path]
) -> DupSet:
    """Samples + copies (half size, JPEG q30, mirrored) of :data:`COPIED`, and one image stored as PNG and BMP
    (identical pixels, different bytes: the exact tier)."""
    if "dups" not in _CACHE:
        base = tmp_path_factory.mktemp("dups")
        ws = copy_workspace(lite0_template, base / "ws")
        incoming = base / "copies"
        incoming.mkdir()
        by_name = {p.name: p for p in sample_paths}
        copies: dict[str, tuple[str, str]] = {}
        for name in COPIED:
            for transform in TRANSFORMS:
                copy_name = f"zz-{transform}-{Path(name).stem}.jpg"
                make_copy(by_name[name], transform, incoming / copy_name)
                copies[copy_name] = (name, transform)
        rotated = Image.open(by_name["skm-0006.jpg"]).convert("RGB").rotate(90, expand=True)
        rotated.save(incoming / "zz-exact-a.bmp")
        rotated.save(incoming / "zz-exact-b.png")
        ingest_folder(ws, incoming)
        embed(ws, EmbedConfig(device="cpu", workers=0, progress=False))
        ws.catalog.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ws.catalog.close()
        _CACHE["dups"] = base
        _COPIES.update(copies)
    return DupSet(_CACHE["dups"] / "ws", dict(_COPIES))


@pytest.fixture
def dup_ws(dup_template: DupSet, tmp_path: Path) -> Workspace:
    """A fresh copy of the samples-plus-copies workspace."""
    return copy_workspace(dup_template.root, tmp_path / "dups")
