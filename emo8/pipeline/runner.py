"""``emo8 build``: run a validated pipeline's steps in order, skip what is up to date, resume what was cut short.

For each step the runner computes its fingerprint (:mod:`emo8.pipeline.state`) and decides:

- **skip** ("up to date") when the step last succeeded with the same fingerprint and no workspace artifact it
  reads was changed outside the build since;
- **run** otherwise: never run, killed or failed last time, waiting for people, a setting or an outside input
  changed, an artifact it reads was changed outside the build, or an earlier step runs (every later step runs
  too, so a change re-runs that step and the ones after it, and nothing before it).

A step whose :class:`~emo8.core.stage.Summary` is ``waiting`` stops the build (status ``waiting``; the next
build runs that step again, which goes on once the wait is resolved); a ``problem`` or an error stops it as
``failed``. Every build leaves a record in ``build/runs/`` and ``build/current.json``.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.text import Text

from emo8.core.buildinfo import code_version, write_current_build
from emo8.core.catalog import utc_now
from emo8.core.stage import Summary, settings_fingerprint
from emo8.core.workspace import CONFIG_NAME, Workspace, atomic_write_json
from emo8.pipeline.serve import ServeError, serving
from emo8.pipeline.spec import Pipeline, PipelineError, Step
from emo8.pipeline.state import (
    RUNS_DIR,
    BuildState,
    StepRecord,
    digests,
    inputs_digest,
    step_fingerprint,
)

__all__ = ["BuildBusyError", "BuildOutcome", "PlannedStep", "plan_build", "run_build"]

LOCK_FILE = "build/lock"


class BuildBusyError(RuntimeError):
    """Another ``emo8 build`` is running in the same workspace."""


@contextmanager
def _exclusive(ws: Workspace) -> Iterator[None]:
    """Hold the workspace's build lock (released by the OS when the process ends, even when it is killed)."""
    path = ws.root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise BuildBusyError(
                f"another emo8 build is running in {ws.root} ({holder}); wait for it to end, or stop it"
            ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


Echo = Callable[[str], None]


@dataclass
class PlannedStep:
    """What a build does (or would do) with one step, and why."""

    step: Step
    action: str  # run, skip, before (--from), after (--until)
    reason: str
    status: str  # for --status: done, stale, waiting, pending
    fingerprint: str


@dataclass
class BuildOutcome:
    """How a build ended: ``done``, ``waiting`` or ``failed`` (with the exit code a command should use)."""

    status: str
    exit_code: int = 0
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    message: str | None = None
    workspace: Path | None = None
    record: Path | None = None
    release: Path | None = None
    reports: list[Path] = field(default_factory=list)


# -- deciding -------------------------------------------------------------------------------------------------


def _reason(
    step: Step, record: StepRecord | None, fingerprint: str, inputs: str, previous: str, changed: set[str]
) -> str | None:
    """Why ``step`` must run (None: it is up to date)."""
    if record is None:
        return "never run"
    if record.status == "running":
        return "interrupted last time (killed or crashed): runs again"
    if record.status == "waiting":
        return "was waiting: checks again"
    if record.status == "failed":
        return f"failed last time{': ' + record.message if record.message else ''}"
    if record.status == "stale":
        return "an earlier step re-ran since"
    if record.fingerprint != fingerprint:
        if record.settings_fingerprint != settings_fingerprint(step.settings):
            return "settings changed"
        if record.inputs != inputs:
            return "its inputs outside the workspace changed"
        if record.previous != previous:
            return "an earlier step changed"
        return "what the previous step wrote changed"
    outside = sorted(a for a in step.stage.reads if a in changed)
    if outside:
        return f"changed outside the build: {', '.join(outside)}"
    return None


def _window(pipeline: Pipeline, from_step: str | None, until_step: str | None) -> tuple[int, int]:
    names = pipeline.step_names()
    low = names.index(from_step) if from_step else 0
    high = names.index(until_step) if until_step else len(names) - 1
    return low, high


def _upstream(step: Step, previous_outputs: dict[str, str]) -> dict[str, str]:
    return {a: previous_outputs[a] for a in step.stage.reads if a in previous_outputs}


def plan_build(
    pipeline: Pipeline, ws: Workspace | None, from_step: str | None = None, until_step: str | None = None
) -> list[PlannedStep]:
    """What a build would do with each step, touching nothing (``ws`` None: a workspace not created yet)."""
    state = BuildState.load(ws) if ws is not None else BuildState(Path("-"))
    changed: set[str] = state.changed_outside(ws) if ws is not None else set()
    low, high = _window(pipeline, from_step, until_step)
    planned: list[PlannedStep] = []
    previous, outputs, forced = "", {}, None  # type: str, dict[str, str], str | None
    for i, step in enumerate(pipeline.steps):
        inputs = inputs_digest(step)
        fingerprint = step_fingerprint(step, inputs, previous, _upstream(step, outputs))
        record = state.steps.get(step.name)
        reason = _reason(step, record, fingerprint, inputs, previous, changed)
        status = _status(record, reason if forced is None else reason or f"after {forced}")
        if i < low:
            planned.append(
                PlannedStep(step, "before", f"before --from ({reason or 'up to date'})", status, fingerprint)
            )
        elif i > high:
            planned.append(PlannedStep(step, "after", "after --until", status, fingerprint))
        else:
            if from_step and reason is None and i == low:
                reason = "--from starts here"
            if forced is not None and reason is None:
                reason = f"{forced} runs before it"
            planned.append(
                PlannedStep(
                    step, "skip" if reason is None else "run", reason or "up to date", status, fingerprint
                )
            )
            if reason is not None and forced is None:
                forced = step.name
        previous, outputs = fingerprint, (record.outputs if record else {})
    return planned


def _status(record: StepRecord | None, reason: str | None) -> str:
    if record is not None and record.status == "waiting":
        return "waiting"
    if reason is None:
        return "done"
    if record is not None and record.status in ("done", "stale"):
        return "stale"
    return "pending"


# -- running --------------------------------------------------------------------------------------------------


def open_or_create(path: Path) -> Workspace:
    """The workspace at ``path``, created as ``emo8 init`` would when missing (a non-empty folder that is not a
    workspace is refused, so images are never mixed into one)."""
    if (
        path.is_dir()
        and not (path / CONFIG_NAME).is_file()
        and any(not p.name.startswith(".") for p in path.iterdir())
    ):
        raise PipelineError(
            path,
            [
                f"{path} is not empty and is not an Emo8 workspace; point `workspace:` (or --workspace) at a new "
                "folder or an existing workspace"
            ],
        )
    return Workspace.init(path)


def _plain(lines: list[str]) -> list[str]:
    return [Text.from_markup(line).plain for line in lines]


class _Record:
    """The build record: ``build/runs/<time>-<hash>.json`` and ``build/current.json``, rewritten after each step."""

    def __init__(
        self, pipeline: Pipeline, ws: Workspace, from_step: str | None, until_step: str | None
    ) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        self.ws = ws
        self.path = ws.root / RUNS_DIR / f"{stamp}-{pipeline.sha256[:12]}.json"
        self.data: dict[str, Any] = {
            "run_id": self.path.stem,
            "pipeline": {
                "name": pipeline.name, "description": pipeline.description, "path": str(pipeline.path),
                "sha256": pipeline.sha256, "text": pipeline.text,
            },
            "code_version": code_version(), "workspace": str(ws.root), "started_at": utc_now(),
            "finished_at": None, "status": "running", "from": from_step, "until": until_step,
            "steps": [
                {
                    "name": step.name, "stage": step.stage.name, "settings": step.settings.model_dump(mode="json"),
                    "settings_fingerprint": settings_fingerprint(step.settings), "fingerprint": None,
                    "status": "not run", "reason": None, "seconds": None, "summary": [], "warnings": [],
                }
                for step in pipeline.steps
            ],
        }  # fmt: skip

    def step(self, index: int, **values: Any) -> None:
        self.data["steps"][index].update(values)
        self.save()

    def finish(self, status: str) -> None:
        self.data.update(status=status, finished_at=utc_now())
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)
        write_current_build(self.ws, self.data)


