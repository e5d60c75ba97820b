"""Tests for emo8.core.imaging: validation reasons, normalisation and signals, on the bundled real samples."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import pickle
import struct
import subprocess
import sys
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from emo8.core.imaging import (
    FORMAT_EXTENSIONS,
    ImageInfo,
    ValidationConfig,
    colorfulness,
    inspect_image,
    load_rgb,
    sniff_format,
)

SAMPLES = Path(__file__).resolve().parents[1] / "emo8" / "samples"
PHOTO = "images/lom-0005.jpg"  # 512 x 384 photo


def sample_paths() -> list[Path]:
    with open(SAMPLES / "manifest.csv", newline="") as f:
        return [SAMPLES / row["file"] for row in csv.DictReader(f)]


def encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def hamming(a: str | None, b: str | None) -> int:
    assert a is not None and b is not None
    return int(imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(side: int) -> bytes:
    """A valid all-black 1-bit PNG of side x side pixels, built block-wise without materialising the rows."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    rows = 50
    assert side % rows == 0
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = co.compress(row * rows) + co.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, state reset: repeatable
    n = side * len(row)
    adler = ((n % 65521) << 16) | 1  # adler32 of n zero bytes
    idat = b"\x78\xda" + block * (side // rows) + co.flush() + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(SAMPLES / PHOTO) as im:
        return im.convert("RGB")


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    return (SAMPLES / PHOTO).read_bytes()


# --- format sniffing


@pytest.mark.parametrize(
    ("fmt", "kwargs", "expected"),
    [
        ("JPEG", {}, "jpeg"),
        ("PNG", {}, "png"),
        ("WEBP", {}, "webp"),
        ("GIF", {}, "gif"),
        ("BMP", {}, "bmp"),
        ("TIFF", {}, "tiff"),
        ("TIFF", {"big_tiff": True}, "tiff"),
    ],
)
def test_sniff_format_by_magic_bytes(
    photo: Image.Image, fmt: str, kwargs: dict[str, object], expected: str
) -> None:
    data = encode(photo.resize((80, 60)), fmt, **kwargs)
    assert sniff_format(data) == expected
    assert expected in FORMAT_EXTENSIONS


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<!DOCTYPE html><html><body>Not found</body></html>",
        b"BMW is a car brand, not a bitmap at all.",
        b"\x00" * 64,
    ],
)
def test_sniff_format_rejects_non_images(data: bytes) -> None:
    assert sniff_format(data) is None


def test_format_extensions() -> None:
    assert FORMAT_EXTENSIONS["jpeg"] == ".jpg"
    assert set(FORMAT_EXTENSIONS) == {"jpeg", "png", "webp", "gif", "bmp", "tiff"}


# --- accepted formats and signals


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_accepts_every_supported_format(photo: Image.Image, fmt: str) -> None:
    info = inspect_image(encode(photo, fmt))
    assert info.ok, info
    assert info.reason is None and info.error is None
    assert info.format == sniff_format(encode(photo, fmt))
    assert (info.width, info.height) == photo.size
    assert info.n_frames == 1
    assert info.brightness is not None and 0.0 < info.brightness < 1.0
    assert info.colorfulness is not None and info.colorfulness > 0
    # the hashes are imagehash's of this picture (a bit or two of rounding apart), not of any other
    assert hamming(info.phash, str(imagehash.phash(photo))) <= 4
    assert hamming(info.dhash, str(imagehash.dhash(photo))) <= 4
    flipped = inspect_image(encode(ImageOps.flip(photo), fmt))
    assert hamming(info.phash, flipped.phash) >= 16 and hamming(info.dhash, flipped.dhash) >= 16
    assert info.pixel_hash is not None and len(info.pixel_hash) == 64
    assert info.pixel_hash != flipped.pixel_hash


def test_all_samples_valid_with_distinct_hashes() -> None:
    infos = [inspect_image(p.read_bytes()) for p in sample_paths()]
    assert len(infos) == 81 and all(i.ok for i in infos), [i for i in infos if not i.ok]
    assert all(i.format == "jpeg" for i in infos)
    assert len({i.pixel_hash for i in infos}) == len(infos)
    assert len({i.phash for i in infos}) == len(infos)
    assert len({i.dhash for i in infos}) == len(infos)


