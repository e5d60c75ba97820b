"""Every command and subcommand of both CLIs shows its help (no crash, no traceback); ``--version`` works."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from emo8.cli import app as emo8_app
from emo8.cli.common import DEFAULT_WORKERS, PANELS
from uniemox.cli import app as uniemox_app

APPS = {"emo8": emo8_app, "uniemox": uniemox_app}


def command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path below ``group`` (groups included), depth first."""
    paths = [prefix]
    if isinstance(group, TyperGroup):
        for name in group.list_commands(group.context_class(group)):
            paths += command_paths(group.commands[name], (*prefix, name))
    return paths


ALL_PATHS = [
    (name, path) for name, app in APPS.items() for path in command_paths(typer.main.get_command(app))
]


def test_the_walk_finds_the_subcommands() -> None:
    """The walk itself must reach nested groups, or the help test below would prove nothing."""
    found = {" ".join((name, *path)) for name, path in ALL_PATHS}
    expected = {
        "emo8 embed",
        "emo8 ingest folder",
        "emo8 annotate pull",
        "emo8 labels import",
        "uniemox pretrain",
    }
    assert expected <= found
    assert len(found) > 30


@pytest.mark.parametrize(("program", "path"), ALL_PATHS, ids=[" ".join((n, *p)) for n, p in ALL_PATHS])
def test_help_of_every_command(program: str, path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(APPS[program], [*path, "--help"], terminal_width=100)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "Usage:" in result.output


def test_markup_in_help_is_shown_literally() -> None:
    """``open_clip:ARCH[/TAG]`` once crashed ``emo8 embed --help`` (read as a closing rich tag)."""
    result = CliRunner().invoke(emo8_app, ["embed", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "open_clip:ARCH[/TAG]" in result.output


@pytest.mark.parametrize("program", APPS)
def test_version(program: str) -> None:
    result = CliRunner().invoke(APPS[program], ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{program} {version('emo8')}"


def test_commands_are_listed_by_stage_in_pipeline_order() -> None:
    output = CliRunner().invoke(emo8_app, ["--help"], terminal_width=200).output
    panels = [p for p in PANELS if p in output]
    assert len(panels) >= 5
    assert [output.index(p) for p in panels] == sorted(output.index(p) for p in panels)
    stages = ["init", "ingest", "embed", "dedup", "suggest", "select", "annotate", "split", "release", "push"]
    positions = [output.index(f"│ {name} ") for name in stages]
    assert positions == sorted(positions)


#: Defaults that differ on purpose: detect-people's threads share one OpenCV detector, which is not thread-safe.
DEFAULT_EXCEPTIONS = {"emo8 detect-people --workers": DEFAULT_WORKERS}


def _options(program: str, path: tuple[str, ...]) -> dict[str, Any]:
    command: Any = typer.main.get_command(APPS[program])
    for name in path:
        command = command.commands[name]
    return {opt: p for p in command.params if p.param_type_name == "option" for opt in p.opts}


def test_shared_options_have_one_meaning_and_default() -> None:
    """--workers, --device and --quiet: the same help and default in every command that has them."""
    seen: dict[str, set[tuple[str, object]]] = {"--workers": set(), "--device": set(), "--quiet": set()}
    for program, path in ALL_PATHS:
        options = _options(program, path)
        for name, found in seen.items():
            if name in options:
                default = DEFAULT_EXCEPTIONS.get(" ".join((program, *path, name)), options[name].default)
                found.add((options[name].help or "", default))
    for name, found in seen.items():
        assert len(found) == 1, f"{name} differs between commands: {found}"


def test_boolean_flags_read_as_flags() -> None:
    """No --foo/--no-foo pair whose default is off (--no-foo would do nothing): such options are plain flags."""
    pairs = {
        f"{program} {' '.join(path)} {p.opts[0]}"
        for program, path in ALL_PATHS
        for p in set(_options(program, path).values())
        if getattr(p, "is_bool_flag", False) and p.secondary_opts and p.default is False
    }
    assert not pairs
    pretrain = _options("uniemox", ("pretrain",))
    assert pretrain["--compile"].secondary_opts == [] and pretrain["--norm-pix-loss"].secondary_opts == []
    assert "--no-progress" in pretrain["--quiet"].opts  # the old spelling still works


@pytest.mark.parametrize(("program", "path"), [("emo8", ("dedup",)), ("uniemox", ("pretrain",))])
def test_flags_show_no_value_type(program: str, path: tuple[str, ...]) -> None:
    """A flag takes no value, so its help row must not show one (Typer prints ``<bool>`` for flags by default)."""
    result = CliRunner().invoke(APPS[program], [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0 and "--quiet" in result.output
    assert "<bool>" not in result.output
    assert "<int" in result.output  # value options keep their type (<int> or <int range>)
