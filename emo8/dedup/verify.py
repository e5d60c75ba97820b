"""Geometric verification of near-duplicate candidates: local features + RANSAC, as copy-detection systems do.

A candidate pair (from a loose pHash radius or an embedding top-k) is a duplicate when one image can be mapped onto
the other by a plausible 2-D transform that many local features agree on:

1. **Features** (:func:`extract`): SIFT keypoints (OpenCV) on the greyscale image resized to ``max_side`` on its
   long side (small images are enlarged, large ones reduced: both sides of a pair are compared at one scale), with
   RootSIFT descriptors. Mirrored copies are handled by also matching against the features of the mirrored image
   (computed only when the direct match fails).
2. **Matching** (:func:`match`): nearest neighbours with Lowe's ratio test, then an affine transform (rotation,
   scale, shear, translation: crops, pads, rotations, stretches and screenshots) fitted by RANSAC.
3. **Decision**: at least ``min_inliers`` inliers; a sane transform (no reflection, scales within ``max_scale``,
   anisotropy within ``max_anisotropy``); and the inliers must account for a share (``min_overlap_ratio``) of
   the keypoints that lie in the region both images show, and that region must hold most (``min_coverage``) of
   one image's keypoints. The overlap rule separates a copy (most of what both show agrees) from two different
   pictures in the same frame or template, or with the same caption or watermark (only the shared part agrees);
   the coverage rule separates a crop (wholly inside its original) from two neighbouring tiles of one picture.
4. **Low-texture pairs** (flat clip-art, icons: too few keypoints for the rules above): dense features (the image
   enlarged, a low contrast threshold) give a transform, which is kept when the two images, warped onto each
   other, agree pixel for pixel in grey and, where both have colour, in colour (:func:`correlation`).

Cost is bounded by the caller (only grey-zone candidates, at most ``k`` per item); :func:`verify_pairs` runs the
pairs in a process pool, each worker caching the features of the images it has seen (an LRU of
``cache_items`` images), and reports pairs/s.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from emo8.core.imaging import load_rgb
from emo8.ingest.sources import read_local


@dataclass(frozen=True)
class VerifyConfig:
    """Thresholds and cost bounds of geometric verification.

    Parameters
    ----------
    max_side
        Long side (pixels) of the greyscale image the features are computed on.
    features
        Most SIFT keypoints kept per image (the strongest).
    contrast
        SIFT's contrast threshold (lower finds more keypoints on flat clip-art).
    ratio
        Lowe's ratio test: best match distance < ``ratio`` x second best.
    reprojection
        RANSAC inlier threshold, as a fraction of ``max_side``.
    min_inliers, min_inliers_sparse
        Fewest RANSAC inliers of a verified pair: ``min_inliers``, or, between two images of which one has few
        keypoints (plain clip-art, icons), ``sparse_share`` of that image's keypoints but at least
        ``min_inliers_sparse``.
    min_overlap_ratio
        Inliers / keypoints inside the region both images show (the smaller of the two sides' counts).
    min_coverage
        The region both images show must hold at least this share of one image's keypoints (a crop lies wholly
        inside its original; two tiles of one painting that merely share an edge do not).
    min_centre_ratio, min_centre_keypoints
        In the central box (the middle half of width and height) of each image, inliers must make up this share
        of the sparser side's keypoints there (when it holds ``min_centre_keypoints`` or more), and a box with
        that many keypoints must hold at least one inlier: a copy agrees in its middle (captions, borders,
        watermarks and pads sit at the edges), two pictures in one card, frame or app-screenshot template agree
        only around it.
    max_scale, max_anisotropy
        Plausible transforms only: each axis scaled by at most ``max_scale`` (or 1 / ``max_scale``), and the
        two singular values within a factor ``max_anisotropy`` of each other.
    mirror
        Also try the mirrored image when the direct match fails.
    min_keypoints, decisive_keypoints
        Images with fewer than ``min_keypoints`` keypoints (flat colours, tiny icons) cannot be verified: the pair
        is ``undecided``. A pair whose sparser image has fewer than ``decisive_keypoints`` can be verified but not
        rejected: when it fails it is ``undecided`` too (the caller's cosine fallback decides).
    k
        Candidates verified per item (the most similar ones).
    workers
        Processes of the verification pool (0 or 1: in this process; :mod:`emo8.dedup.tiers` replaces 0 by its own
        ``workers``).
    cache_items
        Images whose features each process keeps.
    max_pairs
        Most grey-zone candidates verified in one run (0: all); the most similar ones are kept. At about 60-75
        pairs/s on 2 cores, 200,000 pairs take about 50 minutes.
    skip_connected
        Skip a grey-zone candidate whose two images are already joined by candidates accepted without
        verification (strict hashes, a cosine above the unverified threshold): its check would add nothing.
    dense_fallback
        Low-texture pairs (the sparser image has fewer than ``decisive_keypoints``) that the keypoint rules do not
        verify get a second look: features at ``dense_upscale`` x the resolution with the low contrast threshold
        ``dense_contrast`` (flat clip-art yields hundreds of keypoints there, though less repeatable ones), an
        affine transform fitted to at least ``dense_min_inliers`` of their matches, and a **photometric** check of
        that transform: warped onto each other, the two images must agree pixel for pixel (normalised
        cross-correlation of the lightly blurred grey images >= ``min_correlation``) over the region both show,
        and in the central box of each (a copy agrees in its middle; two drawings in one template, or two
        different drawings under a wrong transform, do not). The shared region must cover ``min_coverage`` of one
        image's area. A pair that fails stays ``undecided`` (the caller's cosine fallback decides).
    """

    max_side: int = 320
    features: int = 600
    contrast: float = 0.02
    ratio: float = 0.8
    reprojection: float = 0.02
    min_inliers: int = 10
    min_inliers_sparse: int = 6
    sparse_share: float = 0.3
    min_overlap_ratio: float = 0.12
    min_coverage: float = 0.5
    min_centre_ratio: float = 0.06
    min_centre_keypoints: int = 8
    max_scale: float = 8.0
    max_anisotropy: float = 2.5
    mirror: bool = True
    min_keypoints: int = 12
    decisive_keypoints: int = 40
    k: int = 8
    workers: int = 0
    cache_items: int = 512
    max_pairs: int = 0
    skip_connected: bool = True
    dense_fallback: bool = True
    dense_upscale: float = 2.0
    dense_contrast: float = 0.005
    dense_features: int = 1000
    dense_min_inliers: int = 6
    min_correlation: float = 0.8


@dataclass(frozen=True)
class Features:
    """Keypoint positions (``(n, 2)`` float32, in the resized image), RootSIFT descriptors and the image size;
    ``image`` is the resized greyscale image itself (kept for the photometric check, else None)."""

    points: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class Match:
    """The verdict on one pair: ``verified`` or not, or ``undecided`` (too few keypoints on a side)."""

    verified: bool
    inliers: int = 0
    matches: int = 0
    overlap_ratio: float = 0.0
    mirrored: bool = False
    undecided: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_SIFT: Any = None


def _sift(n: int, contrast: float) -> Any:
    global _SIFT
    if _SIFT is None or _SIFT.getNFeatures() != n or _SIFT.getContrastThreshold() != contrast:
        _SIFT = cv2.SIFT_create(nfeatures=n, contrastThreshold=contrast)  # type: ignore[attr-defined]
    return _SIFT


def grey(source: bytes | str, max_side: int, mode: str = "L") -> np.ndarray:
    """Decode ``source`` (bytes or path) as the project does and return a ``uint8`` greyscale image (``mode``
    ``"RGB"``: the colour image) whose long side is ``max_side``."""
    image = load_rgb(source, max_side=max(max_side * 2, 64)).convert(mode)
    w, h = image.size
    scale = max_side / max(w, h)
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    arr = np.asarray(image, dtype=np.uint8)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(arr, size, interpolation=interpolation)


def extract(image: np.ndarray, config: VerifyConfig = VerifyConfig()) -> Features:
    """SIFT keypoints and RootSIFT descriptors of a greyscale ``uint8`` image (see :func:`grey`)."""
    return replace(_features(image, image, config.features, config.contrast), image=None)


def _features(detect_on: np.ndarray, image: np.ndarray, n: int, contrast: float) -> Features:
    """SIFT on ``detect_on`` (``image`` itself, or an enlarged copy), positions in ``image``'s coordinates."""
    keypoints, desc = _sift(n, contrast).detectAndCompute(detect_on, None)
    h, w = image.shape[:2]
    if desc is None or not keypoints:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), (w, h), image)
    desc = desc.astype(np.float32)
    desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-7)  # RootSIFT: L1-normalise, square root
    desc = np.sqrt(desc)
    points = np.array([k.pt for k in keypoints], np.float32) * np.float32(w / detect_on.shape[1])
    return Features(points, desc, (w, h), image)


