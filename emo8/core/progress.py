"""One look for the progress bars of the long-running stages (dedup, audit, split, release, suggest...).

Library functions take ``progress: bool`` (the CLI's ``--quiet/-q`` turns it off) and report through
:func:`stage_bar`::

    with stage_bar("release", total=len(rows), enabled=config.progress) as advance:
        for row in rows:
            ...
            advance(1)

A disabled bar costs nothing and prints nothing; nor does a bar when standard error is not a terminal (a log
file, a pipe, a test runner). Bars go to standard error, so a command's own output (and ``--json``) stays clean on
standard output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Where the bars are drawn (standard error; rich hides them when it is not a terminal).
_CONSOLE = Console(stderr=True)

Advance = Callable[[int], None]


#: The bar being shown, if any: a bar opened while another one runs (a stage inside a stage) becomes a second line
#: of it, since the terminal can show one live display at a time.
_ACTIVE: list[Progress] = []


def bar(enabled: bool = True) -> Progress:
    """A :class:`rich.progress.Progress` with the columns every emo8 stage uses; disabled unless ``enabled``.

    Each task names its stage in the field ``stage``."""
    return Progress(
        TextColumn("[bold]{task.fields[stage]}"),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_CONSOLE,
        disable=not enabled or not _CONSOLE.is_terminal,
    )


@contextmanager
def _task(
    label: str, total: int | None, enabled: bool, description: str
) -> Iterator[tuple[Progress, TaskID]]:
    enabled = enabled and _CONSOLE.is_terminal
    if enabled and _ACTIVE:
        progress = _ACTIVE[-1]
        task = progress.add_task(description, total=total, stage=label)
        try:
            yield progress, task
        finally:
            progress.remove_task(task)
        return
    progress = bar(enabled)
    with progress:
        if enabled:
            _ACTIVE.append(progress)
        try:
            yield progress, progress.add_task(description, total=total, stage=label)
        finally:
            if enabled:
                _ACTIVE.remove(progress)


@contextmanager
def stage_bar(label: str, total: int | None, enabled: bool = True, step: str = "") -> Iterator[Advance]:
    """Show one bar of ``total`` units labelled ``label`` (``step`` names the current part); yield ``advance(n)``."""
    with _task(label, total, enabled, step) as (progress, task):

        def advance(n: int = 1) -> None:
            progress.advance(task, n)

        yield advance


@contextmanager
def stage_steps(label: str, steps: list[str], enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A bar over the named ``steps`` of a stage; yield ``done(step)``, to call as each one finishes (the bar then
    names the next)."""
    with _task(label, len(steps), enabled, steps[0] if steps else "") as (progress, task):
        position = {"i": 0}

        def done(step: str) -> None:
            position["i"] += 1
            following = steps[position["i"]] if position["i"] < len(steps) else step
            progress.update(task, advance=1, description=following)

        yield done