def test_sizes_match_manifest() -> None:
    with open(SAMPLES / "manifest.csv", newline="") as f:
        for row in list(csv.DictReader(f))[:20]:
            info = inspect_image((SAMPLES / row["file"]).read_bytes())
            assert (info.width, info.height) == (int(row["width"]), int(row["height"]))


def test_as_dict_and_pickle(photo_jpeg: bytes) -> None:
    info = inspect_image(photo_jpeg)
    d = info.as_dict()
    assert list(d) == list(ImageInfo.__dataclass_fields__)
    json.dumps(d)
    assert pickle.loads(pickle.dumps(info)) == info
    assert pickle.loads(pickle.dumps(ValidationConfig(min_side=10))) == ValidationConfig(min_side=10)


def test_runs_in_a_process_pool() -> None:
    datas = [p.read_bytes() for p in sample_paths()[:6]]
    with ProcessPoolExecutor(max_workers=2) as pool:
        remote = list(pool.map(inspect_image, datas, [ValidationConfig()] * len(datas)))
    assert remote == [inspect_image(d) for d in datas]


# --- rejections


def test_mutated_files_never_raise(photo: Image.Image) -> None:
    small = photo.resize((160, 120))
    bases = [encode(small, fmt) for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")]
    rng = np.random.default_rng(1)
    reasons = set()
    for i in range(300):
        data = bytearray(bases[i % len(bases)])
        if i % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            for pos in rng.integers(0, len(data), int(rng.integers(1, 20))):
                data[pos] = int(rng.integers(0, 256))
        info = inspect_image(bytes(data), ValidationConfig(min_side=16))
        assert info.ok == (info.reason is None)
        reasons.add(info.reason)
    assert {"truncated", "corrupt"} <= reasons


def test_empty() -> None:
    info = inspect_image(b"")
    assert (info.ok, info.reason) == (False, "empty")


@pytest.mark.parametrize(
    "data",
    [
        b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>gone</body></html>",
        b'{"error": "rate limited"}',
        b"BM but this is plain text of some length",
        bytes(range(256)) * 4,
    ],
)
def test_not_an_image(data: bytes) -> None:
    info = inspect_image(data)
    assert (info.ok, info.reason) == (False, "not_an_image")
    assert info.error and info.format is None


def test_unsupported_formats(photo: Image.Image) -> None:
    small = photo.resize((64, 48))
    samples = [
        encode(small, "ICO"),
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
        b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 32,
        b"8BPS\x00\x01" + b"\x00" * 40,
    ]
    for data in samples:
        info = inspect_image(data)
        assert (info.ok, info.reason) == (False, "unsupported_format"), data[:16]


@pytest.mark.parametrize("cut", [0.3, 0.9, -2, -1])
@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpeg(photo: Image.Image, cut: float, progressive: bool) -> None:
    data = encode(photo, "JPEG", quality=90, progressive=progressive)
    end = int(len(data) * cut) if cut > 0 else int(cut)
    info = inspect_image(data[:end])
    assert (info.ok, info.reason) == (False, "truncated"), info
    assert info.format == "jpeg" and (info.width, info.height) == photo.size


def test_truncated_sample_jpeg_is_rejected_although_decoded_in_draft_mode(photo_jpeg: bytes) -> None:
    assert inspect_image(photo_jpeg).ok
    info = inspect_image(photo_jpeg[: len(photo_jpeg) - 100])
    assert info.reason == "truncated"


@pytest.mark.parametrize(
    ("fmt", "cut"), [("PNG", 0.5), ("PNG", -12), ("WEBP", 0.5), ("GIF", 0.5), ("BMP", 0.5)]
)
def test_truncated_other_formats(photo: Image.Image, fmt: str, cut: float) -> None:
    data = encode(photo, fmt)
    end = int(len(data) * cut) if cut > 0 else int(cut)
    info = inspect_image(data[:end])
    assert (info.ok, info.reason) == (False, "truncated"), info


def test_corrupt(photo_jpeg: bytes) -> None:
    garbage_header = photo_jpeg[:4] + b"\xff" * 200 + photo_jpeg[204:]
    assert inspect_image(garbage_header).reason == "corrupt"
    png = bytearray(encode(Image.new("RGB", (100, 100)), "PNG"))
    png[29] ^= 0xFF  # IHDR checksum
    assert inspect_image(bytes(png)).reason == "corrupt"
    assert inspect_image(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20).reason == "truncated"  # no IEND
    rng = np.random.default_rng(0)
    noisy = bytearray(photo_jpeg)
    for pos in rng.integers(1000, len(noisy) - 10, 200):
        noisy[pos] = int(rng.integers(0, 256))
    info = inspect_image(bytes(noisy))
    assert (info.ok, info.reason) == (False, "corrupt"), info


_PEAK_MEMORY = """
import json, resource, sys
from pathlib import Path
from emo8.core.imaging import inspect_image
inspect_image(Path(sys.argv[2]).read_bytes())  # warm up: plugins, decoders and buffers of a normal image
data = Path(sys.argv[1]).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
info = inspect_image(data)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"grown_kib": grown, "ok": info.ok, "reason": info.reason, "format": info.format}))
"""


def _peak_memory_of_inspection(data: bytes, tmp_path: Path) -> dict[str, object]:
    """Inspect ``data`` in a fresh process and return the verdict and how far its peak RSS grew (KiB): the peak
    of this process says nothing, earlier tests have raised it already."""
    bomb, warm = tmp_path / "bomb.png", tmp_path / "warm.jpg"
    bomb.write_bytes(data)
    warm.write_bytes((SAMPLES / PHOTO).read_bytes())
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY, str(bomb), str(warm)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("side", [50_000, 12_000])  # above Pillow's hard limit; below it but above max_pixels
def test_png_decompression_bomb_rejected_without_allocating(side: int, tmp_path: Path) -> None:
    bomb = png_bomb(side)  # 2.5 Gpx in ~320 KB of valid PNG; 144 Mpx (1 byte each once decoded)
    assert len(bomb) < 400_000
    got = _peak_memory_of_inspection(bomb, tmp_path)
    assert (got["ok"], got["reason"], got["format"]) == (False, "decompression_bomb", "png")
    assert isinstance(got["grown_kib"], int) and got["grown_kib"] < 32_000, got  # decoding needs >= 140 MB


def test_bomb_limit_is_configurable(photo_jpeg: bytes) -> None:
    bomb = png_bomb(12_000)  # 144 Mpx: above max_pixels, below Pillow's hard limit (Pillow only warns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = inspect_image(bomb)
    assert (info.reason, info.width, info.height) == ("decompression_bomb", 12_000, 12_000)
    assert inspect_image(photo_jpeg, ValidationConfig(max_pixels=512 * 384)).ok
    info = inspect_image(photo_jpeg, ValidationConfig(max_pixels=512 * 384 - 1))
    assert info.reason == "decompression_bomb"


def test_too_small_and_aspect_ratio(photo: Image.Image) -> None:
    assert inspect_image(encode(photo.resize((64, 64)), "PNG")).ok
    assert inspect_image(encode(photo.resize((63, 200)), "PNG")).reason == "too_small"
    assert inspect_image(encode(photo.resize((200, 63)), "JPEG")).reason == "too_small"
    assert inspect_image(encode(photo.resize((20, 20)), "PNG"), ValidationConfig(min_side=16)).ok
    assert inspect_image(encode(photo.resize((640, 80)), "PNG")).ok  # exactly 8:1
    info = inspect_image(encode(photo.resize((656, 80)), "PNG"))
    assert (info.reason, info.width, info.height) == ("aspect_ratio", 656, 80)
    assert inspect_image(encode(photo.resize((80, 656)), "PNG")).reason == "aspect_ratio"
    assert inspect_image(encode(photo.resize((656, 80)), "PNG"), ValidationConfig(max_aspect_ratio=10)).ok


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG", "TIFF"])
def test_animated(photo: Image.Image, fmt: str) -> None:
    frames = [photo.resize((96, 72)).rotate(angle) for angle in (0, 90, 180)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    accepted = inspect_image(data)
    assert accepted.ok and accepted.n_frames == 3
    first = inspect_image(encode(frames[0], fmt))
    assert accepted.phash == first.phash  # the first frame is what is measured
    info = inspect_image(data, ValidationConfig(reject_animated=True))
    assert (info.ok, info.reason, info.n_frames) == (False, "animated", 3)
    assert inspect_image(encode(frames[0], fmt), ValidationConfig(reject_animated=True)).ok


# --- normalisation: orientation, alpha, modes

_INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def with_orientation(upright: Image.Image, orientation: int, fmt: str, **kwargs: object) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(upright.transpose(_INVERSE[orientation]), fmt, exif=exif, **kwargs)


def test_exif_orientation_6_jpeg(photo: Image.Image) -> None:
    upright = inspect_image(encode(photo, "JPEG", quality=95))
    rotated = inspect_image(with_orientation(photo, 6, "JPEG", quality=95))
    assert (rotated.width, rotated.height) == (upright.width, upright.height) == (512, 384)
    assert rotated.phash == upright.phash
    assert hamming(rotated.dhash, upright.dhash) <= 2
    loaded = load_rgb(with_orientation(photo, 6, "JPEG", quality=95))
    assert loaded.size == (512, 384)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_every_exif_orientation_lossless(photo: Image.Image, orientation: int) -> None:
    upright = inspect_image(encode(photo, "PNG"))
    oriented = inspect_image(with_orientation(photo, orientation, "PNG"))
    assert oriented.as_dict() == upright.as_dict()


@pytest.mark.parametrize(("fmt", "kwargs"), [("WEBP", {"lossless": True}), ("TIFF", {})])
def test_exif_orientation_in_webp_and_tiff(photo: Image.Image, fmt: str, kwargs: dict[str, object]) -> None:
    small = photo.resize((160, 120))
    oriented = inspect_image(with_orientation(small, 6, fmt, **kwargs))
    assert oriented.as_dict() == inspect_image(encode(small, fmt, **kwargs)).as_dict()


def test_alpha_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (200, 200), (0, 0, 0, 0))  # transparent *black*
    rgba.paste((0, 0, 0, 255), (80, 80, 120, 120))
    info = inspect_image(encode(rgba, "PNG"))
    assert info.ok and info.brightness is not None and info.brightness > 0.9
    assert info.colorfulness == 0.0
    rgb = load_rgb(encode(rgba, "PNG"))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((100, 100)) == (0, 0, 0)
    for fmt, im in [("PNG", rgba.convert("LA")), ("WEBP", rgba), ("GIF", rgba), ("TIFF", rgba)]:
        flat = load_rgb(encode(im, fmt))
        assert flat.getpixel((0, 0)) == (255, 255, 255), fmt
        assert inspect_image(encode(im, fmt)).brightness > 0.9  # type: ignore[operator]


def test_half_transparent_red_blends_with_white() -> None:
    rgb = load_rgb(encode(Image.new("RGBA", (64, 64), (255, 0, 0, 128)), "PNG"))
    r, g, b = rgb.getpixel((10, 10))  # type: ignore[misc]
    assert r == 255 and 120 <= g <= 135 and g == b


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("P", "PNG"),
        ("1", "PNG"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("LA", "PNG"),
        ("RGBA", "PNG"),
    ],
)
def test_modes_converted_to_rgb(photo: Image.Image, mode: str, fmt: str) -> None:
    data = encode(photo.convert(mode), fmt)
    info = inspect_image(data)
    assert info.ok and (info.width, info.height) == photo.size
    rgb = load_rgb(data)
    assert rgb.mode == "RGB" and rgb.size == photo.size
    reference = inspect_image(encode(photo, "PNG"))
    assert abs(info.brightness - reference.brightness) < 0.06  # type: ignore[operator]


