"""The annotation stages: ``annotate-push``, ``annotate-pull``, ``annotate-import``, ``annotate-round`` and
``annotate-aggregate``.

Each stage's settings are declared once here (for ``emo8 annotate ...`` and pipelines). ``annotate-round`` is the
one a build uses: it pushes the round when a Label Studio answers, pulls its answers, and reports the round as
*waiting* (with what people must do next) until every task has its answers; answers imported from an export
complete it without any server.

Heavy imports (pandas, the Label Studio SDK) happen inside the run functions, so ``import emo8.cli`` stays fast.
"""

from __future__ import annotations

import io
import json
import math
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from emo8.annotate.errors import AnnotateError, ServerError, ServerUnavailable
from emo8.core.stage import (
    CommaList,
    Stage,
    StageSettings,
    Summary,
    path_digest,
    register_stage,
    setting,
)
from emo8.core.workspace import Workspace, WorkspaceError

if TYPE_CHECKING:
    from rich.table import Table

    from emo8.annotate.aggregate import AggregateReport
    from emo8.annotate.client import Client
    from emo8.annotate.rounds import PullSummary, PushSummary, RoundCompletion

#: Progress and retry notes go to standard error (results go to standard output).
_STDERR = Console(stderr=True, soft_wrap=True)

#: The catalog tables of the annotation stages (see :mod:`emo8.annotate.store`).
ROUNDS, TASKS, ANSWERS = "table:annotation_rounds", "table:annotation_tasks", "table:annotations"


class LabelStudioDown(RuntimeError):
    """Label Studio is not running or kept failing (exit 1, the same command may work later).

    Raised in place of :class:`~emo8.annotate.errors.ServerUnavailable`, which is an
    :class:`~emo8.annotate.errors.AnnotateError` like the stages' usage errors (exit 2)."""


@contextmanager
def _service_errors() -> Iterator[None]:
    try:
        yield
    except ServerUnavailable as exc:
        raise LabelStudioDown(str(exc)) from exc


USAGE_ERRORS: tuple[type[BaseException], ...] = (AnnotateError, WorkspaceError)
RUNTIME_ERRORS: tuple[type[BaseException], ...] = (LabelStudioDown,)


# -- connecting ----------------------------------------------------------------------------------------------------


def _retry_note(attempt: int, exc: BaseException) -> None:
    if attempt in (0, 3, 10):
        _STDERR.print(f"[yellow]Label Studio not answering ({type(exc).__name__}); retrying...[/]")


def connect_workspace(
    ws: Workspace, url: str | None, local_files_root: Path | None = None
) -> tuple[Client, Path | None]:
    """A client for the workspace's Label Studio (or ``url``) and the server's local files root.

    Raises :class:`ServerUnavailable` when the workspace's own server is not running, :class:`ServerError` when no
    server or API key is known or the key is refused."""
    from emo8.annotate.client import connect
    from emo8.annotate.server import health, load_connection

    conn = load_connection(ws, url=url, local_files_root=local_files_root)
    if conn.managed and not health(conn.url):
        raise ServerUnavailable(
            f"this workspace's Label Studio ({conn.url}) is not running; start it with `emo8 annotate serve`"
        )
    return connect(conn.url, conn.api_key, on_retry=_retry_note), conn.local_files_root


def reachable_server(
    ws: Workspace, url: str | None, local_files_root: Path | None = None
) -> tuple[Client | None, Path | None, str]:
    """``(client, local files root, where)`` for a Label Studio that answers now, else ``(None, None, why not)``."""
    from emo8.annotate.client import connect
    from emo8.annotate.server import health, load_connection

    try:
        conn = load_connection(ws, url=url, local_files_root=local_files_root)
    except ServerError:
        return None, None, "no Label Studio server is set up for this workspace"
    if not health(conn.url):
        return None, None, f"Label Studio at {conn.url} does not answer"
    return connect(conn.url, conn.api_key, on_retry=_retry_note), conn.local_files_root, conn.url


# -- shared settings -----------------------------------------------------------------------------------------------

ROUND_HELP = "Round name (as given to `emo8 select --round`)."
URL_HELP = "Label Studio URL (default: LABEL_STUDIO_URL, else the workspace's server)."
LOCAL_ROOT_HELP = "The server's LOCAL_FILES_DOCUMENT_ROOT, when it can read this workspace."
LABEL_CONFIG_HELP = "Label config XML (default annotations/emo8.xml)."


