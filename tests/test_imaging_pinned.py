"""Pinned signals: every stored signal and hash of the bundled samples stays bit-identical.

Near-duplicate thresholds, the exact tier and resumed runs all compare against values already in catalogs, so
for the same bytes ``inspect_image`` and the ingest worker (:func:`emo8.ingest.run.check_batch`) must keep
returning exactly the values recorded in ``tests/data/imaging_pinned.json``: sha256, format, sizes, frame
count, brightness and colorfulness (exact floats), pHash, dHash and the pixel hash. The inputs are the 81
bundled JPEG samples (decoded in JPEG draft mode at 1/2 to 1/8 scale, depending on their size) and a few
inputs derived from them with deterministic pixels: an EXIF orientation inserted byte-wise, lossless PNG with
alpha, greyscale GIF, lossless WebP, BMP and 16-bit TIFF (their pixels are pinned, their sha256 is not: those
bytes come from the installed encoders).

A change that is meant to change signals must regenerate the file
(``python tests/test_imaging_pinned.py --write``) and say so: existing catalogs then need re-ingesting.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emo8.core.catalog import SIGNAL_COLUMNS
from emo8.core.imaging import ValidationConfig, inspect_image
from emo8.core.workspace import ObjectStore
from emo8.ingest.run import Spooled, check_batch, spool
from emo8.ingest.transfer import Shared, TransferArena, attach

SAMPLES = Path(__file__).resolve().parents[1] / "emo8" / "samples"
PINNED = Path(__file__).resolve().parent / "data" / "imaging_pinned.json"
FIELDS = (
    "format",
    "width",
    "height",
    "n_frames",
    "brightness",
    "colorfulness",
    "phash",
    "dhash",
    "pixel_hash",
)


def _encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an APP1 Exif segment holding only ``orientation`` inserted after SOI (no re-encode)."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\0\0" + b"MM\0*" + struct.pack(">I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def inputs() -> dict[str, bytes]:
    """The pinned inputs by name: every bundled sample's bytes, then the derived ones."""
    with open(SAMPLES / "manifest.csv", newline="") as handle:
        files = [row["file"] for row in csv.DictReader(handle)]
    out = {name: (SAMPLES / name).read_bytes() for name in files}
    photo_bytes = out["images/lom-0005.jpg"]  # 512 x 384
    with Image.open(io.BytesIO(photo_bytes)) as im:
        photo = im.convert("RGB")
    pixels = np.asarray(photo)
    ramp = np.tile(np.linspace(0, 255, photo.width).astype(np.uint8), (photo.height, 1))
    rgba = Image.fromarray(np.dstack([pixels, ramp]), "RGBA")
    grey = photo.convert("L")
    out["derived/exif-orientation-6.jpg"] = _with_orientation(photo_bytes, 6)
    out["derived/exif-orientation-3.jpg"] = _with_orientation(out["images/gcq-0034.jpg"], 3)
    out["encoded/rgba.png"] = _encode(rgba, "PNG")
    out["encoded/grey.gif"] = _encode(grey, "GIF")
    out["encoded/lossless.webp"] = _encode(photo, "WEBP", lossless=True)
    out["encoded/photo.bmp"] = _encode(photo, "BMP")
    sixteen = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    out["encoded/16bit.tiff"] = _encode(sixteen, "TIFF")
    return out


def signals(name: str, data: bytes) -> dict[str, object]:
    """What ingest records for input ``name``: the :func:`inspect_image` fields and, unless the bytes come from an
    installed encoder, the sha256."""
    info = inspect_image(data, ValidationConfig())
    assert info.ok, (info.reason, info.error)
    digest = None if name.startswith("encoded/") else hashlib.sha256(data).hexdigest()
    return {"sha256": digest, **{k: getattr(info, k) for k in FIELDS}}


@pytest.fixture(scope="module")
def pinned() -> dict[str, dict[str, object]]:
    return dict(json.loads(PINNED.read_text()))


