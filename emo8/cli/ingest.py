"""``emo8 ingest ...``: add images from a source (folder, URL list, Openverse, Hugging Face).

Each command is derived from its stage's settings (:mod:`emo8.ingest.stage`).
"""

import typer

from emo8.cli.app import app
from emo8.cli.common import PANEL_COLLECT
from emo8.cli.stages import add_stage_command
from emo8.ingest.stage import INGEST_FOLDER, INGEST_HF, INGEST_OPENVERSE, INGEST_RESUME, INGEST_URLS

ingest_app = typer.Typer(no_args_is_help=True, help="Add images from a source to the workspace.")
app.add_typer(ingest_app, name="ingest", rich_help_panel=PANEL_COLLECT)
for stage in (INGEST_FOLDER, INGEST_URLS, INGEST_OPENVERSE, INGEST_HF, INGEST_RESUME):
    add_stage_command(ingest_app, stage)
