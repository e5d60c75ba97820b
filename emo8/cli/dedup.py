"""``emo8 dedup``: derived from the stage's settings (:mod:`emo8.dedup.stage`)."""

from emo8.cli.app import app
from emo8.cli.stages import add_stage_command
from emo8.dedup.stage import DEDUP

add_stage_command(app, DEDUP)
