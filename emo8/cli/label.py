"""``emo8 suggest``, ``select``, ``detect-people`` and ``labels import``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emo8.cli.app import app
from emo8.cli.common import (
    PANEL_CURATE,
    PANEL_LABEL,
    Device,
    ExecutorKind,
    Quiet,
    RayAddress,
    Workers,
    WorkspaceOpt,
    exit_on,
    out,
)
from emo8.cli.stages import open_workspace
from emo8.core.executor import ExecutorConfig, ExecutorError
from emo8.label.people import BACKEND_CHOICES as PEOPLE_BACKENDS
from emo8.label.people import DEFAULT_BACKEND as DEFAULT_PEOPLE_BACKEND

labels_app = typer.Typer(
    no_args_is_help=True, help="Labels from outside the pipeline (curators, other tools)."
)
app.add_typer(labels_app, name="labels", rich_help_panel=PANEL_LABEL)


@app.command("suggest", rich_help_panel=PANEL_LABEL)
def suggest_cmd(
    workspace: WorkspaceOpt = Path("."),
    model: Annotated[str, typer.Option(help="Embedding model key (run `emo8 embed` with it first).")] = (
        "efficientnet-lite0"
    ),
    k: Annotated[int, typer.Option("--k", help="Neighbours per kNN vote.")] = 20,
    zero_shot: Annotated[
        bool, typer.Option("--zero-shot/--no-zero-shot", help="CLIP zero-shot (open_clip models only).")
    ] = True,
    weights: Annotated[str | None, typer.Option(help="Encoder weights for the text tower.")] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Random text tower (tests).")] = False,
    device: Device = "auto",
    min_labels: Annotated[int, typer.Option(help="Labels per class before the linear probe runs.")] = 5,
    folds: Annotated[int, typer.Option(help="Cross-validation folds.")] = 5,
    labels: Annotated[
        str, typer.Option(help="Label sources, highest precedence first.")
    ] = "annotation,imported,weak",
    seed: Annotated[int, typer.Option(help="Seed of the folds.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Suggest an emotion for every item: zero-shot CLIP, kNN votes, linear probe; pooled and calibrated."""
    from emo8.embed.encoders import EncoderKeyError, WeightsError
    from emo8.label.suggest import SuggestConfig, SuggestError, suggest

    ws = open_workspace(workspace)
    config = SuggestConfig(
        model=model, k=k, zero_shot=zero_shot, weights=weights, random_init=random_init, device=device,
        min_labels_per_class=min_labels, folds=folds,
        label_sources=tuple(s.strip() for s in labels.split(",") if s.strip()), seed=seed,
    )  # fmt: skip
    notes: list[str] = []
    with exit_on(((SuggestError, WeightsError, EncoderKeyError), 2)):
        result = suggest(ws, config, progress=not quiet, notes=notes)
    for note in notes:
        out.print(f"  note: {note}")
    by_source = ", ".join(f"{k}={v}" for k, v in sorted(result.labels_by_source.items())) or "none"
    out.print(
        f"[bold]suggest {model}[/]: {result.suggested} item(s) suggested, {result.up_to_date} up to date "
        f"(version {result.version}); {result.labelled} labelled ({by_source})"
    )
    if result.missing_embeddings:
        out.print(
            f"  {result.missing_embeddings} valid item(s) have no embedding: run `emo8 embed --model {model}`"
        )
    if not result.suggested:
        return
    out.print("  sources: " + ", ".join(result.sources))
    for name, why in result.skipped.items():
        out.print(f"  skipped {name}: {why}")
    pooling = result.pooling
    weights_text = ", ".join(f"{n}={w}" for n, w in pooling.get("weights", {}).items())
    out.print(f"  pooling: {weights_text}; temperature {pooling.get('temperature')}")
    overall = result.metrics.get("overall", {})
    if "combined" in overall:
        comb, raw = overall["combined"], overall["combined_uncalibrated"]
        out.print(
            f"  cross-validated: accuracy {comb['accuracy']:.3f}, macro-F1 {comb['macro_f1']:.3f}, "
            f"ECE {comb['ece']:.3f} (before calibration {raw['ece']:.3f}); "
            f"majority baseline {result.metrics['majority_baseline']:.3f}"
        )
    out.print("  suggested: " + ", ".join(f"{k} {v}" for k, v in sorted(result.predicted.items())))
    out.print(f"  report: {result.html_path} and {result.report_path} ({result.seconds:.1f}s)")


