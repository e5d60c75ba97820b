"""``emo8 embed``: derived from the stage's settings (:mod:`emo8.embed.stage`)."""

from emo8.cli.app import app
from emo8.cli.stages import add_stage_command
from emo8.embed.stage import EMBED

add_stage_command(app, EMBED)