def dense(image: np.ndarray, config: VerifyConfig = VerifyConfig()) -> Features:
    """Features of a low-texture image for the photometric fallback: SIFT on ``image`` (greyscale, or RGB: then
    its grey version, and the colours are kept for the colour check) enlarged ``config.dense_upscale`` times,
    with the low contrast threshold ``config.dense_contrast`` (positions in ``image``'s coordinates)."""
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    h, w = luma.shape[:2]
    size = (round(w * config.dense_upscale), round(h * config.dense_upscale))
    big = cv2.resize(luma, size, interpolation=cv2.INTER_CUBIC) if config.dense_upscale != 1 else luma
    return replace(_features(big, luma, config.dense_features, config.dense_contrast), image=image)


def mirrored(image: np.ndarray, config: VerifyConfig = VerifyConfig()) -> Features:
    """Features of the left-right mirrored ``image`` (in the mirrored image's coordinates, so that a mirrored copy
    maps onto them by a proper, reflection-free transform)."""
    return extract(np.ascontiguousarray(image[:, ::-1]), config)


def _ratio_matches(a: Features, b: Features, ratio: float) -> np.ndarray:
    """``(m, 2)`` index pairs of ``a`` and ``b`` passing the ratio test (mutually best in one direction)."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    knn = matcher.knnMatch(a.descriptors, b.descriptors, k=2)
    out = [
        (m[0].queryIdx, m[0].trainIdx) for m in knn if len(m) == 2 and m[0].distance < ratio * m[1].distance
    ]
    if not out:
        return np.zeros((0, 2), np.int64)
    pairs = np.array(out, np.int64)
    _, first = np.unique(pairs[:, 1], return_index=True)  # one query per train keypoint
    return pairs[np.sort(first)]


def _inside(points: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Which ``points`` land inside an image of ``size`` under the affine ``matrix``."""
    mapped = points @ matrix[:, :2].T + matrix[:, 2]
    w, h = size
    return (mapped[:, 0] >= 0) & (mapped[:, 0] < w) & (mapped[:, 1] >= 0) & (mapped[:, 1] < h)


