"""``emo8 annotate ...``: Label Studio rounds from the command line (a thin layer over :mod:`emo8.annotate`).

``push``, ``pull``, ``import``, ``round`` and ``aggregate`` are derived from the stages' settings
(:mod:`emo8.annotate.stage`); ``install``, ``serve``, ``stop`` and ``status`` are written here.
Heavy imports (label-studio-sdk, numpy, pandas) happen inside the commands so that ``import emo8.cli`` stays
fast.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from emo8.annotate.stage import (
    ANNOTATE_AGGREGATE,
    ANNOTATE_IMPORT,
    ANNOTATE_PULL,
    ANNOTATE_PUSH,
    ANNOTATE_ROUND,
    LOCAL_ROOT_HELP,
    URL_HELP,
    connect_workspace,
)
from emo8.cli.app import app
from emo8.cli.common import PANEL_LABEL, WorkspaceOpt, console, exit_on, out
from emo8.cli.stages import add_stage_command

if TYPE_CHECKING:
    from emo8.core.workspace import Workspace

annotate_app = typer.Typer(
    no_args_is_help=True,
    help="Annotation rounds in Label Studio: serve, push, pull, import, round, status, aggregate.",
)
UrlOpt = Annotated[str | None, typer.Option("--url", help=URL_HELP)]
LocalRootOpt = Annotated[Path | None, typer.Option("--local-files-root", help=LOCAL_ROOT_HELP)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the stage's errors into a one-paragraph message: exit 1 for a server that is down or fails to start,
    2 for wrong input or configuration (unknown round, bad export, missing API key, port taken)."""
    from emo8.annotate.errors import AnnotateError, ServerUnavailable
    from emo8.core.workspace import WorkspaceError

    with exit_on((ServerUnavailable, 1), ((AnnotateError, WorkspaceError), 2)):
        yield


def _open(workspace: Path) -> Workspace:
    from emo8.core.workspace import Workspace

    return Workspace.open(workspace)


@annotate_app.command("install")
def install_cmd(
    venv: Annotated[
        Path | None, typer.Option(help="Virtual environment (default .venv-labelstudio).")
    ] = None,
) -> None:
    """Install Label Studio into its own virtual environment (idempotent; `emo8 annotate serve` does it too)."""
    from emo8.annotate.server import ensure_label_studio

    with _errors():
        inst = ensure_label_studio(venv, log=lambda m: console.print(m))
    out.print(f"Label Studio {inst.version} ready in {inst.venv}")


@annotate_app.command("serve")
def serve_cmd(
    workspace: WorkspaceOpt = Path("."),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = a free one).")] = 0,
    data_dir: Annotated[
        Path | None, typer.Option(help="Server data (default <workspace>/labelstudio).")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Use this existing server instead (key from LABEL_STUDIO_API_KEY)."),
    ] = None,
    local_files_root: LocalRootOpt = None,
) -> None:
    """Start a local Label Studio for this workspace (or connect to an existing one with --url)."""
    import os

    from emo8.annotate import server as srv

    with _errors():
        ws = _open(workspace)
        if url is None:
            started = srv.serve(ws, port=port, data_dir=data_dir, log=lambda m: console.print(m))
            out.print(
                f"Label Studio is running at {started.url} (pid {started.pid}); admin {started.admin_email}"
            )
            out.print(f"  admin password and API token: {started.data_dir / srv.ADMIN_FILE} (mode 600)")
            return
        key = os.environ.get(srv.API_KEY_ENV) or typer.prompt(
            "API key (personal access token)", hide_input=True
        )
        if not srv.token_works(url, key):
            raise srv.ServerError(f"{url} refused the API key (or is not reachable)")
        srv.save_connection(ws, srv.Connection(url.rstrip("/"), key, False, local_files_root))
        out.print(
            f"workspace connected to {url.rstrip('/')}; token stored in {srv.token_path(ws)} (mode 600)"
        )


@annotate_app.command("stop")
def stop_cmd(workspace: WorkspaceOpt = Path(".")) -> None:
    """Stop the Label Studio that `emo8 annotate serve` started for this workspace."""
    from emo8.annotate.server import stop

    with _errors():
        stopped = stop(_open(workspace))
    out.print("Label Studio stopped" if stopped else "no Label Studio of this workspace was running")


add_stage_command(annotate_app, ANNOTATE_PUSH)
add_stage_command(annotate_app, ANNOTATE_PULL)
add_stage_command(annotate_app, ANNOTATE_IMPORT)
add_stage_command(annotate_app, ANNOTATE_ROUND)


@annotate_app.command("status")
def status_cmd(
    workspace: WorkspaceOpt = Path("."),
    round_name: Annotated[str | None, typer.Option("--round", "-r", help="Only this round.")] = None,
    pull: Annotated[bool, typer.Option("--pull", help="Pull the round(s) first.")] = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Progress per round: tasks done/total, votes per annotator and per class, ETA (as of the last pull)."""
    from dataclasses import asdict

    from emo8.annotate.rounds import pull_round, round_status
    from emo8.annotate.store import AnnotationStore

    with _errors():
        ws = _open(workspace)
        known = {r["round"] for r in AnnotationStore(ws.catalog).rounds()}
        # rounds chosen by `emo8 select` that were neither pushed nor imported yet
        unpushed = {
            name: n
            for name, n in ws.catalog.rounds().items()
            if name not in known and round_name in (None, name)
        }
        names = None if round_name is None else ([] if round_name in unpushed else [round_name])
        if pull:
            client, _ = connect_workspace(ws, url)
            pushed = [r["round"] for r in AnnotationStore(ws.catalog).rounds() if r.get("project_id")]
            for name in pushed if names is None else names:
                pull_round(ws, name, client)
        statuses = round_status(ws, names)
    if as_json:
        out.print_json(json.dumps([_finite(asdict(s)) for s in statuses]))
        return
    for name, selected in unpushed.items():
        out.print(
            f"[bold]{name}[/]: {selected} item(s) selected, not in Label Studio yet; "
            f"`emo8 annotate push --round {name}` sends them (or `emo8 annotate import EXPORT --round {name}`)"
        )
    if not statuses and not unpushed:
        out.print(
            "no annotation rounds yet; `emo8 select --budget N --round NAME` chooses the items of one and "
            "`emo8 annotate push --round NAME` sends them to Label Studio"
        )
    for s in statuses:
        eta = (
            "done"
            if s.missing_votes == 0
            else (_hours(s.eta_hours) if s.eta_hours is not None else "unknown")
        )
        out.print(
            f"[bold]{s.round}[/] (project {s.project_id}): {s.done}/{s.tasks} tasks done ({s.gold} gold), "
            f"{s.votes} votes, {s.skipped} skipped, {s.missing_votes} votes missing; ETA {eta}; "
            f"last pull {s.pulled_at or 'never'}"
        )
        table = Table("annotator", "votes", "skipped", "median s/task", box=None, pad_edge=False)
        for who, stats in s.per_annotator.items():
            lead = stats["median_lead_time_s"]
            table.add_row(
                f"  {who}",
                f"{stats['votes']:.0f}",
                f"{stats['skipped']:.0f}",
                "-" if math.isnan(lead) else f"{lead:.1f}",
            )
        out.print(table)
        if s.per_class:
            out.print("  per class: " + ", ".join(f"{k}={v}" for k, v in sorted(s.per_class.items())))


def _hours(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


add_stage_command(annotate_app, ANNOTATE_AGGREGATE)

app.add_typer(annotate_app, name="annotate", rich_help_panel=PANEL_LABEL)