def test_16_bit_and_float_images_are_scaled() -> None:
    gray16 = Image.fromarray(np.full((100, 120), 32768, np.uint16))
    assert gray16.mode == "I;16"
    info = inspect_image(encode(gray16, "PNG"))
    assert info.ok and info.brightness == pytest.approx(0.5, abs=0.01)
    assert load_rgb(encode(gray16, "PNG")).getpixel((0, 0)) == (128, 128, 128)
    as_float = Image.fromarray(np.full((100, 120), 0.25, np.float32))
    assert inspect_image(encode(as_float, "TIFF")).brightness == pytest.approx(0.25, abs=0.01)
    as_int32 = Image.fromarray(np.full((100, 120), 65535, np.int32))
    assert inspect_image(encode(as_int32, "TIFF")).brightness == pytest.approx(1.0, abs=0.01)


# --- hashes


def test_pixel_hash_equal_across_lossless_reencodings(photo: Image.Image) -> None:
    photo = photo.resize((256, 192))
    infos = [
        inspect_image(encode(photo, "PNG")),
        inspect_image(encode(photo, "BMP")),
        inspect_image(encode(photo, "WEBP", lossless=True)),
        inspect_image(encode(photo, "TIFF", compression="tiff_lzw")),
        inspect_image(encode(photo.convert("RGBA"), "PNG")),  # fully opaque alpha
    ]
    assert all(i.ok for i in infos)
    assert len({(i.pixel_hash, i.phash, i.dhash, i.brightness, i.colorfulness) for i in infos}) == 1