def _centre(
    points: np.ndarray, size: tuple[int, int], shared: np.ndarray, inliers: np.ndarray
) -> tuple[int, int]:
    """Keypoints in the central box (the middle half of width and height) that lie in the shared region, and how
    many of them are inliers."""
    w, h = size
    x, y = points[:, 0], points[:, 1]
    box = shared & (x >= 0.25 * w) & (x <= 0.75 * w) & (y >= 0.25 * h) & (y <= 0.75 * h)
    return int(box.sum()), int(box[inliers].sum())


def _fit(a: Features, b: Features, config: VerifyConfig) -> Match:
    pairs = _ratio_matches(a, b, config.ratio)
    need = min(
        config.min_inliers,
        max(config.min_inliers_sparse, math.ceil(config.sparse_share * min(len(a), len(b)))),
    )
    if len(pairs) < need:
        return Match(False, 0, len(pairs))
    src, dst = a.points[pairs[:, 0]], b.points[pairs[:, 1]]
    threshold = config.reprojection * config.max_side
    matrix, mask = cv2.estimateAffine2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold, maxIters=2000, confidence=0.995
    )
    if matrix is None or mask is None:
        return Match(False, 0, len(pairs))
    inliers = int(mask.sum())
    if not _plausible(matrix[:, :2], config):
        return Match(False, inliers, len(pairs))
    # keypoints of each side inside the region the other side shows too
    inverse = cv2.invertAffineTransform(matrix)
    in_a = int(_inside(a.points, matrix, b.size).sum())
    in_b = int(_inside(b.points, inverse, a.size).sum())
    overlap_ratio = inliers / max(1, min(in_a, in_b))
    coverage = max(in_a / max(1, len(a)), in_b / max(1, len(b)))
    inlier = mask.ravel().astype(bool)
    box_a, hit_a = _centre(a.points, a.size, _inside(a.points, matrix, b.size), pairs[inlier, 0])
    box_b, hit_b = _centre(b.points, b.size, _inside(b.points, inverse, a.size), pairs[inlier, 1])
    fewer = min(box_a, box_b)  # the sparser side bounds what can match (a blurred or small copy)
    centre = 1.0 if fewer < config.min_centre_keypoints else min(hit_a, hit_b) / fewer
    if (box_a >= config.min_centre_keypoints and hit_a == 0) or (
        box_b >= config.min_centre_keypoints and hit_b == 0
    ):
        centre = 0.0  # the middle of one image has keypoints and none of them agrees
    verified = (
        inliers >= need
        and overlap_ratio >= config.min_overlap_ratio
        and coverage >= config.min_coverage
        and centre >= config.min_centre_ratio
    )
    return Match(verified, inliers, len(pairs), round(float(overlap_ratio), 4))


