"""Label suggestions: zero-shot CLIP, FAISS kNN votes and a linear probe, combined and calibrated.

``emo8 suggest`` gives every valid item that has an embedding an 8-way probability vector over
:data:`emo8.core.taxonomy.EMOTIONS`, from up to three *sources* (a registry, :data:`SOURCES`):

``zero_shot``
    cosine similarity of the image embedding to the mean text embedding of each emotion's prompt ensemble
    (:func:`emo8.core.taxonomy.prompts`), times the model's logit scale, softmaxed. Open_clip models only (they keep
    their text tower); image-only encoders skip it with a message.
``knn``
    a similarity-weighted vote of the ``k`` nearest labelled items (FAISS inner-product search over
    L2-normalised embeddings, queries in batches): neighbour ``j`` votes ``exp((s_j - s_max) / tau)`` for its
    label, plus one pseudo-vote spread evenly over the classes.
``probe``
    multinomial logistic regression on the embeddings, once every class that has labels has at least
    ``min_labels_per_class`` of them.

The sources are pooled log-linearly, ``softmax(sum_s w_s log p_s / T)``: the non-negative weights ``w`` (summing
to 1) are fitted on the *out-of-fold* predictions of the labelled items (stratified k-fold cross-validation:
every labelled item is predicted by sources that never saw its label) by minimising the negative log-likelihood,
then the temperature ``T`` is fitted on the same predictions (temperature scaling, Guo et al. 2017).

Labelled items are stored with their out-of-fold suggestion (an honest second opinion, never an echo of their own
label); unlabelled items with the prediction of sources fitted on every label.

Labels come from, in this order of precedence (:data:`LABEL_SOURCES`): settled annotations (item column ``label``
with ``settled = 1``, written by the annotation stage), imported labels (``emo8 labels import``, column
``imported_label``) and weak labels given at ingest (``weak_label``).

Stored per item: ``suggested_label``, ``suggestion_probs`` (JSON list of 8 floats in :data:`EMOTIONS` order),
``suggestion_entropy`` (nats) and ``suggestion_version``. The version digests the model, the settings and the
labels, so a re-run only computes items whose suggestion is missing or stale (new items, or everything once the
labels change). ``reports/suggest.json`` holds cross-validated accuracy, macro-F1 and expected calibration error
per source, for the pooled result before and after calibration, and per domain; the pooled figures are
*cross-fitted* (weights and temperature fitted on one half of the labelled items, scored on the other, and the
other way round), so they are held-out numbers too.

Memory is bounded: the embedding matrix stays memory-mapped, only the labelled rows are held in RAM, and
queries run in batches; nothing N x N is ever built.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from emo8.core.catalog import utc_now
from emo8.core.progress import stage_bar, stage_steps
from emo8.core.taxonomy import EMOTIONS, normalise_label, prompts
from emo8.core.workspace import Workspace

if TYPE_CHECKING:
    from emo8.embed.encoders import Encoder

#: Item columns this stage writes.
SUGGEST_COLUMNS: dict[str, str] = {
    "suggested_label": "TEXT",
    "suggestion_probs": "TEXT",
    "suggestion_entropy": "REAL",
    "suggestion_version": "TEXT",
}
#: Where labels come from, highest precedence first (see the module docstring).
LABEL_SOURCES: tuple[str, ...] = ("annotation", "imported", "weak")
#: The column ``emo8 labels import`` writes.
IMPORTED_LABEL_COLUMN = "imported_label"
#: Probabilities are floored at this value before logs are taken.
EPS = 1e-6
#: Labelled sets above this size are searched with an HNSW index instead of an exact flat one.
EXACT_KNN_LIMIT = 100_000


class SuggestError(RuntimeError):
    """Suggestions cannot be computed (no embeddings, nothing to learn from...); the message says what to do."""


@dataclass(frozen=True)
class SuggestConfig:
    """Settings of ``emo8 suggest``.

    Parameters
    ----------
    model
        Embedding model key (see :mod:`emo8.embed.encoders`); the embeddings must exist (``emo8 embed``).
    k
        Neighbours per kNN vote.
    zero_shot
        Use the CLIP text tower when the model has one.
    weights, random_init, device
        How to load the encoder for its text tower (zero-shot only; by default the weights recorded with the
        stored embeddings; same meaning as for ``emo8 embed``).
    min_labels_per_class
        The linear probe runs once every class that has labels has at least this many.
    folds
        Cross-validation folds (fewer when the smallest class is smaller).
    knn_temperature
        ``tau`` of the kNN vote weights ``exp((s - s_max) / tau)``.
    probe_c
        Inverse L2 regularisation strength of the logistic regression (embeddings are unit vectors, so logits
        are small unless ``C`` is large-ish; 10 beat 1 and matched 100 on photos-dev).
    label_sources
        Which labels to learn from, highest precedence first (subset of :data:`LABEL_SOURCES`).
    batch_size
        Items per query batch (bounds memory) and per catalog transaction.
    ece_bins
        Equal-width confidence bins of the expected calibration error.
    seed
        Seed of the folds (results are deterministic for a seed).
    """

    model: str = "efficientnet-lite0"
    k: int = 20
    zero_shot: bool = True
    weights: str | None = None
    random_init: bool = False
    device: str = "cpu"
    min_labels_per_class: int = 5
    folds: int = 5
    knn_temperature: float = 0.1
    probe_c: float = 10.0
    label_sources: tuple[str, ...] = LABEL_SOURCES
    batch_size: int = 4096
    ece_bins: int = 15
    seed: int = 0

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that change the suggestions (everything but batch size and device)."""
        out = asdict(self)
        for name in ("batch_size", "device"):
            out.pop(name)
        out["label_sources"] = list(self.label_sources)
        return out