@pytest.fixture(scope="module")
def pinned_inputs() -> dict[str, bytes]:
    return inputs()


def test_pins_cover_every_input(
    pinned: dict[str, dict[str, object]], pinned_inputs: dict[str, bytes]
) -> None:
    assert sorted(pinned) == sorted(pinned_inputs)
    assert set(SIGNAL_COLUMNS) <= set(FIELDS)  # a new catalog signal must be pinned too
    assert len(pinned) >= 88
    assert {p["format"] for p in pinned.values()} == {"jpeg", "png", "gif", "webp", "bmp", "tiff"}


def test_signals_are_bit_identical_to_the_pins(
    pinned: dict[str, dict[str, object]], pinned_inputs: dict[str, bytes]
) -> None:
    changed = {
        name: {k: (v, pinned[name][k]) for k, v in signals(name, data).items() if v != pinned[name][k]}
        for name, data in pinned_inputs.items()
    }
    changed = {name: diff for name, diff in changed.items() if diff}
    assert not changed, (
        f"signals changed (now, pinned) for {len(changed)} inputs: {dict(list(changed.items())[:3])}"
    )


@pytest.mark.parametrize("hand_off", ["shared", "spooled"])
def test_ingest_worker_records_the_pinned_values(
    tmp_path: Path, pinned: dict[str, dict[str, object]], pinned_inputs: dict[str, bytes], hand_off: str
) -> None:
    """The worker path (shared memory or a spooled file, sha256, validation, store) yields the pinned values."""
    store = ObjectStore(tmp_path / "objects", tmp_path / "tmp")
    store.tmp.mkdir(parents=True, exist_ok=True)
    names = list(pinned_inputs)
    arena = TransferArena(64 << 20)
    attach(arena.memory)  # as the decode pool's initializer does in each worker
    sources: list[bytes | str | Spooled | Shared]
    if hand_off == "shared":
        placed = arena.place([pinned_inputs[n] for n in names])
        assert placed is not None
        sources = list(placed[1])
    else:
        sources = [spool(pinned_inputs[n], store) for n in names]
        assert all(isinstance(s, Spooled) for s in sources)
    for name, found in zip(names, check_batch(sources, ValidationConfig(), store), strict=True):
        assert found.info is not None and found.info.ok
        assert found.sha256 == hashlib.sha256(pinned_inputs[name]).hexdigest()
        digest = None if pinned[name]["sha256"] is None else found.sha256
        got = {"sha256": digest, **{k: getattr(found.info, k) for k in FIELDS}}
        assert got == pinned[name], name
        assert store.path(str(found.sha256), found.info.format).read_bytes() == pinned_inputs[name]
    arena.close()


def test_a_one_bit_change_is_caught(
    pinned: dict[str, dict[str, object]], pinned_inputs: dict[str, bytes]
) -> None:
    """The comparison can fail: a sample with one pixel changed no longer matches its pins."""
    with Image.open(io.BytesIO(pinned_inputs["encoded/photo.bmp"])) as opened:
        im = opened.convert("RGB")
    im.putpixel((0, 0), (0, 0, 0) if im.getpixel((0, 0)) != (0, 0, 0) else (255, 255, 255))
    changed = signals("encoded/photo.bmp", _encode(im, "BMP"))
    assert (
        changed != pinned["encoded/photo.bmp"]
        and changed["pixel_hash"] != pinned["encoded/photo.bmp"]["pixel_hash"]
    )
    sample = pinned_inputs["images/gcq-0034.jpg"]
    assert signals("images/gcq-0034.jpg", sample[:-3] + b"\0\xff\xd9") != pinned["images/gcq-0034.jpg"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_imaging_pinned.py --write  (regenerates the pins)")
    PINNED.parent.mkdir(parents=True, exist_ok=True)
    PINNED.write_text(
        json.dumps({n: signals(n, d) for n, d in inputs().items()}, indent=1, sort_keys=True) + "\n"
    )
    print(f"written {PINNED}")
