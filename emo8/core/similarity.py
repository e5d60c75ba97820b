"""Scalable similarity search and clustering primitives used by :mod:`emo8.dedup.tiers` (no workspace, no catalog).

* :func:`hamming_pairs`: every pair of 64-bit hashes within a Hamming distance. Small sets use FAISS
  ``IndexBinaryFlat`` range search (exact); large ones an exact multi-index hashing search (vectorised numpy:
  the 64 bits are cut into ``m`` substrings; by the pigeonhole principle two codes within distance ``D`` agree to
  within ``D // m`` bits on at least one substring, so each code probes the buckets of that small Hamming ball of
  each of its substrings). FAISS's own ``IndexBinaryMultiHash`` was measured 50-100x slower on 1M codes.
* :func:`cosine_pairs`: every pair of L2-normalised embeddings with cosine >= a threshold. Small sets use FAISS
  ``IndexFlatIP`` range search; large ones an inverted-file partition (FAISS spherical k-means coarse quantizer,
  each vector stored in its nearest list and probed from its ``nprobe`` nearest lists) with a FAISS flat range
  search inside each list, under a memory budget. Approximate: a pair is missed only when neither vector probes
  the other's list.
* :func:`components` and :func:`guarded_clusters`: pairs -> connected components -> clusters in which every
  member is *directly* matched to its canonical item (the chaining guard).
* :func:`semdedup_thin`: SemDeDup-style thinning inside spherical k-means clusters.

No function here builds an ``N x N`` matrix: memory is bounded by the block sizes and by the number of pairs found,
which ``SearchConfig.max_neighbours`` bounds in turn (each query keeps its best-ranked matches; repeated hashes are
searched once as distinct codes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pandas as pd

#: Tier priorities: when two items match in several tiers, the lowest number wins.
TIER_PRIORITY = {"exact": 0, "perceptual": 1, "verified": 2, "semantic": 3, "semdedup": 4}


#: Matches each item keeps per dedup tier when it has more (the best-ranked ones, see ``SearchConfig.max_neighbours``):
#: bounds the pairs of huge groups of look-alikes to ``n * MAX_NEIGHBOURS``.
MAX_NEIGHBOURS = 64


@dataclass(frozen=True)
class SearchConfig:
    """Index choice and memory bounds of the searches.

    Parameters
    ----------
    binary_flat_max_work
        Use FAISS ``IndexBinaryFlat`` when ``n_queries * n_database`` is at most this; multi-index hashing above.
    float_flat_max
        Use FAISS ``IndexFlatIP`` when the database has at most this many vectors; the IVF partition above.
    nlist
        Inverted lists of the IVF partition (0 = ``2 * sqrt(n)``, between 16 and 8192).
    nprobe
        Lists each query probes at least.
    nprobe_max
        Lists a query of the cosine range search may probe at most (0: exactly ``nprobe``). Beyond its ``nprobe``
        nearest lists a query probes each further list that can hold a row within the threshold: by the triangle
        inequality on angles, a row ``x`` with ``angle(q, x) <= t`` (``t = acos(threshold)``) lies in a list whose
        centroid is within ``angle(q, nearest centroid) + 2 t`` of ``q`` (``x``'s own centroid is at least as
        close to ``x`` as ``q``'s nearest one). ``probe_slack`` scales that ``2 t`` (1: the exact bound; smaller
        probes fewer lists); queries near a boundary between lists probe more of them, the others fewer.
    kmeans_iterations, kmeans_points_per_list
        Training of the coarse quantizer (on a seeded random sample).
    memory_budget_gb
        Upper bound for the float32 blocks that a search holds at once (vectors are read from the caller's
        array, e.g. a memory map, block by block).
    block
        Queries per block of the binary searches.
    seed
        Seed of the samples and of k-means.
    max_neighbours
        0: every match. Otherwise each query keeps at least its ``max_neighbours`` matches of smallest priority
        (the ``priority`` argument of the searches, e.g. the canonical order; index order by default) and drops
        the rest, so thousands of mutually matching items (blank placeholders, one meme reposted thousands of
        times) give ``n * max_neighbours`` pairs rather than ``n**2 / 2``. Every item still keeps its matches
        with the best-ranked items of its group, which is what clustering needs.
    """

    binary_flat_max_work: int = 400_000_000
    float_flat_max: int = 20_000
    nlist: int = 0
    nprobe: int = 4
    nprobe_max: int = 16
    probe_slack: float = 1.0
    kmeans_iterations: int = 10
    kmeans_points_per_list: int = 40
    memory_budget_gb: float = 2.0
    block: int = 4096
    seed: int = 0
    max_neighbours: int = 0


@dataclass
class Pairs:
    """Matched pairs: ``i[k]`` (query) and ``j[k]`` (database) with ``value[k]`` (distance or similarity).

    ``capped_queries`` holds the queries that had more matches than ``SearchConfig.max_neighbours``.
    """

    i: np.ndarray
    j: np.ndarray
    value: np.ndarray
    capped_queries: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def capped(self) -> int:
        """How many queries lost matches to the cap."""
        return len(self.capped_queries)

    def __len__(self) -> int:
        return len(self.i)

    @classmethod
    def empty(cls, dtype: type = np.float32) -> Pairs:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, dtype))

    @classmethod
    def concat(cls, parts: list[Pairs], dtype: type = np.float32) -> Pairs:
        if not parts:
            return cls.empty(dtype)
        return cls(
            np.concatenate([p.i for p in parts]).astype(np.int64),
            np.concatenate([p.j for p in parts]).astype(np.int64),
            np.concatenate([p.value for p in parts]).astype(dtype),
            np.unique(np.concatenate([p.capped_queries for p in parts])),
        )

    def unique(self, keep: str = "min") -> Pairs:
        """Drop repeated ``(i, j)`` pairs, keeping the smallest (``"min"``) or largest value."""
        if not len(self):
            return self
        n = int(max(self.i.max(), self.j.max())) + 1
        key = self.i * n + self.j
        order = np.lexsort((self.value if keep == "min" else -self.value, key))
        first = np.ones(len(order), bool)
        first[1:] = key[order][1:] != key[order][:-1]
        sel = order[first]
        return Pairs(self.i[sel], self.j[sel], self.value[sel], self.capped_queries)


def _capped(
    qi: np.ndarray, dj: np.ndarray, limit: int, priority: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Mask keeping, for each query in ``qi``, its ``limit`` matches ``dj`` of smallest ``priority[dj]`` (then
    smallest ``dj``), and the queries that lost matches. ``limit <= 0`` keeps everything."""
    keep = np.ones(len(qi), bool)
    none = np.zeros(0, np.int64)
    if limit <= 0 or len(qi) <= limit:
        return keep, none
    queries, counts = np.unique(qi, return_counts=True)
    if counts.max() <= limit:
        return keep, none
    order = np.lexsort((dj, dj if priority is None else priority[dj], qi))
    sorted_q = qi[order]
    position = np.arange(len(order)) - np.searchsorted(sorted_q, sorted_q, side="left")
    keep[order[position >= limit]] = False
    return keep, queries[counts > limit].astype(np.int64)