def run_build(
    pipeline: Pipeline,
    from_step: str | None = None,
    until_step: str | None = None,
    progress: bool = True,
    echo: Echo = print,
    warn: Echo = print,
) -> BuildOutcome:
    """Run ``pipeline`` (already validated): each step in order, skipping what is up to date.

    ``echo`` receives progress and summary lines (rich markup), ``warn`` the stages' warnings. Errors a stage
    declares as the user's end the build with exit code 2, the world's with 1; any other error is recorded as
    the step's failure and raised.
    """
    ws = open_or_create(pipeline.workspace)
    with _exclusive(ws):
        return _run(ws, pipeline, from_step, until_step, progress, echo, warn)


def _run(
    ws: Workspace,
    pipeline: Pipeline,
    from_step: str | None,
    until_step: str | None,
    progress: bool,
    echo: Echo,
    warn: Echo,
) -> BuildOutcome:
    state = BuildState.load(ws)
    changed = state.changed_outside(ws)
    record = _Record(pipeline, ws, from_step, until_step)
    outcome = BuildOutcome("done", workspace=ws.root, record=record.path)
    low, high = _window(pipeline, from_step, until_step)
    total = len(pipeline.steps)
    previous, outputs, forced = "", {}, None  # type: str, dict[str, str], str | None
    record.save()
    stack = ExitStack()
    try:
        urls = stack.enter_context(serving(pipeline.serve))
    except ServeError:  # a port is taken: nothing ran
        record.finish("failed")
        raise
    with stack:
        for name, url in urls.items():
            echo(f"serving [bold]{name}[/] at {url}")
        for i, step in enumerate(pipeline.steps):
            if i > high:
                break
            inputs = inputs_digest(step)
            fingerprint = step_fingerprint(step, inputs, previous, _upstream(step, outputs))
            old = state.steps.get(step.name)
            if i < low:
                previous, outputs = fingerprint, (old.outputs if old else {})
                continue
            reason = _reason(step, old, fingerprint, inputs, previous, changed)
            if from_step and i == low:
                reason = reason or "--from starts here"
            if forced is not None:
                reason = reason or f"{forced} ran before it"
            head = f"[{i + 1}/{total}] [bold]{escape(step.name)}[/]"
            if reason is None:
                echo(f"{head} ({step.stage.name}): up to date, skipped")
                outcome.skipped.append(step.name)
                record.step(i, fingerprint=fingerprint, status="skipped", reason="up to date")
                previous, outputs = fingerprint, (old.outputs if old else {})
                continue
            forced = forced or step.name
            echo(f"{head} ({step.stage.name}): running ({reason})")
            ended = _run_step(ws, state, record, step, i, fingerprint, inputs, previous, progress, reason)
            outcome.ran.append(step.name)
            summary, seconds, error = ended
            if error is not None:
                message, code, exc = error
                echo(f"{head}: [red]failed[/] after {seconds:.1f}s")
                outcome.status, outcome.exit_code, outcome.message = "failed", code, message
                if code == 0:  # not an error the stage declares: a bug, shown with its traceback
                    record.finish("failed")
                    raise exc
                break
            assert summary is not None
            for line in summary.lines:
                echo(line)
            for message in summary.warnings:
                warn(message)
            status = "waiting" if summary.waiting else ("failed" if summary.problem else "done")
            echo(f"{head}: {status} in {seconds:.1f}s")
            if summary.waiting:
                outcome.status, outcome.message = "waiting", summary.waiting
                break
            if summary.problem:
                outcome.status, outcome.exit_code, outcome.message = "failed", 1, summary.problem
                break
            previous, outputs = fingerprint, state.steps[step.name].outputs
    if outcome.status == "done" and from_step is None and until_step is None:
        # every step ran or was checked against what changed: what the artifacts are now is the build's doing
        # (this also covers what a stage writes without declaring it, e.g. a report)
        state.artifacts = digests(
            ws, (a for step in pipeline.steps for a in (*step.stage.reads, *step.stage.writes))
        )
        state.save()
    record.finish(outcome.status)
    outcome.release, outcome.reports = _latest_release(ws), sorted(ws.reports_dir.glob("*.html"))
    return outcome


