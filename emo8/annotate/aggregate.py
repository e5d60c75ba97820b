"""From raw votes to final labels: majority vote or Dawid-Skene, agreement statistics, annotator quality.

Categories are the 8 emotions plus ``none`` ("none / unclear"): a ``none`` answer is a vote like any other, so it
counts towards ``num_votes`` and lowers agreement, but ``label_distribution`` (the soft label) is over the 8
emotions only. Skipped (cancelled) and deleted annotations are not votes.

Agreement statistics take an *items x categories* count matrix ``n[i, j]`` (how many votes item ``i`` got for
category ``j``), so a varying number of votes per item is fine:

- :func:`fleiss_kappa`: Fleiss (1971), with the usual generalisation to a varying number of raters per item
  (``P_i`` uses each item's own ``n_i``; ``p_j`` is the share of all votes) - identical to Fleiss when every item
  has the same number of votes; :func:`category_kappas` is Fleiss' per-category kappa, generalised the same way.
- :func:`krippendorff_alpha`: Krippendorff's alpha for nominal data from the coincidence matrix (Krippendorff 2011,
  "Computing Krippendorff's alpha-reliability"); items with fewer than 2 votes are not pairable and drop out.
  Per class, alpha is computed on the binary "this class / any other" recoding.

Aggregators live in :data:`AGGREGATORS` (``majority``, ``dawid-skene``); each maps votes to per-item posteriors.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from emo8.annotate.errors import AnnotateError
from emo8.annotate.labelconfig import CATEGORIES, FLAGS, NONE
from emo8.annotate.store import AnnotationStore
from emo8.core.catalog import utc_now
from emo8.core.taxonomy import EMOTIONS
from emo8.core.workspace import Workspace

#: Item columns written by :func:`aggregate` (documented in docs/catalog.md).
LABEL_COLUMNS: dict[str, str] = {
    "label": "TEXT",
    "label_distribution": "TEXT",
    "num_votes": "INTEGER",
    "agreement": "REAL",
    "settled": "INTEGER",
    "unsettled_reason": "TEXT",
    "label_method": "TEXT",
}

#: Reasons an item is not settled, in the order they are checked.
UNSETTLED_REASONS = (
    "flagged_broken",
    "flagged_inappropriate",
    "flagged_text_only",
    "too_few_votes",
    "tie",
    "unclear",
    "low_agreement",
)

K = len(CATEGORIES)
_NONE_INDEX = CATEGORIES.index(NONE)


# -- agreement statistics ------------------------------------------------------------------------------------------


def _as_counts(counts: Any) -> np.ndarray:
    matrix = np.asarray(counts, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"expected an items x categories count matrix, got shape {matrix.shape}")
    if (matrix < 0).any():
        raise ValueError("vote counts must be non-negative")
    return matrix


def fleiss_kappa(counts: Any) -> float:
    """Return Fleiss' kappa of an items x categories vote-count matrix (NaN when undefined).

    Items with fewer than 2 votes are ignored. With ``P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1))``,
    ``P = mean_i P_i``, ``p_j = sum_i n_ij / sum_i n_i`` and ``P_e = sum_j p_j^2``: ``kappa = (P - P_e) / (1 - P_e)``.

    Examples
    --------
    >>> round(fleiss_kappa([[3, 0], [0, 3], [3, 0], [0, 3]]), 3)
    1.0
    """
    n = _as_counts(counts)
    n = n[n.sum(axis=1) >= 2]
    if len(n) == 0:
        return float("nan")
    totals = n.sum(axis=1)
    p_i = (n * (n - 1)).sum(axis=1) / (totals * (totals - 1))
    p_j = n.sum(axis=0) / totals.sum()
    p_bar, p_e = p_i.mean(), float((p_j**2).sum())
    if math.isclose(p_e, 1.0):
        return float("nan")
    return float((p_bar - p_e) / (1 - p_e))


def category_kappas(counts: Any) -> np.ndarray:
    """Return Fleiss' per-category kappa for each column (NaN for a category nobody or everybody chose).

    ``kappa_j = 1 - sum_i n_ij (n_i - n_ij) / (n_i - 1) / (sum_i n_i p_j q_j)`` (Fleiss 1971, generalised to a
    varying ``n_i``).
    """
    n = _as_counts(counts)
    n = n[n.sum(axis=1) >= 2]
    out = np.full(n.shape[1], np.nan)
    if len(n) == 0:
        return out
    totals = n.sum(axis=1)
    p_j = n.sum(axis=0) / totals.sum()
    disagreement = (n * (totals[:, None] - n) / (totals[:, None] - 1)).sum(axis=0)
    expected = totals.sum() * p_j * (1 - p_j)
    ok = expected > 0
    out[ok] = 1 - disagreement[ok] / expected[ok]
    return out


def krippendorff_alpha(counts: Any) -> float:
    """Return Krippendorff's alpha (nominal) of an items x categories vote-count matrix (NaN when undefined).

    Builds the coincidence matrix ``o_ck = sum_u n_uc (n_uk - [c == k]) / (m_u - 1)`` over pairable units
    (``m_u >= 2``) and returns ``1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k``.

    Examples
    --------
    >>> krippendorff_alpha([[2, 0], [0, 2], [2, 0]])
    1.0
    """
    n = _as_counts(counts)
    m = n.sum(axis=1)
    n = n[m >= 2]
    m = m[m >= 2]
    if len(n) == 0:
        return float("nan")
    coincidence = np.einsum("uc,uk->ck", n / (m - 1)[:, None], n) - np.diag(
        (n / (m - 1)[:, None]).sum(axis=0)
    )
    n_c = coincidence.sum(axis=1)
    total = n_c.sum()
    observed = coincidence.sum() - np.trace(coincidence)
    expected = n_c.sum() ** 2 - (n_c**2).sum()
    if expected <= 0:
        return float("nan")
    return float(1 - (total - 1) * observed / expected)


def category_alphas(counts: Any) -> np.ndarray:
    """Return Krippendorff's alpha of each category's binary recoding (category vs the rest)."""
    n = _as_counts(counts)
    totals = n.sum(axis=1)
    return np.asarray(
        [krippendorff_alpha(np.stack([n[:, j], totals - n[:, j]], axis=1)) for j in range(n.shape[1])]
    )


# -- votes ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Votes:
    """Votes as parallel arrays: ``item[v]``, ``annotator[v]``, ``category[v]`` index into ``items``,
    ``annotators`` and :data:`CATEGORIES`; ``round[v]`` names the round each vote came from."""

    items: list[str]
    annotators: list[str]
    item: np.ndarray
    annotator: np.ndarray
    category: np.ndarray
    round: np.ndarray

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, items: Sequence[str] | None = None) -> Votes:
        """Build from annotation rows (``item_id``, ``annotator``, ``choice``, ``round``) that are votes."""
        item_ids = list(items) if items is not None else sorted(set(frame["item_id"]))
        item_index = {item_id: i for i, item_id in enumerate(item_ids)}
        annotators = sorted(set(frame["annotator"]))
        annotator_index = {a: i for i, a in enumerate(annotators)}
        category_index = {c: i for i, c in enumerate(CATEGORIES)}
        return cls(
            items=item_ids,
            annotators=annotators,
            item=np.asarray([item_index[i] for i in frame["item_id"]], dtype=int),
            annotator=np.asarray([annotator_index[a] for a in frame["annotator"]], dtype=int),
            category=np.asarray([category_index[c] for c in frame["choice"]], dtype=int),
            round=np.asarray(list(frame["round"]), dtype=object),
        )

    def counts(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Return the items x categories vote-count matrix (of the votes in ``mask``)."""
        out = np.zeros((len(self.items), K))
        keep = np.ones(len(self.item), dtype=bool) if mask is None else mask
        np.add.at(out, (self.item[keep], self.category[keep]), 1)
        return out