def _select(
    qi: np.ndarray,
    dj: np.ndarray,
    value: np.ndarray,
    self_join: bool,
    config: SearchConfig,
    priority: np.ndarray | None,
) -> Pairs:
    """The pairs a search returns from one part of its matches (complete lists for the queries ``qi``).

    A self-join reports each unordered pair once as ``(min, max)``: with no cap, only from the smaller index's
    list; with a cap, from every list that keeps it (the caller removes the repeats with :meth:`Pairs.unique`).
    """
    if config.max_neighbours <= 0:
        keep = dj > qi if self_join else np.ones(len(qi), bool)
        return Pairs(qi[keep], dj[keep], value[keep])
    if self_join:
        other = dj != qi
        qi, dj, value = qi[other], dj[other], value[other]
    keep, capped = _capped(qi, dj, config.max_neighbours, priority)
    qi, dj, value = qi[keep], dj[keep], value[keep]
    if self_join:
        qi, dj = np.minimum(qi, dj), np.maximum(qi, dj)
    return Pairs(qi, dj, value, capped)


# -- 64-bit hashes --------------------------------------------------------------------------------------------


def hex_to_codes(hexes: list[str] | np.ndarray) -> np.ndarray:
    """Return 16-hex-digit hashes (imagehash's ``str()``) as a ``uint64`` array."""
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def popcount(x: np.ndarray) -> np.ndarray:
    """Bits set in each ``uint64``."""
    return np.bitwise_count(x).astype(np.int16)


