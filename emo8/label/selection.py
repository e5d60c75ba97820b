"""Active selection: which items the next annotation round should spend its budget on.

``emo8 select --budget N [--strategy S] [--round NAME] [--seed S]`` ranks the *pool* of candidate items with one
of the strategies of the registry :data:`STRATEGIES` and stores the first ``N`` as the round's selection
(:meth:`emo8.core.catalog.Catalog.save_selection`), which the annotation stage pushes to Label Studio.

The pool (:func:`candidate_pool`) is every ``valid`` item, except

* items that are not valid: ``duplicate`` and ``contaminated`` (dedup), ``invalid``, ``failed``, ``skipped``,
  ``removed`` and still ``pending`` ones;
* items already settled by the annotation stage (``settled = 1``);
* items selected for a round that is still *open* for them (:func:`open_round_items`): the round has not been
  pulled by the annotation stage yet, or the item has not been aggregated (``settled`` null). Items that were
  aggregated without being settled (``settled = 0``: a tie, too few votes, low agreement) return to the pool, as
  the annotation stage intends, unless annotators flagged them or found them unclear (``unsettled_reason``
  ``flagged_*`` or ``unclear``: another round would not settle them either);
* for every strategy but ``random``, items without a suggestion (run ``emo8 suggest`` first).

Strategies (each deterministic for a given ``seed``; ties broken by item id):

``uncertainty``
    smallest margin between the two most probable suggested emotions first (``--measure entropy``: highest
    entropy first).
``balanced``
    round-robin over the suggested emotions in :data:`~emo8.core.taxonomy.EMOTIONS` order, each turn taking that
    emotion's most uncertain remaining item, so every suggested class gets an even share (classes that run out
    leave their turns to the others).
``diverse``
    k-center greedy (Sener and Savarese 2018) in embedding space among the ``pool_factor * N`` most uncertain
    items: each pick is the item farthest (cosine distance) from everything already labelled, already selected
    for an open round, or picked so far. Nearest-labelled distances come from FAISS searches in batches; no
    N x N matrix is built.
``random``
    a seeded uniform sample (the baseline every strategy should beat).

Re-running with the same ``--round`` tops the round up to ``N`` items and never duplicates one; without
``--round`` a new round ``round-<k>`` is created.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from emo8.core.taxonomy import EMOTIONS
from emo8.core.workspace import Workspace

#: Item statuses that can be selected.
SELECTABLE_STATUSES = ("valid",)
#: ``unsettled_reason`` values (prefixes) that keep an aggregated, unsettled item out of later rounds: annotators
#: flagged it (broken, inappropriate, text only) or found it unclear; another round would not settle it either.
FLAGGED_REASONS = ("flagged", "unclear")


class SelectError(RuntimeError):
    """A selection cannot be made (unknown strategy, no suggestions...); the message says what to do."""


@dataclass(frozen=True)
class SelectConfig:
    """Settings of ``emo8 select``.

    Parameters
    ----------
    budget
        Size the round should reach (items already in the round count).
    strategy
        A key of :data:`STRATEGIES`.
    round
        Round name; None creates the next ``round-<k>``.
    seed
        Seed of every random choice (random strategy, tie-free shuffles).
    measure
        Uncertainty measure: ``margin`` (top-1 minus top-2 probability, small = uncertain) or ``entropy``.
    model
        Embedding model key for ``diverse``.
    pool_factor
        ``diverse`` picks among the ``pool_factor * budget`` most uncertain items.
    batch_size
        Queries per FAISS search (bounds memory).
    """

    budget: int
    strategy: str = "uncertainty"
    round: str | None = None
    seed: int = 0
    measure: str = "margin"
    model: str = "efficientnet-lite0"
    pool_factor: int = 10
    batch_size: int = 4096


@dataclass
class Pool:
    """The candidates: ``items`` (``item_id``, ``suggested_label``, ``probs`` as an ``(n, 8)`` array or None) in
    item-id order, and why every other item was left out (``excluded``: reason -> count)."""

    items: pd.DataFrame
    probs: np.ndarray | None
    excluded: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class SelectSummary:
    """What one ``emo8 select`` run did."""

    round: str
    strategy: str
    budget: int
    already: int = 0
    selected: int = 0
    pool: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    per_class: dict[str, int] = field(default_factory=dict)
    item_ids: list[str] = field(default_factory=list)


# -- the pool ---------------------------------------------------------------------------------------------------


def _probs_matrix(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Decode JSON 8-float vectors; return ``(probs, ok)`` (rows that do not decode are zeros with ok False)."""
    out = np.zeros((len(values), len(EMOTIONS)), dtype=np.float64)
    ok = np.zeros(len(values), dtype=bool)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            continue
        try:
            row = json.loads(value)
        except ValueError:
            continue
        if isinstance(row, list) and len(row) == len(EMOTIONS):
            out[i] = np.asarray(row, dtype=np.float64)
            ok[i] = True
    return out, ok