def round_setting(help: str = ROUND_HELP) -> Any:
    """``round`` (``--round/-r``): the round's name, required."""
    return setting(..., help, flag="--round", short="-r")


def url_setting() -> Any:
    """``url``: which server (its address can change between runs, so not part of the fingerprint)."""
    return setting(None, URL_HELP, fingerprint=False)


def local_root_setting() -> Any:
    """``local_files_root``: where the server reads local files from (not part of the fingerprint)."""
    return setting(None, LOCAL_ROOT_HELP, fingerprint=False)


def label_config_setting() -> Any:
    """``label_config``: the Label Studio label config XML."""
    return setting(None, LABEL_CONFIG_HELP)


def _files_digest(*paths: Path | None) -> str:
    return ",".join(path_digest(p) if p is not None else "" for p in paths)


# -- push ----------------------------------------------------------------------------------------------------------


class AnnotatePushSettings(StageSettings):
    """Settings of ``emo8 annotate push`` / a pipeline's ``annotate-push`` step."""

    round: str = round_setting()
    overlap: int = setting(3, "Annotators per task (the project's maximum annotations).", ge=1)
    gold_rate: float = setting(0.05, "Share of gold items mixed in, unannounced.", ge=0.0, le=1.0)
    gold_file: Path | None = setting(None, "CSV of gold items: item_id or sha256, label.")
    predictions: bool = setting(True, "Pre-select the suggested label.")
    image_urls: str = setting("local-files", "local-files, source-url or template.")
    image_url_template: str | None = setting(None, "e.g. https://cdn/{sha256}{ext}")
    batch_size: int = setting(500, "Tasks per import request.", ge=1, fingerprint=False)
    label_config: Path | None = label_config_setting()
    guidelines: Path | None = setting(None, "Guidelines markdown (default annotations/guidelines.md).")
    url: str | None = url_setting()
    local_files_root: Path | None = local_root_setting()


def _push_options(settings: AnnotatePushSettings, root: Path | None) -> Any:
    from emo8.annotate.rounds import PushOptions

    return PushOptions(
        overlap=settings.overlap, gold_rate=settings.gold_rate, gold_file=settings.gold_file,
        predictions=settings.predictions, image_urls=settings.image_urls,
        image_url_template=settings.image_url_template, local_files_root=root, batch_size=settings.batch_size,
        label_config=settings.label_config, guidelines=settings.guidelines,
    )  # fmt: skip


def run_push(ws: Workspace, settings: AnnotatePushSettings, progress: bool) -> PushSummary:
    """Push the round to the workspace's Label Studio (:func:`emo8.annotate.rounds.push_round`)."""
    from emo8.annotate.rounds import push_round

    with _service_errors():
        client, root = connect_workspace(ws, settings.url, settings.local_files_root)
        return push_round(ws, settings.round, client, _push_options(settings, root))


def push_lines(summary: PushSummary) -> list[str]:
    """What a push did: the project, tasks imported and already there, gold, predictions, skipped."""
    skipped = ", ".join(f"{k}={v}" for k, v in summary.skipped.items()) or "none"
    return [
        f"round [bold]{escape(summary.round)}[/]: project {summary.project_id} ({summary.project_url}); "
        f"{summary.new_tasks} tasks imported, {summary.existing_tasks} already there; {summary.gold} gold; "
        f"{summary.with_predictions} new tasks with predictions; skipped: {skipped}; {summary.seconds:.1f}s"
    ]


def summarize_push(summary: PushSummary, settings: AnnotatePushSettings) -> Summary:
    """See :func:`push_lines`."""
    return Summary(push_lines(summary))


def _push_inputs(settings: AnnotatePushSettings) -> str:
    return _files_digest(settings.gold_file, settings.label_config, settings.guidelines)


ANNOTATE_PUSH = register_stage(
    Stage(
        name="annotate-push",
        settings=AnnotatePushSettings,
        run=run_push,
        summarize=summarize_push,
        command=("annotate", "push"),
        help="Create the round's project (once) and import the tasks it lacks, with predictions and gold items.",
        usage_errors=USAGE_ERRORS,
        runtime_errors=RUNTIME_ERRORS,
        reads=("table:items", "table:selections", ROUNDS, TASKS),
        writes=(ROUNDS, TASKS),
        inputs=_push_inputs,
    )
)


# -- pull and import -----------------------------------------------------------------------------------------------


