"""Shared pieces of the end of the pipeline (audit, split, release, take-down).

* :func:`frame`: catalog columns as a DataFrame, tolerating columns a stage that has not run yet would add;
* :func:`cluster_ids`: the dedup cluster of every item (canonical item + its duplicates), from ``dup_of`` chains;
* :func:`resolve_labels`: the label a release would ship for each item, and why an item has none;
* :func:`best_label`: the best label known for an item at any stage (for stratification and audits);
* :func:`hamming_pairs` / :func:`cosine_pairs`: near-duplicate pairs through FAISS range search (binary index for
  64-bit perceptual hashes, inner-product index for L2-normalised embeddings), never an N x N matrix;
* :func:`workspace_embeddings`: the embeddings a workspace holds for a model key, if any.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from emo8.core.taxonomy import EMOTIONS, normalise_label
from emo8.core.workspace import Workspace

#: Statuses whose items can be released (every other status is excluded: duplicate, contaminated, removed...).
RELEASABLE_STATUSES = ("valid",)

#: The column ``emo8 labels import`` writes (curator-provided labels, see :mod:`emo8.label.suggest`).
IMPORTED_LABEL = "imported_label"

#: Perceptual-hash radius (Hamming distance, 64-bit pHash) used when neither dedup's settings nor its defaults
#: are available (dedup's benchmarked default is the same).
DEFAULT_PHASH_MAX_DISTANCE = 10
#: Embedding cosine similarity used likewise (clip-retrieval's dedup threshold).
DEFAULT_EMBED_MIN_SIMILARITY = 0.94

#: Above this many items, the exact (flat) cosine search gives way to an IVF partition (the hash search stays exact).
EXACT_COSINE_LIMIT = 50_000

#: Dedup's confirmed duplicate pairs (``a, b`` item ids, ``tier``, ``score``, ``inliers``), relative to the workspace.
PAIRS_FILE = "dedup/pairs.parquet"
#: The items the dedup run that wrote :data:`PAIRS_FILE` considered (``item_id``).
PAIRS_ITEMS_FILE = "dedup/items.parquet"


def frame(ws: Workspace, columns: Sequence[str], where: str | None = None) -> pd.DataFrame:
    """Return ``columns`` of the items table (filtered by SQL ``where``); columns the catalog lacks are all-null.

    Later stages add their columns when they first run; reading through this function lets audit, split and
    release work on a catalog where, say, dedup or annotation has not run yet.
    """
    existing = set(ws.catalog.columns())
    present = [c for c in dict.fromkeys(columns) if c in existing]
    if "item_id" not in present:
        present.insert(0, "item_id")
    df = ws.catalog.items(present, where)
    for column in columns:
        if column not in df.columns:
            df[column] = None
    return df[list(dict.fromkeys(["item_id", *columns]))]


def has_column(ws: Workspace, column: str, table: str = "items") -> bool:
    """Whether the catalog's ``table`` has ``column``."""
    return column in ws.catalog.columns(table)


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return not (isinstance(value, str) and not value.strip())


def present(value: Any) -> bool:
    """Whether a catalog cell holds a value (not None, NaN or an empty string)."""
    return _present(value)


def cluster_ids(items: pd.DataFrame) -> pd.Series:
    """Return the dedup cluster of each row: the ``item_id`` at the end of its ``dup_of`` chain (itself if none).

    A cluster is a canonical item and every item marked a duplicate of it (directly or through a chain). Cycles,
    which dedup never writes, are cut at the first repeated item. Uses a ``cluster_id`` column as-is where dedup
    stored one.
    """
    if "cluster_id" in items.columns and items["cluster_id"].map(_present).any():
        own = items["item_id"]
        return items["cluster_id"].where(items["cluster_id"].map(_present), own).astype(str)
    parent: dict[str, str] = {}
    if "dup_of" in items.columns:
        for item_id, dup_of in zip(items["item_id"], items["dup_of"], strict=True):
            if _present(dup_of) and dup_of != item_id:
                parent[str(item_id)] = str(dup_of)
    resolved: dict[str, str] = {}

    def root(item_id: str) -> str:
        seen: list[str] = []
        node = item_id
        while node in parent and node not in resolved and node not in seen:
            seen.append(node)
            node = parent[node]
        top = resolved.get(node, node)
        for visited in seen:
            resolved[visited] = top
        return top

    return pd.Series([root(str(i)) for i in items["item_id"]], index=items.index, dtype=object)