def _faiss_codes(codes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(codes.astype(np.uint64)).view(np.uint8).reshape(-1, 8)


def hamming_pairs(
    codes: np.ndarray,
    max_distance: int,
    database: np.ndarray | None = None,
    config: SearchConfig = SearchConfig(),
    priority: np.ndarray | None = None,
) -> Pairs:
    """Return all pairs within Hamming distance ``max_distance`` (exact).

    Parameters
    ----------
    codes
        ``uint64`` query hashes.
    max_distance
        Largest distance reported (inclusive).
    database
        ``uint64`` hashes to search; None searches ``codes`` against itself and returns each unordered pair once
        (``i < j``).
    config
        When to switch from FAISS ``IndexBinaryFlat`` to multi-index hashing; ``max_neighbours``.
    priority
        Per database hash, smaller = kept first when ``config.max_neighbours`` caps a query's matches.

    Returns
    -------
    :class:`Pairs` with ``value`` the Hamming distance (int16).
    """
    self_join = database is None
    db = codes if database is None else database
    if len(codes) == 0 or len(db) == 0:
        return Pairs.empty(np.int16)
    if self_join and config.max_neighbours > 0:
        distinct, inverse = np.unique(codes, return_inverse=True)
        if len(distinct) < len(codes):
            return _hamming_grouped(distinct, inverse.ravel(), max_distance, config, priority)
    if len(codes) * len(db) <= config.binary_flat_max_work:
        pairs = _hamming_flat(codes, db, max_distance, self_join, config, priority)
    else:
        pairs = _hamming_mih(codes, db, max_distance, self_join, config, priority)
    return pairs.unique() if self_join and config.max_neighbours > 0 else pairs


def _hamming_grouped(
    distinct: np.ndarray,
    inverse: np.ndarray,
    max_distance: int,
    config: SearchConfig,
    priority: np.ndarray | None,
) -> Pairs:
    """Capped self-join when codes repeat: search the distinct codes once, then give each item the
    ``max_neighbours`` best-ranked items among the codes within reach (its own code's other items included).

    A code shared by thousands of items (blank placeholders) costs one search and ``members * max_neighbours``
    pairs, instead of ``members**2`` candidates in every substring table of the multi-index search.
    """
    limit = config.max_neighbours
    n = len(inverse)
    prio = np.arange(n) if priority is None else np.asarray(priority)
    order = np.lexsort((np.arange(n), prio, inverse))  # items grouped by code, best-ranked first
    bounds = np.searchsorted(inverse[order], np.arange(len(distinct) + 1))
    size = np.diff(bounds)
    between = hamming_pairs(distinct, max_distance, config=config, priority=prio[order[bounds[:-1]]])
    # every code's codes within reach (itself included), both directions
    u = np.concatenate([between.i, between.j, np.arange(len(distinct))])
    v = np.concatenate([between.j, between.i, np.arange(len(distinct))])
    d = np.concatenate([between.value, between.value, np.zeros(len(distinct), np.int16)])
    by_u = np.argsort(u, kind="stable")
    u, v, d = u[by_u], v[by_u], d[by_u]
    row_bounds = np.searchsorted(u, np.arange(len(distinct) + 1))
    heads = np.minimum(
        size[v], limit + 1
    )  # the best limit + 1 items of a code are all any neighbour can keep
    reach = np.bincount(u, weights=size[v], minlength=len(distinct)) - 1  # items within reach of each item
    parts: list[Pairs] = []
    work = np.add.reduceat(heads, row_bounds[:-1]) * 2 + size * (limit + 1)  # rows each code expands to
    for sl in _slices_by_total(work, 4_000_000):
        rows = slice(row_bounds[sl.start], row_bounds[sl.stop])
        cu, cv, cd, ch = u[rows], v[rows], d[rows], heads[rows]
        # candidates: the heads of every code within reach, then the best limit + 1 per code
        item = order[_concat_ranges(bounds[cv], ch)]
        cu, cd = np.repeat(cu, ch), np.repeat(cd, ch)
        keep, _ = _capped(cu, item, limit + 1, prio)
        cu, item, cd = cu[keep], item[keep], cd[keep]
        # each member of a code gets its code's candidate list, minus itself, capped to `limit`
        codes_here = np.arange(sl.start, sl.stop)
        members = order[bounds[sl.start] : bounds[sl.stop]]  # the codes' items are contiguous in `order`
        member_code = np.repeat(codes_here, size[codes_here])
        cand_bounds = np.searchsorted(cu, np.arange(sl.start, sl.stop + 1))
        cand_count = np.diff(cand_bounds)[member_code - sl.start]
        x = np.repeat(members, cand_count)
        pick = _concat_ranges(cand_bounds[member_code - sl.start], cand_count)
        y, dist = item[pick], cd[pick]
        other = x != y
        x, y, dist = x[other], y[other], dist[other]
        keep, _ = _capped(x, y, limit, prio)
        x, y, dist = x[keep], y[keep], dist[keep]
        parts.append(Pairs(np.minimum(x, y), np.maximum(x, y), dist))
    lost = np.union1d(np.flatnonzero(reach > limit), between.capped_queries)  # codes whose items lost matches
    pairs = Pairs.concat(parts, np.int16).unique()
    pairs.capped_queries = np.flatnonzero(np.isin(inverse, lost)).astype(np.int64)
    return pairs


def _hamming_flat(
    q: np.ndarray,
    db: np.ndarray,
    max_distance: int,
    self_join: bool,
    config: SearchConfig,
    priority: np.ndarray | None,
) -> Pairs:
    index = faiss.IndexBinaryFlat(64)
    index.add(_faiss_codes(db))
    parts = []
    for start in range(0, len(q), config.block):
        lims, dist, ids = index.range_search(_faiss_codes(q[start : start + config.block]), max_distance + 1)
        qi = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims.astype(np.int64)))
        parts.append(_select(qi, ids.astype(np.int64), dist.astype(np.int16), self_join, config, priority))
    return Pairs.concat(parts, np.int16)


