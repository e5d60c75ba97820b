"""Pieces every ``emo8`` command module shares: the consoles, the workspace option, errors -> exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

WorkspaceOpt = Annotated[
    Path,
    typer.Option(
        "--workspace", "-w", envvar="EMO8_WORKSPACE", help="Workspace directory (env EMO8_WORKSPACE)."
    ),
]


@contextmanager
def exit_on(*rules: tuple[Any, ...]) -> Iterator[None]:
    """Turn the listed exceptions into a one-line message on stderr and an exit code.

    Each rule is ``(exception type or tuple of types, exit code)`` or ``(..., exit code, label)``; the first rule
    that matches wins (like a chain of ``except`` clauses). The message reads ``<label>: <exception text>``,
    label ``error`` unless given. Other exceptions pass through.
    """
    try:
        yield
    except tuple(_flatten(rule[0] for rule in rules)) as exc:
        for kinds, code, *label in rules:
            if isinstance(exc, kinds):
                console.print(f"[red]{label[0] if label else 'error'}:[/] {exc}")
                raise typer.Exit(code) from exc
        raise


def _flatten(kinds: Iterator[Any]) -> Iterator[type[BaseException]]:
    for kind in kinds:
        yield from (kind if isinstance(kind, tuple) else (kind,))