class AnnotatePullSettings(StageSettings):
    """Settings of ``emo8 annotate pull`` / a pipeline's ``annotate-pull`` step."""

    round: str = round_setting()
    page_size: int = setting(500, "Tasks per request.", ge=1, fingerprint=False)
    label_config: Path | None = label_config_setting()
    url: str | None = url_setting()


def _page_note(pages: int, tasks: int) -> None:
    _STDERR.print(f"  read {tasks} tasks ({pages} pages)", highlight=False)


def run_pull(ws: Workspace, settings: AnnotatePullSettings, progress: bool) -> PullSummary:
    """Copy the round's annotations into the catalog (:func:`emo8.annotate.rounds.pull_round`)."""
    from emo8.annotate.rounds import PullOptions, pull_round

    with _service_errors():
        client, _ = connect_workspace(ws, settings.url)
        options = PullOptions(settings.page_size, _page_note if progress else None, settings.label_config)
        return pull_round(ws, settings.round, client, options)


def pull_summary(summary: PullSummary) -> Summary:
    """What a pull or import changed: new, updated, deleted, unchanged annotations; tasks skipped."""
    c = summary.changes
    lines = [
        f"round [bold]{escape(summary.round)}[/]: {summary.tasks} tasks, {summary.annotations} annotations from "
        f"{escape(summary.source)}: {c.new} new, {c.updated} updated, {c.deleted} deleted, {c.unchanged} unchanged"
        + (f", {c.restored} restored" if c.restored else "")
        + f"; {summary.seconds:.1f}s"
    ]
    warnings = []
    if summary.skipped_tasks:
        warnings.append(f"{summary.skipped_tasks} tasks without a workspace item were skipped")
    if summary.unknown_values:
        warnings.append(f"{summary.unknown_values} result values unknown to the label config")
    return Summary(lines, warnings)


def summarize_pull(summary: PullSummary, settings: Any) -> Summary:
    """See :func:`pull_summary`."""
    return pull_summary(summary)


ANNOTATE_PULL = register_stage(
    Stage(
        name="annotate-pull",
        settings=AnnotatePullSettings,
        run=run_pull,
        summarize=summarize_pull,
        command=("annotate", "pull"),
        help="Copy every annotation of the round into the catalog (idempotent; edits and deletions are picked up).",
        usage_errors=USAGE_ERRORS,
        runtime_errors=RUNTIME_ERRORS,
        reads=("table:items", ROUNDS, TASKS),
        writes=(ROUNDS, TASKS, ANSWERS),
        inputs=lambda settings: _files_digest(settings.label_config),
    )
)


class AnnotateImportSettings(StageSettings):
    """Settings of ``emo8 annotate import`` / a pipeline's ``annotate-import`` step."""

    export_file: Path = setting(..., "Label Studio JSON export of the round's project.", argument=True)
    round: str = round_setting()
    label_config: Path | None = label_config_setting()


def run_import(ws: Workspace, settings: AnnotateImportSettings, progress: bool) -> PullSummary:
    """Store the annotations of an export as the round's (:func:`emo8.annotate.rounds.import_export`)."""
    from emo8.annotate.rounds import import_export

    return import_export(ws, settings.round, settings.export_file, settings.label_config)


ANNOTATE_IMPORT = register_stage(
    Stage(
        name="annotate-import",
        settings=AnnotateImportSettings,
        run=run_import,
        summarize=summarize_pull,
        command=("annotate", "import"),
        help="Store the annotations of a Label Studio JSON export (a project run on another server) as a round.",
        usage_errors=USAGE_ERRORS,
        runtime_errors=RUNTIME_ERRORS,
        reads=("table:items", ROUNDS, TASKS),
        writes=(ROUNDS, TASKS, ANSWERS),
        inputs=lambda settings: _files_digest(settings.export_file, settings.label_config),
    )
)


# -- round: push, pull, and wait for people ------------------------------------------------------------------------


class AnnotateRoundSettings(AnnotatePushSettings):
    """Settings of ``emo8 annotate round`` / a pipeline's ``annotate-round`` step: the push settings (used when
    the round is pushed) and how many answers each task needs."""

    answers: int | None = setting(
        None, "Answers each task needs before the round is complete (default: the round's overlap).", ge=1
    )


@dataclass
class RoundRun:
    """What ``annotate-round`` did (a push, a pull, neither) and how complete the round is now."""

    workspace: Path
    completion: RoundCompletion
    push: PushSummary | None = None
    pull: PullSummary | None = None
    server: str | None = None
    offline: str | None = None  # why no server was used


