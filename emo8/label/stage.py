"""The label stages: ``suggest``, ``select``, ``detect-people`` and ``labels-import``.

Each stage's settings are declared once here (for the CLI and pipelines); the run functions map them onto the
library's config dataclasses and the summarize functions hold what the commands print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import field_validator
from rich.markup import escape

from emo8.core.executor import ExecutorConfig, ExecutorError
from emo8.core.stage import (
    PANEL_CURATE,
    PANEL_LABEL,
    CommaList,
    Stage,
    StageSettings,
    Summary,
    device_setting,
    executor_setting,
    path_digest,
    ray_address_setting,
    register_stage,
    setting,
    workers_setting,
)
from emo8.core.workspace import Workspace
from emo8.embed.base import EncoderKeyError, ModelKey, WeightsError
from emo8.label.people import BACKEND_CHOICES, DEFAULT_BACKEND, DetectConfig, DetectorError, DetectSummary
from emo8.label.selection import STRATEGIES, SelectConfig, SelectError, SelectSummary
from emo8.label.suggest import (
    LABEL_SOURCES,
    LabelImportSummary,
    SuggestConfig,
    SuggestError,
    SuggestSummary,
)

DEFAULT_MODEL = "efficientnet-lite0"


# -- suggest -----------------------------------------------------------------------------------------------------


class SuggestSettings(StageSettings):
    """Settings of ``emo8 suggest`` / a pipeline's ``suggest`` step."""

    model: ModelKey = setting(DEFAULT_MODEL, "Embedding model key (run `emo8 embed` with it first).")
    k: int = setting(20, "Neighbours per kNN vote.", flag="--k", ge=1)
    zero_shot: bool = setting(True, "CLIP zero-shot (open_clip models only).")
    weights: str | None = setting(None, "Encoder weights for the text tower.", path_like=True)
    random_init: bool = setting(False, "Random text tower (tests).")
    device: str = device_setting()
    min_labels: int = setting(5, "Labels per class before the linear probe runs.", ge=1)
    folds: int = setting(5, "Cross-validation folds.", ge=2)
    labels: CommaList = setting(
        LABEL_SOURCES, "Label sources, highest precedence first; repeat it (or separate with commas)."
    )
    seed: int = setting(0, "Seed of the folds.")


@dataclass
class SuggestRun:
    """A suggest run's summary and the notes it made (e.g. why a source was not used)."""

    summary: SuggestSummary
    notes: list[str] = field(default_factory=list)


def run_suggest(ws: Workspace, settings: SuggestSettings, progress: bool) -> SuggestRun:
    """Run :func:`emo8.label.suggest.suggest` with ``settings``."""
    from emo8.label.suggest import suggest

    config = SuggestConfig(
        model=settings.model, k=settings.k, zero_shot=settings.zero_shot, weights=settings.weights,
        random_init=settings.random_init, device=settings.device, min_labels_per_class=settings.min_labels,
        folds=settings.folds, label_sources=settings.labels, seed=settings.seed,
    )  # fmt: skip
    notes: list[str] = []
    summary = suggest(ws, config, progress=progress, notes=notes)
    return SuggestRun(summary, notes)


def summarize_suggest(run: SuggestRun, settings: SuggestSettings) -> Summary:
    """Suggested and labelled counts, sources, pooling, cross-validated quality, where the report is."""
    result = run.summary
    lines = [f"  note: {escape(note)}" for note in run.notes]
    by_source = ", ".join(f"{k}={v}" for k, v in sorted(result.labels_by_source.items())) or "none"
    lines.append(
        f"[bold]suggest {escape(settings.model)}[/]: {result.suggested} item(s) suggested, {result.up_to_date} "
        f"up to date (version {result.version}); {result.labelled} labelled ({by_source})"
    )
    if result.missing_embeddings:
        lines.append(
            f"  {result.missing_embeddings} valid item(s) have no embedding: run `emo8 embed --model "
            f"{escape(settings.model)}`"
        )
    if not result.suggested:
        return Summary(lines)
    lines.append("  sources: " + ", ".join(result.sources))
    lines += [f"  skipped {name}: {escape(why)}" for name, why in result.skipped.items()]
    pooling = result.pooling
    weights_text = ", ".join(f"{n}={w}" for n, w in pooling.get("weights", {}).items())
    lines.append(f"  pooling: {weights_text}; temperature {pooling.get('temperature')}")
    overall = result.metrics.get("overall", {})
    if "combined" in overall:
        comb, raw = overall["combined"], overall["combined_uncalibrated"]
        lines.append(
            f"  cross-validated: accuracy {comb['accuracy']:.3f}, macro-F1 {comb['macro_f1']:.3f}, "
            f"ECE {comb['ece']:.3f} (before calibration {raw['ece']:.3f}); "
            f"majority baseline {result.metrics['majority_baseline']:.3f}"
        )
    lines.append("  suggested: " + ", ".join(f"{k} {v}" for k, v in sorted(result.predicted.items())))
    lines.append(f"  report: {result.html_path} and {result.report_path} ({result.seconds:.1f}s)")
    return Summary(lines)