def open_round_items(ws: Workspace) -> set[str]:
    """Items selected for a round that is still open for them.

    A round is closed for an item once the annotation stage has pulled the round (``annotation_rounds.pulled_at``)
    and aggregated the item (``settled`` not null). Before the annotation stage has run at all, every selected item
    is open.
    """
    db = ws.catalog.connect()
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "annotation_rounds" not in tables or "settled" not in ws.catalog.columns():
        return {row[0] for row in db.execute("SELECT DISTINCT item_id FROM selections")}
    sql = (
        "SELECT DISTINCT s.item_id FROM selections s JOIN items i ON i.item_id = s.item_id "
        "LEFT JOIN annotation_rounds r ON r.round = s.round WHERE r.pulled_at IS NULL OR i.settled IS NULL"
    )
    return {row[0] for row in db.execute(sql)}


def candidate_pool(ws: Workspace, need_suggestions: bool = True) -> Pool:
    """Return the items that may be selected and the count of every excluded item by reason.

    See the module docstring for the rules. Reasons are the item status (``duplicate``, ``contaminated``,
    ``invalid``...), ``settled``, ``flagged``, ``open_round`` and ``no_suggestion``.
    """
    existing = set(ws.catalog.columns())
    wanted = ["item_id", "status", "suggested_label", "suggestion_probs", "settled", "unsettled_reason"]
    df = ws.catalog.items([c for c in wanted if c in existing])
    for column in wanted:
        if column not in df.columns:
            df[column] = None
    excluded: Counter[str] = Counter()
    keep = df["status"].isin(SELECTABLE_STATUSES)
    excluded.update(df.loc[~keep, "status"].astype(str))
    settled = pd.to_numeric(df["settled"], errors="coerce")
    is_settled = keep & (settled == 1)
    excluded["settled"] += int(is_settled.sum())
    keep &= ~is_settled
    reason = df["unsettled_reason"].fillna("").astype(str).str.lower()
    flagged = keep & (settled == 0) & reason.str.startswith(FLAGGED_REASONS)
    excluded["flagged"] += int(flagged.sum())
    keep &= ~flagged
    in_open = keep & df["item_id"].isin(open_round_items(ws))
    excluded["open_round"] += int(in_open.sum())
    keep &= ~in_open
    probs, ok = _probs_matrix(df["suggestion_probs"])
    if need_suggestions:
        missing = keep & ~ok
        excluded["no_suggestion"] += int(missing.sum())
        keep &= ok
    rows = np.flatnonzero(keep.to_numpy())
    items = df.iloc[rows][["item_id", "suggested_label"]].reset_index(drop=True)
    order = np.argsort(items["item_id"].to_numpy(dtype=str), kind="stable")
    items = items.iloc[order].reset_index(drop=True)
    pool_probs = probs[rows][order] if need_suggestions else None
    return Pool(items, pool_probs, {k: v for k, v in excluded.items() if v})


# -- scores and strategies ------------------------------------------------------------------------------------------