# -- aggregators ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Posterior:
    """An aggregator's output: ``probs`` (items x categories, rows sum to 1, zeros for items without votes) and,
    for Dawid-Skene, ``confusion`` (annotators x true x answered, rows sum to 1)."""

    probs: np.ndarray
    confusion: np.ndarray | None = None
    iterations: int = 0


Aggregator = Callable[[Votes, Mapping[int, int], "AggregateConfig"], Posterior]


def majority(votes: Votes, gold: Mapping[int, int], config: AggregateConfig) -> Posterior:
    """Vote shares per item (gold items keep their votes; :func:`aggregate` applies gold labels afterwards)."""
    counts = votes.counts()
    totals = counts.sum(axis=1, keepdims=True)
    return Posterior(np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0))


def dawid_skene(votes: Votes, gold: Mapping[int, int], config: AggregateConfig) -> Posterior:
    """Dawid and Skene (1979) EM: per-annotator confusion matrices and class priors, initialised from majority
    vote; gold items are clamped to their known label. Dirichlet smoothing ``config.ds_smoothing`` keeps rare
    classes from producing zeros."""
    n_items, n_annotators, s = len(votes.items), len(votes.annotators), config.ds_smoothing
    counts = votes.counts()
    has_votes = counts.sum(axis=1) > 0
    probs = (counts + s) / (counts + s).sum(axis=1, keepdims=True)
    gold_rows = np.fromiter(gold.keys(), dtype=int, count=len(gold))
    gold_cols = np.fromiter(gold.values(), dtype=int, count=len(gold))

    def clamp(p: np.ndarray) -> np.ndarray:
        if len(gold_rows):
            p[gold_rows] = 0.0
            p[gold_rows, gold_cols] = 1.0
        return p

    probs = clamp(probs)
    confusion: np.ndarray = np.zeros((n_annotators, K, K))
    iterations = 0
    while iterations < config.ds_max_iter:
        iterations += 1
        prior = (probs[has_votes].sum(axis=0) + s) / (has_votes.sum() + K * s)
        answered = np.zeros((n_annotators * K, K))  # row (annotator, answer), column true class
        np.add.at(answered, votes.annotator * K + votes.category, probs[votes.item])
        confusion = answered.reshape(n_annotators, K, K).transpose(0, 2, 1) + s
        confusion /= confusion.sum(axis=2, keepdims=True)
        log_post = np.tile(np.log(prior), (n_items, 1))
        np.add.at(log_post, votes.item, np.log(confusion[votes.annotator, :, votes.category]))
        log_post -= log_post.max(axis=1, keepdims=True)
        new = np.exp(log_post)
        new /= new.sum(axis=1, keepdims=True)
        new = clamp(new)
        change = float(np.abs(new - probs).max()) if n_items else 0.0
        probs = new
        if change < config.ds_tol:
            break
    probs[~has_votes] = 0.0
    return Posterior(probs, confusion, iterations)


