"""Label-quality, distribution, bias and image-quality audit of a workspace, as a self-contained HTML report.

:func:`audit` runs the sections of :data:`SECTIONS` in order over the ``valid`` items and writes
``reports/audit.html`` (inline PNG plots, thumbnail galleries of flagged items; no external file is referenced)
and ``reports/audit.json`` (every number, every flagged item):

``label_issues``
    Confident learning (cleanlab's ``find_label_issues``) on out-of-fold predicted probabilities of a probe
    (:data:`PROBES`: a linear probe, i.e. logistic regression, or a kNN vote) trained on the image embeddings of
    the labelled items. Skipped, and said so, when the workspace has no embeddings.
``cluster_conflicts``
    Dedup clusters (canonical item + duplicates) and single items found under several origins whose members or
    origins carry different labels.
``low_agreement``
    Annotated items whose agreement is below the threshold or that aggregation left unsettled.
``annotators``
    Annotators out of line: leave-one-out agreement with the other annotators of the same items, and how far
    their label distribution is from everyone's.
``distributions``
    Label x domain, label x source, licences, image sizes, brightness and colourfulness by label, class imbalance.
``bias``
    Suggestion accuracy and annotation agreement by domain and by source; groups that fall behind are called out.
``quality``
    Very dark or bright, blurry (variance of the Laplacian, cached in the column ``sharpness``) and tiny images.

The *label* of an item is its annotated ``label`` when it has one (settled or not), else a curator-imported
label, else its ``weak_label``; the report says how many of each. ``queue`` turns the flagged items of the
label sections into an annotation-round selection (``Catalog.save_selection``) for re-annotation.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emo8.core.curation import (
    IMPORTED_LABEL,
    cluster_ids,
    frame,
    present,
    workspace_embeddings,
)
from emo8.core.progress import stage_bar, stage_steps
from emo8.core.reporting import (
    ITEM_TABLE_CSS,
    REPORT_CSS,
    figure,
    item_lookup,
    item_table,
    name_html,
    png,
    thumbnail,
)
from emo8.core.taxonomy import EMOTIONS, normalise_label
from emo8.core.workspace import Workspace

_COLUMNS = (
    "status", "source", "sha256", "format", "width", "height", "license", "domain", "weak_label", IMPORTED_LABEL,
    "brightness", "colorfulness", "dup_of", "cluster_id", "label", "num_votes", "agreement", "settled",
    "unsettled_reason", "suggested_label", "sharpness",
)  # fmt: skip

#: Sections that feed ``--queue`` (re-annotation candidates), in priority order.
QUEUE_SECTIONS = ("label_issues", "cluster_conflicts", "low_agreement", "annotators")


@dataclass(frozen=True)
class AuditConfig:
    """Audit settings.

    Parameters
    ----------
    out
        HTML report path; default ``<workspace>/reports/audit.html``. The JSON goes next to it (``.json``).
    model
        Embedding model key for the probe; None = dedup's, or the only one stored.
    probe
        Name in :data:`PROBES` (``linear`` or ``knn``).
    folds
        Cross-validation folds for the out-of-fold probabilities (fewer when a class is small).
    probe_c
        Inverse regularisation of the linear probe (on L2-normalised embeddings).
    knn_k
        Neighbours of the kNN probe.
    seed
        Fold assignment.
    min_agreement
        Below this agreement an annotated item is "low agreement".
    min_group
        Smallest group (domain, source, annotator) whose rate is judged in the bias and annotator sections.
    behind_margin
        A group "falls behind" when its rate is this much below the overall rate.
    annotator_margin
        An annotator is out of line when their agreement is this much below the median annotator's, or their
        label distribution is more than ``annotator_tvd`` (total variation) from everyone's.
    annotator_tvd
        See ``annotator_margin``.
    dark, bright
        Brightness (mean luma in [0, 1]) below/above which an image is flagged.
    blur
        Variance of the Laplacian (grey levels 0-255, image at most 256 px on its longer side) below which an image
        is flagged as blurry.
    tiny
        Shorter side (pixels) below which an image is flagged as tiny.
    gallery_limit
        Thumbnails per gallery.
    thumb_side
        Longer side of a thumbnail, in pixels.
    workers
        Processes that decode images for the sharpness signal (1 = in this process).
    queue
        Save the flagged items as the selection of this annotation round.
    progress
        Show progress bars (sections, the sharpness pass over the images).
    """

    out: Path | None = None
    model: str | None = None
    probe: str = "linear"
    folds: int = 5
    probe_c: float = 10.0
    knn_k: int = 10
    seed: int = 0
    min_agreement: float = 0.6
    min_group: int = 5
    behind_margin: float = 0.1
    annotator_margin: float = 0.15
    annotator_tvd: float = 0.3
    dark: float = 0.08
    bright: float = 0.95
    blur: float = 20.0
    tiny: int = 224
    gallery_limit: int = 48
    thumb_side: int = 128
    workers: int = 1
    queue: str | None = None
    progress: bool = True


@dataclass
class Table:
    caption: str
    frame: pd.DataFrame

    def as_dict(self) -> dict[str, Any]:
        return {"caption": self.caption, "rows": json.loads(self.frame.to_json(orient="records"))}


@dataclass
class Thumb:
    item_id: str
    sha256: str
    caption: str
    uri: str = ""


@dataclass
class Section:
    """One part of the report."""

    key: str
    title: str
    summary: str = ""
    skipped: str | None = None
    tables: list[Table] = field(default_factory=list)
    plots: list[tuple[str, str]] = field(default_factory=list)
    gallery: list[Thumb] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "summary": self.summary,
            "skipped": self.skipped,
            "flagged": self.flagged,
            "data": self.data,
            "tables": [t.as_dict() for t in self.tables],
        }


@dataclass
class AuditResult:
    """What :func:`audit` found and wrote."""

    html: Path
    json: Path
    items: int
    labelled: int
    label_kinds: dict[str, int]
    sections: dict[str, Section]
    queued: int = 0
    seconds: float = 0.0

    def flagged(self, section: str) -> list[str]:
        """Item ids flagged by ``section``."""
        return self.sections[section].flagged


# -- context ----------------------------------------------------------------------------------------------------------


@dataclass
class _Context:
    ws: Workspace
    config: AuditConfig
    items: pd.DataFrame  # valid items, with given_label / label_kind
    everything: pd.DataFrame  # valid + duplicate items (clusters)

    @property
    def labelled(self) -> pd.DataFrame:
        return self.items[self.items["given_label"].notna()]


def given_labels(items: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """``(label, kind)`` per row: annotated ``label`` (any), else imported, else weak; kind names which."""
    label = pd.Series([None] * len(items), index=items.index, dtype=object)
    kind = pd.Series([None] * len(items), index=items.index, dtype=object)
    for column, name in (("weak_label", "weak"), (IMPORTED_LABEL, "imported"), ("label", "annotation")):
        if column in items.columns:
            values = items[column].map(lambda v: normalise_label(v) if present(v) else None)
            has = values.notna()
            label = label.where(~has, values)
            kind = kind.where(~has, name)
    return label, kind


# -- probes -----------------------------------------------------------------------------------------------------------

Probe = Callable[[AuditConfig, int], Any]
#: Probe name -> factory of a scikit-learn classifier with ``predict_proba``.
PROBES: dict[str, Probe] = {}


def probe(name: str) -> Callable[[Probe], Probe]:
    """Decorator: register a probe factory ``(config, n_train) -> classifier`` under ``name``."""

    def register(fn: Probe) -> Probe:
        PROBES[name] = fn
        return fn

    return register


@probe("linear")
def _linear(config: AuditConfig, n_train: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=config.probe_c, max_iter=2000)


@probe("knn")
def _knn(config: AuditConfig, n_train: int) -> Any:
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(
        n_neighbors=max(1, min(config.knn_k, n_train - 1)), weights="distance", metric="cosine"
    )


def out_of_fold_probs(x: np.ndarray, y: np.ndarray, config: AuditConfig) -> np.ndarray:
    """Out-of-fold ``predict_proba`` of the configured probe (stratified folds, as many as the smallest class
    allows, at most ``config.folds``); columns follow ``0..max(y)``."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    folds = int(max(2, min(config.folds, counts[counts > 0].min())))
    k = int(y.max()) + 1
    probs = np.zeros((len(y), k), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    for train, test in splitter.split(x, y):
        model = PROBES[config.probe](config, len(train))
        model.fit(x[train], y[train])
        probs[np.ix_(test, model.classes_)] = model.predict_proba(x[test])
    return probs


# -- sections ---------------------------------------------------------------------------------------------------------

SectionFn = Callable[[_Context], Section]
#: Section key -> function, in report order.
SECTIONS: dict[str, SectionFn] = {}


def section(key: str) -> Callable[[SectionFn], SectionFn]:
    """Decorator: register a report section under ``key`` (appended to the report)."""

    def register(fn: SectionFn) -> SectionFn:
        SECTIONS[key] = fn
        return fn

    return register


def _no_labels(key: str, title: str) -> Section:
    return Section(
        key,
        title,
        skipped="no labelled items: there is nothing to check yet (annotate a round, import labels, or ingest "
        "with weak labels)",
    )


def _thumbs(ctx: _Context, rows: pd.DataFrame, caption: Callable[[Any], str]) -> list[Thumb]:
    return [
        Thumb(str(r.item_id), str(r.sha256), caption(r))
        for r in rows.head(ctx.config.gallery_limit).itertuples(index=False)
    ]


@section("label_issues")
def _label_issues(ctx: _Context) -> Section:
    title = "Label issues (confident learning)"
    labelled = ctx.labelled
    if labelled.empty:
        return _no_labels("label_issues", title)
    embeddings = workspace_embeddings(ctx.ws, ctx.config.model)
    if embeddings is None:
        return Section(
            "label_issues",
            title,
            skipped="no embeddings in this workspace: confident learning needs them (run `emo8 embed`); "
            "this section is skipped",
        )
    key, ids, matrix = embeddings
    row_of = {item_id: i for i, item_id in enumerate(ids)}
    usable = labelled[labelled["item_id"].isin(row_of)]
    counts = Counter(usable["given_label"])
    kept_classes = sorted((c for c, n in counts.items() if n >= 2), key=EMOTIONS.index)
    dropped = {c: n for c, n in counts.items() if n < 2}
    usable = usable[usable["given_label"].isin(kept_classes)].reset_index(drop=True)
    if len(kept_classes) < 2:
        return Section(
            "label_issues",
            title,
            skipped=f"fewer than 2 classes with 2+ embedded labelled items ({dict(counts)}): no probe can be trained",
        )
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    x = np.asarray(matrix[[row_of[i] for i in usable["item_id"]]], dtype=np.float32)
    y = np.array([kept_classes.index(c) for c in usable["given_label"]])
    probs = out_of_fold_probs(x, y, ctx.config)
    ranked = find_label_issues(labels=y, pred_probs=probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(y, probs)
    predicted = probs.argmax(axis=1)
    accuracy = float((predicted == y).mean())
    issues = usable.iloc[ranked].assign(
        suggested=[kept_classes[predicted[i]] for i in ranked],
        quality=[float(quality[i]) for i in ranked],
        confidence=[float(probs[i, predicted[i]]) for i in ranked],
    )
    per_class = Counter(issues["given_label"])
    table = issues[["item_id", "sha256", "given_label", "label_kind", "suggested", "quality", "confidence"]]
    sec = Section(
        "label_issues",
        title,
        summary=f"{len(issues)} of {len(usable)} labelled items look mislabelled (cleanlab find_label_issues on "
        f"out-of-fold probabilities of a {ctx.config.probe} probe on {key} embeddings; probe accuracy "
        f"{accuracy:.2f} over {len(kept_classes)} classes, chance {1 / len(kept_classes):.2f}). Ranked by label "
        "quality, worst first.",
        tables=[
            Table("Flagged items", table.round(3).head(200)),
            Table(
                "Issues per class",
                pd.DataFrame(
                    [{"label": c, "items": counts[c], "issues": per_class.get(c, 0)} for c in kept_classes]
                ),
            ),
        ],
        flagged=[str(i) for i in issues["item_id"]],
        data={
            "model": key,
            "probe": ctx.config.probe,
            "probe_accuracy": round(accuracy, 4),
            "classes": kept_classes,
            "items_checked": len(usable),
            "skipped_small_classes": dropped,
            "not_embedded": int(len(labelled) - labelled["item_id"].isin(row_of).sum()),
            "issues": [
                {
                    "item_id": str(r.item_id),
                    "sha256": str(r.sha256),
                    "label": r.given_label,
                    "suggested": r.suggested,
                    "quality": round(r.quality, 4),
                }
                for r in issues.itertuples(index=False)
            ],
        },
    )
    sec.gallery = _thumbs(
        ctx, issues, lambda r: f"{r.given_label} -> {r.suggested}? (quality {r.quality:.2f})"
    )
    if dropped:
        sec.summary += f" Classes with a single item were left out: {dropped}."
    return sec


@section("cluster_conflicts")
def _cluster_conflicts(ctx: _Context) -> Section:
    title = "Near-duplicates with conflicting labels"
    everything = ctx.everything
    label, _kind = given_labels(everything)
    frame_ = everything.assign(cluster=cluster_ids(everything), given=label)
    conflicts = []
    for cluster, group in frame_.groupby("cluster", sort=True):
        labels = sorted({str(v) for v in group["given"] if present(v)})
        if len(labels) > 1:
            canonical = group[group["status"] == "valid"]
            conflicts.append(
                {
                    "cluster": str(cluster),
                    "size": len(group),
                    "labels": ", ".join(labels),
                    "item_id": str((canonical if len(canonical) else group)["item_id"].iloc[0]),
                    "kind": "cluster",
                }
            )
    origins = ctx.ws.origins()
    valid_ids = set(ctx.items["item_id"])
    if not origins.empty:
        for item_id, group in origins.groupby("item_id", sort=True):
            labels = sorted(
                {n for v in group["weak_label"] if (n := normalise_label(v) if present(v) else None)}
            )
            if len(labels) > 1 and item_id in valid_ids:
                conflicts.append(
                    {
                        "cluster": str(item_id),
                        "size": len(group),
                        "labels": ", ".join(labels),
                        "item_id": str(item_id),
                        "kind": "origins",
                    }
                )
    table = pd.DataFrame(conflicts, columns=["cluster", "size", "labels", "item_id", "kind"])
    sec = Section(
        "cluster_conflicts",
        title,
        summary=f"{len(table)} groups of copies of one image carry different labels "
        f"({int((table['kind'] == 'cluster').sum())} dedup clusters, "
        f"{int((table['kind'] == 'origins').sum())} items found under differently labelled origins).",
        tables=[Table("Conflicting groups", table.head(200))] if len(table) else [],
        flagged=list(dict.fromkeys(table["item_id"])),
        data={"conflicts": conflicts},
    )
    shown = ctx.items.set_index("item_id").reindex(sec.flagged).reset_index()
    shown = shown.assign(labels=list(table.drop_duplicates("item_id")["labels"]))
    sec.gallery = _thumbs(ctx, shown[shown["sha256"].notna()], lambda r: r.labels)
    return sec


@section("low_agreement")
def _low_agreement(ctx: _Context) -> Section:
    title = "Low agreement and unsettled items"
    items = ctx.items
    annotated = items[
        items["label"].map(present) | items["num_votes"].map(lambda v: present(v) and int(v) > 0)
    ]
    if annotated.empty:
        return Section(
            title=title, key="low_agreement", skipped="no annotated items (no annotation round yet)"
        )
    agreement = pd.to_numeric(annotated["agreement"], errors="coerce")
    settled = pd.to_numeric(annotated["settled"], errors="coerce")
    low = annotated[(agreement < ctx.config.min_agreement) | (settled == 0)]
    low = low.assign(agreement=pd.to_numeric(low["agreement"], errors="coerce")).sort_values(
        ["agreement", "item_id"], na_position="first"
    )
    reasons = Counter(str(r) if present(r) else "low agreement" for r in low["unsettled_reason"])
    sec = Section(
        "low_agreement",
        title,
        summary=f"{len(low)} of {len(annotated)} annotated items have agreement below "
        f"{ctx.config.min_agreement} or are unsettled"
        + (f" ({', '.join(f'{k} {v}' for k, v in reasons.most_common())})" if reasons else "")
        + (f". Mean agreement {float(agreement.mean()):.3f}." if agreement.notna().any() else "."),
        tables=[
            Table(
                "Items",
                low[["item_id", "sha256", "label", "num_votes", "agreement", "unsettled_reason"]].head(200),
            )
        ],
        flagged=[str(i) for i in low["item_id"]],
        data={
            "items": len(low),
            "annotated": len(annotated),
            "reasons": dict(reasons),
            "mean_agreement": round(float(agreement.mean()), 4) if agreement.notna().any() else None,
        },
    )
    sec.gallery = _thumbs(
        ctx,
        low,
        lambda r: (
            f"{r.label if present(r.label) else 'no label'} (agreement "
            f"{f'{r.agreement:.2f}' if present(r.agreement) else 'n/a'}, "
            f"{int(r.num_votes) if present(r.num_votes) else 0} votes)"
        ),
    )
    return sec


def raw_annotations(ws: Workspace) -> pd.DataFrame | None:
    """Every individual vote as ``item_id, annotator, choice`` from the annotation stage's ``annotations`` table
    (deleted, cancelled and ground-truth annotations and "none/unclear" choices left out), or None when no round
    was ever pulled."""
    db = ws.catalog.connect()
    if (
        db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'annotations'").fetchone()
        is None
    ):
        return None
    from emo8.annotate.store import AnnotationStore

    df = AnnotationStore(ws.catalog).annotations()
    for flag in ("was_cancelled", "ground_truth"):
        if flag in df.columns:
            df = df[~df[flag].astype(bool)]
    out = pd.DataFrame(
        {
            "item_id": df["item_id"].astype(str),
            "annotator": df["annotator"].astype(str),
            "choice": df["choice"],
        }
    )
    out["choice"] = out["choice"].map(lambda v: normalise_label(v) if present(v) else None)
    return out[out["choice"].notna()].reset_index(drop=True)


@section("annotators")
def _annotators(ctx: _Context) -> Section:
    title = "Annotators out of line"
    votes = raw_annotations(ctx.ws)
    if votes is None or votes.empty:
        return Section(
            "annotators", title, skipped="no raw annotations in the catalog (no annotation round pulled yet)"
        )
    overall = votes["choice"].value_counts(normalize=True).reindex(list(EMOTIONS), fill_value=0.0)
    by_item = {item: Counter(group["choice"]) for item, group in votes.groupby("item_id")}
    rows = []
    for annotator, group in votes.groupby("annotator", sort=True):
        agree, judged = 0, 0
        for item, choice in zip(group["item_id"], group["choice"], strict=True):
            others = by_item[item].copy()
            others[choice] -= 1
            others = Counter({k: v for k, v in others.items() if v > 0})
            if not others:
                continue
            top = max(others.values())
            judged += 1
            agree += int(others.get(choice, 0) == top)
        dist = group["choice"].value_counts(normalize=True).reindex(list(EMOTIONS), fill_value=0.0)
        rows.append(
            {
                "annotator": str(annotator),
                "votes": len(group),
                "judged": judged,
                "agreement": agree / judged if judged else float("nan"),
                "tvd": float(0.5 * np.abs(dist - overall).sum()),
            }
        )
    table = pd.DataFrame(rows)
    eligible = table[table["judged"] >= ctx.config.min_group]
    median = float(eligible["agreement"].median()) if len(eligible) else float("nan")
    out_of_line = eligible[
        (eligible["agreement"] < median - ctx.config.annotator_margin)
        | (eligible["tvd"] > ctx.config.annotator_tvd)
    ]
    table["out_of_line"] = table["annotator"].isin(out_of_line["annotator"])
    flagged_votes = votes[votes["annotator"].isin(out_of_line["annotator"])]
    consensus = ctx.items.set_index("item_id")["label"]
    pivotal = [
        str(i)
        for i, c in zip(flagged_votes["item_id"], flagged_votes["choice"], strict=True)
        if i in consensus.index and present(consensus[i]) and normalise_label(consensus[i]) == c
    ]
    sec = Section(
        "annotators",
        title,
        summary=f"{len(table)} annotators, {len(votes)} votes. Median leave-one-out agreement "
        + (f"{median:.2f}" if not math.isnan(median) else "n/a")
        + f" (annotators with >= {ctx.config.min_group} judged votes). Out of line: "
        + (", ".join(out_of_line["annotator"]) or "none")
        + ". Items whose final label agrees with an out-of-line annotator are queued for another look.",
        tables=[Table("Annotators", table.round(3))],
        flagged=list(dict.fromkeys(pivotal)),
        data={
            "annotators": json.loads(table.to_json(orient="records")),
            "median_agreement": None if math.isnan(median) else median,
            "out_of_line": list(out_of_line["annotator"]),
        },
    )
    if len(table):
        sec.plots.append(
            (
                "Leave-one-out agreement per annotator",
                _bar(
                    table,
                    "annotator",
                    "agreement",
                    "Leave-one-out agreement per annotator",
                    "annotator",
                    "agreement with the others",
                    median,
                ),
            )
        )
    return sec


@section("distributions")
def _distributions(ctx: _Context) -> Section:
    items = ctx.items
    labelled = ctx.labelled
    sec = Section("distributions", "Distributions")
    label_order = [e for e in EMOTIONS if e in set(labelled["given_label"])]
    counts = labelled["given_label"].value_counts().reindex(list(EMOTIONS), fill_value=0)
    present_counts = counts[counts > 0]
    imbalance = float(present_counts.max() / present_counts.min()) if len(present_counts) else None
    probs = present_counts / present_counts.sum() if len(present_counts) else present_counts
    entropy = float(-(probs * np.log(probs)).sum() / math.log(len(EMOTIONS))) if len(present_counts) else 0.0
    missing = [e for e in EMOTIONS if counts[e] == 0]
    sec.summary = (
        f"{len(items)} valid items, {len(labelled)} labelled. Class imbalance: "
        + (f"largest/smallest class {imbalance:.1f}x" if imbalance is not None else "n/a (no labelled items)")
        + f", normalised label entropy {entropy:.2f} (1 = perfectly balanced over 8 classes)"
        + (f"; classes with no item: {', '.join(missing)}" if missing else "")
        + "."
    )
    sec.data = {
        "class_counts": {k: int(v) for k, v in counts.items()},
        "imbalance_ratio": imbalance,
        "normalised_entropy": entropy,
        "missing_classes": missing,
    }
    if len(labelled):
        sec.plots.append(
            (
                "Items per class",
                _bar(counts.reset_index(), "given_label", "count", "Items per class", "label", "items"),
            )
        )
        by_domain = pd.crosstab(labelled["given_label"], labelled["domain"].fillna("(none)")).reindex(
            label_order
        )
        by_source = pd.crosstab(labelled["given_label"], labelled["source"].fillna("(none)")).reindex(
            label_order
        )
        sec.tables += [
            Table("Label x domain", by_domain.rename_axis(index="label", columns=None).reset_index()),
            Table("Label x source", by_source.rename_axis(index="label", columns=None).reset_index()),
        ]
        sec.plots.append(
            ("Label x domain", _heatmap(by_domain, "Items per label and domain", "domain", "label"))
        )
        sec.data["label_x_domain"] = json.loads(by_domain.to_json())
        sec.data["label_x_source"] = json.loads(by_source.to_json())
        sec.plots.append(
            (
                "Brightness by label",
                _box(labelled, "brightness", label_order, "Brightness by label", "mean luma (0-1)"),
            )
        )
        sec.plots.append(
            (
                "Colourfulness by label",
                _box(
                    labelled,
                    "colorfulness",
                    label_order,
                    "Colourfulness by label",
                    "colourfulness (Hasler-Suesstrunk)",
                ),
            )
        )
    licences = (
        items["license"].fillna("(unknown)").value_counts().rename_axis("licence").reset_index(name="items")
    )
    sec.tables.append(Table("Licences", licences))
    sec.data["licences"] = dict(zip(licences["licence"], licences["items"].astype(int), strict=True))
    sizes = items[["width", "height"]].apply(pd.to_numeric, errors="coerce").dropna()
    if len(sizes):
        sec.plots.append(("Image sizes (pixels)", _scatter(sizes, "Image sizes")))
        shorter = sizes.min(axis=1)
        sec.data["shorter_side"] = {
            q: float(shorter.quantile(p)) for q, p in (("p5", 0.05), ("median", 0.5), ("p95", 0.95))
        }
    kinds = labelled["label_kind"].value_counts()
    sec.tables.append(
        Table("Where the labels come from", kinds.rename_axis("label source").reset_index(name="items"))
    )
    return sec


def _rates(frame_: pd.DataFrame, by: str, value: str, config: AuditConfig) -> tuple[pd.DataFrame, float]:
    overall = float(frame_[value].mean())
    grouped = frame_.groupby(frame_[by].fillna("(none)"))[value].agg(["count", "mean"]).reset_index()
    grouped.columns = [by, "items", "rate"]
    grouped["gap"] = grouped["rate"] - overall
    grouped["behind"] = (grouped["items"] >= config.min_group) & (grouped["gap"] <= -config.behind_margin)
    return grouped.sort_values(["rate", by]).reset_index(drop=True), overall


@section("bias")
def _bias(ctx: _Context) -> Section:
    items = ctx.items
    sec = Section("bias", "Bias audit: agreement by domain and by source")
    notes, behind = [], []
    reference = items[(items["label_kind"] == "annotation") & items["given_label"].notna()]
    basis = "annotated labels"
    if reference.empty:
        reference, basis = ctx.labelled, "imported/weak labels (no annotated items yet)"
    with_suggestion = reference[reference["suggested_label"].map(present)]
    if len(with_suggestion):
        hits = (
            with_suggestion["suggested_label"].map(normalise_label) == with_suggestion["given_label"]
        ).astype(float)
        frame_ = with_suggestion.assign(hit=hits)
        for by in ("domain", "source"):
            table, overall = _rates(frame_, by, "hit", ctx.config)
            sec.tables.append(
                Table(f"Suggestion accuracy by {by} (vs {basis}; overall {overall:.2f})", table.round(3))
            )
            sec.plots.append(
                (
                    f"Suggestion accuracy by {by}",
                    _bar(table, by, "rate", f"Suggestion accuracy by {by}", by, "accuracy", overall),
                )
            )
            behind += [
                f"suggestions for {by} {r[by]!r} ({r['rate']:.2f} vs {overall:.2f})"
                for _, r in table[table["behind"]].iterrows()
            ]
            sec.data[f"suggestion_by_{by}"] = {
                "overall": overall,
                "groups": json.loads(table.to_json(orient="records")),
            }
    else:
        notes.append("no suggestions on labelled items (run `emo8 suggest`): suggestion agreement skipped")
    annotated = items[pd.to_numeric(items["agreement"], errors="coerce").notna()]
    if len(annotated):
        frame_ = annotated.assign(agr=pd.to_numeric(annotated["agreement"], errors="coerce"))
        for by in ("domain", "source"):
            table, overall = _rates(frame_, by, "agr", ctx.config)
            sec.tables.append(Table(f"Annotation agreement by {by} (overall {overall:.2f})", table.round(3)))
            sec.plots.append(
                (
                    f"Annotation agreement by {by}",
                    _bar(table, by, "rate", f"Annotation agreement by {by}", by, "mean agreement", overall),
                )
            )
            behind += [
                f"annotation agreement for {by} {r[by]!r} ({r['rate']:.2f} vs {overall:.2f})"
                for _, r in table[table["behind"]].iterrows()
            ]
            sec.data[f"agreement_by_{by}"] = {
                "overall": overall,
                "groups": json.loads(table.to_json(orient="records")),
            }
    else:
        notes.append("no annotation agreement yet: agreement by group skipped")
    sec.data["behind"] = behind
    sec.summary = (
        (
            "Groups that fall behind (at least "
            f"{ctx.config.behind_margin:.2f} below overall, >= {ctx.config.min_group} items): "
            + "; ".join(behind)
            + "."
        )
        if behind
        else "No group falls behind."
    ) + (" " + " ".join(n[0].upper() + n[1:] + "." for n in notes) if notes else "")
    if not len(with_suggestion) and not len(annotated):
        sec.skipped = "no suggestions and no annotations yet: nothing to compare between groups"
    return sec


def sharpness(source: bytes | str) -> float:
    """Variance of the Laplacian of the grey image, longer side at most 256 px, grey levels 0-255."""
    from emo8.core.imaging import load_rgb

    grey = np.asarray(load_rgb(source, max_side=256).convert("L"), dtype=np.float64)
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return 0.0
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    return float(lap.var())


def _safe_sharpness(path: str) -> float | None:
    try:
        return sharpness(path)
    except Exception:  # an unreadable object is reported by other stages; here it just has no sharpness
        return None


def ensure_sharpness(
    ws: Workspace, items: pd.DataFrame, workers: int = 1, progress: bool = False
) -> pd.Series:
    """Compute and store ``sharpness`` for the rows of ``items`` that lack it; return the column for ``items``."""
    ws.catalog.ensure_columns({"sharpness": "REAL"})
    todo = items[~items["sharpness"].map(present) & items["sha256"].map(present)]
    values = items["sharpness"].copy()
    if len(todo):
        paths = [
            str(ws.object_path(s, f if present(f) else None))
            for s, f in zip(todo["sha256"], todo["format"], strict=True)
        ]
        computed: list[float | None] = []
        with stage_bar("audit", len(paths), progress, "sharpness") as advance:
            if workers > 1:
                with ProcessPoolExecutor(workers) as pool:
                    for value in pool.map(_safe_sharpness, paths, chunksize=16):
                        computed.append(value)
                        advance(1)
            else:
                for path in paths:
                    computed.append(_safe_sharpness(path))
                    advance(1)
        ws.catalog.update_items(list(todo["item_id"]), {"sharpness": computed})
        values.loc[todo.index] = computed
    return pd.to_numeric(values, errors="coerce")


#: Image-quality checks: name -> (description, predicate over the items frame and the config).
QUALITY_CHECKS: dict[str, tuple[str, Callable[[pd.DataFrame, AuditConfig], pd.Series]]] = {
    "dark": (
        "very dark (brightness < {dark})",
        lambda f, c: pd.to_numeric(f["brightness"], errors="coerce") < c.dark,
    ),
    "bright": (
        "very bright (brightness > {bright})",
        lambda f, c: pd.to_numeric(f["brightness"], errors="coerce") > c.bright,
    ),
    "blurry": ("blurry (variance of the Laplacian < {blur})", lambda f, c: f["sharpness"] < c.blur),
    "tiny": (
        "tiny (shorter side < {tiny} px)",
        lambda f, c: (
            pd.concat(
                [pd.to_numeric(f["width"], errors="coerce"), pd.to_numeric(f["height"], errors="coerce")],
                axis=1,
            ).min(axis=1)
            < c.tiny
        ),
    ),
}


def _quality_caption(r: Any) -> str:
    def num(value: Any, digits: int) -> str:
        return f"{float(value):.{digits}f}" if present(value) else "n/a"

    return (
        f"{r.check}: {num(r.width, 0)}x{num(r.height, 0)}, brightness {num(r.brightness, 2)}, "
        f"sharpness {num(r.sharpness, 0)}"
    )


@section("quality")
def _quality(ctx: _Context) -> Section:
    items = ctx.items.copy()
    items["sharpness"] = ensure_sharpness(ctx.ws, items, ctx.config.workers, ctx.config.progress)
    sec = Section("quality", "Image quality outliers")
    rows, flagged = [], []
    settings = asdict(ctx.config)
    for name, (description, predicate) in QUALITY_CHECKS.items():
        mask = predicate(items, ctx.config).fillna(False).astype(bool)
        hits = items[mask]
        rows.append({"check": name, "rule": description.format(**settings), "items": len(hits)})
        sec.data[name] = [str(i) for i in hits["item_id"]]
        flagged += [str(i) for i in hits["item_id"]]
        shown = hits.head(max(1, ctx.config.gallery_limit // len(QUALITY_CHECKS))).assign(check=name)
        sec.gallery += _thumbs(ctx, shown, _quality_caption)
    sec.tables.append(Table("Checks", pd.DataFrame(rows)))
    sec.summary = "; ".join(f"{r['items']} {r['rule']}" for r in rows) + "."
    sec.data["outliers"] = sorted(set(flagged))
    if items["sharpness"].notna().any():
        sec.plots.append(
            (
                "Sharpness (log10 variance of the Laplacian)",
                _hist(
                    np.log10(items["sharpness"].dropna() + 1.0),
                    "Sharpness",
                    "log10(1 + variance of the Laplacian)",
                ),
            )
        )
    return sec


# -- plots (matplotlib, Agg) ---------------------------------------------------------------------------------------


def _bar(
    table: pd.DataFrame, x: str, y: str, title: str, xlabel: str, ylabel: str, reference: float | None = None
) -> str:
    fig, ax = figure(title, xlabel, ylabel)
    ax.bar([str(v) for v in table[x]], table[y], color="#4c72b0")
    if reference is not None and not math.isnan(reference):
        ax.axhline(reference, color="#c44e52", linestyle="--", linewidth=1, label="overall")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.tick_params(axis="x", rotation=45)
    return png(fig)


def _heatmap(table: pd.DataFrame, title: str, xlabel: str, ylabel: str) -> str:
    fig, ax = figure(title, xlabel, ylabel, 6.5, 3.8)
    data = table.fillna(0).to_numpy(dtype=float)
    image = ax.imshow(data, cmap="Blues", aspect="auto")
    ax.set_xticks(range(data.shape[1]), [str(c) for c in table.columns], rotation=45, ha="right")
    ax.set_yticks(range(data.shape[0]), [str(i) for i in table.index])
    top = float(data.max()) if data.size else 0.0
    for (r, c), value in np.ndenumerate(data):
        colour = "white" if top and value > 0.6 * top else "black"
        ax.text(c, r, f"{int(value)}", ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, label="items")
    return png(fig)


def _box(frame_: pd.DataFrame, column: str, order: list[str], title: str, ylabel: str) -> str:
    fig, ax = figure(title, "label", ylabel)
    data = [
        pd.to_numeric(frame_.loc[frame_["given_label"] == label, column], errors="coerce").dropna()
        for label in order
    ]
    ax.boxplot(data, tick_labels=order)
    ax.tick_params(axis="x", rotation=45)
    return png(fig)


def _scatter(sizes: pd.DataFrame, title: str) -> str:
    fig, ax = figure(title, "width (pixels, log scale)", "height (pixels, log scale)", 4.5, 3.5)
    ax.scatter(sizes["width"], sizes["height"], s=6, alpha=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    return png(fig)


def _hist(values: pd.Series, title: str, xlabel: str) -> str:
    fig, ax = figure(title, xlabel, "images")
    ax.hist(values, bins=30, color="#55a868")
    return png(fig)


# -- HTML ----------------------------------------------------------------------------------------------------

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Emo8 audit</title>
<style>
{{ css }}
.gallery{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:{{ thumb }}px;font-size:11px;overflow-wrap:anywhere}
figure img{max-width:{{ thumb }}px;max-height:{{ thumb }}px;display:block}
.plots img{margin:4px}
nav a{margin-right:1em}
{{ table_css }}
</style></head><body>
<h1>Emo8 audit: {{ root }}</h1>
<p>{{ items }} valid items, {{ labelled }} labelled ({{ kinds }}). Generated {{ when }}.</p>
<nav>{% for s in sections %}<a href="#{{ s.key }}">{{ s.title }}</a>{% endfor %}</nav>
{% for s in sections %}
<h2 id="{{ s.key }}">{{ s.title }}</h2>
{% if s.skipped %}<p class="skipped">Skipped: {{ s.skipped }}</p>{% endif %}
{% if s.summary %}<p>{{ s.summary }}</p>{% endif %}
<div class="plots">{% for caption, png in s.plots %}
<img alt="{{ caption }}" title="{{ caption }}" src="data:image/png;base64,{{ png }}">{% endfor %}</div>
{% for t in s.tables %}<h4>{{ t.caption }}</h4>{{ t.html | safe }}{% endfor %}
{% if s.gallery %}<h4>Flagged images</h4><div class="gallery">{% for g in s.gallery %}{% if g.uri %}
<figure data-sha256="{{ g.sha256 }}"><img src="{{ g.uri }}" alt="{{ g.item_id }}">
<figcaption>{{ g.caption }}<br>{{ g.name | safe }}</figcaption></figure>
{% endif %}{% endfor %}</div>{% endif %}
{% endfor %}
</body></html>
"""


def _render(ctx: _Context, result: AuditResult) -> str:
    from jinja2 import Environment

    formats = dict(zip(ctx.everything["sha256"], ctx.everything["format"], strict=True))
    wanted = {t.item_id for sec in result.sections.values() for t in sec.gallery}
    for sec in result.sections.values():
        for table in sec.tables:
            if "item_id" in table.frame.columns:
                wanted.update(str(i) for i in table.frame["item_id"])
    lookup = item_lookup(ctx.ws, sorted(wanted))
    views = []
    for sec in result.sections.values():
        gallery = []
        for thumb in sec.gallery:
            thumb.uri = thumbnail(
                str(ctx.ws.object_path(thumb.sha256, formats.get(thumb.sha256))), ctx.config.thumb_side, 80
            )
            gallery.append({**thumb.__dict__, "name": name_html(lookup.get(thumb.item_id))})
        tables = [{"caption": t.caption, "html": item_table(ctx.ws, t.frame, lookup)} for t in sec.tables]
        views.append({**sec.__dict__, "tables": tables, "gallery": gallery})
    env = Environment(autoescape=True)
    return env.from_string(_TEMPLATE).render(
        root=str(ctx.ws.root),
        items=result.items,
        labelled=result.labelled,
        kinds=", ".join(f"{k} {v}" for k, v in result.label_kinds.items()) or "none",
        when=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        sections=views,
        thumb=ctx.config.thumb_side,
        table_css=ITEM_TABLE_CSS,
        css=REPORT_CSS,
    )


# -- the audit -----------------------------------------------------------------------------------------------


def audit(ws: Workspace, config: AuditConfig = AuditConfig()) -> AuditResult:
    """Audit the workspace; write the HTML and JSON reports (and the ``queue`` selection, if asked).

    Parameters
    ----------
    ws
        The workspace.
    config
        :class:`AuditConfig`.

    Returns
    -------
    An :class:`AuditResult` with every section (their ``flagged`` item ids, tables and numbers).
    """
    started = time.perf_counter()
    if config.probe not in PROBES:
        raise ValueError(f"unknown probe {config.probe!r}; choose from {', '.join(PROBES)}")
    everything = frame(ws, _COLUMNS, where="status IN ('valid', 'duplicate')").reset_index(drop=True)
    items = everything[everything["status"] == "valid"].reset_index(drop=True)
    label, kind = given_labels(items)
    items = items.assign(given_label=label, label_kind=kind)
    ctx = _Context(ws, config, items, everything)
    sections: dict[str, Section] = {}
    with stage_steps("audit", list(SECTIONS), config.progress) as done:
        for key, fn in SECTIONS.items():
            sections[key] = fn(ctx)
            done(key)
    out = (config.out or ws.reports_dir / "audit.html").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    result = AuditResult(
        html=out,
        json=out.with_suffix(".json"),
        items=len(items),
        labelled=int(label.notna().sum()),
        label_kinds={str(k): int(v) for k, v in kind.value_counts().items()},
        sections=sections,
    )
    if config.queue:
        queued = list(
            dict.fromkeys(i for key in QUEUE_SECTIONS if key in sections for i in sections[key].flagged)
        )
        result.queued = ws.catalog.save_selection(config.queue, queued, strategy="audit") if queued else 0
    out.write_text(_render(ctx, result))
    result.seconds = time.perf_counter() - started
    payload = {
        "workspace": str(ws.root),
        "items": result.items,
        "labelled": result.labelled,
        "label_kinds": result.label_kinds,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "queue": {"round": config.queue, "added": result.queued} if config.queue else None,
        "sections": {key: sec.as_dict() for key, sec in sections.items()},
        "seconds": round(result.seconds, 3),
    }
    result.json.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return str(value)