def best_label(items: pd.DataFrame) -> pd.Series:
    """The best label known for each row, for stratification and audits: annotated ``label``, else an imported
    label, else ``weak_label``, else ``suggested_label``, else None."""
    out = pd.Series([None] * len(items), index=items.index, dtype=object)
    for column in ("suggested_label", "weak_label", IMPORTED_LABEL, "label"):
        if column in items.columns:
            values = items[column].map(lambda v: normalise_label(v) if _present(v) else None)
            out = values.where(values.notna(), out)
    return out


@dataclass(frozen=True)
class LabelPolicy:
    """Which labels a release ships.

    Parameters
    ----------
    min_agreement
        Besides being ``settled``, an annotated item needs at least this agreement (None: the aggregation's own
        settling rule is enough).
    allow_weak_labels
        Ship items that have no annotation but a ``weak_label`` from their source (bootstrapping only; off by
        default: a release needs settled human labels). Such rows carry ``label_source = "weak"``.
    allow_imported_labels
        Ship labels a curator imported with ``emo8 labels import`` for items that have no annotation (on by
        default: an import is a deliberate human decision). Such rows carry ``label_source = "imported"``.
    """

    min_agreement: float | None = None
    allow_weak_labels: bool = False
    allow_imported_labels: bool = True


def resolve_labels(items: pd.DataFrame, policy: LabelPolicy) -> pd.DataFrame:
    """Return, per row, ``release_label`` (an emotion or None), ``label_source`` (``annotation``, ``imported``,
    ``weak`` or None) and ``held_back`` (why a row with some label is not released: ``unsettled:<reason>``,
    ``low_agreement``, ``imported_label``, ``weak_label``, ``unknown_label``; None otherwise).

    An annotated ``label`` counts when ``settled`` is 1 (or when no ``settled`` column exists, e.g. labels imported
    from a file), and its ``agreement`` reaches ``policy.min_agreement`` if given.
    """
    n = len(items)
    release: list[str | None] = [None] * n
    source: list[str | None] = [None] * n
    held: list[str | None] = [None] * n
    labels = items["label"] if "label" in items.columns else pd.Series([None] * n, index=items.index)
    settled = items["settled"] if "settled" in items.columns else pd.Series([None] * n, index=items.index)
    has_settled = "settled" in items.columns and settled.map(_present).any()
    agreement = (
        items["agreement"] if "agreement" in items.columns else pd.Series([None] * n, index=items.index)
    )
    reasons = (
        items["unsettled_reason"]
        if "unsettled_reason" in items.columns
        else pd.Series([None] * n, index=items.index)
    )
    weak = items["weak_label"] if "weak_label" in items.columns else pd.Series([None] * n, index=items.index)
    imported = (
        items[IMPORTED_LABEL] if IMPORTED_LABEL in items.columns else pd.Series([None] * n, index=items.index)
    )
    for i, (lab, sett, agr, why, il, wl) in enumerate(
        zip(labels, settled, agreement, reasons, imported, weak, strict=True)
    ):
        if _present(lab):
            name = normalise_label(str(lab))
            if name is None:
                held[i] = "unknown_label"
                continue
            if has_settled and not (_present(sett) and int(sett) == 1):
                held[i] = f"unsettled:{why}" if _present(why) else "unsettled"
                continue
            if policy.min_agreement is not None and not (
                _present(agr) and float(agr) >= policy.min_agreement
            ):
                held[i] = "low_agreement"
                continue
            release[i], source[i] = name, "annotation"
        elif _present(il):
            name = normalise_label(str(il))
            if name is None:
                held[i] = "unknown_label"
            elif policy.allow_imported_labels:
                release[i], source[i] = name, "imported"
            else:
                held[i] = "imported_label"
        elif _present(wl):
            name = normalise_label(str(wl))
            if name is None:
                held[i] = "unknown_label"
            elif policy.allow_weak_labels:
                release[i], source[i] = name, "weak"
            else:
                held[i] = "weak_label"
    return pd.DataFrame(
        {"release_label": release, "label_source": source, "held_back": held}, index=items.index
    )


