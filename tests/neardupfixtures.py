"""A small workspace of real edits and real look-alikes, embedded with EfficientNet-Lite0 and deduplicated.

Built once per session (each test gets a fresh copy):

* ``crop4.jpg``: a 4 %-per-side crop of the tall (362 x 512) clip-art ``ocl-0083.jpg``;
* ``edit-*.jpg``: everyday edits of the photo ``lom-0005.jpg`` (corner crop, square pad, caption bar, rotation,
  mirror, screenshot on a larger canvas), which do not all match the original by hash or cosine;
* ``balloon-red.png`` / ``balloon-green.png``: two different drawings of a balloon (high cosine, distinct images);
* ``card-*.jpg``: one greeting-card template around two different sample photos (same template, other content).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

from emo8 import Workspace
from emo8.core.imaging import ValidationConfig
from emo8.dedup.tiers import DedupConfig, dedup
from emo8.embed.run import EmbedConfig, embed
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source

__all__ = ["EDITS", "ND_CONFIG", "NEARDUP_SAMPLES", "names", "neardup_template", "neardup_ws"]

SAMPLES = Path(__file__).resolve().parents[1] / "emo8" / "samples" / "images"
NEARDUP_SAMPLES = (
    "ocl-0083.jpg",
    "lom-0005.jpg",
    "skm-0009.jpg",
    "lom-0006.jpg",
    "gcq-0034.jpg",
    "ocl-0466.jpg",
)
ND_CONFIG = DedupConfig(workers=1, device="cpu")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _caption(im: Image.Image) -> Image.Image:
    bar = im.height // 5
    out = Image.new("RGB", (im.width, im.height + bar), (255, 255, 255))
    out.paste(im, (0, bar))
    ImageDraw.Draw(out).text((10, bar // 5), "monday again", fill=(0, 0, 0), font=_font(bar * 3 // 5))
    return out


def _screenshot(im: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (round(im.width * 1.6), round(im.height * 1.5)), (245, 245, 245))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, canvas.width, 30], fill=(60, 60, 70))
    draw.text((10, 8), "https://social.example/post/123456", fill=(220, 220, 220))
    canvas.paste(im, (30, 40))
    return canvas


#: edit name -> function (applied to lom-0005.jpg)
EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "corner": lambda im: im.crop((0, 0, round(im.width * 0.72), round(im.height * 0.72))),
    "square": lambda im: ImageOps.pad(im, (max(im.size), max(im.size)), color=(0, 0, 0)),
    "caption": _caption,
    "rotate": lambda im: im.rotate(7, Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255)),
    "mirror": ImageOps.mirror,
    "screenshot": _screenshot,
}


def balloon(red: bool) -> Image.Image:
    """Two different balloon drawings: a red one, and a green one of another shape, string and background."""
    if red:
        im = Image.new("RGB", (300, 400), (255, 255, 255))
        d = ImageDraw.Draw(im)
        d.line([(130, 230), (110, 300), (140, 390)], fill=(80, 80, 80), width=3)
        d.ellipse([60, 50, 200, 230], fill=(220, 30, 30), outline=(0, 0, 0), width=3)
        d.polygon([(122, 228), (138, 228), (130, 242)], fill=(160, 20, 20))
        d.ellipse([90, 85, 110, 115], fill=(255, 255, 255))
        return im
    im = Image.new("RGB", (320, 380), (235, 245, 255))
    d = ImageDraw.Draw(im)
    d.line([(190, 200), (215, 270), (185, 370)], fill=(60, 60, 60), width=2)
    d.ellipse([120, 40, 260, 200], fill=(40, 170, 60), outline=(20, 60, 20), width=2)
    d.polygon([(182, 198), (198, 198), (190, 212)], fill=(30, 120, 40))
    d.ellipse([215, 70, 240, 95], fill=(230, 255, 230))
    d.ellipse([20, 300, 90, 340], fill=(255, 255, 255))
    d.ellipse([50, 290, 120, 335], fill=(255, 255, 255))
    return im


def card(im: Image.Image) -> Image.Image:
    """A greeting-card frame with ``im`` inside."""
    out = Image.new("RGB", (480, 600), (250, 236, 210))
    d = ImageDraw.Draw(out)
    d.rectangle([12, 12, 468, 588], outline=(150, 40, 40), width=10)
    for x, y in ((30, 30), (430, 30), (30, 550), (430, 550)):
        d.ellipse([x, y, x + 22, y + 22], fill=(200, 120, 40))
    d.text((120, 40), "Happy Birthday!", fill=(150, 40, 40), font=_font(34))
    d.text((150, 540), "with love from all of us", fill=(90, 60, 60), font=_font(16))
    out.paste(ImageOps.pad(im, (400, 420), color=(250, 236, 210)), (40, 100))
    return out


@dataclass(frozen=True)
class NeardupSet:
    root: Path


_CACHE: dict[str, Path] = {}


def build_folder(folder: Path) -> None:
    """Write the images of the set into ``folder``."""
    for name in NEARDUP_SAMPLES:
        shutil.copy(SAMPLES / name, folder / name)
    clipart = Image.open(SAMPLES / "ocl-0083.jpg").convert("RGB")
    w, h = clipart.size
    dx, dy = round(w * 0.04), round(h * 0.04)
    clipart.crop((dx, dy, w - dx, h - dy)).save(folder / "crop4.jpg", quality=92)
    photo = Image.open(SAMPLES / "lom-0005.jpg").convert("RGB")
    for edit, fn in EDITS.items():
        fn(photo).save(folder / f"edit-{edit}.jpg", quality=90)
    balloon(True).save(folder / "balloon-red.png")
    balloon(False).save(folder / "balloon-green.png")
    card(Image.open(SAMPLES / "skm-0009.jpg").convert("RGB")).save(folder / "card-a.jpg", quality=90)
    card(Image.open(SAMPLES / "lom-0006.jpg").convert("RGB")).save(folder / "card-b.jpg", quality=90)


@pytest.fixture(scope="session")
def neardup_template(tmp_path_factory: pytest.TempPathFactory) -> NeardupSet:
    """The set ingested, embedded (EfficientNet-Lite0, whole-image preprocessing) and deduplicated."""
    if "ws" not in _CACHE:
        base = tmp_path_factory.mktemp("neardup")
        folder = base / "images"
        folder.mkdir()
        build_folder(folder)
        ws = Workspace.init(base / "ws")
        options = IngestOptions(workers=1, progress=False, validation=ValidationConfig(min_side=16))
        ingest(ws, create_source("folder", directory=str(folder)), options)
        embed(ws, EmbedConfig(device="cpu", workers=0, progress=False))
        dedup(ws, ND_CONFIG)
        ws.catalog.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _CACHE["ws"] = base / "ws"
    return NeardupSet(_CACHE["ws"])


@pytest.fixture
def neardup_ws(neardup_template: NeardupSet, tmp_path: Path) -> Workspace:
    shutil.copytree(neardup_template.root, tmp_path / "ws")
    return Workspace.open(tmp_path / "ws")


def names(ws: Workspace) -> dict[str, str]:
    """file name -> item id."""
    items = ws.items(["item_id", "source_path"])
    return {Path(p).name: str(i) for i, p in zip(items.item_id, items.source_path, strict=True)}
