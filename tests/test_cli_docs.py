"""docs/cli.md is generated from the Typer apps and must be regenerated whenever a command or option changes."""

from __future__ import annotations

from pathlib import Path

import typer

from emo8.cli import app
from emo8.cli.doc import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_is_up_to_date() -> None:
    assert DOC.read_text() == render(), (
        "docs/cli.md is stale: run `python -m emo8.cli.doc --write docs/cli.md`"
    )


def test_the_reference_lists_every_command_and_option() -> None:
    text = render()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert f"`emo8 {name}`" in text
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert f"`{opt}`" in text, (name, opt)
    assert "| 2 | bad input or usage" in text and "`uniemox pretrain`" in text
    assert "CPUs, at most 8" in text  # machine-dependent defaults are written as their rule