def json_list(value: Any) -> list[Any] | None:
    """Decode a JSON list stored in a catalog cell (None for empty/invalid cells)."""
    if isinstance(value, list):
        return value
    if not _present(value):
        return None
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        return None
    return decoded if isinstance(decoded, list) else None


def label_distribution(value: Any) -> list[float] | None:
    """Decode an 8-float soft label (``label_distribution``/``suggestion_probs``); None unless it has 8 numbers."""
    decoded = json_list(value)
    if decoded is None or len(decoded) != len(EMOTIONS):
        return None
    try:
        return [float(x) for x in decoded]
    except (TypeError, ValueError):
        return None


# -- near-duplicate search ------------------------------------------------------------------------------------


def hash_codes(hex_hashes: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Pack 64-bit hex hashes into ``(codes uint8[n, 8], valid bool[n])``; rows with no/invalid hash are zeros."""
    values = list(hex_hashes)
    codes = np.zeros((len(values), 8), dtype=np.uint8)
    valid = np.zeros(len(values), dtype=bool)
    for i, value in enumerate(values):
        if isinstance(value, str) and len(value) == 16:
            try:
                codes[i] = np.frombuffer(bytes.fromhex(value), dtype=np.uint8)
            except ValueError:
                continue
            valid[i] = True
    return codes, valid


def _as_u64(codes: np.ndarray) -> np.ndarray:
    """``uint8[n, 8]`` packed hashes as the ``uint64[n]`` codes of :mod:`emo8.core.similarity` (the same bits, so the
    same Hamming distances)."""
    return np.ascontiguousarray(codes, dtype=np.uint8).view(np.uint64).reshape(-1)


def _as_rows(pairs: Any) -> np.ndarray:
    return np.stack([pairs.i, pairs.j], axis=1).astype(np.int64) if len(pairs) else np.zeros((0, 2), np.int64)


def _cosine_config(n: int) -> Any:
    """Exact (flat) search up to :data:`EXACT_COSINE_LIMIT` rows; above, an IVF partition of ``4 sqrt(n)`` lists
    of which each query probes 32."""
    from emo8.core.similarity import SearchConfig

    return SearchConfig(
        float_flat_max=EXACT_COSINE_LIMIT, nlist=int(4 * math.sqrt(n)), nprobe=32, kmeans_points_per_list=64
    )


def hamming_search(base: np.ndarray, queries: np.ndarray, max_distance: int) -> np.ndarray:
    """Return every ``(query row, base row)`` of 64-bit codes within Hamming distance ``max_distance``.

    Parameters
    ----------
    base, queries
        ``uint8[n, 8]`` packed hashes (see :func:`hash_codes`).
    max_distance
        Largest Hamming distance that counts as a match (inclusive).

    Returns
    -------
    ``int64[m, 2]``, exact, found by :func:`emo8.core.similarity.hamming_pairs` (FAISS binary flat index for small sets,
    multi-index hashing for large ones).
    """
    from emo8.core.similarity import hamming_pairs as search

    return _as_rows(search(_as_u64(queries), max_distance, database=_as_u64(base)))


def hamming_pairs(codes: np.ndarray, max_distance: int) -> np.ndarray:
    """Return every pair ``(i, j)``, ``i < j``, of ``codes`` within Hamming distance ``max_distance``
    (see :func:`hamming_search`)."""
    from emo8.core.similarity import hamming_pairs as search

    return _as_rows(search(_as_u64(codes), max_distance))


def cosine_search(base: np.ndarray, queries: np.ndarray, min_similarity: float) -> np.ndarray:
    """Return every ``(query row, base row)`` of L2-normalised vectors with cosine >= ``min_similarity``.

    Found by :func:`emo8.core.similarity.cosine_pairs`: exact up to :data:`EXACT_COSINE_LIMIT` base rows; above, an IVF
    partition (``4 sqrt(n)`` lists, 32 probed), which is approximate.
    """
    from emo8.core.similarity import cosine_pairs as search

    return _as_rows(search(base, min_similarity, queries=queries, config=_cosine_config(len(base))))


def cosine_pairs(vectors: np.ndarray, min_similarity: float) -> np.ndarray:
    """Return every pair ``(i, j)``, ``i < j``, of L2-normalised rows with cosine >= ``min_similarity``
    (see :func:`cosine_search`)."""
    from emo8.core.similarity import cosine_pairs as search

    return _as_rows(search(vectors, min_similarity, config=_cosine_config(len(vectors))))


@dataclass(frozen=True)
class DedupPairs:
    """Dedup's confirmed duplicate pairs: ``pairs`` (``a``, ``b``, ``tier``, ``score``, ``inliers``) and the item ids
    that run considered (items outside it, e.g. ingested since, have not been checked)."""

    pairs: pd.DataFrame
    covered: frozenset[str]

    def rows(self, item_ids: Sequence[Any]) -> np.ndarray:
        """``int64[m, 2]`` row pairs of ``item_ids`` (positions) that dedup confirmed as duplicates."""
        position = {str(i): k for k, i in enumerate(item_ids)}
        a = self.pairs["a"].map(position)
        b = self.pairs["b"].map(position)
        both = a.notna() & b.notna()
        if not both.any():
            return np.zeros((0, 2), np.int64)
        return np.stack([a[both].to_numpy(np.int64), b[both].to_numpy(np.int64)], axis=1)

    def partners(self, item_ids: set[str]) -> set[str]:
        """Every item paired with one of ``item_ids``."""
        a, b = self.pairs["a"].astype(str), self.pairs["b"].astype(str)
        return set(b[a.isin(item_ids)]) | set(a[b.isin(item_ids)])


def dedup_pairs(ws: Workspace) -> DedupPairs | None:
    """The pairs the last ``emo8 dedup`` confirmed (exact, perceptual, geometrically verified, semantic), or None
    when dedup has not run (or ran before it recorded them). Split's leak check, release and take-down read these,
    so that one notion of "duplicate" holds everywhere."""
    path = ws.root / PAIRS_FILE
    if not path.is_file():
        return None
    pairs = pd.read_parquet(path)
    items_path = ws.root / PAIRS_ITEMS_FILE
    covered = (
        frozenset(pd.read_parquet(items_path)["item_id"].astype(str)) if items_path.is_file() else frozenset()
    )
    return DedupPairs(pairs, covered)


def dedup_thresholds(ws: Workspace, model: str | None = None) -> tuple[int, float]:
    """The pHash radius and embedding cosine threshold (for ``model``) that define a near-duplicate.

    The settings dedup recorded in the workspace config when it ran, else dedup's defaults (its benchmarked
    threshold for ``model`` where it has one), else :data:`DEFAULT_PHASH_MAX_DISTANCE` and
    :data:`DEFAULT_EMBED_MIN_SIMILARITY`.
    """
    radius, similarity = DEFAULT_PHASH_MAX_DISTANCE, DEFAULT_EMBED_MIN_SIMILARITY
    try:
        dedup = importlib.import_module("emo8.dedup.tiers")
    except ImportError:
        dedup = None
    if dedup is not None:
        radius = int(getattr(dedup, "PHASH_MAX_DISTANCE", radius))
        by_model = getattr(dedup, "EMBED_MIN_SIMILARITY", {})
        similarity = float(by_model.get(model, getattr(dedup, "EMBED_MIN_SIMILARITY_FALLBACK", similarity)))
    settings = ws.config.get("dedup") or {}
    if settings.get("phash_max_distance") is not None:
        radius = int(settings["phash_max_distance"])
    if settings.get("embed_min_similarity") is not None and settings.get("model") in (None, model):
        similarity = float(settings["embed_min_similarity"])
    return radius, similarity


def workspace_embeddings(ws: Workspace, model: str | None = None) -> tuple[str, list[str], np.ndarray] | None:
    """Return ``(model key, item ids, L2-normalised float32 matrix)`` of the workspace's embeddings, or None.

    ``model`` None picks the key dedup used, else the only key stored (several keys and no choice: None).
    Returns None when the embedding stage is not installed or no embeddings exist for the key; a corrupted store
    raises (it is never used, nor ignored, silently).
    """
    try:
        embed_stage = importlib.import_module("emo8.embed.run")
    except ImportError:
        return None
    keys = [str(k) for k in embed_stage.stored_models(ws)]
    key = model or (ws.config.get("dedup") or {}).get("model")
    if key is None:
        if len(keys) != 1:
            return None
        key = keys[0]
    if key not in keys:
        return None
    ids, matrix = embed_stage.load_embeddings(ws, key)
    if len(ids) == 0:
        return None
    x = np.asarray(matrix, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return str(key), [str(i) for i in ids], x