def run_round(ws: Workspace, settings: AnnotateRoundSettings, progress: bool) -> RoundRun:
    """Push the round if a Label Studio answers and it was neither pushed nor imported, pull it if it was pushed,
    then count its complete tasks in the catalog (:func:`emo8.annotate.rounds.round_completion`)."""
    from emo8.annotate.rounds import PullOptions, pull_round, push_round, round_completion
    from emo8.annotate.store import AnnotationStore

    round_completion(ws, settings.round, settings.answers, settings.overlap)  # an unknown round: the error
    store = AnnotationStore(ws.catalog)
    record = store.round(settings.round) or {}
    imported = str(record.get("pulled_from") or "").startswith("file:")
    push = pull = None
    with _service_errors():
        client, root, where = reachable_server(ws, settings.url, settings.local_files_root)
        if client is not None:
            if not record.get("project_id") and not imported:
                push = push_round(ws, settings.round, client, _push_options(settings, root))
            if push is not None or record.get("project_id"):
                pull = pull_round(
                    ws, settings.round, client, PullOptions(on_page=_page_note if progress else None)
                )
    completion = round_completion(ws, settings.round, settings.answers, settings.overlap)
    return RoundRun(
        workspace=ws.root,
        completion=completion,
        push=push,
        pull=pull,
        server=where if client is not None else None,
        offline=None if client is not None else where,
    )


def round_next_steps(run: RoundRun) -> str:
    """What people must do before the round is complete, as one paragraph of numbered steps."""
    c = run.completion
    r, w = shlex.quote(c.round), shlex.quote(str(run.workspace))
    steps = []
    if run.server is None:
        steps.append(f"start Label Studio: `emo8 annotate serve -w {w}` ({run.offline})")
    if c.project_url is None:
        steps.append(
            f"push the round: `emo8 annotate push --round {r} -w {w}` (re-running the build does it once Label "
            "Studio answers) and share the project link it prints with the annotators"
        )
    else:
        steps.append(f"share the project link with the annotators: {c.project_url}")
    steps.append(
        f"annotators label: {c.tasks - c.complete} of {c.tasks} tasks still need answers "
        f"({c.missing_answers} answers missing, {c.required} per task)"
    )
    steps.append(
        f"bring the answers in: `emo8 annotate pull --round {r} -w {w}` (or, for a project run on another "
        f"server, `emo8 annotate import EXPORT.json --round {r} -w {w}`)"
    )
    steps.append(f"re-run `emo8 build PIPELINE` (or `emo8 annotate round --round {r} -w {w}`)")
    return f"round {c.round}: " + "; ".join(f"{i}. {step}" for i, step in enumerate(steps, 1))


def summarize_round(run: RoundRun, settings: AnnotateRoundSettings) -> Summary:
    """The push and pull it did, the round's completeness, and while answers are missing what to do next."""
    c = run.completion
    lines: list[str] = []
    warnings: list[str] = []
    if run.push is not None:
        lines += push_lines(run.push)
    if run.pull is not None:
        pulled = pull_summary(run.pull)
        lines += pulled.lines
        warnings += pulled.warnings
    source = f"; answers from {escape(c.pulled_from)} ({c.pulled_at})" if c.pulled_from else ""
    state = "complete" if c.done else "waiting for answers"
    lines.append(
        f"round [bold]{escape(c.round)}[/] {state}: {c.complete}/{c.tasks} tasks complete "
        f"({c.required} answers each, {c.answers} answers){source}"
    )
    if c.project_url:
        lines.append(f"  project: {c.project_url}")
    return Summary(lines, warnings, waiting=None if c.done else round_next_steps(run))


ANNOTATE_ROUND = register_stage(
    Stage(
        name="annotate-round",
        settings=AnnotateRoundSettings,
        run=run_round,
        summarize=summarize_round,
        command=("annotate", "round"),
        help="Push the round to Label Studio (once), pull its answers, and say what is missing until every task "
        "has its answers (answers imported from an export need no server).",
        usage_errors=USAGE_ERRORS,
        runtime_errors=RUNTIME_ERRORS,
        reads=("table:items", "table:selections", ROUNDS, TASKS, ANSWERS),
        writes=(ROUNDS, TASKS, ANSWERS),
        inputs=_push_inputs,
    )
)


# -- aggregate -----------------------------------------------------------------------------------------------------


