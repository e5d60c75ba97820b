"""``emo8 audit``, ``split``, ``release``, ``push`` (derived from :mod:`emo8.release.stage`) and ``takedown``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emo8.cli.app import app
from emo8.cli.common import PANEL_RELEASE, WorkspaceOpt, console, exit_on, out
from emo8.cli.stages import add_stage_command, open_workspace
from emo8.release.stage import AUDIT, PUSH, RELEASE, SPLIT

for _stage in (AUDIT, SPLIT, RELEASE, PUSH):
    add_stage_command(app, _stage)


@app.command("takedown", rich_help_panel=PANEL_RELEASE)
def takedown_cmd(
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded verbatim).")],
    workspace: WorkspaceOpt = Path("."),
    sha256: Annotated[str | None, typer.Option("--sha256", help="sha256 of the image bytes.")] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Image URL or the page it was published on.")
    ] = None,
    author: Annotated[str | None, typer.Option("--author", help="Every image of this author.")] = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the stored bytes.")] = False,
) -> None:
    """Remove an image and every copy of it from all later releases (by hash, URL or author)."""
    from emo8.core.takedown import TakedownError, TakedownRequest, take_down

    ws = open_workspace(workspace)
    with exit_on((TakedownError, 2)):
        result = take_down(ws, TakedownRequest(reason, sha256=sha256, url=url, author=author, purge=purge))
    out.print(
        f"[bold]{result.takedown_id}[/] ({result.selector}): {result.matched} item(s) matched, "
        f"{len(result.removed)} removed with their copies; {len(result.hashes)} hash(es) recorded"
    )
    if purge:
        out.print(
            f"  purged {result.purged_objects} stored object(s); deleted reports: {result.purged_reports or 'none'}"
        )
    if result.in_local_releases:
        console.print(
            f"[yellow]warning:[/] already in local release(s) {', '.join(result.in_local_releases)}: releases are "
            "immutable; withdraw them (and their Hub tags) if they were published"
        )
