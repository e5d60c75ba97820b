"""Image validation and signals, decoding each image once.

:func:`inspect_image` takes the raw bytes of a candidate image and returns an :class:`ImageInfo`: either a
rejection with a machine-readable ``reason`` or the image's size, format and signals (brightness,
colorfulness, pHash, dHash and a pixel hash), all computed from one decode. The steps are:

1. the format is sniffed from the magic bytes (never from a Content-Type or a file extension);
2. the header alone gives the size, checked against the decompression-bomb limit, the minimum side and the
   aspect ratio (and the frame count, when animated images are rejected) before any pixel is decoded;
3. one decode, reduced by JPEG draft mode (DCT scaling) where the format allows, yields a small RGB image
   (EXIF orientation applied, alpha flattened onto white) from which every signal is computed.

Plain JPEGs (8-bit baseline or progressive, grey or YCbCr, without Adobe or MPF segments) that decode without a
libjpeg warning skip Pillow's Python-level parsing: their headers are read here and libjpeg-turbo decodes them
through simplejpeg at exactly the size of Pillow's draft decode, which yields the same pixels. Everything else,
every rejection included, goes through Pillow, so the result is the same either way.

:func:`load_rgb` is the project's one image loader for later stages, with the same normalisation.
Both functions are top-level and picklable, so they run in a process pool.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from dataclasses import asdict, dataclass
from typing import IO

import numpy as np
from PIL import ExifTags, Image

try:  # libjpeg-turbo without Pillow's per-file Python overhead, for the common JPEG (see _inspect_plain_jpeg)
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - the Pillow path then decodes every JPEG
    _simplejpeg = None

#: Formats :func:`inspect_image` accepts, with the file extension the workspace stores each one under.
FORMAT_EXTENSIONS: dict[str, str] = {
    "jpeg": ".jpg",
    "png": ".png",
    "webp": ".webp",
    "gif": ".gif",
    "bmp": ".bmp",
    "tiff": ".tiff",
}

#: Machine codes of :attr:`ImageInfo.reason`.
REASONS = (
    "empty",
    "not_an_image",
    "unsupported_format",
    "truncated",
    "corrupt",
    "decompression_bomb",
    "too_small",
    "aspect_ratio",
    "animated",
)

#: Side of the square RGB image every signal is computed from.
SIGNAL_SIDE = 64
#: Side of the square RGB image the pixel hash is taken over.
PIXEL_HASH_SIDE = 32

_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}
_ANIMATABLE = frozenset({"gif", "webp", "png", "tiff"})
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
# Image formats recognised by their magic bytes but not accepted (reason "unsupported_format").
_UNSUPPORTED_MAGIC = (
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",  # JPEG 2000 (JP2)
    b"\xff\x4f\xff\x51",  # JPEG 2000 codestream
    b"\x00\x00\x00\x0cJXL \r\n\x87\n",  # JPEG XL container
    b"\xff\x0a",  # JPEG XL codestream
    b"\x00\x00\x01\x00",  # ICO
    b"\x00\x00\x02\x00",  # CUR
    b"8BPS",  # Photoshop
    b"qoif",  # QOI
    b"icns",  # Apple icon
    b"\x76\x2f\x31\x01",  # OpenEXR
    b"#?RADIANCE",  # Radiance HDR
)
_HEIF_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ValidationConfig:
    """What :func:`inspect_image` rejects.

    Parameters
    ----------
    min_side
        Shortest accepted side in pixels (``too_small`` below it).
    max_pixels
        Decompression-bomb limit on width * height, checked on the header before decoding. Pillow's own
        process-wide hard limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``, about 179 Mpx) also applies; raise or
        clear that one too to accept larger images.
    max_aspect_ratio
        Largest accepted long side / short side (``aspect_ratio`` above it).
    reject_animated
        Reject GIF, WebP, APNG and TIFF files that hold more than one frame (``animated``). When False such
        files are accepted and their first frame is used.
    """

    min_side: int = 64
    max_pixels: int = 100_000_000
    max_aspect_ratio: float = 8.0
    reject_animated: bool = False


@dataclass(frozen=True)
class ImageInfo:
    """The outcome of :func:`inspect_image` for one image.

    ``ok`` is True for an accepted image; otherwise ``reason`` holds one of :data:`REASONS` and ``error`` a
    human-readable detail. A rejected image keeps ``format``, ``width``, ``height`` and ``n_frames`` as far as
    they were read (sizes as stored, EXIF orientation not applied); signals exist only for accepted images.

    Attributes
    ----------
    format
        Format sniffed from the magic bytes: one of the keys of :data:`FORMAT_EXTENSIONS`.
    width, height
        Full-size dimensions after EXIF orientation (swapped for orientations 5 to 8).
    n_frames
        Number of frames (1 for still images).
    brightness
        Mean luma (ITU-R 601 weights, as Pillow's ``L`` mode) in [0, 1].
    colorfulness
        Hasler and Suesstrunk (2003) colorfulness on 0-255 RGB, see :func:`colorfulness`.
    phash, dhash
        64-bit pHash / dHash (imagehash's definitions, see :func:`perceptual_hashes`) as 16 hex characters.
    pixel_hash
        SHA-256 hex digest identifying the decoded pixels, see :func:`inspect_image`.
    """

    ok: bool
    reason: str | None = None
    error: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    n_frames: int | None = None
    brightness: float | None = None
    colorfulness: float | None = None
    phash: str | None = None
    dhash: str | None = None
    pixel_hash: str | None = None

    def as_dict(self) -> dict[str, object]:
        """Return the fields as a plain dict (field name -> value)."""
        return asdict(self)


def sniff_format(data: bytes) -> str | None:
    """Return the accepted format of ``data`` from its magic bytes alone, or None.

    Returns one of ``"jpeg"``, ``"png"``, ``"webp"``, ``"gif"``, ``"bmp"``, ``"tiff"``; None for anything
    else, including image formats that are not accepted.
    """
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp"
    return None


def _is_unsupported_image(data: bytes) -> bool:
    """Tell whether ``data`` starts like an image format that is recognised but not accepted."""
    if data.startswith(_UNSUPPORTED_MAGIC):
        return True
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return True
    text = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<svg", b"<?xml")) and b"<svg" in text


def _missing_bytes(fmt: str, data: bytes) -> bool:
    """Tell whether the container structure of ``data`` shows that its end is missing."""
    if fmt == "png":
        return data.rfind(b"IEND") < 0
    if fmt == "webp":
        return len(data) < 8 + int.from_bytes(data[4:8], "little")
    if fmt == "bmp":
        return len(data) < int.from_bytes(data[2:6], "little")
    if fmt == "jpeg":
        return data.find(b"\xff\xda") < 0  # never reaches a scan
    if fmt == "gif":
        return not data.rstrip(b"\x00").endswith(b";")
    return False


def _lanczos_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of Pillow's antialiased Lanczos-3 resampling of ``n_in`` samples to ``n_out``
    (``Image.resize(..., LANCZOS)`` along one axis, in float, without Pillow's 8-bit rounding between passes)."""

    def lanczos(x: np.ndarray) -> np.ndarray:
        return np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)

    scale = n_in / n_out
    stretch = max(scale, 1.0)
    weights = np.zeros((n_out, n_in))
    for out in range(n_out):
        centre = (out + 0.5) * scale
        lo, hi = max(0, int(centre - 3.0 * stretch + 0.5)), min(n_in, int(centre + 3.0 * stretch + 0.5))
        taps = lanczos((np.arange(lo, hi) - centre + 0.5) / stretch)
        weights[out, lo:hi] = taps / taps.sum()
    return weights


def _dct_matrix(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the unnormalised ``n``-point DCT-II (``scipy.fftpack.dct``'s convention)."""
    k = np.arange(keep)[:, None]
    return 2.0 * np.cos(np.pi * k * (2 * np.arange(n) + 1) / (2 * n))


# pHash and dHash as imagehash defines them: luma Lanczos-resized to 32x32, DCT, the 8x8 lowest frequencies
# against their median; luma resized to 9x8, each pixel against its left neighbour. The resizes act on the
# SIGNAL_SIDE luma as matrix products, rounded to 8 bits after each pass as Pillow does (the rounding matters:
# it makes near-equal neighbours ties rather than coin flips), and the DCT is folded into the second pass.
_LANCZOS_TO_32 = _lanczos_matrix(SIGNAL_SIDE, 32)  # (32, 64)
_DCT_LOW = _dct_matrix(32, 8)  # (8, 32)
_DHASH_ROWS = _lanczos_matrix(SIGNAL_SIDE, 8)  # (8, 64)
_DHASH_COLS = _lanczos_matrix(SIGNAL_SIDE, 9)  # (9, 64)
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as Pillow's "L" mode


def _to_u8(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer in [0, 255], in place (ufuncs: ``np.clip``'s wrapper costs more here)."""
    np.rint(x, out=x)
    np.maximum(x, 0.0, out=x)
    return np.minimum(x, 255.0, out=x)


def _bits_hex(bits: np.ndarray) -> str:
    """Row-major bits as big-endian hex, the same string as ``str(imagehash.ImageHash(bits))``."""
    return np.packbits(bits.reshape(-1)).tobytes().hex()


def perceptual_hashes(luma: np.ndarray) -> tuple[str, str]:
    """Return ``(phash, dhash)`` of a ``SIGNAL_SIDE`` x ``SIGNAL_SIDE`` luma array of integers 0-255 (any dtype) as
    16 hex characters each.

    The same as ``imagehash.phash`` / ``imagehash.dhash`` of that luma image up to Pillow's fixed-point
    arithmetic: a value within rounding of the median (or of its neighbour) may flip, so a few images differ from
    imagehash by a bit or two (``tests/test_imaging.py`` bounds how many). Two small matrix products per hash
    replace two resizes and two DCTs.
    """
    wide = _to_u8(luma @ _LANCZOS_TO_32.T)  # (64, 32): Pillow resizes horizontally first
    small = _to_u8(_LANCZOS_TO_32 @ wide)  # (32, 32)
    low = np.round(_DCT_LOW @ small @ _DCT_LOW.T, 6)  # (8, 8); rounded so a flat image's zeros are zeros
    lower, upper = np.partition(low.reshape(-1), (31, 32))[31:33].tolist()
    median = (lower + upper) / 2  # the same float as np.mean of the two, without its overhead
    rows = _to_u8(_DHASH_ROWS @ _to_u8(luma @ _DHASH_COLS.T))  # (8, 9)
    return _bits_hex(low > median), _bits_hex(rows[:, 1:] > rows[:, :-1])


def colorfulness(rgb: np.ndarray) -> float:
    """Return the Hasler and Suesstrunk (2003) colorfulness of an ``(..., 3)`` RGB array on the 0-255 scale.

    With ``rg = R - G`` and ``yb = (R + G) / 2 - B``, the result is
    ``sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)``: 0 for any grey image, about 100 or
    more for extremely colourful ones.
    """
    px = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    n = px.shape[0]
    if n == 0:
        return 0.0
    rg = px[:, 0] - px[:, 1]
    yb = 0.5 * (px[:, 0] + px[:, 1]) - px[:, 2]
    mean_rg, mean_yb = rg.sum() / n, yb.sum() / n
    var_rg = max(float(rg @ rg) / n - mean_rg * mean_rg, 0.0)  # one pass each instead of np.std's several
    var_yb = max(float(yb @ yb) / n - mean_yb * mean_yb, 0.0)
    return float(math.sqrt(var_rg + var_yb) + 0.3 * math.hypot(mean_rg, mean_yb))


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to RGB, flattening transparency onto white."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode.startswith("I;16"):
        arr16 = np.asarray(im, dtype=np.uint16)
        return Image.fromarray((arr16 >> 8).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        scale = 255.0 if im.mode == "F" and top <= 1.0 else 1.0 if top <= 255 else 255.0 / 65535.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _orientation(im: Image.Image) -> int:
    """Return the EXIF orientation (1-8) of an opened image, 1 when absent or invalid."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF never makes an image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(im: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF orientation to the pixels of ``im``."""
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return im if method is None else im.transpose(method)


def _draft(im: Image.Image, max_side: int) -> None:
    """Make a JPEG decode at the smallest DCT scale (1/2 to 1/8) whose longer side stays >= ``max_side``."""
    w, h = im.size
    if im.format in ("JPEG", "MPO") and max(w, h) >= 2 * max_side:
        req = (max_side, max(1, h * max_side // w)) if w >= h else (max(1, w * max_side // h), max_side)
        im.draft(None, req)


def load_rgb(source: bytes | str | os.PathLike[str], max_side: int | None = None) -> Image.Image:
    """Load an image as the project sees it: RGB, first frame, EXIF orientation applied, alpha on white.

    Parameters
    ----------
    source
        The encoded bytes or a file path.
    max_side
        If given, images whose longer side exceeds it are downscaled (aspect kept, Lanczos) to that longer
        side; JPEGs are decoded with draft mode (DCT scaling) first, so the full-size image is never
        materialised.

    Returns
    -------
    A loaded ``PIL.Image.Image`` in mode ``RGB``. Undecodable input raises Pillow's exception
    (``PIL.UnidentifiedImageError``, ``OSError``, ``PIL.Image.DecompressionBombError``).
    """
    fp: str | os.PathLike[str] | IO[bytes] = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(fp) as im:
        if max_side is not None:
            _draft(im, max_side)
        im.load()
        rgb = _orient(_to_rgb(im), _orientation(im))
    if max_side is not None and max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb


def _reject(
    reason: str,
    error: str,
    fmt: str | None = None,
    size: tuple[int, int] | None = None,
    n_frames: int | None = None,
) -> ImageInfo:
    w, h = size if size is not None else (None, None)
    return ImageInfo(False, reason, error, format=fmt, width=w, height=h, n_frames=n_frames)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _failure(exc: Exception, fmt: str, data: bytes) -> str:
    """Classify a decoder exception as ``"truncated"`` or ``"corrupt"``."""
    truncated = isinstance(exc, EOFError) or "truncated" in str(exc).lower() or _missing_bytes(fmt, data)
    return "truncated" if truncated else "corrupt"


def inspect_image(data: bytes, config: ValidationConfig = ValidationConfig()) -> ImageInfo:
    """Validate one encoded image and compute its signals from a single decode.

    Parameters
    ----------
    data
        The raw bytes of the file as fetched.
    config
        Rejection thresholds.

    Returns
    -------
    An :class:`ImageInfo`. Bad input never raises: it becomes ``ok=False`` with a ``reason``. Pillow's
    warnings are silenced meanwhile (``warnings.catch_warnings``, process-global: prefer a process pool).

    Signals come from the decoded first frame after EXIF orientation and flattening onto white, resized (box
    filter, aspect not kept) to ``SIGNAL_SIDE`` x ``SIGNAL_SIDE`` RGB; a JPEG is decoded at the smallest DCT
    scale whose sides stay >= ``SIGNAL_SIDE``. Brightness and colorfulness are taken over that image, pHash
    and dHash over its luma. ``pixel_hash`` is the SHA-256 of the ASCII header ``"{width}x{height}:"`` (full
    size, oriented) followed by the raw bytes (row-major R, G, B, uint8) of that image box-resized to
    ``PIXEL_HASH_SIDE`` x ``PIXEL_HASH_SIDE``. It is equal for files that decode to the same pixels in
    lossless formats (PNG, lossless WebP, BMP, TIFF, a GIF of an image within 256 colours) and for JPEGs
    that differ only in metadata or in baseline/progressive coding; a JPEG and a lossless copy of its decoded
    pixels generally differ, because the JPEG is DCT-scaled rather than fully decoded.
    """
    if not data:
        return _reject("empty", "zero bytes")
    fmt = sniff_format(data)
    if fmt is None:
        if _is_unsupported_image(data):
            return _reject("unsupported_format", "an image format that is not accepted")
        return _reject("not_an_image", f"no image signature; starts with {data[:16]!r}")
    with warnings.catch_warnings():
        # Pillow's warnings (corrupt EXIF, a bomb below twice its own limit) are noise here: the verdict is in
        # the result, and config.max_pixels sets the bomb limit.
        warnings.simplefilter("ignore")
        return _inspect(data, fmt, config)


def _inspect(data: bytes, fmt: str, config: ValidationConfig) -> ImageInfo:
    """Do the work of :func:`inspect_image` on data already sniffed as ``fmt``."""
    if (
        fmt == "jpeg"
        and _simplejpeg is not None
        and (_fast_jpeg_agrees or (_fast_jpeg_agrees is None and _check_fast_jpeg()))
    ):
        info = _inspect_plain_jpeg(data, config)
        if info is not None:
            return info
    return _inspect_pillow(data, fmt, config)


def _inspect_pillow(data: bytes, fmt: str, config: ValidationConfig) -> ImageInfo:
    """:func:`_inspect` through Pillow, for every format and every outcome."""
    try:
        im = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
    except Image.DecompressionBombError as exc:
        return _reject("decompression_bomb", str(exc), fmt)
    except Exception as exc:
        return _reject(_failure(exc, fmt, data), _describe(exc), fmt)
    with im:
        w, h = im.size
        if w * h > config.max_pixels:
            return _reject("decompression_bomb", f"{w}x{h} exceeds {config.max_pixels} pixels", fmt, (w, h))
        if min(w, h) < config.min_side:
            return _reject("too_small", f"{w}x{h}: a side is under {config.min_side} px", fmt, (w, h))
        if max(w, h) > config.max_aspect_ratio * min(w, h):
            return _reject("aspect_ratio", f"{w}x{h}: aspect beyond {config.max_aspect_ratio}", fmt, (w, h))
        try:
            n_frames = int(getattr(im, "n_frames", 1))
            if config.reject_animated and n_frames > 1 and fmt in _ANIMATABLE:
                return _reject("animated", f"{n_frames} frames", fmt, (w, h), n_frames)
            if im.format in ("JPEG", "MPO"):
                im.draft(None, (SIGNAL_SIDE, SIGNAL_SIDE))  # both sides stay >= SIGNAL_SIDE
            im.load()
            if fmt in ("png", "webp") and _missing_bytes(fmt, data):  # decoders stop before these ends
                return _reject("truncated", "the container ends early", fmt, (w, h), n_frames)
            orientation = _orientation(im)
            rgb = _orient(_to_rgb(im), orientation)
            sig = rgb.resize((SIGNAL_SIDE, SIGNAL_SIDE), Image.Resampling.BOX)
        except Image.DecompressionBombError as exc:
            return _reject("decompression_bomb", str(exc), fmt, (w, h))
        except Exception as exc:
            return _reject(_failure(exc, fmt, data), _describe(exc), fmt, (w, h))
    if orientation >= 5:
        w, h = h, w
    return _signals(sig, fmt, w, h, n_frames)


def _signals(sig: Image.Image, fmt: str, w: int, h: int, n_frames: int) -> ImageInfo:
    """The accepted :class:`ImageInfo` of an image whose ``SIGNAL_SIDE`` x ``SIGNAL_SIDE`` RGB version is ``sig``
    and whose full size (oriented) is ``w`` x ``h``."""
    # np.asarray(sig), in fewer steps: (SIGNAL_SIDE, SIGNAL_SIDE, 3) uint8
    pixels = np.frombuffer(sig.tobytes(), np.uint8).reshape(SIGNAL_SIDE, SIGNAL_SIDE, 3)
    luma = np.rint(pixels @ _LUMA)  # Pillow "L" values as float64 (the weights sum to 1: no clipping needed)
    phash, dhash = perceptual_hashes(luma)
    tiny = sig.resize((PIXEL_HASH_SIDE, PIXEL_HASH_SIDE), Image.Resampling.BOX)
    pixel_hash = hashlib.sha256(f"{w}x{h}:".encode() + tiny.tobytes()).hexdigest()
    return ImageInfo(
        ok=True,
        format=fmt,
        width=w,
        height=h,
        n_frames=n_frames,
        brightness=float(luma.sum()) / luma.size / 255.0,  # luma.mean(): the sum of integers is exact
        colorfulness=colorfulness(pixels),
        phash=phash,
        dhash=dhash,
        pixel_hash=pixel_hash,
    )


# The JPEG fast path. Pillow spends about a third of a small photo's inspection in Python: its marker parser
# (quantisation tables, Huffman tables, APP segments) and the machinery of Image.open and load. For the common
# JPEG, one pass over the segment headers here and one libjpeg-turbo call through simplejpeg give the same
# pixels: simplejpeg asked for exactly the size of Pillow's draft decode uses the same DCT scaling, the same
# accurate integer IDCT and the same fancy upsampling. Anything outside that common case (or any warning from
# libjpeg) goes to Pillow's path, so verdicts, error messages and signals are the same as Pillow's everywhere.
_JPEG_PLAIN_SOF = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended sequential, progressive (Huffman coding)
# DHT, DRI and COM segments: libjpeg checks them, Pillow only reads past them.
_JPEG_SKIPPED = frozenset({0xC4, 0xDD, 0xFE})
_XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"


def _plain_jpeg_header(data: bytes) -> tuple[int, int, bool] | None:
    """``(width, height, needs_pillow)`` of a JPEG that the fast path decodes exactly as Pillow does, else None.

    Walks the segments from SOI to SOS, each starting right where the previous one ends, and accepts only what
    both Pillow's parser and libjpeg read the same way: 8-bit baseline or progressive Huffman frames with one
    (grey) or three components (ids 1, 2, 3: YCbCr by every decoder's rule), no Adobe segment (colour transform),
    no MPF segment (Pillow opens those as MPO), and segments that Pillow's parser reads without failing (a JFIF
    segment long enough for its version, full quantisation tables, ICC chunks long enough for their sequence
    numbers). ``needs_pillow`` is True when an EXIF, XMP or Photoshop segment exists: the orientation then comes
    from Pillow's own reading of them (it has its own rules for malformed EXIF).
    """
    size: tuple[int, int] | None = None
    needs_pillow = False
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        start, nxt = pos + 4, pos + 2 + ((data[pos + 2] << 8) | data[pos + 3])
        if nxt < start or nxt > end:
            return None
        if marker == 0xDA:
            return None if size is None else (size[0], size[1], needs_pillow)
        if marker == 0xDB:
            while start < nxt:  # Pillow rejects a short table; libjpeg would pad it
                start += 65 if data[start] < 16 else 129
            if start > nxt:
                return None
        elif 0xE0 <= marker <= 0xEF:
            if marker == 0xE0:
                if data.startswith(b"JFIF", start, nxt) and nxt - start < 7:
                    return None
            elif marker == 0xE1:
                needs_pillow = needs_pillow or data.startswith((b"Exif\0\0", _XMP_PREFIX), start, nxt)
            elif marker == 0xE2:
                if data.startswith(b"MPF\0", start, nxt):
                    return None
                if data.startswith(b"ICC_PROFILE\0", start, nxt) and nxt - start < 14:
                    return None
            elif marker == 0xED:
                needs_pillow = needs_pillow or data.startswith(b"Photoshop 3.0\x00", start, nxt)
            elif marker == 0xEE and data.startswith(b"Adobe", start, nxt):
                return None
        elif marker in _JPEG_PLAIN_SOF:
            if size is not None or nxt - start < 6 or data[start] != 8:
                return None
            ncomp = data[start + 5]
            if nxt - start != 6 + 3 * ncomp:
                return None
            if ncomp == 3:
                if (data[start + 6], data[start + 9], data[start + 12]) != (1, 2, 3):
                    return None
            elif ncomp != 1:
                return None
            size = ((data[start + 3] << 8) | data[start + 4], (data[start + 1] << 8) | data[start + 2])
        elif marker not in _JPEG_SKIPPED:
            return None
        pos = nxt
    return None


#: Whether the fast path gives Pillow's results on this machine's libraries (None: not checked yet).
_fast_jpeg_agrees: bool | None = None


def _check_fast_jpeg() -> bool:
    """Compare the fast path with Pillow's on a few reference JPEGs (baseline and progressive, 4:2:0, 4:2:2 and
    grey, DCT scales 1, 1/2 and 1/4), once per process; the fast path stays off unless every result is equal,
    so a libjpeg build that decodes differently can never change a signal. Costs a few milliseconds."""
    global _fast_jpeg_agrees
    rng = np.random.default_rng(0)
    config = ValidationConfig(min_side=1)
    agrees = True
    try:
        for (w, h), mode, options in (
            ((300, 200), "RGB", {"subsampling": 2}),
            ((260, 300), "RGB", {"subsampling": 1, "progressive": True}),
            ((70, 90), "L", {}),
        ):
            ramp = np.add.outer(np.arange(h), np.arange(w)) % 256
            pixels = np.dstack([ramp, ramp[::-1], rng.integers(0, 256, (h, w))]).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels, "RGB").convert(mode).save(buffer, "JPEG", quality=90, **options)
            data = buffer.getvalue()
            agrees = agrees and _inspect_plain_jpeg(data, config) == _inspect_pillow(data, "jpeg", config)
    except Exception:  # e.g. a Pillow without a JPEG encoder: keep to Pillow's path
        agrees = False
    _fast_jpeg_agrees = agrees
    return agrees


def _draft_scale(w: int, h: int) -> int:
    """The DCT scale denominator Pillow's ``draft(None, (SIGNAL_SIDE, SIGNAL_SIDE))`` picks for a w x h JPEG."""
    scale = min(w // SIGNAL_SIDE, h // SIGNAL_SIDE)
    return 8 if scale >= 8 else 4 if scale >= 4 else 2 if scale >= 2 else 1


def _inspect_plain_jpeg(data: bytes, config: ValidationConfig) -> ImageInfo | None:
    """:func:`_inspect` for a JPEG that :func:`_plain_jpeg_header` accepts and libjpeg decodes without a warning
    and that passes every check; None otherwise (Pillow's path then decides, rejections included)."""
    header = _plain_jpeg_header(data)
    if header is None:
        return None
    w, h, needs_pillow = header
    limit = Image.MAX_IMAGE_PIXELS
    if (
        min(w, h) < max(config.min_side, 1)
        or w * h > config.max_pixels
        or (limit is not None and w * h > limit)
        or max(w, h) > config.max_aspect_ratio * min(w, h)
    ):
        return None
    orientation = 1
    if needs_pillow:
        try:
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
                if im.format != "JPEG" or im.size != (w, h):
                    return None
                orientation = _orientation(im)
        except Exception:
            return None
    scale = _draft_scale(w, h)
    dw, dh = -(-w // scale), -(-h // scale)
    try:
        rgb = _simplejpeg.decode_jpeg(
            data, "RGB", fastdct=False, fastupsample=False, min_height=dh, min_width=dw, strict=True
        )
    except Exception:  # a libjpeg error or warning: Pillow's path classifies it
        return None
    if rgb.shape != (dh, dw, 3):
        return None
    decoded = _orient(Image.frombuffer("RGB", (dw, dh), rgb, "raw", "RGB", 0, 1), orientation)
    sig = decoded.resize((SIGNAL_SIDE, SIGNAL_SIDE), Image.Resampling.BOX)
    if orientation >= 5:
        w, h = h, w
    return _signals(sig, "jpeg", w, h, 1)