#: Aggregation methods by name (``--method``).
AGGREGATORS: dict[str, Aggregator] = {"majority": majority, "dawid-skene": dawid_skene}


# -- aggregation ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AggregateConfig:
    """Settings of :func:`aggregate`.

    An item is *settled* when it has at least ``min_votes`` votes, a unique winner that is an emotion, a winner
    share of at least ``min_agreement``, and no flag raised by at least ``flag_share`` of its answers. Annotator
    quality is gold accuracy once an annotator has ``min_gold_answers`` gold answers, else agreement with the
    leave-one-out consensus once ``min_consensus_answers`` are scored; annotators below ``annotator_threshold``
    are reported, and their votes dropped when ``exclude_low_quality``. ``rounds`` limits the votes to those
    rounds (default: all, so an item re-annotated in a later round pools its votes).
    """

    method: str = "majority"
    min_votes: int = 3
    min_agreement: float = 0.6
    flag_share: float = 1 / 3
    rounds: tuple[str, ...] | None = None
    annotator_threshold: float = 0.5
    min_gold_answers: int = 3
    min_consensus_answers: int = 5
    exclude_low_quality: bool = False
    exclude_annotators: tuple[str, ...] = ()
    ds_max_iter: int = 200
    ds_tol: float = 1e-6
    ds_smoothing: float = 0.01
    write: bool = True