SUGGEST = register_stage(
    Stage(
        name="suggest",
        settings=SuggestSettings,
        run=run_suggest,
        summarize=summarize_suggest,
        command=("suggest",),
        help="Suggest an emotion for every item: zero-shot CLIP, kNN votes, linear probe; pooled and calibrated.",
        usage_errors=(SuggestError, WeightsError, EncoderKeyError),
        reads=("table:items", "dir:embeddings"),
        writes=("table:items", "dir:reports"),
        panel=PANEL_LABEL,
    )
)


# -- select ------------------------------------------------------------------------------------------------------


class SelectSettings(StageSettings):
    """Settings of ``emo8 select`` / a pipeline's ``select`` step."""

    budget: int = setting(..., "Items the round should hold.", ge=1)
    strategy: str = setting("uncertainty", "uncertainty, balanced, diverse or random.")
    round: str | None = setting(None, "Round name (default: a new round-<k>).")
    seed: int = setting(0, "Seed of every random choice.")
    measure: str = setting("margin", "Uncertainty: margin or entropy.")
    model: ModelKey = setting(DEFAULT_MODEL, "Embedding model key (diverse).")
    pool_factor: int = setting(10, "diverse: pick among pool_factor x budget uncertain.", ge=1)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; choose from {', '.join(STRATEGIES)}")
        return value


def run_select(ws: Workspace, settings: SelectSettings, progress: bool) -> SelectSummary:
    """Run :func:`emo8.label.selection.select` with ``settings``."""
    from emo8.label.selection import select

    config = SelectConfig(
        budget=settings.budget, strategy=settings.strategy, round=settings.round, seed=settings.seed,
        measure=settings.measure, model=settings.model, pool_factor=settings.pool_factor,
    )  # fmt: skip
    return select(ws, config)


def summarize_select(result: SelectSummary, settings: SelectSettings) -> Summary:
    """The round, how many items it holds, the pool and what was excluded, the suggested classes."""
    excluded = ", ".join(f"{k}={v}" for k, v in sorted(result.excluded.items())) or "none"
    lines = [
        f"[bold]{escape(result.round)}[/] ({result.strategy}): {result.selected} new item(s) selected, "
        f"{result.already + result.selected} in the round (budget {result.budget}); "
        f"pool {result.pool}, excluded: {excluded}"
    ]
    if result.per_class:
        lines.append(
            "  suggested classes: " + ", ".join(f"{k} {v}" for k, v in sorted(result.per_class.items()))
        )
    return Summary(lines)


SELECT = register_stage(
    Stage(
        name="select",
        settings=SelectSettings,
        run=run_select,
        summarize=summarize_select,
        command=("select",),
        help="Choose the items of the next annotation round (never duplicates, settled or already-selected items).",
        usage_errors=(SelectError,),
        reads=("table:items", "table:selections", "dir:embeddings"),
        writes=("table:selections",),
        panel=PANEL_LABEL,
    )
)


# -- detect-people -----------------------------------------------------------------------------------------------