# -- metrics ---------------------------------------------------------------------------------------------------


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label expected calibration error: sum over equal-width confidence bins of
    ``|bin| / n * |accuracy(bin) - mean confidence(bin)|`` (Naeini et al. 2015; Guo et al. 2017)."""
    if len(y) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def classification_metrics(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, float | int]:
    """Accuracy, macro-F1 (over the classes present in ``y``), ECE and mean negative log-likelihood."""
    from sklearn.metrics import f1_score

    if len(y) == 0:
        return {"n": 0}
    pred = probs.argmax(axis=1)
    labels = np.unique(y)
    return {
        "n": len(y),
        "accuracy": round(float((pred == y).mean()), 4),
        "macro_f1": round(float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)), 4),
        "ece": round(expected_calibration_error(probs, y, bins), 4),
        "nll": round(float(-np.log(np.clip(probs[np.arange(len(y)), y], EPS, 1.0)).mean()), 4),
    }


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row."""
    p = np.clip(probs, 1e-12, 1.0)
    return np.asarray(-(p * np.log(p)).sum(axis=1))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


# -- sources ------------------------------------------------------------------------------------------------------


@dataclass
class SourceContext:
    """What a source may need besides the labelled embeddings: the class count and, for zero-shot, the class text
    embeddings and logit scale."""

    n_classes: int
    class_text: np.ndarray | None = None
    logit_scale: float = 100.0


class Source:
    """One way of turning an embedding into class probabilities.

    Subclasses implement :meth:`fit` (labelled embeddings ``x`` with integer labels ``y``) and :meth:`predict`
    (``(n, n_classes)`` probabilities). ``needs_labels`` says whether the source learns from labels (and so is
    cross-validated) or is fixed (zero-shot).
    """

    name: str = "source"
    needs_labels: bool = True

    def fit(self, x: np.ndarray, y: np.ndarray) -> Source:
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class ZeroShotSource(Source):
    """Zero-shot CLIP: softmax of ``logit_scale * cos(image, class text)`` (class text = normalised mean of the
    normalised prompt embeddings)."""

    name = "zero_shot"
    needs_labels = False

    def __init__(self, class_text: np.ndarray, logit_scale: float) -> None:
        self.class_text = np.ascontiguousarray(class_text, dtype=np.float32)
        self.logit_scale = float(logit_scale)

    def fit(self, x: np.ndarray, y: np.ndarray) -> ZeroShotSource:
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.logit_scale * (np.asarray(x, dtype=np.float32) @ self.class_text.T))


class KnnSource(Source):
    """Similarity-weighted vote of the ``k`` nearest labelled items (FAISS inner product, batched queries).

    Neighbour ``j`` of a query contributes ``exp((s_j - s_max) / temperature)`` to its label, ``s_max`` being the
    query's best similarity; one pseudo-vote spread evenly over the classes keeps every probability positive.
    """

    name = "knn"

    def __init__(self, n_classes: int, k: int = 20, temperature: float = 0.1, batch_size: int = 4096) -> None:
        self.n_classes = n_classes
        self.k = k
        self.temperature = temperature
        self.batch_size = batch_size
        self.index: Any = None
        self.labels: np.ndarray = np.zeros(0, dtype=np.int64)

    def fit(self, x: np.ndarray, y: np.ndarray) -> KnnSource:
        self.index = build_ip_index(x)
        self.labels = np.asarray(y, dtype=np.int64)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        out = np.empty((n, self.n_classes), dtype=np.float64)
        k = min(self.k, len(self.labels))
        for start in range(0, n, self.batch_size):
            q = np.ascontiguousarray(x[start : start + self.batch_size], dtype=np.float32)
            sims, idx = self.index.search(q, k)
            valid = idx >= 0
            w = np.where(valid, np.exp((sims - sims[:, :1]) / self.temperature), 0.0)
            votes = np.zeros((len(q), self.n_classes), dtype=np.float64)
            rows = np.repeat(np.arange(len(q)), k).reshape(len(q), k)
            np.add.at(votes, (rows[valid], self.labels[idx[valid]]), w[valid])
            votes += 1.0 / self.n_classes
            out[start : start + len(q)] = votes / votes.sum(axis=1, keepdims=True)
        return out