def _run_step(
    ws: Workspace,
    state: BuildState,
    record: _Record,
    step: Step,
    index: int,
    fingerprint: str,
    inputs: str,
    previous: str,
    progress: bool,
    reason: str,
) -> tuple[Summary | None, float, tuple[str, int, BaseException] | None]:
    """Run one step, recording it as running first (a kill leaves it so: the next build runs it again)."""
    for name, old in state.steps.items():  # every step after this one is stale once it runs
        if old.status == "done" and _after(record, step.name, name):
            old.status = "stale"
    state.steps[step.name] = StepRecord(
        stage=step.stage.name, fingerprint=fingerprint, status="running",
        settings_fingerprint=settings_fingerprint(step.settings), inputs=inputs, previous=previous,
        writes=list(step.stage.writes),
    )  # fmt: skip
    state.save()
    record.step(index, fingerprint=fingerprint, status="running", reason=reason, started_at=utc_now())
    ran = state.steps[step.name]
    started = time.monotonic()
    summary: Summary | None = None
    error: tuple[str, int, BaseException] | None = None
    try:  # a stage whose command has no --workspace still gets the build's (e.g. `data: latest`)
        result = step.stage.run(ws, step.settings, progress)
        summary = step.stage.summarize(result, step.settings)
    except step.stage.usage_errors as exc:  # the user's: change the pipeline file
        error = (_message(exc), 2, exc)
    except step.stage.runtime_errors as exc:  # the world's: the same build may work later
        error = (_message(exc), 1, exc)
    except Exception as exc:  # a bug: record the failure, then let it surface
        error = (_message(exc), 0, exc)
    seconds = time.monotonic() - started
    ran.seconds, ran.finished_at = round(seconds, 3), utc_now()
    now = digests(ws, (*step.stage.reads, *step.stage.writes))  # once: outputs are the written part
    if error is not None:
        ran.status, ran.message = "failed", error[0]
        record.step(index, status="failed", seconds=ran.seconds, problem=error[0])
    else:
        assert summary is not None
        ran.outputs = {artifact: now[artifact] for artifact in step.stage.writes}
        ran.status = "waiting" if summary.waiting else ("failed" if summary.problem else "done")
        ran.message = summary.waiting or summary.problem
        record.step(
            index, status=ran.status, seconds=ran.seconds, summary=_plain(summary.lines),
            warnings=summary.warnings, problem=summary.problem, waiting=summary.waiting,
        )  # fmt: skip
    state.artifacts.update(now)
    state.save()
    return summary, seconds, error


def _after(record: _Record, this: str, other: str) -> bool:
    names = [s["name"] for s in record.data["steps"]]
    return other in names and names.index(other) > names.index(this)


def _message(exc: BaseException) -> str:
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc) or type(exc).__name__


def _latest_release(ws: Workspace) -> Path | None:
    releases = [p for p in ws.releases_dir.glob("*") if p.is_dir()] if ws.releases_dir.is_dir() else []
    return max(releases, key=lambda p: p.stat().st_mtime) if releases else None