def test_pixel_hash_equal_across_jpeg_metadata_and_progressive(photo: Image.Image) -> None:
    base = encode(photo, "JPEG", quality=90)
    variants = [
        encode(photo, "JPEG", quality=90, progressive=True),
        encode(photo, "JPEG", quality=90, comment=b"re-uploaded", dpi=(300, 300)),
    ]
    assert all(v != base for v in variants)
    assert {inspect_image(v).pixel_hash for v in variants} == {inspect_image(base).pixel_hash}


def test_jpeg_quality_changes_bytes_not_phash(photo: Image.Image) -> None:
    hi, lo = encode(photo, "JPEG", quality=95), encode(photo, "JPEG", quality=30)
    assert hashlib.sha256(hi).digest() != hashlib.sha256(lo).digest()
    a, b = inspect_image(hi), inspect_image(lo)
    assert a.pixel_hash != b.pixel_hash
    assert hamming(a.phash, b.phash) <= 8
    assert hamming(a.dhash, b.dhash) <= 8


def test_phash_survives_resizing_but_pixel_hash_does_not(photo: Image.Image) -> None:
    a, b = inspect_image(encode(photo, "PNG")), inspect_image(encode(photo.resize((256, 192)), "PNG"))
    assert hamming(a.phash, b.phash) <= 4
    assert a.pixel_hash != b.pixel_hash