class ProbeSource(Source):
    """Linear probe: multinomial logistic regression (L2, ``C``) on the embeddings.

    Classes that have no labels get probability 0 (floored to :data:`EPS` when pooled)."""

    name = "probe"

    def __init__(self, n_classes: int, c: float = 1.0, seed: int = 0) -> None:
        self.n_classes = n_classes
        self.c = c
        self.seed = seed
        self.model: Any = None
        self.constant: int | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> ProbeSource:
        from sklearn.linear_model import LogisticRegression

        classes = np.unique(y)
        if len(classes) < 2:  # a fold can see a single class: predict it
            self.constant = int(classes[0])
            return self
        self.constant = None
        self.model = LogisticRegression(C=self.c, max_iter=2000, random_state=self.seed)
        self.model.fit(np.asarray(x, dtype=np.float32), y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), self.n_classes), dtype=np.float64)
        if self.constant is not None:
            out[:, self.constant] = 1.0
            return out
        out[:, self.model.classes_] = self.model.predict_proba(np.asarray(x, dtype=np.float32))
        return out


#: name -> factory(config, context) -> Source. Zero-shot is added only when the context has class text.
SOURCES: dict[str, Callable[[SuggestConfig, SourceContext], Source]] = {
    "zero_shot": lambda cfg, ctx: ZeroShotSource(_require(ctx.class_text, "class text"), ctx.logit_scale),
    "knn": lambda cfg, ctx: KnnSource(ctx.n_classes, cfg.k, cfg.knn_temperature, cfg.batch_size),
    "probe": lambda cfg, ctx: ProbeSource(ctx.n_classes, cfg.probe_c, cfg.seed),
}


def _require(value: np.ndarray | None, what: str) -> np.ndarray:
    if value is None:
        raise SuggestError(f"this source needs {what}")
    return value


def build_ip_index(x: np.ndarray) -> Any:
    """A FAISS inner-product index over the rows of ``x``: exact (flat) up to :data:`EXACT_KNN_LIMIT` rows, HNSW
    (M = 32, efSearch = 128) above."""
    import faiss

    data = np.ascontiguousarray(x, dtype=np.float32)
    dim = data.shape[1]
    index: Any
    if len(data) <= EXACT_KNN_LIMIT:
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    index.add(data)
    return index


def usable_sources(
    y: np.ndarray, config: SuggestConfig, context: SourceContext
) -> tuple[list[str], dict[str, str]]:
    """Return ``(source names to use, {skipped source: why})`` for labels ``y``."""
    counts = np.bincount(y, minlength=context.n_classes) if len(y) else np.zeros(context.n_classes, int)
    present = counts[counts > 0]
    use: list[str] = []
    skipped: dict[str, str] = {}
    for name in SOURCES:
        if name == "zero_shot":
            if context.class_text is None:
                skipped[name] = "no text tower (image-only model) or --no-zero-shot"
                continue
        elif len(present) < 2:
            skipped[name] = f"needs labels of at least 2 classes (have {len(present)})"
            continue
        elif name == "probe" and present.min() < config.min_labels_per_class:
            skipped[name] = (
                f"needs >= {config.min_labels_per_class} labels in every labelled class "
                f"(smallest has {int(present.min())})"
            )
            continue
        use.append(name)
    return use, skipped


# -- cross-validation, pooling, calibration ----------------------------------------------------------------------


def stratified_folds(y: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold splits of ``y`` (``min(n_folds, largest class)`` folds, at least 2; plain k-fold when every
    class has a single label)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(y)
    n_splits = max(2, min(n_folds, int(counts.max()), len(y)))
    if counts.max() < 2:  # every class a singleton: nothing to stratify
        return list(KFold(n_splits=min(n_folds, len(y)), shuffle=True, random_state=seed).split(y))
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only N members"
        return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), y)]