@dataclass(frozen=True)
class AnnotatorStats:
    """Quality of one annotator: answers, gold accuracy, agreement with consensus, Dawid-Skene diagonal."""

    annotator: str
    votes: int
    skipped: int
    gold_answers: int
    gold_accuracy: float | None
    consensus_answers: int
    consensus_agreement: float | None
    ds_accuracy: float | None
    ds_diagonal: dict[str, float]
    quality: float | None
    below_threshold: bool
    excluded: bool


@dataclass(frozen=True)
class AgreementStats:
    """Fleiss' kappa and Krippendorff's alpha of a set of votes, overall and per category."""

    items: int
    votes: int
    fleiss_kappa: float
    krippendorff_alpha: float
    per_class: dict[str, dict[str, float]]


@dataclass
class AggregateReport:
    """The result of :func:`aggregate`; :attr:`labels` has one row per aggregated item."""

    method: str
    config: dict[str, Any]
    labels: pd.DataFrame
    agreement: dict[str, AgreementStats]
    annotators: list[AnnotatorStats]
    excluded: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    iterations: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return the report as JSON-ready data (what ``reports/annotate_aggregate.json`` holds)."""
        return _clean(
            {
                "created_at": utc_now(),
                "method": self.method,
                "config": self.config,
                "counts": self.counts,
                "agreement": {k: asdict(v) for k, v in self.agreement.items()},
                "annotators": [asdict(a) for a in self.annotators],
                "excluded_annotators": self.excluded,
                "iterations": self.iterations,
            }
        )


def agreement_stats(counts: np.ndarray) -> AgreementStats:
    """Return :class:`AgreementStats` of an items x :data:`CATEGORIES` count matrix."""
    kappas, alphas = category_kappas(counts), category_alphas(counts)
    used = counts.sum(axis=0) > 0
    return AgreementStats(
        items=int((counts.sum(axis=1) >= 2).sum()),
        votes=int(counts.sum()),
        fleiss_kappa=fleiss_kappa(counts),
        krippendorff_alpha=krippendorff_alpha(counts),
        per_class={
            c: {
                "fleiss_kappa": float(kappas[j]),
                "krippendorff_alpha": float(alphas[j]),
                "votes": int(counts[:, j].sum()),
            }
            for j, c in enumerate(CATEGORIES)
            if used[j]
        },
    )


def aggregate(ws: Workspace, config: AggregateConfig | None = None) -> AggregateReport:
    """Aggregate the stored votes into item labels, write the label columns and ``reports/annotate_aggregate.json``.

    Every item that is a task of an aggregated round gets the columns of :data:`LABEL_COLUMNS` (items without votes
    are unsettled with ``too_few_votes``); gold items take their gold label and are settled unless flagged.

    Parameters
    ----------
    ws
        The workspace whose ``annotations`` table holds the votes (see :func:`emo8.annotate.rounds.pull_round`).
    config
        Method, settling thresholds, rounds, annotator quality and exclusion (see :class:`AggregateConfig`).

    Returns
    -------
    An :class:`AggregateReport`: the per-item labels, Fleiss' kappa and Krippendorff's alpha per round and class,
    per-annotator quality, and who was excluded. With ``config.write`` the item columns and
    ``reports/annotate_aggregate.json`` are written.
    """
    config = config or AggregateConfig()
    if config.method not in AGGREGATORS:
        raise AnnotateError(
            f"unknown aggregation method {config.method!r}; choose from {', '.join(AGGREGATORS)}"
        )
    store = AnnotationStore(ws.catalog)
    rounds = list(config.rounds) if config.rounds else [r["round"] for r in store.rounds()]
    frame = store.annotations(rounds)
    task_items: list[str] = []
    for name in rounds:
        task_items.extend(store.tasks(name)["item_id"])
    items = sorted(set(task_items) | set(frame["item_id"]))
    answers = frame[~frame["was_cancelled"]]
    vote_rows = answers[answers["choice"].notna()]
    all_votes = Votes.from_frame(vote_rows, items)
    gold_labels = _gold_labels(store, frame)
    position = {item_id: i for i, item_id in enumerate(items)}
    gold = {position[i]: CATEGORIES.index(g) for i, g in gold_labels.items() if i in position}

    annotators = _annotator_stats(all_votes, frame, gold, config)
    excluded = sorted({a.annotator for a in annotators if a.excluded} | set(config.exclude_annotators))
    kept = vote_rows[~vote_rows["annotator"].isin(excluded)]
    votes = Votes.from_frame(kept, items)
    posterior = AGGREGATORS[config.method](votes, gold, config)
    labels = _labels(votes, posterior, answers[~answers["annotator"].isin(excluded)], gold, config)

    agreement = {"all": agreement_stats(votes.counts())}
    for name in rounds:
        agreement[f"round:{name}"] = agreement_stats(votes.counts(votes.round == name))
    counts = {"items": len(labels), "settled": int(labels["settled"].sum())}
    counts.update({f"unsettled:{k}": int(v) for k, v in labels["unsettled_reason"].value_counts().items()})
    report = AggregateReport(
        method=config.method,
        config=asdict(config),
        labels=labels,
        agreement=agreement,
        annotators=annotators,
        excluded=excluded,
        counts=counts,
        iterations=posterior.iterations,
    )
    if config.write:
        _write(ws, labels, config.method)
        path = ws.reports_dir / "annotate_aggregate.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_json(), indent=2, allow_nan=False))
    return report


def _gold_labels(store: AnnotationStore, frame: pd.DataFrame) -> dict[str, str]:
    """Gold labels: items pushed as gold, else answers marked ground truth in Label Studio."""
    gold: dict[str, str] = {}
    truth = frame[frame["ground_truth"] & ~frame["was_cancelled"] & frame["choice"].isin(EMOTIONS)]
    gold.update(zip(truth["item_id"], truth["choice"], strict=True))
    gold.update(store.gold())
    return gold


def _labels(
    votes: Votes,
    posterior: Posterior,
    answers: pd.DataFrame,
    gold: Mapping[int, int],
    config: AggregateConfig,
) -> pd.DataFrame:
    counts = votes.counts()
    num_votes = counts.sum(axis=1).astype(int)
    probs = posterior.probs
    order = np.argsort(-probs, axis=1, kind="stable")
    top, second = order[:, 0], order[:, 1]
    tie = np.isclose(probs[np.arange(len(top)), top], probs[np.arange(len(top)), second]) & (num_votes > 0)
    emotion_mass = probs[:, : len(EMOTIONS)]
    mass = emotion_mass.sum(axis=1, keepdims=True)
    distribution = np.divide(emotion_mass, mass, out=np.zeros_like(emotion_mass), where=mass > 0)

    flag_counts: dict[str, Counter[str]] = {flag: Counter() for flag in FLAGS}
    for item_id, flags in zip(answers["item_id"], answers["flags"], strict=True):
        for flag in flags:
            if flag in flag_counts:
                flag_counts[flag][str(item_id)] += 1
    answered = answers.groupby("item_id").size()
    rows: list[dict[str, Any]] = []
    for i, item_id in enumerate(votes.items):
        winner = int(top[i])
        n_answers = int(answered.get(item_id, 0))
        need = max(1, math.ceil(config.flag_share * n_answers))
        flagged = [f for f in FLAGS if int(flag_counts[f].get(item_id, 0)) >= need and n_answers > 0]
        agreement = float(counts[i, winner] / num_votes[i]) if num_votes[i] else 0.0
        label = CATEGORIES[winner] if num_votes[i] and not tie[i] and winner != _NONE_INDEX else None
        reason: str | None
        if flagged:
            reason = f"flagged_{flagged[0]}"
        elif i in gold:
            label, reason = CATEGORIES[gold[i]], None
            agreement = float(counts[i, gold[i]] / num_votes[i]) if num_votes[i] else 0.0
        elif num_votes[i] < config.min_votes:
            reason = "too_few_votes"
        elif tie[i]:
            reason = "tie"
        elif winner == _NONE_INDEX:
            reason = "unclear"
        elif agreement < config.min_agreement:
            reason = "low_agreement"
        else:
            reason = None
        rows.append(
            {
                "item_id": item_id,
                "label": label,
                "label_distribution": [round(float(x), 6) for x in distribution[i]],
                "num_votes": int(num_votes[i]),
                "agreement": round(agreement, 6),
                "settled": int(reason is None),
                "unsettled_reason": reason,
            }
        )
    return pd.DataFrame(rows, columns=["item_id", *[c for c in LABEL_COLUMNS if c != "label_method"]])


def _annotator_stats(
    votes: Votes, frame: pd.DataFrame, gold: Mapping[int, int], config: AggregateConfig
) -> list[AnnotatorStats]:
    counts = votes.counts()
    posterior = dawid_skene(votes, gold, config) if len(votes.item) else None
    skipped = frame[frame["was_cancelled"]].groupby("annotator").size()
    out: list[AnnotatorStats] = []
    for a, name in enumerate(votes.annotators):
        mine = votes.annotator == a
        items, cats = votes.item[mine], votes.category[mine]
        gold_hits = [(cat == gold[item]) for item, cat in zip(items, cats, strict=True) if item in gold]
        consensus: list[bool] = []
        for item, cat in zip(items, cats, strict=True):
            others = counts[item].copy()
            others[cat] -= 1
            if others.sum() < 1:
                continue
            best = np.flatnonzero(others == others.max())
            if len(best) == 1:
                consensus.append(bool(best[0] == cat))
        ds_diag: dict[str, float] = {}
        ds_accuracy: float | None = None
        if posterior is not None and posterior.confusion is not None:
            weights = posterior.probs[items].sum(axis=0)
            diagonal = np.diag(posterior.confusion[a])
            ds_diag = {CATEGORIES[k]: round(float(diagonal[k]), 4) for k in range(K) if weights[k] >= 0.5}
            ds_accuracy = float((weights * diagonal).sum() / weights.sum()) if weights.sum() > 0 else None
        gold_acc = float(np.mean(gold_hits)) if gold_hits else None
        cons = float(np.mean(consensus)) if consensus else None
        if gold_acc is not None and len(gold_hits) >= config.min_gold_answers:
            quality: float | None = gold_acc
        elif cons is not None and len(consensus) >= config.min_consensus_answers:
            quality = cons
        else:
            quality = None
        below = quality is not None and quality < config.annotator_threshold
        out.append(
            AnnotatorStats(
                annotator=name,
                votes=int(mine.sum()),
                skipped=int(skipped.get(name, 0)),
                gold_answers=len(gold_hits),
                gold_accuracy=gold_acc,
                consensus_answers=len(consensus),
                consensus_agreement=cons,
                ds_accuracy=ds_accuracy,
                ds_diagonal=ds_diag,
                quality=quality,
                below_threshold=below,
                excluded=(below and config.exclude_low_quality) or name in config.exclude_annotators,
            )
        )
    return out


def _write(ws: Workspace, labels: pd.DataFrame, method: str) -> None:
    ws.catalog.ensure_columns(LABEL_COLUMNS)
    if labels.empty:
        return
    ids = list(labels["item_id"])
    values: dict[str, list[Any]] = {
        "label": [None if pd.isna(v) else v for v in labels["label"]],
        "label_distribution": [json.dumps(v) for v in labels["label_distribution"]],
        "num_votes": [int(v) for v in labels["num_votes"]],
        "agreement": [float(v) for v in labels["agreement"]],
        "settled": [int(v) for v in labels["settled"]],
        "unsettled_reason": [None if pd.isna(v) else v for v in labels["unsettled_reason"]],
        "label_method": [method] * len(ids),
    }
    ws.catalog.update_items(ids, values)


def _clean(value: Any) -> Any:
    """Replace NaN/inf by None, recursively, so the report is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value
