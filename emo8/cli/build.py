"""``emo8 build PIPELINE.yaml``: run a pipeline file (:mod:`emo8.pipeline.runner`), or show its plan or status."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from emo8.cli.app import app
from emo8.cli.common import PANEL_SETUP, QUIET_HELP, exit_on, fail, out, warn

STATUS_STYLE = {"done": "green", "stale": "yellow", "waiting": "magenta", "pending": "dim"}


@app.command(rich_help_panel=PANEL_SETUP)
def build(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file (YAML; see docs/pipelines.md).")],
    from_step: Annotated[
        str | None, typer.Option("--from", help="Start at this step (it and the ones after it run again).")
    ] = None,
    until_step: Annotated[str | None, typer.Option("--until", help="Stop after this step.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and show which steps would run and why; run nothing.")
    ] = False,
    show_status: Annotated[
        bool,
        typer.Option("--status", help="Show each step as done, stale, waiting or pending; touch nothing."),
    ] = False,
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Workspace to build in (default: the file's `workspace:`)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Build a workspace from a pipeline file: run its steps in order, skipping those already up to date."""
    from emo8.core.workspace import CONFIG_NAME, Workspace, WorkspaceError
    from emo8.pipeline.registry import load_stages
    from emo8.pipeline.runner import BuildBusyError, plan_build, run_build
    from emo8.pipeline.serve import ServeError
    from emo8.pipeline.spec import PipelineError, load_pipeline

    load_stages()
    with exit_on((PipelineError, 2)):
        spec = load_pipeline(pipeline, workspace, from_step, until_step)
    if dry_run or show_status:
        ws = Workspace.open(spec.workspace) if (spec.workspace / CONFIG_NAME).is_file() else None
        plan = plan_build(spec, ws, from_step, until_step)
        title = f"{spec.name}: {'plan' if dry_run else 'status'} ({spec.workspace}{'' if ws else ', not created yet'})"
        table = Table(title=title, title_justify="left")
        for column in ("#", "step", "stage", "plan" if dry_run else "status", "why"):
            table.add_column(column)
        for n, item in enumerate(plan, 1):
            if dry_run:
                label = {"run": "[bold]run[/]", "skip": "skip", "before": "not run", "after": "not run"}[
                    item.action
                ]
            else:
                label = f"[{STATUS_STYLE[item.status]}]{item.status}[/]"
            table.add_row(str(n), escape(item.step.name), item.step.stage.name, label, escape(item.reason))
        out.print(table)
        if dry_run:
            runs = sum(item.action == "run" for item in plan)
            out.print(f"dry run: {runs} step(s) would run, {len(plan) - runs} would not; nothing was run")
        return
    with exit_on((PipelineError, 2), (WorkspaceError, 2), (ServeError, 1), (BuildBusyError, 1)):
        outcome = run_build(
            spec, from_step, until_step, progress=not quiet,
            echo=lambda line: out.print(line, highlight=False), warn=warn,
        )  # fmt: skip
    out.print(
        f"[bold]build {spec.name}[/]: {outcome.status}; {len(outcome.ran)} step(s) run, "
        f"{len(outcome.skipped)} up to date",
        highlight=False,
    )
    if not outcome.ran and outcome.status == "done":
        out.print("  nothing to do: every step is up to date", highlight=False)
    out.print(f"  workspace: {outcome.workspace}", highlight=False)
    if outcome.release is not None:
        out.print(f"  latest release: {outcome.release}", highlight=False)
    for report in outcome.reports:
        out.print(f"  report: {report}", highlight=False)
    out.print(f"  build record: {outcome.record}", highlight=False)
    if outcome.status == "waiting":
        out.print(f"[yellow]waiting:[/] {escape(outcome.message or '')}", highlight=False)
        out.print("run the same `emo8 build` again once that is done; it goes on from there", highlight=False)
    elif outcome.status == "failed":
        fail(outcome.message or "a step failed", outcome.exit_code or 1)