def test_different_images_have_different_hashes(photo: Image.Image) -> None:
    a = inspect_image(encode(photo, "PNG"))
    b = inspect_image(encode(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"))
    assert a.pixel_hash != b.pixel_hash
    assert hamming(a.phash, b.phash) > 8


# --- colorfulness and brightness


def test_colorfulness_formula() -> None:
    px = np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    rg, yb = np.array([255.0, 0.0]), np.array([127.5, -255.0])
    expected = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    assert colorfulness(px) == pytest.approx(expected)


def test_colorfulness_grey_is_zero_and_saturated_is_high() -> None:
    assert colorfulness(np.full((32, 32, 3), 77, np.uint8)) == 0.0
    ramp = np.repeat(np.linspace(0, 255, 64)[:, None], 3, axis=1)[:, None, :]
    assert colorfulness(ramp) == 0.0
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]])
    blocks = np.repeat(np.repeat(palette[np.arange(64) % 6].reshape(8, 8, 3), 8, 0), 8, 1).astype(np.uint8)
    assert colorfulness(blocks) > 100
    info = inspect_image(encode(Image.fromarray(blocks), "PNG"))
    assert info.colorfulness is not None and info.colorfulness > 100
    grey = inspect_image(encode(Image.new("RGB", (100, 100), (128, 128, 128)), "PNG"))
    assert grey.colorfulness == 0.0 and grey.brightness == pytest.approx(128 / 255)