class AnnotateAggregateSettings(StageSettings):
    """Settings of ``emo8 annotate aggregate`` / a pipeline's ``annotate-aggregate`` step."""

    method: str = setting("majority", "majority or dawid-skene.")
    min_votes: int = setting(3, "Votes an item needs to be settled.", ge=1)
    min_agreement: float = setting(
        0.6, "Winner's share of votes an item needs to be settled.", ge=0.0, le=1.0
    )
    rounds: CommaList = setting(
        (), "Only these rounds (repeatable, or separated with commas).", flag="--round", short="-r"
    )
    annotator_threshold: float = setting(0.5, "Report annotators whose quality is below this.")
    exclude_low_quality: bool = setting(False, "Drop the votes of annotators below the threshold.")
    exclude_annotator: CommaList = setting(
        (), "Drop this annotator's votes (repeatable, or separated with commas)."
    )
    as_json: bool = setting(False, "Print JSON.", flag="--json", fingerprint=False)


@dataclass
class AggregateRun:
    """The aggregation report and where it was written."""

    report: AggregateReport
    path: Path


def run_aggregate(ws: Workspace, settings: AnnotateAggregateSettings, progress: bool) -> AggregateRun:
    """Aggregate the votes into labels (:func:`emo8.annotate.aggregate.aggregate`)."""
    from emo8.annotate.aggregate import AggregateConfig, aggregate

    rounds = settings.rounds
    config = AggregateConfig(
        method=settings.method, min_votes=settings.min_votes, min_agreement=settings.min_agreement,
        rounds=rounds or None, annotator_threshold=settings.annotator_threshold,
        exclude_low_quality=settings.exclude_low_quality, exclude_annotators=settings.exclude_annotator,
    )  # fmt: skip
    return AggregateRun(aggregate(ws, config), ws.reports_dir / "annotate_aggregate.json")


def _num(value: float | None, n: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" + (f" (n={n})" if n is not None else "")


def _text(table: Table) -> str:
    """A rich table as plain text (escaped, so it prints as it is)."""
    console = Console(file=io.StringIO(), width=200, color_system=None, soft_wrap=True)
    console.print(table)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return escape(text.rstrip("\n"))


def summarize_aggregate(run: AggregateRun, settings: AnnotateAggregateSettings) -> Summary:
    """Settled and unsettled counts, agreement per scope, annotator quality, where the report is (or the JSON)."""
    from rich.table import Table

    report = run.report
    if settings.as_json:
        return Summary([escape(json.dumps(report.to_json(), indent=2))])
    counts = report.counts
    unsettled = ", ".join(
        f"{k.split(':', 1)[1]}={v}" for k, v in counts.items() if k.startswith("unsettled:")
    )
    lines = [
        f"{report.method}: {counts['items']} items, {counts['settled']} settled"
        + (f"; unsettled: {unsettled}" if unsettled else "")
    ]
    if not any(stats.items for stats in report.agreement.values()):
        lines.append("  agreement: no item has votes from 2 or more annotators yet, so none can be measured")
    table = Table(
        "scope", "items (2+ votes)", "votes", "Fleiss kappa", "Krippendorff alpha", box=None, pad_edge=False
    )
    for scope, stats in report.agreement.items():
        table.add_row(
            scope,
            str(stats.items),
            str(stats.votes),
            _num(stats.fleiss_kappa),
            _num(stats.krippendorff_alpha),
        )
    lines.append(_text(table))
    table = Table(
        "annotator", "votes", "gold acc", "consensus", "DS acc", "quality", box=None, pad_edge=False
    )
    for a in report.annotators:
        flag = (" (below threshold" + (", excluded)" if a.excluded else ")")) if a.below_threshold else ""
        table.add_row(
            escape(a.annotator) + flag,
            str(a.votes),
            _num(a.gold_accuracy, a.gold_answers),
            _num(a.consensus_agreement, a.consensus_answers),
            _num(a.ds_accuracy),
            _num(a.quality),
        )
    lines.append(_text(table))
    lines.append(f"report: {run.path}")
    return Summary(lines)


ANNOTATE_AGGREGATE = register_stage(
    Stage(
        name="annotate-aggregate",
        settings=AnnotateAggregateSettings,
        run=run_aggregate,
        summarize=summarize_aggregate,
        command=("annotate", "aggregate"),
        help="Final labels, soft labels and agreement per item; Fleiss' kappa and Krippendorff's alpha; "
        "annotator quality.",
        usage_errors=USAGE_ERRORS,
        runtime_errors=RUNTIME_ERRORS,
        reads=("table:items", ROUNDS, TASKS, ANSWERS),
        writes=("table:items", "dir:reports"),
    )
)