def uncertainty(probs: np.ndarray, measure: str = "margin") -> np.ndarray:
    """Uncertainty of each row, higher = more uncertain: ``1 - (p1 - p2)`` (margin) or the entropy."""
    if measure == "margin":
        top2 = -np.sort(-probs, axis=1)[:, :2]
        return np.asarray(1.0 - (top2[:, 0] - top2[:, 1]))
    if measure == "entropy":
        p = np.clip(probs, 1e-12, 1.0)
        return np.asarray(-(p * np.log(p)).sum(axis=1))
    raise SelectError(f"unknown uncertainty measure {measure!r}; use margin or entropy")


def _uncertainty_order(pool: Pool, config: SelectConfig) -> np.ndarray:
    """Pool positions, most uncertain first (ties: item-id order, which the pool is sorted by)."""
    if pool.probs is None:
        raise SelectError("this strategy needs suggestions; run `emo8 suggest` first")
    return np.argsort(-uncertainty(pool.probs, config.measure), kind="stable")


def select_uncertainty(
    ws: Workspace, pool: Pool, n: int, config: SelectConfig, rng: np.random.Generator
) -> list[int]:
    """The ``n`` most uncertain items."""
    return _uncertainty_order(pool, config)[:n].tolist()


def select_balanced(
    ws: Workspace, pool: Pool, n: int, config: SelectConfig, rng: np.random.Generator
) -> list[int]:
    """Round-robin over suggested emotions, most uncertain first within each."""
    order = _uncertainty_order(pool, config)
    labels = pool.items["suggested_label"].to_numpy(dtype=object)
    queues = {e: [int(i) for i in order if labels[i] == e] for e in EMOTIONS}
    others = [int(i) for i in order if labels[i] not in queues]
    queues["(other)"] = others
    picked: list[int] = []
    heads = dict.fromkeys(queues, 0)
    while len(picked) < n and any(heads[k] < len(q) for k, q in queues.items()):
        for key, queue in queues.items():
            if len(picked) >= n:
                break
            if heads[key] < len(queue):
                picked.append(queue[heads[key]])
                heads[key] += 1
    return picked


def select_random(
    ws: Workspace, pool: Pool, n: int, config: SelectConfig, rng: np.random.Generator
) -> list[int]:
    """A seeded uniform sample."""
    return rng.permutation(len(pool))[:n].tolist()


def k_center_greedy(
    candidates: np.ndarray, n: int, anchors: np.ndarray | None = None, batch_size: int = 4096
) -> list[int]:
    """Greedy k-center: pick ``n`` rows of ``candidates`` (L2-normalised), each the farthest from the anchors and
    the rows picked so far.

    Parameters
    ----------
    candidates
        ``(m, d)`` unit vectors, in priority order (ties go to the earlier row).
    n
        How many to pick.
    anchors
        ``(a, d)`` unit vectors already covered (labelled or already selected items); None or empty: the first
        pick is row 0.
    batch_size
        Queries per FAISS search for the nearest-anchor distances.

    Returns
    -------
    Row indices into ``candidates`` in pick order. Memory is ``O(m + a)`` besides the inputs.
    """
    import faiss

    x = np.ascontiguousarray(candidates, dtype=np.float32)
    m = len(x)
    n = min(n, m)
    if n <= 0:
        return []
    min_dist = np.full(m, np.inf, dtype=np.float64)
    if anchors is not None and len(anchors):
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(np.ascontiguousarray(anchors, dtype=np.float32))
        for start in range(0, m, batch_size):
            sims, _ = index.search(x[start : start + batch_size], 1)
            min_dist[start : start + batch_size] = 1.0 - sims[:, 0]
    picked: list[int] = []
    for _ in range(n):
        # first maximum = highest priority among ties; no anchors and no pick yet: the top-priority row
        choice = 0 if np.isinf(min_dist).all() else int(np.argmax(min_dist))
        picked.append(choice)
        dist = 1.0 - x @ x[choice]
        np.minimum(min_dist, dist, out=min_dist)
        min_dist[choice] = -np.inf
    return picked