def test_brightness_extremes() -> None:
    black = inspect_image(encode(Image.new("RGB", (100, 100), 0), "JPEG"))
    white = inspect_image(encode(Image.new("RGB", (100, 100), (255, 255, 255)), "JPEG"))
    assert black.brightness is not None and black.brightness < 0.01
    assert white.brightness is not None and white.brightness > 0.99


# --- load_rgb


def test_load_rgb_sources(tmp_path: Path, photo_jpeg: bytes) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(photo_jpeg)
    from_bytes, from_path, from_str = load_rgb(photo_jpeg), load_rgb(path), load_rgb(str(path))
    assert from_bytes.mode == "RGB" and from_bytes.size == (512, 384)
    assert from_bytes.tobytes() == from_path.tobytes() == from_str.tobytes()


@pytest.mark.parametrize("max_side", [100, 128, 256, 300, 512, 1000])
def test_load_rgb_max_side(photo: Image.Image, photo_jpeg: bytes, max_side: int) -> None:
    for data in (photo_jpeg, encode(photo, "PNG"), with_orientation(photo, 8, "JPEG")):
        im = load_rgb(data, max_side=max_side)
        assert im.mode == "RGB"
        assert max(im.size) == min(max_side, 512)
        assert im.width > im.height  # orientation applied
        assert abs(im.width / im.height - 512 / 384) < 0.02


def test_load_rgb_first_frame_and_errors(photo: Image.Image) -> None:
    frames = [photo.resize((96, 72)), Image.new("RGB", (96, 72), (255, 0, 0))]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert load_rgb(gif).getpixel((5, 5)) != (255, 0, 0)
    with pytest.raises(OSError):
        load_rgb(b"<html>not an image</html>")


def test_perceptual_hashes_match_imagehash() -> None:
    """pHash/dHash computed by matrix products agree with imagehash on the same luma image: identical on nearly
    every sample, and never more than a rounding bit or two apart."""
    from emo8.core.imaging import SIGNAL_SIDE, perceptual_hashes

    same, total = 0, 0
    for path in sample_paths():
        rgb = load_rgb(path, max_side=4 * SIGNAL_SIDE).resize(
            (SIGNAL_SIDE, SIGNAL_SIDE), Image.Resampling.BOX
        )
        luma = rgb.convert("L")
        phash, dhash = perceptual_hashes(np.asarray(luma))
        for ours, theirs in ((phash, str(imagehash.phash(luma))), (dhash, str(imagehash.dhash(luma)))):
            assert len(ours) == 16
            assert hamming(ours, theirs) <= 2, (path.name, ours, theirs)
            same += ours == theirs
            total += 1
    assert same >= 0.95 * total, (same, total)


def test_perceptual_hashes_of_flat_and_simple_images() -> None:
    from emo8.core.imaging import SIGNAL_SIDE, perceptual_hashes

    flat = np.full((SIGNAL_SIDE, SIGNAL_SIDE), 128.0)
    assert perceptual_hashes(flat) == ("8000000000000000", "0000000000000000")  # the DC term alone
    ramp = np.tile(np.arange(SIGNAL_SIDE, dtype=np.float64) * 4, (SIGNAL_SIDE, 1))  # brighter to the right
    assert perceptual_hashes(ramp)[1] == "ffffffffffffffff"
    assert perceptual_hashes(ramp[:, ::-1].copy())[1] == "0000000000000000"
    for pixels in (ramp, ramp.T.copy(), ramp[:, ::-1].copy()):
        assert perceptual_hashes(pixels)[0] == str(imagehash.phash(Image.fromarray(pixels.astype(np.uint8))))
