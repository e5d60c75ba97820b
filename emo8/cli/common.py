"""Pieces both command lines (``emo8`` and ``uniemox``) share: consoles, common options, errors -> exit codes.

Exit codes (the same for every command of both CLIs, see :data:`EXIT_CODES`): 0 success, 1 a runtime or service
failure (a server down, the network, the disk), 2 bad input or usage (what the command was given cannot work).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from emo8.core.stage import (  # noqa: F401  (re-exported for the CLI modules)
    DEFAULT_WORKERS,
    PANEL_COLLECT,
    PANEL_CURATE,
    PANEL_FINETUNE,
    PANEL_LABEL,
    PANEL_PRETRAIN,
    PANEL_RELEASE,
    PANEL_SETUP,
    PANEL_TOOLS,
    PANELS,
    WORKERS_HELP,
)

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

#: Exit codes of every ``emo8`` and ``uniemox`` command.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILURE: "runtime or service failure: a server, the network or the disk failed, or the run found a "
    "problem in the data that stops it (split leaks, nothing to release); the same command may work once fixed",
    EXIT_USAGE: "bad input or usage: an unknown option or name, a missing or malformed file, weights that are "
    "not available; change the command",
}


def ordered_group(order: tuple[str, ...] = ()) -> type[TyperGroup]:
    """A Typer group class listing commands panel by panel (in :data:`PANELS` order), then in ``order``
    (command names; unnamed ones keep their place after the named ones), then in creation order."""

    class OrderedGroup(TyperGroup):
        def list_commands(self, ctx: Any) -> list[str]:
            names = super().list_commands(ctx)

            def key(item: tuple[int, str]) -> tuple[int, int, int]:
                index, name = item
                panel = getattr(self.commands[name], "rich_help_panel", None)
                rank = PANELS.index(panel) if panel in PANELS else -1  # the default panel comes first anyway
                return rank, order.index(name) if name in order else len(order), index

            return [name for _, name in sorted(enumerate(names), key=key)]

    return OrderedGroup


def _flags_show_no_type() -> None:
    """Show boolean flags without a type in ``--help``.

    Typer >= 0.20 prints a type column for every option, ``<bool>`` for flags too, which reads as if ``--quiet``
    took a value. Flags (``--x`` alone, or a ``--x/--no-x`` pair) take none, so their type cell stays empty.
    """
    from typer.core import TyperOption

    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "emo8_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return original(self, ctx)  # type: ignore[no-any-return]

    display_type_rich.emo8_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()


WorkspaceOpt = Annotated[
    Path,
    typer.Option(
        "--workspace", "-w", envvar="EMO8_WORKSPACE", help="Workspace directory (env EMO8_WORKSPACE)."
    ),
]
QUIET_HELP = "No progress output (results, warnings and errors are still printed)."
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)]
Workers = Annotated[int, typer.Option("--workers", help=WORKERS_HELP)]
Device = Annotated[str, typer.Option("--device", help="auto (cuda when available), cpu or cuda.")]
ExecutorKind = Annotated[
    str, typer.Option("--executor", help="Where the work runs: local (this machine) or ray (a Ray cluster).")
]
RayAddress = Annotated[
    str | None,
    typer.Option("--ray-address", help="With --executor ray: auto or an address (default: start one here)."),
]


@contextmanager
def exit_on(*rules: tuple[Any, ...]) -> Iterator[None]:
    """Turn the listed exceptions into a one-paragraph message on stderr and an exit code.

    Each rule is ``(exception type or tuple of types, exit code)`` or ``(..., exit code, label)``; the first rule
    that matches wins (like a chain of ``except`` clauses). The message reads ``<label>: <exception text>``,
    label ``error`` unless given. Other exceptions pass through.
    """
    try:
        yield
    except tuple(_flatten(rule[0] for rule in rules)) as exc:
        for kinds, code, *label in rules:
            if isinstance(exc, kinds):
                text = (
                    str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
                )  # no repr quotes
                fail(text, code, label[0] if label else "error", cause=exc)
        raise


def fail(
    message: str, code: int = EXIT_USAGE, label: str = "error", cause: BaseException | None = None
) -> NoReturn:
    """Print ``<label>: <message>`` on stderr (no markup read from the message) and exit with ``code``."""
    console.print(f"[red]{label}:[/] {escape(message)}")
    raise typer.Exit(code) from cause


def warn(message: str) -> None:
    """Print ``warning: <message>`` on stderr."""
    console.print(f"[yellow]warning:[/] {escape(message)}")


#: The distribution that installs both ``emo8`` and ``uniemox``.
DISTRIBUTION = "emo8"


def version_option(program: str, distribution: str = DISTRIBUTION) -> Callable[[bool], None]:
    """An eager ``--version`` callback: prints ``<program> <installed version of distribution>`` and exits 0."""

    def show(value: bool) -> None:
        if value:
            try:
                found = package_version(distribution)
            except PackageNotFoundError:  # a source checkout that was never installed
                found = "unknown (not installed)"
            out.print(f"{program} {found}", highlight=False)
            raise typer.Exit()

    return show


def add_version_option(app: typer.Typer, program: str) -> None:
    """Give ``app`` a top-level ``--version`` option (its callback does nothing else)."""
    option = typer.Option(
        False,
        "--version",
        callback=version_option(program),
        is_eager=True,
        help="Print the version and exit.",
    )

    @app.callback()
    def _main(version: bool = option) -> None:
        del version


def _flatten(kinds: Iterator[Any]) -> Iterator[type[BaseException]]:
    for kind in kinds:
        yield from (kind if isinstance(kind, tuple) else (kind,))