def out_of_fold(
    names: Sequence[str], x: np.ndarray, y: np.ndarray, config: SuggestConfig, context: SourceContext
) -> dict[str, np.ndarray]:
    """Out-of-fold probabilities of each source for the labelled items ``x, y`` (fixed sources: plain predictions)."""
    out: dict[str, np.ndarray] = {}
    folds = stratified_folds(y, config.folds, config.seed) if len(y) >= 2 else []
    for name in names:
        source = SOURCES[name](config, context)
        if not source.needs_labels:
            out[name] = source.predict(x)
            continue
        probs = np.zeros((len(y), context.n_classes), dtype=np.float64)
        for train, test in folds:
            probs[test] = SOURCES[name](config, context).fit(x[train], y[train]).predict(x[test])
        out[name] = probs
    return out


def _log(p: np.ndarray) -> np.ndarray:
    return np.asarray(np.log(np.clip(p, EPS, 1.0)))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on labels ``y`` (1-D search over log T)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return 1.0
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[rows, y] - np.log(np.exp(z).sum(axis=1))).mean())

    result = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded")
    return float(math.exp(result.x))


@dataclass
class Pooling:
    """Log-linear pooling of sources: ``softmax(sum_s weights[s] * log p_s / temperature)``."""

    names: list[str]
    weights: np.ndarray
    temperature: float = 1.0

    def logits(self, probs: Mapping[str, np.ndarray]) -> np.ndarray:
        total: np.ndarray | None = None
        for name, weight in zip(self.names, self.weights, strict=True):
            part = weight * _log(probs[name])
            total = part if total is None else total + part
        if total is None:
            raise SuggestError("no source to pool")
        return total

    def combine(self, probs: Mapping[str, np.ndarray], calibrated: bool = True) -> np.ndarray:
        """Pooled probabilities (temperature-scaled unless ``calibrated`` is False)."""
        return softmax(self.logits(probs) / (self.temperature if calibrated else 1.0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "weights": {n: round(float(w), 4) for n, w in zip(self.names, self.weights, strict=True)},
            "temperature": round(self.temperature, 4),
        }


def fit_pooling(probs: Mapping[str, np.ndarray], y: np.ndarray) -> Pooling:
    """Fit the pooling on out-of-fold ``probs`` of labelled items ``y``.

    The weights minimise the NLL of ``softmax(sum_s w_s log p_s)`` with ``w >= 0`` (L-BFGS-B) and are then
    normalised to sum to 1; the temperature is then fitted on the normalised pooling (:func:`fit_temperature`).
    With one source, its weight is 1; with no labels, weights are equal and ``T = 1``.
    """
    from scipy.optimize import minimize

    names = list(probs)
    if not names:
        raise SuggestError("no source to pool")
    s = len(names)
    if len(y) == 0:
        return Pooling(names, np.full(s, 1.0 / s), 1.0)
    logs = np.stack([_log(probs[n]) for n in names])  # (S, n, C)
    rows = np.arange(len(y))
    weights: np.ndarray
    if s == 1:
        weights = np.ones(1)
    else:

        def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
            z = np.tensordot(w, logs, axes=1)
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            value = -(z[rows, y] - np.log(np.exp(z).sum(axis=1))).mean()
            # d/dw_s = mean over items of (E_p[log p_s] - log p_s[y])
            grad = (np.einsum("snc,nc->sn", logs, p) - logs[:, rows, y]).mean(axis=1)
            return float(value), grad

        result = minimize(nll, np.full(s, 1.0 / s), jac=True, method="L-BFGS-B", bounds=[(0.0, 50.0)] * s)
        weights = np.asarray(result.x, dtype=np.float64)
        if weights.sum() <= 0:
            weights = np.ones(s)
    weights = weights / weights.sum()
    pooling = Pooling(names, weights, 1.0)
    pooling.temperature = fit_temperature(pooling.logits(probs), y)
    return pooling


def cross_fitted(
    probs: Mapping[str, np.ndarray], y: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Held-out pooled predictions: fit the pooling on one half of the labelled items, apply it to the other, and
    the other way round. Returns ``(uncalibrated, calibrated)`` probabilities, or None when a half would lack a
    class that the other has (too few labels)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    if len(y) < 10 or counts[counts > 0].min() < 2:
        return None
    n_classes = next(iter(probs.values())).shape[1]
    raw = np.zeros((len(y), n_classes))
    cal = np.zeros((len(y), n_classes))
    splitter = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
    for fit_rows, eval_rows in splitter.split(np.zeros(len(y)), y):
        pooling = fit_pooling({n: p[fit_rows] for n, p in probs.items()}, y[fit_rows])
        held = {n: p[eval_rows] for n, p in probs.items()}
        raw[eval_rows] = pooling.combine(held, calibrated=False)
        cal[eval_rows] = pooling.combine(held, calibrated=True)
    return raw, cal


@dataclass
class Suggester:
    """Sources fitted on every label plus the pooling fitted on their out-of-fold predictions.

    Build one with :func:`fit_suggester`; :meth:`predict` gives pooled, calibrated probabilities for new
    embeddings; :attr:`oof` holds each source's out-of-fold probabilities of the labelled items, :attr:`pooled_oof`
    their pooled ones.
    """

    sources: dict[str, Source]
    pooling: Pooling
    oof: dict[str, np.ndarray]
    pooled_oof: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)

    def source_probs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {name: src.predict(x) for name, src in self.sources.items()}

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.pooling.combine(self.source_probs(x))


def fit_suggester(x: np.ndarray, y: np.ndarray, config: SuggestConfig, context: SourceContext) -> Suggester:
    """Cross-validate the usable sources on labelled ``x, y``, fit the pooling, refit the sources on everything.

    Raises :class:`SuggestError` when no source is usable (no labels of two classes and no zero-shot).
    """
    names, skipped = usable_sources(y, config, context)
    if not names:
        reasons = "; ".join(f"{n}: {why}" for n, why in skipped.items())
        raise SuggestError(
            f"nothing to suggest from ({reasons}); give labels (weak labels at ingest, `emo8 labels import`, "
            "annotation rounds) or use an open_clip model for zero-shot"
        )
    oof = out_of_fold(names, x, y, config, context)
    pooling = fit_pooling(oof, y)
    sources = {n: SOURCES[n](config, context).fit(x, y) for n in names}
    pooled = pooling.combine(oof) if len(y) else np.zeros((0, context.n_classes))
    return Suggester(sources, pooling, oof, pooled, skipped)


def held_out_probs(
    suggester: Suggester, y: np.ndarray, config: SuggestConfig
) -> tuple[dict[str, np.ndarray], str]:
    """``({source or pooling: held-out probabilities of the labelled items}, how they were obtained)``."""
    table: dict[str, np.ndarray] = dict(suggester.oof)
    crossed = cross_fitted(suggester.oof, y, config.seed)
    note = (
        "out-of-fold predictions; pooled rows cross-fitted (weights and temperature fitted on the other half)"
    )
    if crossed is None:
        table["combined_uncalibrated"] = suggester.pooling.combine(suggester.oof, calibrated=False)
        table["combined"] = suggester.pooled_oof
        note = "too few labels to cross-fit the pooling: pooled rows are in-sample (optimistic)"
    else:
        table["combined_uncalibrated"], table["combined"] = crossed
    return table, note


def evaluate(
    suggester: Suggester,
    y: np.ndarray,
    groups: Sequence[str] | None,
    config: SuggestConfig,
    held: tuple[dict[str, np.ndarray], str] | None = None,
) -> dict[str, Any]:
    """Held-out metrics of each source and of the pooling (raw and calibrated), overall and per group (``held``:
    :func:`held_out_probs`, when already computed)."""
    if len(y) == 0:
        return {"note": "no labelled items: nothing to evaluate"}
    table, note = held if held is not None else held_out_probs(suggester, y, config)
    report: dict[str, Any] = {
        "note": note,
        "majority_baseline": round(float(np.bincount(y).max() / len(y)), 4),
        "overall": {name: classification_metrics(p, y, config.ece_bins) for name, p in table.items()},
    }
    if groups is not None:
        per: dict[str, Any] = {}
        g = np.asarray(groups, dtype=object)
        for value in sorted(set(g.tolist())):
            mask = g == value
            per[str(value)] = {
                name: classification_metrics(p[mask], y[mask], config.ece_bins) for name, p in table.items()
            }
        report["per_domain"] = per
    return report


# -- the workspace stage ------------------------------------------------------------------------------------------


@dataclass
class SuggestSummary:
    """What one ``emo8 suggest`` run did."""

    model: str
    version: str
    labelled: int = 0
    labels_by_source: dict[str, int] = field(default_factory=dict)
    labels_per_class: dict[str, int] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    suggested: int = 0
    up_to_date: int = 0
    missing_embeddings: int = 0
    pooling: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    predicted: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    report_path: str | None = None
    html_path: str | None = None


def collect_labels(ws: Workspace, sources: Sequence[str] = LABEL_SOURCES) -> pd.DataFrame:
    """Return ``item_id, label, label_source`` of every valid item that has a usable label.

    ``sources`` lists where labels may come from, highest precedence first: ``annotation`` (column ``label``,
    counted when ``settled = 1``, or always when the catalog has no ``settled`` column), ``imported``
    (``imported_label``) and ``weak`` (``weak_label``). Labels that are not one of the 8 emotions are ignored.
    """
    unknown = [s for s in sources if s not in LABEL_SOURCES]
    if unknown:
        raise SuggestError(f"unknown label source(s) {unknown}; choose from {', '.join(LABEL_SOURCES)}")
    existing = set(ws.catalog.columns())
    columns = ["item_id"] + [
        c for c in ("label", "settled", IMPORTED_LABEL_COLUMN, "weak_label") if c in existing
    ]
    df = ws.catalog.items(columns, where="status = 'valid'")
    label = pd.Series([None] * len(df), index=df.index, dtype=object)
    origin = pd.Series([None] * len(df), index=df.index, dtype=object)
    for src in reversed(list(sources)):  # lowest precedence first, overwritten by higher ones
        if src == "annotation" and "label" in df.columns:
            values = df["label"].map(lambda v: normalise_label(v) if isinstance(v, str) else None)
            if "settled" in df.columns:
                values = values.where(pd.to_numeric(df["settled"], errors="coerce") == 1, None)
        elif src == "imported" and IMPORTED_LABEL_COLUMN in df.columns:
            values = df[IMPORTED_LABEL_COLUMN].map(
                lambda v: normalise_label(v) if isinstance(v, str) else None
            )
        elif src == "weak" and "weak_label" in df.columns:
            values = df["weak_label"].map(lambda v: normalise_label(v) if isinstance(v, str) else None)
        else:
            continue
        has = values.notna()
        label = label.where(~has, values)
        origin = origin.where(~has, src)
    out = pd.DataFrame({"item_id": df["item_id"], "label": label, "label_source": origin})
    return out[out["label"].notna()].reset_index(drop=True)


def load_embeddings(ws: Workspace, key: str) -> tuple[list[str], np.ndarray]:
    """The embedding store's ``(item ids, L2-normalised matrix)`` for ``key`` (memory-mapped when possible).

    Raises :class:`SuggestError` when the embedding stage is missing or has no embeddings for ``key``.
    """
    from emo8.embed.run import EmbeddingStoreError
    from emo8.embed.run import load_embeddings as load_store

    try:
        ids, matrix = load_store(ws, key)
    except EmbeddingStoreError as exc:
        raise SuggestError(str(exc)) from exc
    return [str(i) for i in ids], matrix


def class_text_embeddings(encoder: Encoder, classes: Sequence[str] = EMOTIONS) -> np.ndarray:
    """``(len(classes), dim)`` text embeddings: per class, the normalised mean of its normalised prompt embeddings."""
    rows = []
    for name in classes:
        feats = encoder.encode_text(prompts(name)).numpy().astype(np.float64)
        mean = feats.mean(axis=0)
        rows.append(mean / max(np.linalg.norm(mean), 1e-12))
    return np.asarray(rows, dtype=np.float32)


def _zero_shot_context(ws: Workspace, config: SuggestConfig, notes: list[str]) -> SourceContext:
    """Load the model's text tower (open_clip only) with the weights that computed the stored embeddings."""
    context = SourceContext(n_classes=len(EMOTIONS))
    if not config.zero_shot:
        notes.append("zero-shot off (--no-zero-shot)")
        return context
    from emo8.embed.encoders import EncoderSpec, load_encoder, parse_key
    from emo8.embed.run import EmbeddingStore, store_spec

    family, _ = parse_key(config.model)
    if family != "open_clip":
        notes.append(f"zero-shot skipped: {config.model} is an image-only model (no text tower)")
        return context
    if config.weights or config.random_init:
        spec = EncoderSpec(config.model, config.weights, config.random_init, config.device)
    else:
        spec = store_spec(ws, config.model, config.device)
    encoder = load_encoder(spec)
    stored = EmbeddingStore.for_key(ws, config.model).manifest.get("fingerprint")
    if stored is not None and stored != encoder.fingerprint:
        raise SuggestError(
            f"the text tower's weights ({encoder.fingerprint}) are not the ones that computed the stored "
            f"{config.model} embeddings ({stored}); pass the same --weights, or --no-zero-shot"
        )
    if encoder.text_features is None:
        notes.append(f"zero-shot skipped: {config.model} has no text tower")
        return context
    context.class_text = class_text_embeddings(encoder)
    scale = getattr(encoder.model, "logit_scale", None)
    if scale is not None:
        context.logit_scale = float(scale.detach().exp().clamp(max=100.0).item())
    return context


def suggestion_version(config: SuggestConfig, labels: pd.DataFrame, context: SourceContext) -> str:
    """A digest of what determines the suggestions: settings, labels, and the zero-shot class text."""
    digest = hashlib.sha256(json.dumps(config.fingerprint_fields(), sort_keys=True).encode())
    pairs = sorted(zip(labels["item_id"].astype(str), labels["label"].astype(str), strict=True))
    digest.update(json.dumps(pairs).encode())
    if context.class_text is not None:
        digest.update(np.round(context.class_text, 4).tobytes())
    return "sg-" + digest.hexdigest()[:12]


def _batches(seq: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _rows(probs: np.ndarray) -> tuple[list[str], list[str], list[float]]:
    labels = [EMOTIONS[i] for i in probs.argmax(axis=1)]
    as_json = [json.dumps([round(float(v), 6) for v in row]) for row in probs]
    ent = [round(float(v), 6) for v in entropy(probs)]
    return labels, as_json, ent


def suggest(
    ws: Workspace,
    config: SuggestConfig = SuggestConfig(),
    progress: bool = True,
    notes: list[str] | None = None,
) -> SuggestSummary:
    """Compute suggestions for every valid item with an embedding whose suggestion is missing or stale.

    Parameters
    ----------
    ws
        The workspace.
    config
        Settings (see :class:`SuggestConfig`).
    progress
        Show a progress bar.
    notes
        Collects human-readable notes (e.g. "zero-shot skipped ...").

    Returns
    -------
    A :class:`SuggestSummary`; ``reports/suggest.json`` is written whenever something was computed.
    """
    notes = notes if notes is not None else []
    started = time.monotonic()
    ids, matrix = load_embeddings(ws, config.model)
    row_of = {item_id: i for i, item_id in enumerate(ids)}
    ws.catalog.ensure_columns(SUGGEST_COLUMNS)
    items = ws.catalog.items(["item_id", "domain", "suggestion_version"], where="status = 'valid'")
    has_embedding = items["item_id"].isin(row_of)
    labels = collect_labels(ws, config.label_sources)
    labels = labels[labels["item_id"].isin(row_of)].reset_index(drop=True)
    context = _zero_shot_context(ws, config, notes)
    version = suggestion_version(config, labels, context)
    summary = SuggestSummary(model=config.model, version=version, labelled=len(labels))
    summary.missing_embeddings = int((~has_embedding).sum())
    summary.labels_by_source = dict(Counter(labels["label_source"]))
    summary.labels_per_class = {e: int((labels["label"] == e).sum()) for e in EMOTIONS}
    todo = items[has_embedding & (items["suggestion_version"] != version)]
    summary.up_to_date = int(has_embedding.sum()) - len(todo)
    if todo.empty:
        summary.seconds = time.monotonic() - started
        return summary

    lab_rows = np.array([row_of[i] for i in labels["item_id"]], dtype=np.int64)
    order = np.argsort(lab_rows, kind="stable")
    x_lab = np.asarray(matrix[lab_rows[order]], dtype=np.float32)[np.argsort(order, kind="stable")]
    y = np.array([EMOTIONS.index(lab) for lab in labels["label"]], dtype=np.int64)
    with stage_steps("suggest", ["fitting the sources", "held-out evaluation"], progress) as done:
        suggester = fit_suggester(x_lab, y, config, context)
        done("fitting the sources")
        summary.sources = list(suggester.sources)
        summary.skipped = suggester.skipped
        summary.pooling = suggester.pooling.as_dict()
        domains = items.set_index("item_id")["domain"].reindex(labels["item_id"]).fillna("(none)").astype(str)
        held = held_out_probs(suggester, y, config) if len(y) else None
        summary.metrics = evaluate(suggester, y, list(domains), config, held)
        done("held-out evaluation")

    oof_row = {item_id: i for i, item_id in enumerate(labels["item_id"])}
    todo_ids = list(todo["item_id"])
    predicted: Counter[str] = Counter()
    with stage_bar("suggest", len(todo_ids), progress, "writing suggestions") as advance:
        # rows in embedding order, so memory-mapped reads are sequential
        todo_ids.sort(key=lambda i: row_of[i])
        for chunk_positions in _batches(range(len(todo_ids)), config.batch_size):
            chunk = [todo_ids[p] for p in chunk_positions]
            probs = np.zeros((len(chunk), len(EMOTIONS)))
            unl = [p for p, item_id in enumerate(chunk) if item_id not in oof_row]
            lab = [p for p, item_id in enumerate(chunk) if item_id in oof_row]
            if unl:
                rows = np.array([row_of[chunk[p]] for p in unl], dtype=np.int64)
                probs[unl] = suggester.predict(np.asarray(matrix[rows], dtype=np.float32))
            if lab:
                probs[lab] = suggester.pooled_oof[[oof_row[chunk[p]] for p in lab]]
            names, as_json, ent = _rows(probs)
            predicted.update(names)
            ws.catalog.update_items(
                chunk,
                {
                    "suggested_label": names,
                    "suggestion_probs": as_json,
                    "suggestion_entropy": ent,
                    "suggestion_version": [version] * len(chunk),
                },
            )
            summary.suggested += len(chunk)
            advance(len(chunk))
    summary.predicted = dict(predicted)
    summary.seconds = time.monotonic() - started
    summary.report_path = str(_write_report(ws, config, summary, notes))
    from emo8.label.suggest_report import write_suggest_html

    summary.html_path = str(
        write_suggest_html(
            ws,
            json.loads(Path(summary.report_path).read_text()),
            held[0] if held is not None else {},
            y,
        )
    )
    return summary


def _write_report(ws: Workspace, config: SuggestConfig, summary: SuggestSummary, notes: list[str]) -> Path:
    from emo8.core.workspace import _atomic_write

    report = {
        "created_at": utc_now(),
        "version": summary.version,
        "model": config.model,
        "config": config.fingerprint_fields(),
        "labels": {
            "n": summary.labelled,
            "by_source": summary.labels_by_source,
            "per_class": summary.labels_per_class,
        },
        "sources": summary.sources,
        "skipped_sources": summary.skipped,
        "pooling": summary.pooling,
        "metrics": summary.metrics,
        "suggested": summary.suggested,
        "predicted_per_class": summary.predicted,
        "missing_embeddings": summary.missing_embeddings,
        "notes": notes,
    }
    path = ws.reports_dir / "suggest.json"
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(
        path, json.dumps(report, indent=2, allow_nan=False, default=_json_default).encode(), ws.tmp_dir
    )
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


# -- labels import -------------------------------------------------------------------------------------------------


@dataclass
class LabelImportSummary:
    """What ``emo8 labels import`` did."""

    rows: int = 0
    updated: int = 0
    unchanged: int = 0
    unknown_item: int = 0
    unknown_label: int = 0
    not_valid: int = 0
    per_class: dict[str, int] = field(default_factory=dict)


def import_labels(
    ws: Workspace, path: str | Path, id_col: str | None = None, label_col: str = "label"
) -> LabelImportSummary:
    """Import labels from a CSV file with an item id (``item_id``) or content hash (``sha256``) column and a label
    column into the item column ``imported_label``.

    Parameters
    ----------
    ws
        The workspace.
    path
        The CSV file (any delimiter pandas sniffs: comma, tab, semicolon).
    id_col
        The identifying column; by default ``item_id`` if present, else ``sha256``.
    label_col
        The label column (one of the 8 emotions, any case).

    Returns
    -------
    A :class:`LabelImportSummary`. Rows with unknown ids or labels are counted and skipped; importing the same
    file again changes nothing (``unchanged``). Labels of non-valid items (duplicates, rejected) are stored too but
    counted as ``not_valid``: the stages only learn from valid items.
    """
    try:
        table = pd.read_csv(path, dtype=str, sep=None, engine="python", keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SuggestError(f"cannot read {path}: {exc}") from exc
    if id_col is None:
        id_col = next((c for c in ("item_id", "sha256") if c in table.columns), None)
    if id_col is None or id_col not in table.columns:
        raise SuggestError(f"{path} needs an item_id or sha256 column (has {', '.join(table.columns)})")
    if label_col not in table.columns:
        raise SuggestError(f"{path} has no {label_col!r} column (has {', '.join(table.columns)})")
    ws.catalog.ensure_columns({IMPORTED_LABEL_COLUMN: "TEXT"})
    key = "sha256" if id_col == "sha256" else "item_id"
    catalog = ws.catalog.items(["item_id", "sha256", "status", IMPORTED_LABEL_COLUMN])
    lookup = catalog.dropna(subset=[key]).set_index(key)
    summary = LabelImportSummary(rows=len(table))
    updates: dict[str, str] = {}
    per_class: Counter[str] = Counter()
    for raw_id, raw_label in zip(table[id_col], table[label_col], strict=True):
        ident = raw_id.strip().lower() if key == "sha256" else raw_id.strip()
        name = normalise_label(raw_label)
        if name is None:
            summary.unknown_label += 1
            continue
        if ident not in lookup.index:
            summary.unknown_item += 1
            continue
        row = lookup.loc[ident]
        if isinstance(row, pd.DataFrame):
            row = row.iloc[0]
        if row["status"] != "valid":
            summary.not_valid += 1
        per_class[name] += 1
        item_id = str(row["item_id"]) if key == "sha256" else ident
        if row[IMPORTED_LABEL_COLUMN] == name and item_id not in updates:
            summary.unchanged += 1
            continue
        updates[item_id] = name
    if updates:
        ws.catalog.update_items(list(updates), {IMPORTED_LABEL_COLUMN: list(updates.values())})
    summary.updated = len(updates)
    summary.per_class = dict(per_class)
    return summary
