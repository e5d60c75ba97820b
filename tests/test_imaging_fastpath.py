"""The JPEG fast path of :func:`emo8.core.imaging.inspect_image` and the worker's store writes.

The fast path (segment walk + libjpeg-turbo through simplejpeg) must give exactly the :class:`ImageInfo` of the
Pillow path for every JPEG it accepts, and hand everything else to Pillow: same verdicts, reasons, messages and
signals, bit for bit. Each case compares the two paths on the same bytes and checks which path was taken, so a
fast path that silently never runs, or one that runs where it should not, fails here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emo8.core import imaging, workspace
from emo8.core.imaging import ImageInfo, ValidationConfig, inspect_image
from emo8.core.workspace import ObjectStore
from emo8.ingest.run import check_batch

SAMPLES = Path(__file__).resolve().parents[1] / "emo8" / "samples" / "images"
PHOTOS_DEV = Path("/work/shared/data/photos-dev")  # the lead's development photos, when present
DEFAULT = ValidationConfig()
ANY_SIZE = ValidationConfig(min_side=1, max_aspect_ratio=1000.0)

needs_simplejpeg = pytest.mark.skipif(imaging._simplejpeg is None, reason="simplejpeg is not installed")


def encode(im: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def insert_after_soi(jpeg: bytes, *segments: bytes) -> bytes:
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def exif_segment(tiff: bytes) -> bytes:
    return segment(0xE1, b"Exif\0\0" + tiff)


def orientation_tiff(value: int, typ: int = 3, count: int = 1, order: bytes = b"MM") -> bytes:
    """A TIFF header and IFD0 holding one Orientation entry."""
    e = ">" if order == b"MM" else "<"
    raw = struct.pack(e + "HH", value, 0) if typ == 3 else struct.pack(e + "I", value)
    entry = struct.pack(e + "HHI", 0x0112, typ, count) + raw
    head = order + (b"\0*" if order == b"MM" else b"*\0") + struct.pack(e + "I", 8)
    return head + struct.pack(e + "H", 1) + entry + struct.pack(e + "I", 0)


def find_segment(jpeg: bytes, marker: int) -> int:
    """Offset of the first segment with ``marker`` before the scan."""
    pos = 2
    while jpeg[pos + 1] != marker:
        pos += 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
    return pos


def both_paths(
    data: bytes, monkeypatch: pytest.MonkeyPatch, config: ValidationConfig = DEFAULT
) -> tuple[ImageInfo | None, ImageInfo]:
    """``(fast, pillow)``: the fast path's own answer (None: it declined) and the Pillow path's verdict; also
    checks that :func:`inspect_image` returns the Pillow verdict with the fast path on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = imaging._inspect_plain_jpeg(data, config)
    full = inspect_image(data, config)
    with monkeypatch.context() as patch:
        patch.setattr(imaging, "_simplejpeg", None)
        pillow = normal(inspect_image(data, config))
    assert normal(full) == pillow
    return fast, pillow


def normal(info: ImageInfo) -> ImageInfo:
    """``info`` without the memory address Pillow's "cannot identify image file <_io.BytesIO at 0x...>" names."""
    return dataclasses.replace(info, error=re.sub(r" at 0x[0-9a-f]+", "", info.error or "") or None)


def assert_fast(
    data: bytes, monkeypatch: pytest.MonkeyPatch, config: ValidationConfig = DEFAULT
) -> ImageInfo:
    fast, pillow = both_paths(data, monkeypatch, config)
    assert fast is not None, "the fast path declined a plain JPEG"
    assert fast == pillow
    return pillow


def assert_declined(
    data: bytes, monkeypatch: pytest.MonkeyPatch, config: ValidationConfig = DEFAULT
) -> ImageInfo:
    fast, pillow = both_paths(data, monkeypatch, config)
    assert fast is None, "the fast path accepted what it should hand to Pillow"
    return pillow


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(SAMPLES / "lom-0005.jpg") as im:  # 512 x 384
        return im.convert("RGB")