def mih_plan(max_distance: int, n_database: int, max_bits: int = 24) -> tuple[list[tuple[int, int]], int]:
    """Choose the substrings ``[(shift, bits), ...]`` and the per-substring radius of the multi-index search.

    Minimises the estimated work per query, ``m * ball(bits, r) * (1 + 2 * n / 2**bits)`` (probes plus
    candidates), over ``m`` substrings with ``r = max_distance // m``.
    """
    best: tuple[float, int] | None = None
    for m in range(1, 9):
        bits = math.ceil(64 / m)
        if bits > max_bits:
            continue
        r = max_distance // m
        ball = sum(math.comb(bits, k) for k in range(r + 1))
        cost = m * ball * (1 + 2 * n_database / 2**bits)
        if best is None or cost < best[0]:
            best = (cost, m)
    assert best is not None
    m = best[1]
    sizes = [64 // m + (1 if k < 64 % m else 0) for k in range(m)]
    shifts = np.cumsum([0, *sizes[:-1]]).tolist()
    return list(zip(shifts, sizes, strict=True)), max_distance // m


def _ball(bits: int, radius: int) -> np.ndarray:
    masks = [0]
    for r in range(1, radius + 1):
        masks.extend(sum(1 << b for b in combo) for combo in itertools.combinations(range(bits), r))
    return np.array(masks, dtype=np.int64)


def _hamming_mih(
    q: np.ndarray,
    db: np.ndarray,
    max_distance: int,
    self_join: bool,
    config: SearchConfig,
    priority: np.ndarray | None,
) -> Pairs:
    """Multi-index hashing with cache-friendly access: queries and database are both sorted by the substring, so
    the probes of one flip mask over a block of sorted queries walk the bucket table almost sequentially, and the
    candidates of a probe are a contiguous run of the sorted database."""
    chunks, radius = mih_plan(max_distance, len(db))
    q = q.astype(np.uint64)
    db = db.astype(np.uint64)
    parts: list[Pairs] = []
    max_candidates = 4_000_000
    for shift, bits in chunks:
        mask = np.uint64((1 << bits) - 1)
        db_keys = ((db >> np.uint64(shift)) & mask).astype(np.int64)
        db_order = np.argsort(db_keys, kind="stable")
        db_sorted = db[db_order]
        offsets = np.zeros((1 << bits) + 1, np.int64)
        np.cumsum(np.bincount(db_keys, minlength=1 << bits), out=offsets[1:])
        del db_keys
        q_keys = ((q >> np.uint64(shift)) & mask).astype(np.int64)
        q_order = np.argsort(q_keys, kind="stable")
        q_keys_sorted = q_keys[q_order]
        q_sorted = q[q_order]
        del q_keys
        ball = _ball(bits, radius)
        for start in range(0, len(q), config.block):
            keys = q_keys_sorted[start : start + config.block]
            probes = (ball[:, None] ^ keys[None, :]).ravel()  # mask-major: near-sequential in the table
            begin = offsets[probes]
            count = offsets[probes + 1] - begin
            rows = np.tile(np.arange(start, start + len(keys)), len(ball))
            nz = count > 0
            begin, count, rows = begin[nz], count[nz], rows[nz]
            for sl in _slices_by_total(count, max_candidates):
                c = count[sl]
                qi = np.repeat(rows[sl], c)
                pos = _concat_ranges(begin[sl], c)
                dist = popcount(q_sorted[qi] ^ db_sorted[pos])
                ok = dist <= max_distance
                qo, do = q_order[qi[ok]], db_order[pos[ok]]
                parts.append(_select(qo, do, dist[ok], self_join, config, priority))
    return Pairs.concat(parts, np.int16).unique()


def _concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without the Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.repeat(np.asarray(starts, np.int64) - (np.cumsum(counts) - counts), counts) + np.arange(
        int(counts.sum())
    )


def _slices_by_total(count: np.ndarray, limit: int) -> Iterator[slice]:
    """Cut ``count`` into consecutive slices whose sums stay under ``limit`` (one element may exceed it)."""
    if len(count) == 0:
        return
    csum = np.cumsum(count)
    start = 0
    while start < len(count):
        base = csum[start - 1] if start else 0
        end = int(np.searchsorted(csum, base + limit, side="right"))
        end = max(end, start + 1)
        yield slice(start, end)
        start = end


# -- embeddings ---------------------------------------------------------------------------------------------


class RowView:
    """Rows ``rows`` of a (memory-mapped) ``matrix``, read on demand block by block instead of copied."""

    def __init__(self, matrix: np.ndarray, rows: np.ndarray) -> None:
        self.matrix = matrix
        self.rows = np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), int(self.matrix.shape[1]))

    @property
    def dtype(self) -> np.dtype:
        return self.matrix.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        return np.asarray(self.matrix[self.rows[index]])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self.matrix[self.rows])
        return out if dtype is None else out.astype(dtype)


#: A matrix of row vectors: an array, a memory map, or a :class:`RowView` of one.
Matrix = np.ndarray | RowView


def take_rows(matrix: Matrix, rows: np.ndarray) -> Matrix:
    """A :class:`RowView` of ``rows`` of ``matrix`` (composing views; nothing is copied)."""
    if isinstance(matrix, RowView):
        return RowView(matrix.matrix, matrix.rows[rows])
    return RowView(matrix, rows)


def _f32(block: Matrix) -> np.ndarray:
    return np.ascontiguousarray(block, dtype=np.float32)


def cosine_pairs(
    matrix: Matrix,
    min_similarity: float,
    queries: Matrix | None = None,
    config: SearchConfig = SearchConfig(),
    priority: np.ndarray | None = None,
) -> Pairs:
    """Return pairs with cosine similarity >= ``min_similarity`` between L2-normalised rows.

    Parameters
    ----------
    matrix
        ``(n, d)`` database (float16 or float32; a memory map is read block by block).
    min_similarity
        Threshold on the inner product.
    queries
        ``(m, d)`` queries; None searches ``matrix`` against itself, each unordered pair once (``i < j``).
    config
        Flat/IVF switch, partition size, memory budget and ``max_neighbours``.
    priority
        Per database row, smaller = kept first when ``config.max_neighbours`` caps a query's matches.

    Returns
    -------
    :class:`Pairs` with ``i`` indexing the queries, ``j`` the database and ``value`` the cosine (float32).
    """
    self_join = queries is None
    n = len(matrix)
    if n == 0 or (queries is not None and len(queries) == 0):
        return Pairs.empty()
    if n <= config.float_flat_max:
        pairs = _cosine_flat(matrix, min_similarity, queries, config, priority)
        return pairs.unique(keep="max") if self_join and config.max_neighbours > 0 else pairs
    return _cosine_ivf(matrix, min_similarity, queries, config, self_join, priority)


def _rows_per_block(dim: int, config: SearchConfig, share: float = 0.25) -> int:
    return max(256, int(config.memory_budget_gb * 1e9 * share / (4 * dim)))


def _range(index: faiss.Index, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lims, sims, ids = index.range_search(_f32(q), float(np.nextafter(np.float32(threshold), np.float32(-1))))
    return lims, sims, ids


def _cosine_flat(
    matrix: Matrix,
    min_similarity: float,
    queries: Matrix | None,
    config: SearchConfig,
    priority: np.ndarray | None,
) -> Pairs:
    index = faiss.IndexFlatIP(matrix.shape[1])
    index.add(_f32(matrix))
    q_all = matrix if queries is None else queries
    parts = []
    step = _rows_per_block(matrix.shape[1], config)
    for start in range(0, len(q_all), step):
        lims, sims, ids = _range(index, q_all[start : start + step], min_similarity)
        qi = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims.astype(np.int64)))
        parts.append(_select(qi, ids.astype(np.int64), sims, queries is None, config, priority))
    return Pairs.concat(parts)