def select_diverse(
    ws: Workspace, pool: Pool, n: int, config: SelectConfig, rng: np.random.Generator
) -> list[int]:
    """k-center greedy among the ``pool_factor * n`` most uncertain items, anchored on labelled and
    already-selected items."""
    from emo8.label.suggest import SuggestError, collect_labels, load_embeddings

    order = _uncertainty_order(pool, config)[: max(n, config.pool_factor * n)]
    try:
        ids, matrix = load_embeddings(ws, config.model)
    except SuggestError as exc:
        raise SelectError(f"diverse selection needs embeddings: {exc}") from exc
    row_of = {item_id: i for i, item_id in enumerate(ids)}
    pool_ids = pool.items["item_id"].to_numpy(dtype=str)
    order = np.array([p for p in order if pool_ids[p] in row_of], dtype=np.int64)
    if len(order) == 0:
        return []
    cand = np.asarray(matrix[[row_of[pool_ids[p]] for p in order]], dtype=np.float32)
    covered = set(collect_labels(ws)["item_id"]) | open_round_items(ws)
    anchor_rows = sorted(row_of[i] for i in covered if i in row_of)
    anchors = np.asarray(matrix[anchor_rows], dtype=np.float32) if anchor_rows else None
    picks = k_center_greedy(cand, n, anchors, config.batch_size)
    return [int(order[p]) for p in picks]


Strategy = Callable[[Workspace, Pool, int, SelectConfig, np.random.Generator], list[int]]

#: name -> (strategy, needs suggestions)
STRATEGIES: dict[str, tuple[Strategy, bool]] = {
    "uncertainty": (select_uncertainty, True),
    "balanced": (select_balanced, True),
    "diverse": (select_diverse, True),
    "random": (select_random, False),
}


def next_round_name(ws: Workspace) -> str:
    """``round-<k>`` with the smallest ``k > number of rounds`` that is not taken."""
    existing = ws.catalog.rounds()
    k = len(existing) + 1
    while f"round-{k}" in existing:
        k += 1
    return f"round-{k}"


def select(ws: Workspace, config: SelectConfig) -> SelectSummary:
    """Select items for an annotation round and store them (see the module docstring).

    Parameters
    ----------
    ws
        The workspace.
    config
        Budget, strategy, round and seed (see :class:`SelectConfig`).

    Returns
    -------
    A :class:`SelectSummary`; ``item_ids`` are the newly selected items in rank order.

    Raises
    ------
    SelectError
        Unknown strategy or measure, a budget below 1, or a strategy that needs suggestions when there are none.
    """
    if config.strategy not in STRATEGIES:
        raise SelectError(f"unknown strategy {config.strategy!r}; choose from {', '.join(STRATEGIES)}")
    if config.budget < 1:
        raise SelectError(f"--budget must be at least 1 (got {config.budget}); a round needs items")
    strategy, needs_suggestions = STRATEGIES[config.strategy]
    round_name = config.round or next_round_name(ws)
    already = len(ws.catalog.selection(round_name))
    summary = SelectSummary(round_name, config.strategy, config.budget, already=already)
    pool = candidate_pool(ws, need_suggestions=needs_suggestions)
    summary.pool = len(pool)
    summary.excluded = pool.excluded
    need = config.budget - already
    if need > 0 and len(pool) == 0 and pool.excluded.get("no_suggestion"):
        raise SelectError(
            f"{pool.excluded['no_suggestion']} candidate item(s) but none has a suggestion; run `emo8 suggest` "
            f"first (or use --strategy random)"
        )
    if need <= 0 or len(pool) == 0:
        return summary
    rng = np.random.default_rng(config.seed)
    positions = strategy(ws, pool, need, config, rng)[:need]
    chosen = pool.items.iloc[positions]
    ids = chosen["item_id"].astype(str).tolist()
    summary.selected = ws.catalog.save_selection(round_name, ids, config.strategy)
    summary.item_ids = ids
    summary.per_class = dict(Counter(chosen["suggested_label"].fillna("(none)").astype(str)))
    return summary


def summary_dict(summary: SelectSummary) -> dict[str, Any]:
    """The summary as JSON-ready data (without the id list)."""
    return {
        "round": summary.round,
        "strategy": summary.strategy,
        "budget": summary.budget,
        "already_in_round": summary.already,
        "selected": summary.selected,
        "pool": summary.pool,
        "excluded": summary.excluded,
        "per_class": summary.per_class,
    }