# --- the common case: identical to Pillow


@needs_simplejpeg
def test_every_bundled_sample_takes_the_fast_path_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted(SAMPLES.glob("*.jpg"))
    assert len(paths) >= 80
    for path in paths:
        assert assert_fast(path.read_bytes(), monkeypatch).ok, path.name


@needs_simplejpeg
@pytest.mark.skipif(not PHOTOS_DEV.is_dir(), reason="the photos-dev set is not on this machine")
def test_every_dev_photo_takes_the_fast_path_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted(p for p in PHOTOS_DEV.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    assert paths
    for path in paths:
        fast, pillow = both_paths(path.read_bytes(), monkeypatch)
        assert fast is None or fast == pillow, path.name
        assert fast is not None or not pillow.ok, path.name


@needs_simplejpeg
@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_subsampling_progressive_and_grey(
    photo: Image.Image, monkeypatch: pytest.MonkeyPatch, subsampling: int, progressive: bool, mode: str
) -> None:
    im = photo if mode == "RGB" else photo.convert("L")
    data = encode(im, quality=90, subsampling=subsampling, progressive=progressive)
    assert assert_fast(data, monkeypatch).ok


@needs_simplejpeg
@pytest.mark.parametrize(
    "size",
    [
        (64, 64),
        (65, 97),
        (127, 128),
        (129, 255),
        (256, 257),
        (511, 513),
        (515, 1031),
        (1031, 777),
        (2050, 300),
    ],
)
def test_every_draft_scale_and_odd_sizes(
    photo: Image.Image, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]
) -> None:
    """Sizes around each of Pillow's draft scales (1, 1/2, 1/4, 1/8), whose decoded sides round up."""
    data = encode(photo.resize(size), quality=85)
    info = assert_fast(data, monkeypatch, ANY_SIZE)
    assert (info.width, info.height) == size


@needs_simplejpeg
@pytest.mark.parametrize("size", [(1, 1), (40, 30), (63, 200), (8, 9)])
def test_tiny_images(photo: Image.Image, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]) -> None:
    data = encode(photo.resize(size))
    assert assert_fast(data, monkeypatch, ANY_SIZE).ok
    assert assert_declined(data, monkeypatch).reason == "too_small"  # rejections are Pillow's