def train_quantizer(matrix: Matrix, nlist: int, config: SearchConfig) -> np.ndarray:
    """Spherical k-means centroids (``(nlist, d)`` float32) trained by FAISS on a seeded sample of ``matrix``."""
    rng = np.random.default_rng(config.seed)
    n = len(matrix)
    size = min(n, nlist * config.kmeans_points_per_list)
    sample = np.sort(rng.choice(n, size, replace=False)) if size < n else np.arange(n)
    kmeans = faiss.Kmeans(
        matrix.shape[1],
        nlist,
        niter=config.kmeans_iterations,
        spherical=True,
        seed=config.seed,
        max_points_per_centroid=config.kmeans_points_per_list,
        min_points_per_centroid=1,  # small sets are fine; no FAISS warning
        verbose=False,
    )
    kmeans.train(_f32(matrix[sample]))
    return np.asarray(kmeans.centroids, dtype=np.float32)


def assign_lists(matrix: Matrix, centroids: np.ndarray, k: int, config: SearchConfig) -> np.ndarray:
    """Return the ``(n, k)`` nearest centroids of each row (blockwise)."""
    return _nearest_lists(matrix, centroids, k, config)[1]


def _nearest_lists(
    matrix: Matrix, centroids: np.ndarray, k: int, config: SearchConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, k)`` cosines to and indices of the nearest centroids of each row (blockwise)."""
    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(centroids)
    sims = np.empty((len(matrix), k), dtype=np.float32)
    out = np.empty((len(matrix), k), dtype=np.int64)
    step = _rows_per_block(matrix.shape[1], config, 0.1)
    for start in range(0, len(matrix), step):
        sims[start : start + step], out[start : start + step] = quantizer.search(
            _f32(matrix[start : start + step]), k
        )
    return sims, out


def probe_lists(
    queries: Matrix, centroids: np.ndarray, min_similarity: float, config: SearchConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, lists)``: the lists each query probes in a range search at ``min_similarity`` (see
    ``SearchConfig.nprobe_max``), as two flat arrays."""
    nlist = len(centroids)
    nprobe = min(config.nprobe, nlist)
    most = min(max(config.nprobe_max, nprobe), nlist)
    sims, lists = _nearest_lists(queries, centroids, most, config)
    keep = np.zeros(sims.shape, bool)
    keep[:, :nprobe] = True
    if most > nprobe:
        reach = config.probe_slack * 2.0 * math.acos(min(1.0, max(-1.0, min_similarity)))
        angles = np.arccos(np.clip(sims, -1.0, 1.0))
        keep |= angles <= angles[:, :1] + reach
    rows = np.repeat(np.arange(len(queries)), keep.sum(axis=1))
    return rows, lists[keep]


def _cosine_ivf(
    matrix: Matrix,
    min_similarity: float,
    queries: Matrix | None,
    config: SearchConfig,
    self_join: bool,
    priority: np.ndarray | None,
) -> Pairs:
    n, dim = matrix.shape
    nlist = config.nlist or int(np.clip(2 * math.sqrt(n), 16, 8192))
    centroids = train_quantizer(matrix, nlist, config)
    db_list = assign_lists(matrix, centroids, 1, config)[:, 0]
    q_all = matrix if queries is None else queries
    q_rows, q_flat = probe_lists(q_all, centroids, min_similarity, config)
    db_order = np.argsort(db_list, kind="stable")
    db_bounds = np.searchsorted(db_list[db_order], np.arange(nlist + 1))
    q_order = np.argsort(q_flat, kind="stable")
    q_bounds = np.searchsorted(q_flat[q_order], np.arange(nlist + 1))
    step = _rows_per_block(dim, config)
    parts = []
    for cell in range(nlist):
        members = db_order[db_bounds[cell] : db_bounds[cell + 1]]
        askers = q_rows[q_order[q_bounds[cell] : q_bounds[cell + 1]]]
        if len(members) == 0 or len(askers) == 0:
            continue
        index = faiss.IndexFlatIP(dim)
        index.add(_f32(matrix[members]))  # members are sorted: sequential reads of a memory map
        for start in range(0, len(askers), step):
            rows = askers[start : start + step]
            lims, sims, ids = _range(index, q_all[np.sort(rows)], min_similarity)
            qi = np.repeat(np.sort(rows), np.diff(lims.astype(np.int64)))
            dj = members[ids]
            keep = dj != qi if self_join else np.ones(len(dj), bool)
            capped, lost = _capped(qi[keep], dj[keep], config.max_neighbours, priority)
            parts.append(Pairs(qi[keep][capped], dj[keep][capped], sims[keep][capped], lost))
    pairs = Pairs.concat(parts)
    if self_join and len(pairs):
        lo, hi = np.minimum(pairs.i, pairs.j), np.maximum(pairs.i, pairs.j)
        pairs = Pairs(lo, hi, pairs.value, pairs.capped_queries)
    return pairs.unique(keep="max")


