"""The ``emo8`` Typer app; the command modules of :mod:`emo8.cli` add their commands to it."""

from __future__ import annotations

import typer

from emo8.cli.common import (
    add_version_option,
    ordered_group,
)

PIPELINE = (
    "init", "status", "ingest", "embed", "dedup", "detect-people", "suggest", "select", "annotate", "labels",
    "split", "release", "audit", "push", "takedown",
)  # fmt: skip
app = typer.Typer(
    cls=ordered_group(PIPELINE),
    no_args_is_help=True,
    help="Build, curate, version and audit the Emo8 visual-emotion dataset.",
)
add_version_option(app, "emo8")
