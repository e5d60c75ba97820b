"""``emo8 init`` and ``emo8 status``: create a workspace, see where it stands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from emo8.cli.app import app
from emo8.cli.common import (
    PANEL_SETUP,
    WorkspaceOpt,
    exit_on,
    fail,
    out,
)
from emo8.cli.stages import open_workspace
from emo8.core.workspace import Workspace, WorkspaceError


@app.command(rich_help_panel=PANEL_SETUP)
def init(
    path: Annotated[Path, typer.Argument(help="Directory to create the workspace in (new or empty).")],
    force: Annotated[
        bool, typer.Option("--force", help="Make a folder that already holds files a workspace anyway.")
    ] = False,
    objects: Annotated[
        str | None,
        typer.Option(
            help="Keep the image bytes elsewhere: a shared folder or an fsspec URL (s3://bucket/emo8, file:///...); "
            "fixed once the workspace exists (default: PATH/objects)."
        ),
    ] = None,
) -> None:
    """Create a workspace in a new or empty folder (idempotent on an existing workspace)."""
    problem = None if force else init_target_problem(path)
    if problem:
        fail(problem)
    with exit_on((WorkspaceError, 2)):
        ws = Workspace.init(path, objects=objects)
    where = ws.objects.url or ws.objects.root
    out.print(f"workspace ready at {ws.root} (objects: {where})")


def init_target_problem(path: Path) -> str | None:
    """Why ``emo8 init PATH`` should not turn ``path`` into a workspace, or None when it may.

    A workspace keeps its images in ``objects/``; a folder that already holds files (typically the images to
    ingest) would silently mix the two, so it is refused unless ``--force`` is given.
    """
    from emo8.core.workspace import CONFIG_NAME

    if not path.is_dir() or (path / CONFIG_NAME).is_file():
        return None
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        return None
    shown = ", ".join(sorted(p.name for p in entries)[:3]) + (", ..." if len(entries) > 3 else "")
    return (
        f"{path} is not empty ({len(entries)} entries: {shown}) and is not an Emo8 workspace. Create the "
        f"workspace in a new folder and ingest this one into it (`emo8 init NEW && emo8 ingest folder {path} "
        "-w NEW`), or pass --force to make this folder a workspace anyway."
    )


@app.command(rich_help_panel=PANEL_SETUP)
def status(
    workspace: WorkspaceOpt = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Where the workspace stands: items by status and source, labels, rounds, splits, releases, reports."""
    from emo8.pipeline.status import render_lines, workspace_status

    ws = open_workspace(workspace)
    snapshot = workspace_status(ws)
    if as_json:
        out.print_json(json.dumps(snapshot.as_dict()))
        return
    out.print(f"[bold]{ws.root}[/]: {snapshot.items} items, {snapshot.valid} valid")
    for heading, rows in render_lines(snapshot):
        table = Table(title=heading, title_justify="left", show_header=False, box=None, pad_edge=False)
        for key, value in rows:
            table.add_row(f"  {key}", value)
        out.print(table)