@needs_simplejpeg
def test_huge_headers(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large comments, unknown APP segments and an ICC profile split over several APP2 segments."""
    profile = bytes(range(256)) * 600  # 150 kB: three ICC chunks
    data = encode(photo, icc_profile=profile, comment=b"c" * 60_000)
    data = insert_after_soi(data, *(segment(0xE0 + k, bytes([k]) * 65_000) for k in (3, 4, 5, 9, 15)))
    assert len(data) > 500_000
    assert assert_fast(data, monkeypatch).ok


@needs_simplejpeg
def test_restart_markers(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        data = encode(photo, restart_marker_rows=1)
    except TypeError:  # pragma: no cover - Pillow before 11.1
        pytest.skip("this Pillow writes no restart markers")
    assert find_segment(data, 0xDD) > 0
    assert assert_fast(data, monkeypatch).ok


# --- EXIF and XMP orientation: read by Pillow's own rules


@needs_simplejpeg
@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("dpi", [False, True])  # with a JFIF density Pillow does not read EXIF while opening
def test_every_exif_orientation(
    photo: Image.Image, monkeypatch: pytest.MonkeyPatch, orientation: int, dpi: bool
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    extra: dict[str, object] = {"dpi": (96, 96)} if dpi else {}
    data = encode(photo.resize((300, 200)), exif=exif.tobytes(), **extra)
    info = assert_fast(data, monkeypatch)
    assert (info.width, info.height) == ((200, 300) if orientation >= 5 else (300, 200))


@needs_simplejpeg
@pytest.mark.parametrize(
    "tiff",
    [
        orientation_tiff(6, order=b"II"),  # little-endian
        orientation_tiff(6, typ=4),  # LONG instead of SHORT
        orientation_tiff(6, count=2),  # two values: a tuple, not an orientation
        orientation_tiff(9),  # out of range
        orientation_tiff(0),
        orientation_tiff(6)[:14],  # the IFD cut short
        b"MM\0*" + struct.pack(">I", 4000),  # IFD offset past the end
        b"XX\0*\0\0\0\x08",  # not a TIFF header
        b"",  # an empty EXIF segment
        orientation_tiff(8)[:-4] + b"\xff\xff\xff",  # no next-IFD pointer
        b"MM\0*" + struct.pack(">IH", 8, 0xFFFF) + b"\0" * 40,  # more entries announced than present
    ],
)
@pytest.mark.parametrize("dpi", [False, True])
def test_malformed_exif_orientation_agrees_with_pillow(
    photo: Image.Image, monkeypatch: pytest.MonkeyPatch, tiff: bytes, dpi: bool
) -> None:
    extra: dict[str, object] = {"dpi": (72, 72)} if dpi else {}
    data = insert_after_soi(encode(photo.resize((300, 200)), **extra), exif_segment(tiff))
    assert assert_fast(data, monkeypatch).ok


@needs_simplejpeg
def test_second_exif_segment_and_xmp_orientation(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    base = encode(photo.resize((300, 200)))
    xmp = segment(
        0xE1, b"http://ns.adobe.com/xap/1.0/\0" + b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/>'
    )
    rotated = assert_fast(insert_after_soi(base, xmp), monkeypatch)
    assert (rotated.width, rotated.height) == (200, 300)  # XMP orientation applies when EXIF has none
    twice = insert_after_soi(base, exif_segment(orientation_tiff(3)), exif_segment(orientation_tiff(6)))
    assert assert_fast(twice, monkeypatch).ok
    exif_wins = insert_after_soi(base, exif_segment(orientation_tiff(3)), xmp)
    assert (assert_fast(exif_wins, monkeypatch).width, assert_fast(exif_wins, monkeypatch).height) == (
        300,
        200,
    )


# --- what the fast path hands to Pillow


@needs_simplejpeg
@pytest.mark.parametrize("cut", [100, 0.2, 0.5, 0.8, 0.95, -3, -2, -1])
@pytest.mark.parametrize("progressive", [False, True])
def test_truncated(
    photo: Image.Image, monkeypatch: pytest.MonkeyPatch, cut: float, progressive: bool
) -> None:
    data = encode(photo, progressive=progressive)
    end = int(len(data) * cut) if isinstance(cut, float) else cut
    info = assert_declined(data[:end], monkeypatch)
    assert not info.ok and info.reason in ("truncated", "corrupt")


@needs_simplejpeg
def test_cut_anywhere_in_the_headers(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every prefix that ends inside the segments before the scan: never an exception, always Pillow's verdict."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo.resize((200, 150)), exif=exif.tobytes(), icc_profile=b"icc" * 50, comment=b"hello")
    scan = find_segment(data, 0xDA)
    for end in range(0, scan + 16):
        info = assert_declined(data[:end], monkeypatch)
        assert not info.ok


@needs_simplejpeg
def test_mutated_jpegs_agree_with_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded random byte edits (headers and scan data) of the bundled samples: the fast path either declines or
    gives Pillow's exact result, and it does accept a good share of them."""
    rng = np.random.default_rng(15)
    samples = [path.read_bytes() for path in sorted(SAMPLES.glob("*.jpg"))[:20]]
    accepted = 0
    for _ in range(300):
        data = bytearray(samples[int(rng.integers(len(samples)))])
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(2, 600 if rng.random() < 0.5 else len(data)))
            data[pos : pos + int(rng.integers(0, 3))] = rng.integers(
                0, 256, int(rng.integers(0, 3)), np.uint8
            ).tobytes()
        fast, pillow = both_paths(bytes(data), monkeypatch)
        assert fast is None or normal(fast) == pillow
        accepted += fast is not None
    assert accepted > 30