def _plausible(linear: np.ndarray, config: VerifyConfig) -> bool:
    """No reflection, each axis scaled within ``max_scale``, anisotropy within ``max_anisotropy``."""
    singular = np.linalg.svd(linear, compute_uv=False)
    return bool(
        np.linalg.det(linear) > 0
        and singular[-1] > 1.0 / config.max_scale
        and singular[0] < config.max_scale
        and singular[0] / max(singular[-1], 1e-9) <= config.max_anisotropy
    )


def _box(size: tuple[int, int]) -> np.ndarray:
    """``uint8`` mask of the central box (the middle half of width and height) of an image of ``size``."""
    w, h = size
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = 1
    return mask


def _ncc(x: np.ndarray, y: np.ndarray) -> float:
    """Normalised cross-correlation of two equally long pixel vectors (NaN when either is flat)."""
    if len(x) < 16:
        return float("nan")
    x = x - x.mean()
    y = y - y.mean()
    norm = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / norm if norm > 1e-6 * len(x) else float("nan")


def _chroma(image: np.ndarray) -> np.ndarray:
    """Each pixel's colour minus its mean over the channels (zero on a grey image)."""
    return image - image.mean(axis=2, keepdims=True)


def correlation(
    a: np.ndarray, b: np.ndarray, matrix: np.ndarray, sigma: float = 1.5, min_chroma: float = 4.0
) -> tuple[float, float]:
    """Photometric agreement of ``a`` warped onto ``b`` by the affine ``matrix`` (a -> b): ``(coverage,
    correlation)``. Coverage is the larger of the shares of ``a`` and of ``b`` that the other shows; correlation
    the smallest normalised cross-correlation of the blurred grey images over the shared region, over its part in
    ``b``'s central box and over its part in ``a``'s central box (NaN where a region is flat or empty). For two
    RGB images that both have colour there (mean chroma >= ``min_chroma`` grey levels), the correlation of their
    chroma over the shared region counts too: a copy keeps its hues unless it was made grey (a red and a green
    balloon of one shape agree in grey, not in colour)."""
    colour_a, colour_b = a, b
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    if b.ndim == 3:
        b = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    hb, wb = b.shape[:2]
    ha, wa = a.shape[:2]
    blur_a = cv2.GaussianBlur(a, (0, 0), sigma).astype(np.float32)
    blur_b = cv2.GaussianBlur(b, (0, 0), sigma).astype(np.float32)
    warped = cv2.warpAffine(blur_a, matrix, (wb, hb), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones((ha, wa), np.uint8), matrix, (wb, hb), flags=cv2.INTER_NEAREST)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8))  # away from the border's interpolation
    centre_a = cv2.warpAffine(_box((wa, ha)), matrix, (wb, hb), flags=cv2.INTER_NEAREST)
    shared = inside.astype(bool)
    area = float(shared.sum())
    scale = abs(float(np.linalg.det(matrix[:, :2])))
    coverage = max(area / (wb * hb), area / max(1.0, wa * ha * scale))
    values = []
    for region in (shared, shared & _box((wb, hb)).astype(bool), shared & centre_a.astype(bool)):
        values.append(_ncc(warped[region], blur_b[region]))
    if colour_a.ndim == 3 and colour_b.ndim == 3 and shared.any():
        chroma_a = _chroma(cv2.warpAffine(cv2.GaussianBlur(colour_a.astype(np.float32), (0, 0), sigma), matrix,
                                          (wb, hb), flags=cv2.INTER_LINEAR))[shared]  # fmt: skip
        chroma_b = _chroma(cv2.GaussianBlur(colour_b.astype(np.float32), (0, 0), sigma))[shared]
        if min(np.abs(chroma_a).mean(), np.abs(chroma_b).mean()) >= min_chroma:
            values.append(_ncc(chroma_a.ravel(), chroma_b.ravel()))
    return coverage, min(values) if not any(math.isnan(v) for v in values) else float("nan")