def cosine_topk(
    matrix: Matrix,
    k: int,
    min_similarity: float,
    queries: Matrix | None = None,
    config: SearchConfig = SearchConfig(),
) -> Pairs:
    """Each query's ``k`` most similar rows of ``matrix`` with cosine >= ``min_similarity`` (candidates for
    verification: bounded to ``k`` per query whatever the threshold).

    Exact (FAISS ``IndexFlatIP``) up to ``config.float_flat_max`` rows; above, a FAISS IVF index whose coarse
    quantizer is the same spherical k-means as :func:`cosine_pairs` (``nprobe`` lists per query). A self-search
    returns each unordered pair once (``i < j``, the larger cosine kept).
    """
    self_join = queries is None
    n = len(matrix)
    q_all = matrix if queries is None else queries
    if n == 0 or len(q_all) == 0 or k <= 0:
        return Pairs.empty()
    dim = matrix.shape[1]
    kk = min(n, k + 1 if self_join else k)
    if n <= config.float_flat_max:
        index: Any = faiss.IndexFlatIP(dim)
        index.add(_f32(matrix))
    else:
        nlist = config.nlist or int(np.clip(2 * math.sqrt(n), 16, 8192))
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(train_quantizer(matrix, nlist, config))
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.is_trained = True
        step = _rows_per_block(dim, config)
        for start in range(0, n, step):
            index.add(_f32(matrix[start : start + step]))
        index.nprobe = min(config.nprobe, nlist)
    parts = []
    step = _rows_per_block(dim, config)
    for start in range(0, len(q_all), step):
        sims, ids = index.search(_f32(q_all[start : start + step]), kk)
        qi = np.repeat(np.arange(start, start + len(ids)), kk)
        dj, sv = ids.ravel().astype(np.int64), sims.ravel()
        keep = (dj >= 0) & (sv >= min_similarity)
        if self_join:
            keep &= dj != qi
        parts.append(Pairs(qi[keep], dj[keep], sv[keep]))
    pairs = Pairs.concat(parts)
    if self_join and len(pairs):
        pairs = Pairs(np.minimum(pairs.i, pairs.j), np.maximum(pairs.i, pairs.j), pairs.value)
        pairs = pairs.unique(keep="max")
    return pairs


# -- clustering ---------------------------------------------------------------------------------------------


def components(n: int, pairs: Sequence[np.ndarray], keys: Sequence[Sequence[Any]] = ()) -> np.ndarray:
    """Connected components of ``n`` items linked by index ``pairs`` and by shared non-null ``keys``.

    Parameters
    ----------
    n
        Number of items.
    pairs
        Arrays ``int[m, 2]`` of linked item indices.
    keys
        Sequences of length ``n``; two items with the same non-null key in one sequence are linked (each
        distinct key becomes a node of the graph, so a key shared by k items costs k edges, not k^2).

    Returns
    -------
    ``int64[n]`` component label of each item (labels are arbitrary but equal within a component).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows: list[np.ndarray] = [p[:, 0] for p in pairs if len(p)]
    cols: list[np.ndarray] = [p[:, 1] for p in pairs if len(p)]
    next_node = n
    for key_values in keys:
        codes, uniques = pd.factorize(pd.Series(list(key_values), dtype=object), use_na_sentinel=True)
        members = np.flatnonzero(codes >= 0)
        rows.append(members.astype(np.int64))
        cols.append(codes[members].astype(np.int64) + next_node)
        next_node += len(uniques)
    if not rows:
        return np.arange(n, dtype=np.int64)
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(next_node, next_node))
    _count, labels = connected_components(graph, directed=False)
    return np.asarray(labels[:n], dtype=np.int64)


@dataclass
class Edges:
    """Undirected matches between nodes: ``tier`` codes index ``names``; ``score`` is a similarity in [0, 1]."""

    i: np.ndarray
    j: np.ndarray
    tier: np.ndarray
    score: np.ndarray
    inliers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    def __post_init__(self) -> None:
        if len(self.inliers) != len(self.i):
            self.inliers = np.full(len(self.i), -1, np.int32)

    def __len__(self) -> int:
        return len(self.i)

    @classmethod
    def build(cls, parts: Sequence[tuple[Any, ...]]) -> Edges:
        """Merge ``(tier_code, i, j, score[, inliers])`` parts; a pair found by several tiers keeps the strongest
        tier. ``inliers`` (geometric verification's evidence) is -1 where a part has none."""
        if not parts:
            z = np.zeros(0, np.int64)
            return cls(z, z, z.astype(np.int8), z.astype(np.float32))
        i = np.concatenate([p[1] for p in parts]).astype(np.int64)
        j = np.concatenate([p[2] for p in parts]).astype(np.int64)
        tier = np.concatenate([np.full(len(p[1]), p[0], np.int8) for p in parts])
        score = np.concatenate([p[3] for p in parts]).astype(np.float32)
        inl = np.concatenate([p[4] if len(p) > 4 else np.full(len(p[1]), -1) for p in parts]).astype(np.int32)
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        keep = lo != hi
        lo, hi, tier, score, inl = lo[keep], hi[keep], tier[keep], score[keep], inl[keep]
        order = np.lexsort((-score, tier, hi, lo))
        lo, hi, tier, score, inl = lo[order], hi[order], tier[order], score[order], inl[order]
        first = np.ones(len(lo), bool)
        first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
        return cls(lo[first], hi[first], tier[first], score[first], inl[first])


@dataclass
class Clusters:
    """Result of :func:`guarded_clusters` for ``n`` nodes.

    ``canonical[k]`` is the node that node ``k`` duplicates (``k`` itself for canonical and unmatched nodes);
    ``tier[k]``, ``score[k]`` and ``inliers[k]`` describe the match that made ``k`` a member (-1 and NaN for
    canonicals): with the canonical directly when ``via[k] == -1``, else with the member ``via[k]``, ``k`` having
    ``links[k]`` matches with members of its cluster; ``component[k]`` labels the connected component.
    """

    canonical: np.ndarray
    tier: np.ndarray
    score: np.ndarray
    component: np.ndarray
    via: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    inliers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    links: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    def __post_init__(self) -> None:
        n = len(self.canonical)
        if len(self.via) != n:
            self.via = np.full(n, -1, np.int64)
        if len(self.inliers) != n:
            self.inliers = np.full(n, -1, np.int32)
        if len(self.links) != n:
            self.links = np.zeros(n, np.int32)

    @property
    def is_member(self) -> np.ndarray:
        return self.canonical != np.arange(len(self.canonical))

    def sizes(self) -> np.ndarray:
        """Size of the cluster of each canonical that has members (canonical included)."""
        counts = np.bincount(self.canonical, minlength=len(self.canonical))
        return counts[counts > 1]


def guarded_clusters(n: int, edges: Edges, order: np.ndarray) -> Clusters:
    """Turn matches into clusters in which every member matches its canonical item directly.

    1. :func:`components` gives the connected components (what plain transitive closure would merge).
    2. The guard: nodes are visited in ``order`` (best canonical candidate first, e.g. largest image); a node
       becomes a canonical unless one of its direct matches already is one, in which case it is a member.
    3. Each member joins the canonical it matches best (strongest tier, then highest score, then the canonical
       that comes first in ``order``).

    A chain ``a - b - c`` in which ``a`` and ``c`` do not match therefore never puts ``a`` and ``c`` under one
    canonical through ``b``: the cluster's diameter is two direct matches (member - canonical - member).
    Runs in ``O(n + edges)``.
    """
    component = components(n, [np.stack([edges.i, edges.j], axis=1)])
    canonical = np.arange(n, dtype=np.int64)
    tier = np.full(n, -1, dtype=np.int8)
    score = np.full(n, np.nan, dtype=np.float32)
    if not len(edges):
        return Clusters(canonical, tier, score, component)
    src = np.concatenate([edges.i, edges.j])
    dst = np.concatenate([edges.j, edges.i])
    tiers = np.concatenate([edges.tier, edges.tier])
    scores = np.concatenate([edges.score, edges.score])
    by_src = np.argsort(src, kind="stable")
    bounds = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=bounds[1:])
    neighbours = dst[by_src]
    is_canonical = np.zeros(n, dtype=bool)
    degree = np.diff(bounds)
    for node in order[degree[order] > 0].tolist():
        if not is_canonical[neighbours[bounds[node] : bounds[node + 1]]].any():
            is_canonical[node] = True
    candidate = is_canonical[dst] & ~is_canonical[src]
    s, d, t, sc = src[candidate], dst[candidate], tiers[candidate], scores[candidate]
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    best = np.lexsort((rank[d], -sc, t, s))
    s, d, t, sc = s[best], d[best], t[best], sc[best]
    first = np.ones(len(s), bool)
    first[1:] = s[1:] != s[:-1]
    canonical[s[first]] = d[first]
    tier[s[first]] = t[first]
    score[s[first]] = sc[first]
    return Clusters(canonical, tier, score, component)


