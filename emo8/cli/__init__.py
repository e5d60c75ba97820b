"""The ``emo8`` command line: a thin Typer layer over the library's stages (each command calls one function).

:mod:`emo8.cli.app` holds the Typer app; each module here adds the commands of one stage group. Stage commands
are derived from the stage's settings model (:mod:`emo8.cli.stages`), so the CLI and ``emo8 build`` accept the
same settings.
"""

from emo8.cli import (  # noqa: F401  (each module registers its commands on import)
    annotate,
    build,
    dedup,
    embed,
    ingest,
    label,
    release,
    setup,
)
from emo8.cli.app import PIPELINE, app

__all__ = ["PIPELINE", "app", "main"]


def main() -> None:
    """Entry point for ``python -m emo8``."""
    app()