def _photometric(a: Features, b: Features, config: VerifyConfig) -> Match:
    """The dense fallback for low-texture pairs (see :class:`VerifyConfig`): a transform from dense features,
    confirmed when the warped images agree pixel for pixel."""
    if a.image is None or b.image is None:
        return Match(False, undecided=True)
    pairs = _ratio_matches(a, b, config.ratio)
    if len(pairs) < config.dense_min_inliers:
        return Match(False, 0, len(pairs), undecided=True)
    src, dst = a.points[pairs[:, 0]], b.points[pairs[:, 1]]
    matrix, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC,
                                        ransacReprojThreshold=config.reprojection * config.max_side,
                                        maxIters=2000, confidence=0.995)  # fmt: skip
    inliers = 0 if mask is None else int(mask.sum())
    if matrix is None or inliers < config.dense_min_inliers or not _plausible(matrix[:, :2], config):
        return Match(False, inliers, len(pairs), undecided=True)
    coverage, ncc = correlation(a.image, b.image, matrix)
    verified = coverage >= config.min_coverage and ncc >= config.min_correlation
    return Match(verified, inliers, len(pairs), round(ncc, 4) if verified else 0.0, undecided=not verified)


def match(a: Features, b: Features, config: VerifyConfig = VerifyConfig(),
          b_mirrored: Callable[[], Features] | None = None,
          dense_features: Callable[[], tuple[Features, Features, Features | None]] | None = None) -> Match:  # fmt: skip
    """Verify one pair; ``b_mirrored`` (lazily) gives the features of ``b`` mirrored, tried when the direct
    match fails and ``config.mirror`` is set; ``dense_features`` (lazily) gives the dense features of ``a``,
    ``b`` and mirrored ``b`` for the photometric fallback of low-texture pairs (``config.dense_fallback``)."""
    if min(len(a), len(b)) < config.decisive_keypoints:
        found = _match_keypoints(a, b, config, b_mirrored)
        if found.verified or not config.dense_fallback or dense_features is None:
            return found
        da, db, db_mirrored = dense_features()
        fallback = _photometric(da, db, config)
        if not fallback.verified and config.mirror and db_mirrored is not None:
            fallback = replace(_photometric(da, db_mirrored, config), mirrored=True)
        return fallback if fallback.verified else found
    return _match_keypoints(a, b, config, b_mirrored)


def _match_keypoints(a: Features, b: Features, config: VerifyConfig,
                     b_mirrored: Callable[[], Features] | None) -> Match:  # fmt: skip
    if len(a) < config.min_keypoints or len(b) < config.min_keypoints:
        return Match(False, undecided=True)
    sparse = min(len(a), len(b)) < config.decisive_keypoints
    direct = _fit(a, b, config)
    if direct.verified or not config.mirror or b_mirrored is None:
        return direct if direct.verified or not sparse else replace(direct, undecided=True)
    flipped = _fit(a, b_mirrored(), config)
    if flipped.verified:
        return Match(True, flipped.inliers, flipped.matches, flipped.overlap_ratio, mirrored=True)
    best = direct if direct.inliers >= flipped.inliers else replace(flipped, mirrored=True)
    return replace(best, undecided=sparse)


# -- pairs in a pool ------------------------------------------------------------------------------------------