#: ``confirm(members, canonicals)`` -> ``(ok, rejected, tier, score, inliers)`` per pair: a direct check
#: (geometric verification) of a member against its canonical when no tier matched them directly; ``rejected``
#: means the check could decide and said no (not merely "too few keypoints to tell").
Confirm = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, ...]]


def verified_clusters(
    n: int,
    edges: Edges,
    order: np.ndarray,
    confirm: Confirm | None = None,
    min_links: int = 1,
    max_rounds: int = 4,
) -> Clusters:
    """Turn confirmed matches into clusters that stay whole without chaining unrelated images together.

    Each round, on the nodes not yet placed:

    1. the connected components of their matches; the best-ranked node of each (first in ``order``) is its
       canonical;
    2. a node joins its canonical's cluster when it matches the canonical directly, or when ``confirm``
       (geometric verification) confirms it against the canonical;
    3. then a node joins when it matches at least ``min_links`` nodes of the *core* (the canonical and the
       members of step 2): a heavily edited canonical (a screenshot, a padded copy) may fail to verify against
       a crop that matches the original and other direct members. Members that joined this way do not admit
       others, so a cluster's diameter stays at three matches, each with an image matched to the canonical;
    4. nodes left over go to the next round, where they form clusters of their own.

    So one false match between two groups cannot merge them (the other group's nodes neither match the canonical
    nor ``min_links`` members), while a group whose members do not all match the canonical directly stays
    one cluster. After ``max_rounds`` the remaining nodes stay unclustered. Members carry their evidence
    (``tier``, ``score``, ``inliers``, ``via``, ``links``).
    """
    component = components(n, [np.stack([edges.i, edges.j], axis=1)])
    out = Clusters(np.arange(n, dtype=np.int64), np.full(n, -1, np.int8), np.full(n, np.nan, np.float32),
                   component)  # fmt: skip
    if not len(edges):
        return out
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    src = np.concatenate([edges.i, edges.j])
    dst = np.concatenate([edges.j, edges.i])
    tiers = np.concatenate([edges.tier, edges.tier])
    scores = np.concatenate([edges.score, edges.score])
    inl = np.concatenate([edges.inliers, edges.inliers])
    open_ = np.zeros(n, bool)
    open_[src] = True
    for round_ in range(max_rounds):
        live = open_[src] & open_[dst]
        nodes = np.flatnonzero(open_)
        if not live.any():
            break
        sub = components(n, [np.stack([src[live], dst[live]], axis=1)])
        # canonical of each sub-component: its best-ranked open node
        best = np.full(n, -1, np.int64)
        by_rank = nodes[np.argsort(rank[nodes], kind="stable")]
        labels = sub[by_rank]
        _, first = np.unique(labels, return_index=True)
        best[labels[first]] = by_rank[first]
        head = np.full(n, -1, np.int64)
        head[nodes] = best[sub[nodes]]
        joined = np.zeros(n, bool)
        # 2a. direct matches with the canonical (best tier, then score)
        direct = live & (dst == head[src]) & (src != dst)
        _attach(out, joined, src[direct], dst[direct], tiers[direct], scores[direct], inl[direct], None)
        # 2b. verification against the canonical
        pending = nodes[(head[nodes] != nodes) & ~joined[nodes]]
        if confirm is not None and len(pending) and round_ < max_rounds - 1:
            ok, _rejected, t, sc, il = confirm(pending, head[pending])
            ok = np.asarray(ok, bool)
            _attach(out, joined, pending[ok], head[pending][ok], np.asarray(t)[ok], np.asarray(sc)[ok],
                    np.asarray(il)[ok], None)  # fmt: skip
        # 3. enough links into the core (the canonical and the members matched or verified with it)
        is_head = np.zeros(n, bool)
        is_head[nodes] = head[nodes] == nodes
        core = joined | is_head
        cand = live & ~core[src] & core[dst] & (head[src] == head[dst])
        count = np.bincount(src[cand], minlength=n)
        enough = cand & (count[src] >= min_links)
        if enough.any():
            _attach(out, joined, src[enough], head[src[enough]], tiers[enough], scores[enough], inl[enough],
                    dst[enough], count)  # fmt: skip
        heads = np.flatnonzero(is_head & np.isin(np.arange(n), out.canonical[joined]))
        open_[np.flatnonzero(joined)] = False
        open_[heads] = False
        # a canonical nobody joined stays open: it may belong to another cluster next round
    return out