class DetectPeopleSettings(StageSettings):
    """Settings of ``emo8 detect-people`` / a pipeline's ``detect-people`` step."""

    backend: str = setting(DEFAULT_BACKEND, ", ".join(BACKEND_CHOICES) + ".")
    weights: str | None = setting(None, "Weights file (torchvision:NAME).", path_like=True)
    random_init: bool = setting(False, "torchvision:NAME with random weights (tests).")
    threshold: float | None = setting(None, "Minimum score (default: the backend's).")
    max_side: int = setting(640, "Downscale images to this longer side first.", ge=1)
    batch_size: int = setting(32, "Images per batch / transaction.", ge=1, fingerprint=False)
    # one worker: the OpenCV detectors are shared by the threads and are not thread-safe
    workers: int = workers_setting(1)
    device: str = device_setting()
    redo: bool = setting(False, "Recompute items already done by this backend.")
    executor: str = executor_setting()
    ray_address: str | None = ray_address_setting()


def run_detect_people(ws: Workspace, settings: DetectPeopleSettings, progress: bool) -> DetectSummary:
    """Run :func:`emo8.label.people.detect_people` with ``settings``."""
    from emo8.label.people import detect_people

    config = DetectConfig(
        backend=settings.backend, weights=settings.weights, random_init=settings.random_init,
        score_threshold=settings.threshold, max_side=settings.max_side, batch_size=settings.batch_size,
        workers=settings.workers, device=settings.device, redo=settings.redo, progress=progress,
        executor=ExecutorConfig(settings.executor, settings.ray_address),
    )  # fmt: skip
    return detect_people(ws, config)


def summarize_detect_people(result: DetectSummary, settings: DetectPeopleSettings) -> Summary:
    """Images processed (and how fast), already done, with a person, faces, unreadable."""
    rate = f" ({result.images_per_second:.1f} images/s)" if result.processed else ""
    return Summary(
        [
            f"[bold]detect-people {escape(result.backend)}[/]: {result.processed} image(s) in "
            f"{result.seconds:.1f}s{rate}, {result.already} already done; {result.with_person} with a person, "
            f"{result.faces} face(s), {result.errors} unreadable"
        ]
    )


DETECT_PEOPLE = register_stage(
    Stage(
        name="detect-people",
        settings=DetectPeopleSettings,
        run=run_detect_people,
        summarize=summarize_detect_people,
        command=("detect-people",),
        help="Detect people and faces; store person boxes (original pixels) and face counts per item.",
        usage_errors=(DetectorError, ExecutorError),
        reads=("table:items",),
        writes=("table:items", "table:people_detections"),
        panel=PANEL_CURATE,
    )
)


# -- labels-import -----------------------------------------------------------------------------------------------


class LabelsImportSettings(StageSettings):
    """Settings of ``emo8 labels import`` / a pipeline's ``labels-import`` step."""

    file: Path = setting(..., "CSV with item_id or sha256, and label.", argument=True)
    id_col: str | None = setting(None, "Id column (default item_id, else sha256).")
    label_col: str = setting("label", "Label column.")


def run_labels_import(ws: Workspace, settings: LabelsImportSettings, progress: bool) -> LabelImportSummary:
    """Run :func:`emo8.label.suggest.import_labels` with ``settings``."""
    from emo8.label.suggest import import_labels

    return import_labels(ws, settings.file, id_col=settings.id_col, label_col=settings.label_col)


def summarize_labels_import(result: LabelImportSummary, settings: LabelsImportSettings) -> Summary:
    """Rows read; updated, unchanged and rejected (unknown item or label, non-valid item); per class."""
    lines = [
        f"[bold]labels import[/]: {result.rows} row(s): {result.updated} updated, {result.unchanged} unchanged, "
        f"{result.unknown_item} unknown item(s), {result.unknown_label} unknown label(s), "
        f"{result.not_valid} on non-valid items"
    ]
    if result.per_class:
        lines.append("  per class: " + ", ".join(f"{k} {v}" for k, v in sorted(result.per_class.items())))
    return Summary(lines)


LABELS_IMPORT = register_stage(
    Stage(
        name="labels-import",
        settings=LabelsImportSettings,
        run=run_labels_import,
        summarize=summarize_labels_import,
        command=("labels", "import"),
        help="Import emotion labels (column imported_label); suggest learns from them, release can ship them.",
        usage_errors=(SuggestError,),
        reads=("table:items",),
        writes=("table:items",),
        inputs=lambda settings: path_digest(settings.file),
    )
)