@app.command("select", rich_help_panel=PANEL_LABEL)
def select_cmd(
    budget: Annotated[int, typer.Option("--budget", help="Items the round should hold.")],
    workspace: WorkspaceOpt = Path("."),
    strategy: Annotated[str, typer.Option(help="uncertainty, balanced, diverse or random.")] = "uncertainty",
    round_name: Annotated[
        str | None, typer.Option("--round", help="Round name (default: a new round-<k>).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    measure: Annotated[str, typer.Option(help="Uncertainty: margin or entropy.")] = "margin",
    model: Annotated[str, typer.Option(help="Embedding model key (diverse).")] = "efficientnet-lite0",
    pool_factor: Annotated[
        int, typer.Option(help="diverse: pick among pool_factor x budget uncertain.")
    ] = 10,
) -> None:
    """Choose the items of the next annotation round (never duplicates, settled or already-selected items)."""
    from emo8.label.selection import SelectConfig, SelectError, select

    ws = open_workspace(workspace)
    config = SelectConfig(
        budget=budget, strategy=strategy, round=round_name, seed=seed, measure=measure, model=model,
        pool_factor=pool_factor,
    )  # fmt: skip
    with exit_on((SelectError, 2)):
        result = select(ws, config)
    excluded = ", ".join(f"{k}={v}" for k, v in sorted(result.excluded.items())) or "none"
    out.print(
        f"[bold]{result.round}[/] ({result.strategy}): {result.selected} new item(s) selected, "
        f"{result.already + result.selected} in the round (budget {result.budget}); "
        f"pool {result.pool}, excluded: {excluded}"
    )
    if result.per_class:
        out.print(
            "  suggested classes: " + ", ".join(f"{k} {v}" for k, v in sorted(result.per_class.items()))
        )


@app.command("detect-people", rich_help_panel=PANEL_CURATE)
def detect_people_cmd(
    workspace: WorkspaceOpt = Path("."),
    backend: Annotated[str, typer.Option(help=", ".join(PEOPLE_BACKENDS) + ".")] = DEFAULT_PEOPLE_BACKEND,
    weights: Annotated[str | None, typer.Option(help="Weights file (torchvision:NAME).")] = None,
    random_init: Annotated[
        bool, typer.Option("--random-init", help="torchvision:NAME with random weights (tests).")
    ] = False,
    threshold: Annotated[float | None, typer.Option(help="Minimum score (default: the backend's).")] = None,
    max_side: Annotated[int, typer.Option(help="Downscale images to this longer side first.")] = 640,
    batch_size: Annotated[int, typer.Option(help="Images per batch / transaction.")] = 32,
    workers: Workers = 1,  # one: the OpenCV detectors are shared by the threads and are not thread-safe
    device: Device = "auto",
    redo: Annotated[
        bool, typer.Option("--redo", help="Recompute items already done by this backend.")
    ] = False,
    quiet: Quiet = False,
    executor: ExecutorKind = "local",
    ray_address: RayAddress = None,
) -> None:
    """Detect people and faces; store person boxes (original pixels) and face counts per item."""
    from emo8.label.people import DetectConfig, DetectorError, detect_people

    ws = open_workspace(workspace)
    config = DetectConfig(
        backend=backend, weights=weights, random_init=random_init, score_threshold=threshold, max_side=max_side,
        batch_size=batch_size, workers=workers, device=device, redo=redo, progress=not quiet,
        executor=ExecutorConfig(executor, ray_address),
    )  # fmt: skip
    with exit_on((DetectorError, 2), (ExecutorError, 2)):
        result = detect_people(ws, config)
    rate = f" ({result.images_per_second:.1f} images/s)" if result.processed else ""
    out.print(
        f"[bold]detect-people {result.backend}[/]: {result.processed} image(s) in {result.seconds:.1f}s{rate}, "
        f"{result.already} already done; {result.with_person} with a person, {result.faces} face(s), "
        f"{result.errors} unreadable"
    )


@labels_app.command("import")
def labels_import_cmd(
    file: Annotated[Path, typer.Argument(help="CSV with item_id or sha256, and label.")],
    workspace: WorkspaceOpt = Path("."),
    id_col: Annotated[str | None, typer.Option(help="Id column (default item_id, else sha256).")] = None,
    label_col: Annotated[str, typer.Option(help="Label column.")] = "label",
) -> None:
    """Import emotion labels (column imported_label); suggest learns from them, release can ship them."""
    from emo8.label.suggest import SuggestError, import_labels

    ws = open_workspace(workspace)
    with exit_on((SuggestError, 2)):
        result = import_labels(ws, file, id_col=id_col, label_col=label_col)
    out.print(
        f"[bold]labels import[/]: {result.rows} row(s): {result.updated} updated, {result.unchanged} unchanged, "
        f"{result.unknown_item} unknown item(s), {result.unknown_label} unknown label(s), "
        f"{result.not_valid} on non-valid items"
    )
    if result.per_class:
        out.print("  per class: " + ", ".join(f"{k} {v}" for k, v in sorted(result.per_class.items())))
