"""``emo8 suggest``, ``select``, ``detect-people`` and ``labels import``: derived from the stages' settings
(:mod:`emo8.label.stage`)."""

from __future__ import annotations

import typer

from emo8.cli.app import app
from emo8.cli.common import PANEL_LABEL
from emo8.cli.stages import add_stage_command
from emo8.label.stage import DETECT_PEOPLE, LABELS_IMPORT, SELECT, SUGGEST

labels_app = typer.Typer(
    no_args_is_help=True, help="Labels from outside the pipeline (curators, other tools)."
)
app.add_typer(labels_app, name="labels", rich_help_panel=PANEL_LABEL)

add_stage_command(app, SUGGEST)
add_stage_command(app, SELECT)
add_stage_command(app, DETECT_PEOPLE)
add_stage_command(labels_app, LABELS_IMPORT)