def _attach(
    out: Clusters,
    joined: np.ndarray,
    member: np.ndarray,
    canonical: np.ndarray,
    tier: np.ndarray,
    score: np.ndarray,
    inliers: np.ndarray,
    via: np.ndarray | None,
    links: np.ndarray | None = None,
) -> None:
    """Make each ``member`` (first occurrence after sorting by tier, then score) a member of ``canonical``."""
    if not len(member):
        return
    order = np.lexsort((-score, tier, member))
    member, canonical, tier, score, inliers = (
        member[order],
        canonical[order],
        tier[order],
        score[order],
        inliers[order],
    )
    first = np.ones(len(member), bool)
    first[1:] = member[1:] != member[:-1]
    m = member[first]
    out.canonical[m] = canonical[first]
    out.tier[m] = tier[first]
    out.score[m] = score[first]
    out.inliers[m] = inliers[first]
    if via is not None:
        out.via[m] = via[order][first]
        if links is not None:
            out.links[m] = links[m]
    else:
        out.links[m] = 1
    joined[m] = True


# -- SemDeDup ------------------------------------------------------------------------------------------------


@dataclass
class Thinning:
    """Result of :func:`semdedup_thin`: ``removed`` rows, each with the kept row it is closest to."""

    eps: float
    removed: np.ndarray
    kept_ref: np.ndarray
    score: np.ndarray

    @property
    def rate(self) -> float:
        return float(self.removed.mean()) if len(self.removed) else 0.0


def semdedup_thin(
    matrix: Matrix,
    order: np.ndarray,
    eps_values: list[float],
    clusters: int = 0,
    config: SearchConfig = SearchConfig(),
    block: int = 512,
) -> list[Thinning]:
    """SemDeDup-style thinning: spherical k-means, then within each cluster remove rows at cosine > 1 - eps.

    Within a cluster rows are visited in ``order`` (best first); a row is removed when its cosine with an
    already *kept* row exceeds ``1 - eps`` (a guarded variant of SemDeDup, which compares with any earlier row:
    every removed row has a kept row it directly resembles). Memory per cluster is ``block x cluster size``.

    Returns one :class:`Thinning` per ``eps`` (rates rise with eps).
    """
    n = len(matrix)
    k = clusters or int(np.clip(math.sqrt(n), 1, 10000))
    k = min(k, n)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    if k > 1:
        centroids = train_quantizer(matrix, k, config)
        labels = assign_lists(matrix, centroids, 1, config)[:, 0]
    else:
        labels = np.zeros(n, np.int64)
    results = [
        Thinning(eps, np.zeros(n, bool), np.full(n, -1, np.int64), np.full(n, np.nan, np.float32))
        for eps in eps_values
    ]
    by_cluster = np.lexsort((rank, labels))
    bounds = np.searchsorted(labels[by_cluster], np.arange(k + 1))
    for c in range(k):
        rows = by_cluster[bounds[c] : bounds[c + 1]]
        if len(rows) < 2:
            continue
        x = _f32(matrix[rows])
        for res in results:
            _thin_cluster(x, rows, 1.0 - res.eps, res, block)
    return results


def _thin_cluster(x: np.ndarray, rows: np.ndarray, threshold: float, res: Thinning, block: int) -> None:
    kept: list[int] = []
    for b0 in range(0, len(rows), block):
        blk = x[b0 : b0 + block]
        if kept:
            sk = blk @ x[kept].T
            best_k = sk.argmax(1)
            best_s = sk[np.arange(len(blk)), best_k]
        else:
            best_k = np.zeros(len(blk), np.int64)
            best_s = np.full(len(blk), -np.inf, np.float32)
        sb = blk @ blk.T
        kept_block: list[int] = []
        for t in range(len(blk)):
            s_best = float(best_s[t])
            ref = kept[int(best_k[t])] if kept else -1
            if kept_block:
                cand = sb[t, kept_block]
                a = int(cand.argmax())
                if cand[a] > s_best:
                    s_best, ref = float(cand[a]), b0 + kept_block[a]
            if s_best > threshold:
                res.removed[rows[b0 + t]] = True
                res.kept_ref[rows[b0 + t]] = rows[ref]
                res.score[rows[b0 + t]] = s_best
            else:
                kept_block.append(t)
        kept.extend(b0 + t for t in kept_block)