@needs_simplejpeg
def test_cmyk_and_adobe_go_to_pillow(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    assert assert_declined(encode(photo.convert("CMYK")), monkeypatch).ok
    adobe = segment(0xEE, b"Adobe\0\x64\0\0\0\0\x01")  # transform 1: YCbCr, as libjpeg reads it
    assert assert_declined(insert_after_soi(encode(photo), adobe), monkeypatch).ok


@needs_simplejpeg
def test_pillow_stricter_than_libjpeg_stays_rejected(
    photo: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers Pillow's parser refuses (libjpeg would decode them): the verdict stays Pillow's rejection."""
    data = encode(photo)
    dqt = find_segment(data, 0xDB)
    length = int.from_bytes(data[dqt + 2 : dqt + 4], "big")
    short_table = data[: dqt + 2] + struct.pack(">H", length - 1) + data[dqt + 4 : dqt + 2 + length - 1]
    short_table += data[dqt + 2 + length :]
    short_jfif = insert_after_soi(data[:2] + data[find_segment(data, 0xDB) :], segment(0xE0, b"JFIF\0"))
    short_icc = insert_after_soi(data, segment(0xE2, b"ICC_PROFILE\0\x01"))
    photoshop = insert_after_soi(data, segment(0xED, b"Photoshop 3.0\0" + b"8BIM\x03\xed"))
    for bad in (short_table, short_jfif, short_icc, photoshop):
        info = assert_declined(bad, monkeypatch)
        assert not info.ok and info.reason == "corrupt"


@needs_simplejpeg
def test_unusual_structures_go_to_pillow(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(photo)
    sof = find_segment(data, 0xC0)
    rgb_ids = bytearray(data)
    rgb_ids[sof + 10], rgb_ids[sof + 13], rgb_ids[sof + 16] = 82, 71, 66  # 'R', 'G', 'B': no colour transform
    mpf = insert_after_soi(data, segment(0xE2, b"MPF\0" + b"MM\0*\0\0\0\x08\0\0"))
    junk = data[:sof] + b"\0\0junk" + data[sof:]  # Pillow skips junk between segments, libjpeg warns
    flipped = bytearray(data)
    flipped[len(data) // 2 : len(data) // 2 + 16] = b"\xff\x00" * 8  # damaged entropy-coded data
    declined = [bytes(rgb_ids), mpf, junk]
    for bad in declined:
        assert_declined(bad, monkeypatch)
    both_paths(bytes(flipped), monkeypatch)
    assert_fast(data + b"trailing bytes after EOI", monkeypatch)


@needs_simplejpeg
def test_size_limits_stay_pillow_rejections(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(photo)  # 512 x 384
    assert (
        assert_declined(data, monkeypatch, ValidationConfig(max_pixels=100_000)).reason
        == "decompression_bomb"
    )
    assert assert_declined(data, monkeypatch, ValidationConfig(max_aspect_ratio=1.2)).reason == "aspect_ratio"
    assert assert_declined(data, monkeypatch, ValidationConfig(min_side=400)).reason == "too_small"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # Pillow's own bomb limit (twice this) applies too
    assert assert_declined(data, monkeypatch).reason == "decompression_bomb"


@needs_simplejpeg
def test_a_wrong_decode_scale_would_be_caught(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison can fail: decoding at another DCT scale than Pillow's draft changes the signals."""
    data = encode(photo)
    assert assert_fast(data, monkeypatch).ok
    monkeypatch.setattr(imaging, "_draft_scale", lambda w, h: 1)
    fast = imaging._inspect_plain_jpeg(data, DEFAULT)
    monkeypatch.setattr(imaging, "_simplejpeg", None)
    assert fast is not None and fast.ok and fast != inspect_image(data)


@needs_simplejpeg
def test_the_fast_path_checks_itself_against_pillow_once(
    photo: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On these libraries the reference JPEGs agree; a fast path that disagreed would switch itself off."""
    monkeypatch.setattr(imaging, "_fast_jpeg_agrees", None)
    assert imaging._check_fast_jpeg() is True and imaging._fast_jpeg_agrees is True
    data = encode(photo)
    expected = inspect_image(data)
    monkeypatch.setattr(imaging, "_fast_jpeg_agrees", None)
    monkeypatch.setattr(imaging, "_draft_scale", lambda w, h: 1)  # a decoder that no longer matches Pillow's
    assert inspect_image(data) == expected
    assert imaging._fast_jpeg_agrees is False
    assert imaging._inspect_plain_jpeg(data, DEFAULT) != expected  # what the check kept out


# --- without simplejpeg


def test_without_simplejpeg_everything_still_works(
    photo: Image.Image, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    inputs = [path.read_bytes() for path in sorted(SAMPLES.glob("*.jpg"))[:10]]
    inputs += [
        encode(photo.convert("L")),
        encode(photo, progressive=True),
        encode(photo)[:5000],
        b"not an image",
    ]
    with_fast = [inspect_image(data) for data in inputs]
    monkeypatch.setattr(imaging, "_simplejpeg", None)
    assert [inspect_image(data) for data in inputs] == with_fast
    store = ObjectStore(tmp_path / "objects", tmp_path / "tmp")
    checked = check_batch(list(inputs), DEFAULT, store)
    assert [c.info for c in checked] == with_fast
    assert sum(c.new_bytes > 0 for c in checked) == sum(info.ok for info in with_fast) == 12


# --- the store's writes from the decode workers


def parts(store: ObjectStore) -> list[str]:
    return [p.name for p in store.tmp.iterdir() if p.name.startswith(".part-")] if store.tmp.exists() else []


def test_put_writes_once_atomically_and_makes_its_directories(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects", tmp_path / "tmp")  # neither directory exists yet
    data = (SAMPLES / "lom-0005.jpg").read_bytes()
    digest, new = store.put(data, "jpeg")
    assert new and digest == hashlib.sha256(data).hexdigest()
    path = store.path(digest, "jpeg")
    assert path.read_bytes() == data and path.parent.name == digest[:2]
    before = path.stat()
    assert store.put(data, "jpeg", digest) == (digest, False)  # idempotent: never rewritten
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns
    assert parts(store) == []
    other = b"\xff\xd8\xff" + os.urandom(1000)
    assert (
        store.put(other, "jpeg")[1]
        and store.path(hashlib.sha256(other).hexdigest(), "jpeg").read_bytes() == other
    )


def test_put_steps_over_a_temporary_name_already_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(tmp_path / "objects", tmp_path / "tmp")
    store.tmp.mkdir()
    monkeypatch.setattr(workspace, "_part_numbers", itertools.count(7))
    squatter = store.tmp / f".part-{os.getpid()}-{workspace._PART_TOKEN}-7"
    squatter.write_bytes(b"someone else's")
    digest, new = store.put(b"payload", "jpeg")
    assert new and store.path(digest, "jpeg").read_bytes() == b"payload"
    assert squatter.read_bytes() == b"someone else's"
    assert parts(store) == [squatter.name]


def test_put_failure_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "objects").write_bytes(b"a file where the store's directory should be")
    store = ObjectStore(tmp_path / "objects", tmp_path / "tmp")
    with pytest.raises(OSError):
        store.put(b"payload", "jpeg")
    assert parts(store) == []
    with pytest.raises(FileNotFoundError):  # without make_parent a missing directory is an error, not made
        workspace._atomic_write(tmp_path / "missing" / "x.json", b"{}", tmp_path / "tmp")
    assert parts(store) == []