class FeatureCache:
    """Features (and mirrored features) per source, computed on first use, at most ``config.cache_items`` kept."""

    def __init__(self, config: VerifyConfig, read: Callable[[str], bytes | str] = read_local) -> None:
        self.config = config
        self.read = read
        self._get = functools.lru_cache(maxsize=config.cache_items)(self._compute)
        self._get_mirrored = functools.lru_cache(maxsize=config.cache_items)(self._compute_mirrored)
        self._get_dense = functools.lru_cache(maxsize=config.cache_items)(self._compute_dense)

    def _image(self, source: str) -> np.ndarray | None:
        try:
            return grey(self.read(source), self.config.max_side)
        except Exception:  # unreadable bytes: the pair stays undecided, never fatal
            return None

    def _compute(self, source: str) -> Features | None:
        image = self._image(source)
        return None if image is None else extract(image, self.config)

    def _compute_mirrored(self, source: str) -> Features | None:
        image = self._image(source)
        return None if image is None else mirrored(image, self.config)

    def _compute_dense(self, source: str, flip: bool) -> Features | None:
        try:
            image = grey(self.read(source), self.config.max_side, "RGB")
        except Exception:  # unreadable bytes: the pair stays undecided, never fatal
            return None
        return dense(np.ascontiguousarray(image[:, ::-1]) if flip else image, self.config)

    def features(self, source: str) -> Features | None:
        return self._get(source)

    def match(self, a: str, b: str, dense_fallback: bool = True) -> Match:
        """Verify sources ``a`` and ``b``; ``dense_fallback=False`` skips the photometric check for this pair
        (the caller already accepts it when it stays undecided, e.g. by a high cosine)."""
        fa, fb = self._get(a), self._get(b)
        if fa is None or fb is None:
            return Match(False, undecided=True)

        def lazy() -> Features:
            flipped = self._get_mirrored(b)
            return flipped if flipped is not None else fb

        def lazy_dense() -> tuple[Features, Features, Features | None]:
            da, db = self._get_dense(a, False), self._get_dense(b, False)
            if da is None or db is None:
                return fa, fb, None
            return da, db, self._get_dense(b, True)

        return match(fa, fb, self.config, lazy, lazy_dense if dense_fallback else None)


_WORKER_CACHE: FeatureCache | None = None


def _verify_chunk(
    job: tuple[VerifyConfig, Callable[[str], bytes | str], list[tuple[str, str]], list[bool]],
) -> list[Match]:
    global _WORKER_CACHE
    config, read, pairs, dense = job
    if _WORKER_CACHE is None or _WORKER_CACHE.config != config or _WORKER_CACHE.read is not read:
        _WORKER_CACHE = FeatureCache(config, read)
    return [_WORKER_CACHE.match(a, b, d) for (a, b), d in zip(pairs, dense, strict=True)]


@dataclass
class Verified:
    """Results of :func:`verify_pairs`, one entry per input pair."""

    verified: np.ndarray
    undecided: np.ndarray
    inliers: np.ndarray
    overlap_ratio: np.ndarray
    mirrored: np.ndarray
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def pairs_per_second(self) -> float:
        return len(self.verified) / self.seconds if self.seconds > 0 else 0.0


def verify_pairs(
    pairs: Sequence[tuple[str, str]],
    config: VerifyConfig = VerifyConfig(),
    read: Callable[[str], bytes | str] = read_local,
    chunk: int = 48,
    dense_fallback: Sequence[bool] | None = None,
) -> Verified:
    """Verify ``(source a, source b)`` pairs (paths or ``read_local`` locators) in ``config.workers`` processes.

    Pairs are processed in chunks of ``chunk`` in the given order, so sorting them by their first source lets a
    worker reuse its cached features. ``read`` must be picklable (a module-level function) when ``workers > 1``.
    ``dense_fallback`` (one flag per pair; None: all) says which pairs may get the photometric check of
    low-texture images (the caller skips it where a high cosine accepts an undecided pair anyway).
    """
    started = time.perf_counter()
    allowed = [True] * len(pairs) if dense_fallback is None else [bool(d) for d in dense_fallback]
    if len(allowed) != len(pairs):
        raise ValueError(f"dense_fallback has {len(allowed)} flags for {len(pairs)} pairs")
    jobs = [
        (config, read, list(pairs[s : s + chunk]), allowed[s : s + chunk])
        for s in range(0, len(pairs), chunk)
    ]
    results: list[Match] = []
    if config.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(config.workers) as pool:
            for part in pool.map(_verify_chunk, jobs):
                results.extend(part)
    else:
        for job in jobs:
            results.extend(_verify_chunk(job))
    out = Verified(
        verified=np.array([m.verified for m in results], bool),
        undecided=np.array([m.undecided for m in results], bool),
        inliers=np.array([m.inliers for m in results], np.int32),
        overlap_ratio=np.array([m.overlap_ratio for m in results], np.float32),
        mirrored=np.array([m.mirrored for m in results], bool),
        seconds=time.perf_counter() - started,
    )
    out.stats = {
        "pairs": len(results),
        "verified": int(out.verified.sum()),
        "undecided": int(out.undecided.sum()),
        "seconds": round(out.seconds, 3),
        "pairs_per_second": round(out.pairs_per_second, 1),
        "workers": config.workers,
    }
    return out
