"""Tiered deduplication: exact, perceptual hash, verified, embedding; clusters that stay whole; contamination.

Tiers (a registry, :data:`TIERS`; each finds matched pairs among the workspace's items and against a reference set):

1. ``exact``: identical bytes (sha256) or identical decoded pixels (pixel hash);
2. ``perceptual``: pHash within Hamming distance ``D``, confirmed by dHash within ``D_d`` (second opinion),
   searched by :func:`emo8.core.similarity.hamming_pairs` (FAISS binary flat index; multi-index hashing for large sets);
3. ``verified``: grey-zone candidates (each item's ``k`` nearest embeddings above a loose cosine, and pHash within a
   loose radius) confirmed by geometric verification of local features (:mod:`emo8.dedup.verify`: SIFT + RANSAC);
4. ``semantic``: embedding cosine >= ``S``, a high threshold that needs no verification (and, for images too
   plain to verify, a lower one);
5. ``semdedup`` (optional): SemDeDup-style thinning of what remains, removal rate per eps reported.

Pairs become clusters with :func:`emo8.core.similarity.verified_clusters`: a member joins when it matches the canonical
directly or is verified against it, or matches ``min_links`` members of the cluster; a single false match never
merges two groups. The canonical item of a cluster is chosen by :func:`canonical_order`:
a canonical from an earlier run stays canonical (so re-runs extend clusters and references to canonicals stay
valid); otherwise the largest pixel count, then the preferred licence, then the earliest ingested (catalog
order breaks ties).
Members get ``status = 'duplicate'`` and ``dup_of``, ``dup_tier``, ``dup_score``, ``dup_inliers``, ``dup_via``;
nothing is deleted. The confirmed pairs are written to ``dedup/pairs.parquet`` (:func:`emo8.core.curation.dedup_pairs`):
split's leak check and take-down read them, so every stage shares one notion of "duplicate".

With ``against`` (a folder or a Hugging Face dataset, e.g. a benchmark's test split), items that match any of
its images in any tier become ``contaminated``, and so does every item of their cluster (a copy of a leaked
image leaks too). Contamination is never undone by a later run.

Outputs: the catalog columns (see docs/catalog.md), ``reports/dedup.json`` and ``reports/dedup.html``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emo8.core.catalog import utc_now
from emo8.core.curation import PAIRS_FILE, PAIRS_ITEMS_FILE
from emo8.core.imaging import ImageInfo, ValidationConfig, inspect_image
from emo8.core.progress import stage_steps
from emo8.core.similarity import (
    MAX_NEIGHBOURS,
    TIER_PRIORITY,
    Clusters,
    Edges,
    Matrix,
    Pairs,
    SearchConfig,
    components,
    cosine_pairs,
    cosine_topk,
    hamming_pairs,
    hex_to_codes,
    popcount,
    semdedup_thin,
    take_rows,
    verified_clusters,
)
from emo8.core.workspace import Workspace
from emo8.dedup.verify import VerifyConfig, verify_pairs
from emo8.embed.encoders import DEFAULT_MODEL, DEFAULT_PREPROCESS, load_encoder
from emo8.embed.run import EmbeddingStore, encode_sources, store_preprocess, store_spec, stored_models
from emo8.ingest.sources import create_source, read_local

#: Default pHash Hamming distance (of 64 bits), from benchmarks/neardup.py (see docs/dedup.md).
PHASH_MAX_DISTANCE = 6
#: Default dHash distance a pHash match must also satisfy (the second opinion), from the same benchmark.
DHASH_MAX_DISTANCE = 16
#: Default cosine above which a pair is a duplicate without verification, per model key, from
#: benchmarks/neardup.py where measured (see docs/dedup.md).
EMBED_MIN_SIMILARITY: dict[str, float] = {"efficientnet-lite0": 0.95}
#: Grey zone: each item's ``VerifyConfig.k`` nearest neighbours above this cosine are verified geometrically.
VERIFY_MIN_SIMILARITY: dict[str, float] = {"efficientnet-lite0": 0.5}
#: Pairs that verification cannot decide (too few keypoints: flat clip-art, icons) count above this cosine.
UNDECIDED_MIN_SIMILARITY: dict[str, float] = {"efficientnet-lite0": 0.9}
VERIFY_MIN_SIMILARITY_FALLBACK = 0.5
#: Grey zone of the hashes: pHash within this distance is verified geometrically.
VERIFY_PHASH_MAX_DISTANCE = 12
#: A member that neither matches nor verifies against its canonical joins with this many matches among the members
#: that do (see :func:`emo8.core.similarity.verified_clusters`).
MIN_LINKS = 1
#: Used for model keys without a measured default (clip-retrieval's dedup threshold); re-run the benchmark.
EMBED_MIN_SIMILARITY_FALLBACK = 0.94

#: Statuses that take part in dedup (``contaminated`` items are matched, so their copies are caught too).
CANDIDATE_STATUSES = ("valid", "duplicate", "contaminated")

#: Columns this stage adds to the catalog.
DEDUP_COLUMNS = {
    "dup_of": "TEXT",
    "dup_tier": "TEXT",
    "dup_score": "REAL",
    "dup_inliers": "INTEGER",
    "dup_via": "TEXT",
    "contaminated_by": "TEXT",
    "contaminated_tier": "TEXT",
    "contaminated_score": "REAL",
}

#: Licence preference for the canonical item: regexes on the lower-cased licence, most preferred first;
#: anything else ranks after them, an unknown licence last.
DEFAULT_LICENCE_PREFERENCE = (
    r"^(cc0|public[-_ ]?domain|pdm|cc-pddc)",
    r"^cc-by-\d",
    r"^cc-by-sa",
    r"^(apache|mit|bsd|isc|zlib)",
    r"^(l?gpl|agpl|mpl|epl)",
    r"^cc-by-(nc|nd)",
)


@dataclass(frozen=True)
class DedupConfig:
    """Thresholds and switches of :func:`dedup`.

    Parameters
    ----------
    phash_max_distance
        Largest pHash Hamming distance (of 64 bits) of a perceptual match.
    dhash_max_distance
        Largest dHash distance a pHash match must also have (None: no second opinion).
    embed_min_similarity
        Smallest cosine of a semantic match (None: the default for ``model``, see :data:`EMBED_MIN_SIMILARITY`).
    model
        Model key whose stored embeddings the semantic tier uses (None: the only stored one, preferring
        the offline default; the tier is skipped with a note when there are none).
    tiers
        Tiers to run, in priority order.
    semdedup_eps
        SemDeDup eps values whose removal rates are reported (empty: SemDeDup off).
    semdedup_apply
        Also mark what SemDeDup removes at the smallest eps (tier ``semdedup``).
    semdedup_clusters
        k of the spherical k-means (0: sqrt(n)).
    against
        A folder or Hugging Face dataset; items matching any of its images become ``contaminated``.
    against_tiers
        Tiers that match against it (None: ``tiers``).
    dry_run
        Compute and write the reports, but leave the catalog untouched.
    licence_preference
        See :data:`DEFAULT_LICENCE_PREFERENCE`.
    search
        Index choice and memory bounds (:class:`emo8.core.similarity.SearchConfig`); by default each item keeps at most
        :data:`MAX_NEIGHBOURS` matches per tier, those with the items first in the canonical order.
    html_max_clusters, html_max_members
        Gallery size bounds.
    workers
        Processes for hashing the ``against`` images; DataLoader workers for embedding them.
    device
        Where the encoder runs for ``against`` images.
    progress
        Show a progress bar over the tiers and print each tier's pair count.
    verify_min_similarity
        Lowest cosine of a grey-zone candidate (None: the model's default, :data:`VERIFY_MIN_SIMILARITY`).
    verify_phash_max_distance
        Loosest pHash distance of a grey-zone candidate.
    undecided_min_similarity
        Cosine that counts when verification cannot decide (None: :data:`UNDECIDED_MIN_SIMILARITY`).
    verification
        Geometric verification settings (:class:`emo8.dedup.verify.VerifyConfig`: ``k`` candidates per item, workers).
    min_links
        An item that neither matches nor verifies against the canonical joins with matches to at least
        ``min_links`` of the members that do (the canonical included).
    """

    phash_max_distance: int = PHASH_MAX_DISTANCE
    dhash_max_distance: int | None = DHASH_MAX_DISTANCE
    embed_min_similarity: float | None = None
    model: str | None = None
    tiers: tuple[str, ...] = ("exact", "perceptual", "verified", "semantic")
    semdedup_eps: tuple[float, ...] = ()
    semdedup_apply: bool = False
    semdedup_clusters: int = 0
    against: str | None = None
    against_tiers: tuple[str, ...] | None = None
    dry_run: bool = False
    licence_preference: tuple[str, ...] = DEFAULT_LICENCE_PREFERENCE
    search: SearchConfig = field(default_factory=lambda: SearchConfig(max_neighbours=MAX_NEIGHBOURS))
    html_max_clusters: int = 200
    html_max_members: int = 12
    workers: int = 1
    device: str = "auto"
    progress: bool = False
    verify_min_similarity: float | None = None
    verify_phash_max_distance: int = VERIFY_PHASH_MAX_DISTANCE
    undecided_min_similarity: float | None = None
    verification: VerifyConfig = field(default_factory=VerifyConfig)
    min_links: int = MIN_LINKS


@dataclass
class DedupResult:
    """What :func:`dedup` found (and, unless a dry run, wrote)."""

    report: dict[str, Any]
    json_path: Path
    html_path: Path | None
    changed: int
    frame: pd.DataFrame = field(repr=False)


# -- context shared by the tiers -------------------------------------------------------------------------


@dataclass
class Reference:
    """The ``against`` set: one row per readable image, with its signals and (optionally) embeddings."""

    locator: list[str]
    sha256: list[str]
    pixel_hash: list[str]
    phash: np.ndarray
    dhash: np.ndarray
    embeddings: np.ndarray | None = None
    unreadable: int = 0


@dataclass
class Context:
    """Candidate items (in catalog order) and what the tiers need."""

    ws: Workspace
    config: DedupConfig
    items: pd.DataFrame
    rank: np.ndarray
    model: str | None = None
    min_similarity: float | None = None
    embed_rows: np.ndarray | None = None  # candidate position -> row in `matrix` (-1: none)
    matrix: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    verify_min_similarity: float | None = None
    undecided_min_similarity: float | None = None
    undecided: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # pairs verification could not decide
    verification: dict[str, Any] = field(default_factory=dict)

    def path(self, position: int) -> str:
        """The stored file of the candidate at ``position``."""
        sha, fmt = self.items.sha256.iat[position], self.items.format.iat[position]
        return str(self.ws.object_path(str(sha), str(fmt) if isinstance(fmt, str) else None))

    def count_verification(self, stats: dict[str, Any]) -> None:
        for key in ("pairs", "verified", "undecided", "seconds"):
            self.verification[key] = self.verification.get(key, 0) + stats.get(key, 0)
        seconds = self.verification["seconds"]
        self.verification["pairs_per_second"] = (
            round(self.verification["pairs"] / seconds, 1) if seconds else None
        )
        self.verification["workers"] = stats.get("workers")

    def log(self, message: str) -> None:
        if self.config.progress:
            print(f"  dedup: {message}", flush=True)


@dataclass(frozen=True)
class Tier:
    """One dedup tier: ``pairs`` finds matches among candidates, ``against`` matches against a reference.

    Both return ``(i, j, score)`` arrays, and optionally a fourth, the inliers of geometric verification; scores
    are similarities in [0, 1] (1 - distance / 64 for hashes, the inliers' share of the overlap for ``verified``).
    """

    name: str
    pairs: Callable[[Context], tuple[np.ndarray, ...]]
    against: Callable[[Context, Reference], tuple[np.ndarray, ...]]

    @property
    def code(self) -> int:
        return TIER_PRIORITY[self.name]


TIERS: dict[str, Tier] = {}


def register_tier(tier: Tier) -> Tier:
    TIERS[tier.name] = tier
    return tier


_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


# -- exact ----------------------------------------------------------------------------------------------


def _group_star(keys: pd.Series, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Star edges: each item with a repeated non-null key -> the best-ranked item with that key."""
    frame = pd.DataFrame({"key": keys.to_numpy(), "rank": rank, "pos": np.arange(len(keys))}).dropna()
    frame = frame[frame.duplicated("key", keep=False)]
    if frame.empty:
        return _EMPTY[0], _EMPTY[1]
    frame = frame.sort_values(["key", "rank"])
    head = frame.groupby("key", sort=False)["pos"].transform("first").to_numpy()
    pos = frame["pos"].to_numpy()
    keep = head != pos
    return pos[keep].astype(np.int64), head[keep].astype(np.int64)


def _exact_pairs(ctx: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = [_group_star(ctx.items[col], ctx.rank) for col in ("sha256", "pixel_hash")]
    i = np.concatenate([p[0] for p in parts])
    j = np.concatenate([p[1] for p in parts])
    return i, j, np.ones(len(i), np.float32)


def _exact_against(ctx: Context, ref: Reference) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out_i, out_j = [], []
    for col, values in (("sha256", ref.sha256), ("pixel_hash", ref.pixel_hash)):
        lookup = {v: k for k, v in enumerate(values) if v}
        for pos, value in enumerate(ctx.items[col].tolist()):
            if value in lookup:
                out_i.append(pos)
                out_j.append(lookup[value])
    return np.array(out_i, np.int64), np.array(out_j, np.int64), np.ones(len(out_i), np.float32)


register_tier(Tier("exact", _exact_pairs, _exact_against))


# -- perceptual -------------------------------------------------------------------------------------------


def _hash_arrays(items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    has = (items.phash.notna() & items.dhash.notna()).to_numpy()
    pos = np.flatnonzero(has)
    return pos, hex_to_codes(items.phash.to_numpy()[pos]), hex_to_codes(items.dhash.to_numpy()[pos])


def _confirm(ctx: Context, i: np.ndarray, j: np.ndarray, dist: np.ndarray, dh_i: np.ndarray,
             dh_j: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    ok: np.ndarray = np.ones(len(i), bool)
    if ctx.config.dhash_max_distance is not None:
        ok = np.asarray(popcount(dh_i ^ dh_j) <= ctx.config.dhash_max_distance)
    return i[ok], j[ok], (1.0 - dist[ok] / 64.0).astype(np.float32)


def _note_capped(ctx: Context, tier: str, pairs: Pairs) -> None:
    if pairs.capped:
        ctx.notes.append(
            f"{tier}: {pairs.capped} item(s) matched more than {ctx.config.search.max_neighbours} others; each kept "
            "its matches with the items first in the canonical order (search.max_neighbours)"
        )


def _perceptual_pairs(ctx: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos, ph, dh = _hash_arrays(ctx.items)
    pairs = hamming_pairs(ph, ctx.config.phash_max_distance, config=ctx.config.search, priority=ctx.rank[pos])
    _note_capped(ctx, "perceptual", pairs)
    i, j, score = _confirm(ctx, pairs.i, pairs.j, pairs.value, dh[pairs.i], dh[pairs.j])
    return pos[i], pos[j], score


def _perceptual_against(ctx: Context, ref: Reference) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos, ph, dh = _hash_arrays(ctx.items)
    if not len(ref.phash):
        return _EMPTY
    pairs = hamming_pairs(ph, ctx.config.phash_max_distance, database=ref.phash, config=ctx.config.search)
    i, j, score = _confirm(ctx, pairs.i, pairs.j, pairs.value, dh[pairs.i], ref.dhash[pairs.j])
    return pos[i], j, score


register_tier(Tier("perceptual", _perceptual_pairs, _perceptual_against))


# -- semantic ---------------------------------------------------------------------------------------------


def _embedded(ctx: Context) -> tuple[np.ndarray, Matrix | None]:
    """Candidate positions that have an embedding, and their rows (the memory map itself, or a view of it)."""
    if ctx.embed_rows is None or ctx.matrix is None:
        return np.zeros(0, np.int64), None
    pos = np.flatnonzero(ctx.embed_rows >= 0)
    rows = ctx.embed_rows[pos]
    if len(rows) == len(ctx.matrix) and np.array_equal(rows, np.arange(len(rows))):
        return pos, ctx.matrix  # all rows, in order: use the memory map as it is
    order = np.argsort(rows, kind="stable")  # sorted rows: sequential reads of the memory map
    return pos[order], take_rows(ctx.matrix, rows[order])


def _semantic_pairs(ctx: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos, matrix = _embedded(ctx)
    if matrix is None or ctx.min_similarity is None:
        return _EMPTY
    pairs = cosine_pairs(matrix, ctx.min_similarity, config=ctx.config.search, priority=ctx.rank[pos])
    _note_capped(ctx, "semantic", pairs)
    i, j, score = pos[pairs.i], pos[pairs.j], np.minimum(pairs.value, 1.0).astype(np.float32)
    if ctx.undecided is not None and ctx.undecided_min_similarity is not None:
        ui, uj, us = ctx.undecided  # too plain to verify: a lower cosine than unverified pairs need
        keep = us >= ctx.undecided_min_similarity
        i, j, score = np.r_[i, ui[keep]], np.r_[j, uj[keep]], np.r_[score, us[keep]].astype(np.float32)
    return i, j, score


def _semantic_against(ctx: Context, ref: Reference) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos, matrix = _embedded(ctx)
    if matrix is None or ref.embeddings is None or ctx.min_similarity is None or not len(ref.embeddings):
        return _EMPTY
    pairs = cosine_pairs(ref.embeddings, ctx.min_similarity, queries=matrix, config=ctx.config.search)
    return pos[pairs.i], pairs.j, np.minimum(pairs.value, 1.0).astype(np.float32)


register_tier(Tier("semantic", _semantic_pairs, _semantic_against))


# -- verified -----------------------------------------------------------------------------------------------


def _cosines(ctx: Context, i: np.ndarray, j: np.ndarray, block: int = 65536) -> np.ndarray:
    """Cosine of candidate pairs ``(i, j)`` (NaN where either has no embedding)."""
    out = np.full(len(i), np.nan, np.float32)
    if ctx.embed_rows is None or ctx.matrix is None:
        return out
    ri, rj = ctx.embed_rows[i], ctx.embed_rows[j]
    has = np.flatnonzero((ri >= 0) & (rj >= 0))
    for s in range(0, len(has), block):
        k = has[s : s + block]
        a = np.asarray(ctx.matrix[ri[k]], np.float32)
        b = np.asarray(ctx.matrix[rj[k]], np.float32)
        out[k] = np.einsum("ij,ij->i", a, b)
    return out


def _grey_zone(ctx: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs for verification: each item's ``k`` nearest embeddings above the loose cosine and (up to
    ``k`` per item) pHash within the loose radius, minus the pairs the cheap tiers accept anyway."""
    k = ctx.config.verification.k
    parts_i, parts_j = [], []
    pos, matrix = _embedded(ctx)
    if matrix is not None and ctx.verify_min_similarity is not None:
        near = cosine_topk(matrix, k, ctx.verify_min_similarity, config=ctx.config.search)
        parts_i.append(pos[near.i])
        parts_j.append(pos[near.j])
    hpos, ph, dh = _hash_arrays(ctx.items)
    if matrix is None or len(ph) ** 2 <= ctx.config.search.binary_flat_max_work:
        # the loose radius is cheap with the flat index; at scale the embeddings' neighbours propose candidates
        loose = hamming_pairs(ph, ctx.config.verify_phash_max_distance,
                              config=replace(ctx.config.search, max_neighbours=k), priority=ctx.rank[hpos])  # fmt: skip
        parts_i.append(hpos[loose.i])
        parts_j.append(hpos[loose.j])
    if not parts_i:
        return _EMPTY[0], _EMPTY[1], _EMPTY[2]
    i, j = np.concatenate(parts_i).astype(np.int64), np.concatenate(parts_j).astype(np.int64)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    key = np.unique(lo * len(ctx.items) + hi)
    i, j = key // len(ctx.items), key % len(ctx.items)
    cos = _cosines(ctx, i, j)
    # accepted without verification: strict hashes, or a cosine above the unverified threshold
    codes = np.zeros(len(ctx.items), np.uint64)
    dcodes = np.zeros(len(ctx.items), np.uint64)
    has = np.zeros(len(ctx.items), bool)
    codes[hpos], dcodes[hpos], has[hpos] = ph, dh, True
    strict = has[i] & has[j] & (popcount(codes[i] ^ codes[j]) <= ctx.config.phash_max_distance)
    if ctx.config.dhash_max_distance is not None:
        strict &= popcount(dcodes[i] ^ dcodes[j]) <= ctx.config.dhash_max_distance
    accepted = strict | (cos >= (ctx.min_similarity if ctx.min_similarity is not None else np.inf))
    skip = accepted
    if ctx.config.verification.skip_connected and accepted.any():
        # two candidates already joined by pairs accepted without verification need no check of their own
        joined = components(len(ctx.items), [np.stack([i[accepted], j[accepted]], axis=1)])
        skip = accepted | (joined[i] == joined[j])
        ctx.verification["skipped_connected"] = int((skip & ~accepted).sum())
    i, j, cos = i[~skip], j[~skip], cos[~skip]
    budget = ctx.config.verification.max_pairs
    if budget and len(i) > budget:  # keep the most similar candidates (hash-only ones last)
        keep = np.sort(np.argsort(-np.nan_to_num(cos, nan=-2.0), kind="stable")[:budget])
        ctx.notes.append(
            f"verification: {len(i)} grey-zone candidates, the {budget} most similar verified "
            "(VerifyConfig.max_pairs)"
        )
        i, j, cos = i[keep], j[keep], cos[keep]
    return i, j, cos


def _run_verification(ctx: Context, pairs: list[tuple[str, str]], cos: np.ndarray | None = None) -> Any:
    """Verify ``pairs``; where their cosine ``cos`` already reaches the undecided pairs' threshold, the
    photometric check is skipped (an undecided pair there is accepted by that cosine anyway)."""
    config = ctx.config.verification
    if not config.workers:
        config = replace(config, workers=ctx.config.workers)
    dense = None
    if cos is not None and ctx.undecided_min_similarity is not None:
        dense = ~(np.nan_to_num(cos, nan=-1.0) >= ctx.undecided_min_similarity)
        ctx.verification["photometric_skipped"] = ctx.verification.get("photometric_skipped", 0) + int(
            (~dense).sum()
        )
    result = verify_pairs(pairs, config, dense_fallback=None if dense is None else dense.tolist())
    ctx.count_verification(result.stats)
    ctx.log(
        f"verified {result.stats['verified']} of {len(pairs)} pairs ({result.stats['pairs_per_second']}/s)"
    )
    return result


def _verified_pairs(ctx: Context) -> tuple[np.ndarray, ...]:
    i, j, cos = _grey_zone(ctx)
    ctx.verification["grey_zone_pairs"] = len(i)
    if not len(i):
        return (*_EMPTY, np.zeros(0, np.int32))
    order = np.lexsort((j, i))  # a worker's chunk shares its first images: cached features
    i, j, cos = i[order], j[order], cos[order]
    paths = {p: ctx.path(p) for p in np.unique(np.r_[i, j]).tolist()}
    result = _run_verification(
        ctx, [(paths[a], paths[b]) for a, b in zip(i.tolist(), j.tolist(), strict=True)], cos
    )
    undecided = result.undecided & ~np.isnan(cos)
    ctx.undecided = (i[undecided], j[undecided], cos[undecided])
    ok = result.verified
    return i[ok], j[ok], result.overlap_ratio[ok].astype(np.float32), result.inliers[ok]


def _verified_against(ctx: Context, ref: Reference) -> tuple[np.ndarray, ...]:
    k = ctx.config.verification.k
    parts_i, parts_j = [], []
    pos, matrix = _embedded(ctx)
    if matrix is not None and ref.embeddings is not None and len(ref.embeddings) and \
            ctx.verify_min_similarity is not None:  # fmt: skip
        near = cosine_topk(
            ref.embeddings, k, ctx.verify_min_similarity, queries=matrix, config=ctx.config.search
        )
        parts_i.append(pos[near.i])
        parts_j.append(near.j)
    hpos, ph, _dh = _hash_arrays(ctx.items)
    if len(ref.phash):
        loose = hamming_pairs(ph, ctx.config.verify_phash_max_distance, database=ref.phash,
                              config=replace(ctx.config.search, max_neighbours=k))  # fmt: skip
        parts_i.append(hpos[loose.i])
        parts_j.append(loose.j)
    if not parts_i:
        return (*_EMPTY, np.zeros(0, np.int32))
    i, j = np.concatenate(parts_i).astype(np.int64), np.concatenate(parts_j).astype(np.int64)
    key = np.unique(i * max(1, len(ref.locator)) + j)
    i, j = key // max(1, len(ref.locator)), key % max(1, len(ref.locator))
    if not len(i):
        return (*_EMPTY, np.zeros(0, np.int32))
    sources = [(ctx.path(a), ref.locator[b]) for a, b in zip(i.tolist(), j.tolist(), strict=True)]
    result = _run_verification(ctx, sources)
    ok = result.verified
    return i[ok], j[ok], result.overlap_ratio[ok].astype(np.float32), result.inliers[ok]


register_tier(Tier("verified", _verified_pairs, _verified_against))


def _confirmer(ctx: Context) -> Any:
    """The clustering's direct check of a member against its canonical: geometric verification (for a pair it
    cannot decide, the cosine that undecided grey-zone pairs need)."""
    if "verified" not in ctx.config.tiers:
        return None

    def confirm(members: np.ndarray, canonicals: np.ndarray) -> tuple[np.ndarray, ...]:
        cos = _cosines(ctx, members.astype(np.int64), canonicals.astype(np.int64))
        result = _run_verification(ctx, [(ctx.path(int(m)), ctx.path(int(c)))
                                         for m, c in zip(members, canonicals, strict=True)], cos)  # fmt: skip
        tier = np.full(len(members), TIER_PRIORITY["verified"], np.int8)
        score = result.overlap_ratio.astype(np.float32)
        inliers = result.inliers.copy()
        ok = result.verified.copy()
        if ctx.undecided_min_similarity is not None:
            close = result.undecided & (np.nan_to_num(cos, nan=-1.0) >= ctx.undecided_min_similarity)
            ok |= close
            tier[close], score[close], inliers[close] = TIER_PRIORITY["semantic"], cos[close], -1
        rejected = ~ok & ~result.undecided
        return ok, rejected, tier, score, inliers

    return confirm


# -- canonical policy -------------------------------------------------------------------------------------


def licence_rank(licence: Any, preference: Sequence[str] = DEFAULT_LICENCE_PREFERENCE) -> int:
    """Rank of a licence under ``preference`` (0 = most preferred; unknown licences last)."""
    if licence is None or pd.isna(licence) or not str(licence).strip():
        return len(preference) + 1
    text = str(licence).strip().lower()
    for k, pattern in enumerate(preference):
        if re.search(pattern, text):
            return k
    return len(preference)


def canonical_order(items: pd.DataFrame, sticky: np.ndarray, preference: Sequence[str]) -> np.ndarray:
    """Return candidate positions, best canonical first.

    The policy: (1) a canonical from an earlier run (``sticky``) first; (2) largest pixel count
    (``width * height``); (3) preferred licence (:func:`licence_rank`); (4) earliest ``ingested_at``;
    (5) catalog order (``rowid``: the order items were registered).
    """
    pixels = (items.width.fillna(0).astype(np.int64) * items.height.fillna(0).astype(np.int64)).to_numpy()
    licences = np.array([licence_rank(v, preference) for v in items.license.tolist()], np.int64)
    ingested = items.ingested_at.fillna("9999").astype(str).to_numpy()
    return np.lexsort((np.arange(len(items)), ingested, licences, -pixels, ~sticky))


# -- the against set ---------------------------------------------------------------------------------------


def _reference_source(path: str) -> tuple[str, dict[str, Any]]:
    p = Path(path).expanduser()
    hf_markers = ("dataset_dict.json", "state.json", "dataset_info.json")
    if p.is_dir() and not any((p / m).exists() for m in hf_markers) and not list(p.glob("*.parquet")) \
            and not list(p.glob("*/*.parquet")) and not list(p.glob("*.arrow")):  # fmt: skip
        return "folder", {"directory": str(p), "recursive": True}
    return "hf", {"dataset": path, "label_col": None}


def _signals(source_path: str, validation: ValidationConfig) -> tuple[str, ImageInfo | None]:
    """Read one reference image and return ``(sha256, ImageInfo)`` (``("", None)`` when unreadable)."""
    try:
        data = read_local(source_path)
    except OSError:
        return "", None
    return hashlib.sha256(data).hexdigest(), inspect_image(data, validation)


def _against_tiers(config: DedupConfig) -> tuple[str, ...]:
    return config.tiers if config.against_tiers is None else config.against_tiers


def load_reference(path: str, ctx: Context) -> Reference:
    """Read every image of the ``against`` set: signals always, embeddings when the semantic tier runs.

    Reference images are accepted whatever their size or aspect (a tiny test image still counts).
    """
    name, options = _reference_source(path)
    records = list(create_source(name, **options).records())
    locators = [r.source_path for r in records if r.source_path]
    work = functools.partial(_signals, validation=ValidationConfig(min_side=1, max_aspect_ratio=1e6))
    if ctx.config.workers > 1 and len(locators) > 64:
        with ProcessPoolExecutor(ctx.config.workers) as pool:
            results = list(pool.map(work, locators, chunksize=16))
    else:
        results = [work(loc) for loc in locators]
    keep = [k for k, (_, info) in enumerate(results) if info is not None and info.ok]
    infos = [results[k][1] for k in keep]
    ref = Reference(
        locator=[locators[k] for k in keep],
        sha256=[results[k][0] for k in keep],
        pixel_hash=[str(info.pixel_hash) for info in infos if info is not None],
        phash=hex_to_codes([str(info.phash) for info in infos if info is not None]),
        dhash=hex_to_codes([str(info.dhash) for info in infos if info is not None]),
        unreadable=len(locators) - len(keep),
    )
    tiers = _against_tiers(ctx.config)
    if ("semantic" in tiers or "verified" in tiers) and ctx.model is not None and ref.locator:
        encoder = load_encoder(store_spec(ctx.ws, ctx.model, ctx.config.device))
        ok, emb = encode_sources(encoder, ref.locator, read=read_local, workers=min(ctx.config.workers, 2),
                                 preprocess=store_preprocess(ctx.ws, ctx.model))  # fmt: skip
        ref.embeddings = np.where(ok[:, None], emb, 0.0).astype(np.float32)
    return ref


# -- the stage ------------------------------------------------------------------------------------------------


def _choose_model(ws: Workspace, requested: str | None) -> tuple[str | None, str | None]:
    """Return ``(model key, note)`` for the semantic tier."""
    stored = stored_models(ws)
    if requested is not None:
        if requested not in stored:
            raise ValueError(f"no embeddings for {requested!r}; run `emo8 embed --model {requested}` first")
        return requested, None
    if not stored:
        return None, "no embeddings in the workspace: semantic tier skipped (run `emo8 embed` first)"
    if len(stored) == 1:
        return stored[0], None
    if DEFAULT_MODEL in stored:
        return DEFAULT_MODEL, f"several embedding stores ({', '.join(stored)}); using {DEFAULT_MODEL}"
    raise ValueError(f"several embedding stores ({', '.join(stored)}); pick one with --model")


def _min_similarity(config: DedupConfig, model: str | None) -> tuple[float | None, str | None]:
    if model is None:
        return None, None
    if config.embed_min_similarity is not None:
        return config.embed_min_similarity, None
    if model in EMBED_MIN_SIMILARITY:
        return EMBED_MIN_SIMILARITY[model], None
    return EMBED_MIN_SIMILARITY_FALLBACK, (
        f"no benchmarked threshold for {model}: using cosine >= {EMBED_MIN_SIMILARITY_FALLBACK}; "
        f"run benchmarks/neardup.py --model {model} to choose one"
    )


def _load_context(ws: Workspace, config: DedupConfig) -> Context:
    ws.catalog.ensure_columns(DEDUP_COLUMNS)
    marks = ", ".join(f"'{s}'" for s in CANDIDATE_STATUSES)
    columns = [
        "item_id", "status", "reason", "sha256", "pixel_hash", "phash", "dhash", "width", "height", "format",
        "license", "ingested_at", *DEDUP_COLUMNS,
    ]  # fmt: skip
    items = ws.items(columns, where=f"status IN ({marks}) AND sha256 IS NOT NULL").reset_index(drop=True)
    previous = set(items.dup_of[items.status.isin(["duplicate", "contaminated"])].dropna())
    sticky = items.item_id.isin(previous).to_numpy()
    order = canonical_order(items, sticky, config.licence_preference)
    rank = np.empty(len(items), np.int64)
    rank[order] = np.arange(len(items))
    ctx = Context(ws, config, items, rank)
    if "semantic" in config.tiers or "verified" in config.tiers or config.semdedup_eps:
        ctx.model, note = _choose_model(ws, config.model)
        if note:
            ctx.notes.append(note)
        ctx.min_similarity, note = _min_similarity(config, ctx.model)
        if note:
            ctx.notes.append(note)
        if ctx.model is not None:
            ctx.verify_min_similarity = (
                config.verify_min_similarity
                if config.verify_min_similarity is not None
                else VERIFY_MIN_SIMILARITY.get(ctx.model, VERIFY_MIN_SIMILARITY_FALLBACK)
            )
            ctx.undecided_min_similarity = (
                config.undecided_min_similarity
                if config.undecided_min_similarity is not None
                else UNDECIDED_MIN_SIMILARITY.get(ctx.model, ctx.min_similarity)
            )
            store = EmbeddingStore.for_key(ws, ctx.model)
            if store.preprocess != DEFAULT_PREPROCESS:
                ctx.notes.append(
                    f"{ctx.model} embeddings were computed with {store.preprocess} preprocessing, not the "
                    f"default {DEFAULT_PREPROCESS} (the whole image): run `emo8 embed --model {ctx.model}` to "
                    "re-embed; the thresholds were measured on whole-image embeddings"
                )
            ids, ctx.matrix = store.load(verify=True)
            ctx.embed_rows = pd.Index(ids).get_indexer(pd.Index(items.item_id)).astype(np.int64)
            missing = int((ctx.embed_rows < 0).sum())
            if missing:
                ctx.notes.append(
                    f"{missing} items have no {ctx.model} embedding (semantic tier skips them; run `emo8 embed`)"
                )
    return ctx


def dedup(ws: Workspace, config: DedupConfig | None = None) -> DedupResult:
    """Find duplicates in ``ws`` tier by tier, cluster them, mark them, and write the reports.

    Parameters
    ----------
    ws
        The workspace (items with status ``valid``, ``duplicate`` or ``contaminated`` take part).
    config
        Thresholds, tiers, ``against`` set, dry run (see :class:`DedupConfig`).

    Returns
    -------
    A :class:`DedupResult`: the report (also in ``reports/dedup.json``), the HTML gallery path, how many items
    changed in the catalog, and a frame with one row per candidate item (``item_id, status, dup_of, dup_tier,
    dup_score, contaminated_by, ...``) as written.

    Raises
    ------
    ValueError
        ``model`` has no stored embeddings, or several stores exist and none was chosen.
    emo8.embed.run.EmbeddingStoreError
        An embedding shard is corrupted (it is refused, never used).
    """
    config = config or DedupConfig()
    started = time.perf_counter()
    unknown = [t for t in (*config.tiers, *(config.against_tiers or ())) if t not in TIERS]
    if unknown:
        raise ValueError(f"unknown tiers {unknown}; known: {', '.join(TIERS)}")
    ctx = _load_context(ws, config)
    ctx.timings["load"] = time.perf_counter() - started
    n = len(ctx.items)
    parts = []
    found: dict[str, int] = {}
    with stage_steps("dedup", [f"tier {t}" for t in config.tiers], config.progress) as done:
        for name in config.tiers:
            t0 = time.perf_counter()
            i, j, score, *inliers = TIERS[name].pairs(ctx)
            parts.append((TIERS[name].code, i, j, score, *inliers))
            found[name] = len(i)
            ctx.timings[name] = time.perf_counter() - t0
            ctx.log(f"{name}: {len(i)} pairs in {ctx.timings[name]:.1f}s")
            done(name)
    edges = Edges.build(parts)
    t0 = time.perf_counter()
    order = np.argsort(ctx.rank, kind="stable")
    clusters = verified_clusters(
        n,
        edges,
        order,
        _confirmer(ctx),
        config.min_links,
    )
    ctx.timings["cluster"] = time.perf_counter() - t0
    semdedup_report = _semdedup(ctx, clusters, order) if config.semdedup_eps else None
    contamination = _contamination(ctx) if config.against else None
    frame = _outcome(ctx, clusters, contamination)
    changed = 0
    if not config.dry_run:
        changed = _write(ws, ctx.items, frame)
        write_pairs(ws, ctx.items.item_id.to_numpy(), edges, clusters)
        ws.config["dedup"] = {"model": ctx.model, "embed_min_similarity": ctx.min_similarity,
                              "phash_max_distance": config.phash_max_distance, "at": utc_now()}  # fmt: skip
        ws.save_config()
    report = _report(ctx, clusters, edges, found, frame, semdedup_report, contamination, changed)
    report["seconds"] = round(time.perf_counter() - started, 3)
    json_path, html_path = _write_reports(ws, ctx, report, frame)
    return DedupResult(report, json_path, html_path, changed, frame)


def _semdedup(ctx: Context, clusters: Clusters, order: np.ndarray) -> dict[str, Any]:
    """Thin the canonical and unmatched items that have embeddings; apply the smallest eps when asked."""
    t0 = time.perf_counter()
    pos, matrix = _embedded(ctx)
    report: dict[str, Any] = {"eps": {}, "applied_eps": None}
    if matrix is None or not len(pos):
        ctx.notes.append("SemDeDup skipped: no embeddings")
        return report
    heads = ~clusters.is_member[pos]
    pos, sub = pos[heads], take_rows(matrix, np.flatnonzero(heads))
    local_order = np.argsort(ctx.rank[pos], kind="stable")
    eps_values = sorted(ctx.config.semdedup_eps)
    results = semdedup_thin(sub, local_order, eps_values, ctx.config.semdedup_clusters, ctx.config.search)
    for res in results:
        report["eps"][str(res.eps)] = {"removed": int(res.removed.sum()), "of": len(pos), "rate": res.rate}
    if ctx.config.semdedup_apply and results:
        res = results[0]
        report["applied_eps"] = res.eps
        removed = np.flatnonzero(res.removed)
        sources, targets = pos[removed], pos[res.kept_ref[removed]]
        mapping = np.arange(len(clusters.canonical))
        mapping[sources] = targets  # targets are kept heads; a removed head's members follow it
        clusters.canonical = mapping[clusters.canonical]
        clusters.tier[sources] = TIER_PRIORITY["semdedup"]
        clusters.score[sources] = res.score[removed]
    ctx.timings["semdedup"] = time.perf_counter() - t0
    return report


def _contamination(ctx: Context) -> dict[str, Any]:
    t0 = time.perf_counter()
    assert ctx.config.against is not None
    ref = load_reference(ctx.config.against, ctx)
    parts = []
    for name in _against_tiers(ctx.config):
        i, j, score, *_inliers = TIERS[name].against(ctx, ref)
        parts.append((TIERS[name].code, i, j, score))
    if parts:
        i = np.concatenate([p[1] for p in parts])
        j = np.concatenate([p[2] for p in parts])
        tier = np.concatenate([np.full(len(p[1]), p[0], np.int8) for p in parts])
        score = np.concatenate([p[3] for p in parts]).astype(np.float32)
        best = np.lexsort((-score, tier, i))
        i, j, tier, score = i[best], j[best], tier[best], score[best]
        first = np.ones(len(i), bool)
        first[1:] = i[1:] != i[:-1]
        i, j, tier, score = i[first], j[first], tier[first], score[first]
    else:
        i = j = np.zeros(0, np.int64)
        tier, score = np.zeros(0, np.int8), np.zeros(0, np.float32)
    ctx.timings["against"] = time.perf_counter() - t0
    return {
        "path": ctx.config.against,
        "reference_images": len(ref.locator),
        "unreadable": ref.unreadable,
        "pos": i,
        "locator": [ref.locator[k] for k in j.tolist()],
        "tier": tier,
        "score": score,
    }


_TIER_NAMES = {code: name for name, code in TIER_PRIORITY.items()}


def _outcome(ctx: Context, clusters: Clusters, contamination: dict[str, Any] | None) -> pd.DataFrame:
    """The new values of the dedup columns for every candidate item."""
    items = ctx.items
    n = len(items)
    ids = items.item_id.to_numpy()
    member = clusters.is_member
    frame = pd.DataFrame({"item_id": ids})
    frame["dup_of"] = [str(ids[c]) if m else None for c, m in zip(clusters.canonical, member, strict=True)]
    frame["dup_tier"] = [
        _TIER_NAMES[int(t)] if m else None for t, m in zip(clusters.tier, member, strict=True)
    ]
    frame["dup_score"] = np.where(member, np.round(clusters.score.astype(np.float64), 4), np.nan)
    frame["dup_inliers"] = pd.Series(
        [int(x) if m and x >= 0 else None for x, m in zip(clusters.inliers, member, strict=True)],
        dtype=object,
    )
    frame["dup_via"] = [
        str(ids[v]) if m and v >= 0 else None for v, m in zip(clusters.via, member, strict=True)
    ]
    frame["dup_links"] = np.where(member & (clusters.via >= 0), clusters.links, -1)  # report only, not stored
    frame["contaminated_by"] = items.contaminated_by.to_numpy()
    frame["contaminated_tier"] = items.contaminated_tier.to_numpy()
    frame["contaminated_score"] = items.contaminated_score.to_numpy()
    contaminated = (items.status == "contaminated").to_numpy().copy()
    if contamination is not None:
        pos = contamination["pos"]
        fresh = pos[frame.contaminated_by.isna().to_numpy()[pos]]
        keep = np.isin(pos, fresh)
        frame.loc[pos[keep], "contaminated_by"] = np.array(contamination["locator"], dtype=object)[keep]
        frame.loc[pos[keep], "contaminated_tier"] = [_TIER_NAMES[int(t)] for t in contamination["tier"][keep]]
        frame.loc[pos[keep], "contaminated_score"] = np.round(
            contamination["score"][keep].astype(np.float64), 4
        )
        contaminated[pos] = True
    # a cluster with one contaminated item is contaminated whole
    head = clusters.canonical
    bad_heads = np.zeros(n, bool)
    bad_heads[head[contaminated]] = True
    spread = bad_heads[head] & ~contaminated
    if spread.any():
        first_bad = pd.Series(ids[contaminated], index=head[contaminated]).groupby(level=0).first()
        k = np.flatnonzero(spread)
        frame.loc[k, "contaminated_by"] = ["cluster:" + str(v) for v in first_bad.loc[head[k]].tolist()]
        frame.loc[k, "contaminated_tier"] = "cluster"
    contaminated |= spread
    frame["status"] = np.where(contaminated, "contaminated", np.where(member, "duplicate", "valid"))
    frame["reason"] = [
        (f"contaminated_{ct}" if st == "contaminated" else f"dup_{dt}" if st == "duplicate" else None)
        for st, dt, ct in zip(frame.status, frame.dup_tier, frame.contaminated_tier, strict=True)
    ]
    return frame


def write_pairs(ws: Workspace, item_ids: np.ndarray, edges: Edges, clusters: Clusters) -> Path:
    """Write the confirmed duplicate pairs (every tier's matches, and each member with its canonical) to
    ``dedup/pairs.parquet`` and the items this run considered to ``dedup/items.parquet`` (atomically): what
    split, release and take-down read as "duplicate" (:func:`emo8.core.curation.dedup_pairs`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    member = np.flatnonzero(clusters.is_member & (clusters.via < 0))  # matched or verified with the canonical
    a = np.r_[edges.i, member]
    b = np.r_[edges.j, clusters.canonical[member]]
    tier = np.r_[edges.tier, clusters.tier[member]]
    score = np.r_[edges.score, clusters.score[member]]
    inliers = np.r_[edges.inliers, clusters.inliers[member]]
    keep = np.lexsort((-score, tier, np.maximum(a, b), np.minimum(a, b)))
    lo, hi = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    sel = keep[first]  # one row per unordered pair, the strongest evidence
    table = pa.table({
        "a": pa.array(item_ids[np.minimum(a, b)[sel]].astype(str).tolist(), pa.string()),
        "b": pa.array(item_ids[np.maximum(a, b)[sel]].astype(str).tolist(), pa.string()),
        "tier": pa.array([_TIER_NAMES[int(t)] for t in tier[sel]], pa.string()),
        "score": pa.array(score[sel].astype(np.float32)),
        "inliers": pa.array(inliers[sel].astype(np.int32)),
    })  # fmt: skip
    path = ws.root / PAIRS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, data in ((path, table), (ws.root / PAIRS_ITEMS_FILE,
                                         pa.table({"item_id": pa.array(item_ids.astype(str).tolist())}))):  # fmt: skip
        ws.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=ws.tmp_dir, prefix=".pairs-")
        os.close(fd)
        pq.write_table(data, name)
        os.chmod(name, 0o644)
        os.replace(name, target)
    return path


def _same(a: Any, b: Any) -> bool:
    a_null = a is None or (isinstance(a, float) and np.isnan(a))
    b_null = b is None or (isinstance(b, float) and np.isnan(b))
    if a_null or b_null:
        return a_null and b_null
    if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
        return abs(float(a) - float(b)) < 1e-6
    return bool(a == b)


def _write(ws: Workspace, items: pd.DataFrame, frame: pd.DataFrame) -> int:
    columns = ["status", "reason", *DEDUP_COLUMNS]
    changed = np.zeros(len(frame), bool)
    for col in columns:
        old, new = items[col].tolist(), frame[col].tolist()
        changed |= np.array([not _same(a, b) for a, b in zip(old, new, strict=True)], bool)
    rows = frame[changed]
    if len(rows):
        values = {c: [None if _same(v, None) else v for v in rows[c].tolist()] for c in columns}
        ws.catalog.update_items(rows.item_id.tolist(), values)
    return int(changed.sum())


def _report(
    ctx: Context,
    clusters: Clusters,
    edges: Edges,
    found: dict[str, int],
    frame: pd.DataFrame,
    semdedup_report: dict[str, Any] | None,
    contamination: dict[str, Any] | None,
    changed: int,
) -> dict[str, Any]:
    config = ctx.config
    sizes = clusters.sizes()
    histogram = Counter(int(s) for s in sizes)
    n_components = len(set(clusters.component[np.isin(np.arange(len(frame)), np.r_[edges.i, edges.j])]))
    return {
        "created_at": utc_now(),
        "dry_run": config.dry_run,
        "items": len(frame),
        "thresholds": {
            "phash_max_distance": config.phash_max_distance,
            "dhash_max_distance": config.dhash_max_distance,
            "embed_min_similarity": ctx.min_similarity,
            "model": ctx.model,
            "semdedup_eps": list(config.semdedup_eps),
        },
        "tiers": list(config.tiers),
        "pairs_per_tier": found,
        "duplicates_per_tier": dict(Counter(t for t in frame.dup_tier.dropna())),
        "status": dict(Counter(frame.status)),
        "clusters": len(sizes),
        "matched_components": n_components,
        "cluster_size_histogram": {str(k): histogram[k] for k in sorted(histogram)},
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "semdedup": semdedup_report,
        "contamination": None
        if contamination is None
        else {
            "against": contamination["path"],
            "reference_images": contamination["reference_images"],
            "unreadable": contamination["unreadable"],
            "direct_matches": len(contamination["pos"]),
            "direct_matches_per_tier": dict(Counter(_TIER_NAMES[int(t)] for t in contamination["tier"])),
            "contaminated_items": int((frame.status == "contaminated").sum()),
        },
        "changed_items": changed,
        "verification": {
            **ctx.verification,
            "grey_zone": {
                "min_similarity": ctx.verify_min_similarity,
                "phash_max_distance": config.verify_phash_max_distance,
                "k": config.verification.k,
            },
            "undecided_min_similarity": ctx.undecided_min_similarity,
            "min_links": config.min_links,
            "members_via_links": int((clusters.via >= 0).sum()),
            "settings": asdict(config.verification),
        },
        "notes": ctx.notes,
        "timings": {k: round(v, 3) for k, v in ctx.timings.items()},
        "search": asdict(config.search),
    }


def _write_reports(
    ws: Workspace, ctx: Context, report: dict[str, Any], frame: pd.DataFrame
) -> tuple[Path, Path | None]:
    from emo8.dedup.report import render_html

    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    json_path = ws.reports_dir / "dedup.json"
    html_path = ws.reports_dir / "dedup.html"
    html = render_html(
        ws, ctx.items, frame, report, ctx.config.html_max_clusters, ctx.config.html_max_members
    )
    _atomic_text(ws, html_path, html)
    _atomic_text(ws, json_path, json.dumps(report, indent=2, default=_json_default))
    return json_path, html_path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _atomic_text(ws: Workspace, path: Path, text: str) -> None:
    """Write a report atomically (temp file in tmp/, then rename), readable like the other reports."""
    ws.tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=ws.tmp_dir, prefix=".report-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(name, 0o644)
    os.replace(name, path)


def pair_digest(frame: pd.DataFrame) -> str:
    """A short digest of the ``(item_id, dup_of)`` assignment (to compare runs)."""
    rows = sorted(zip(frame.item_id, frame.dup_of.fillna(""), strict=True))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
