"""``emo8 annotate ...``: Label Studio rounds from the command line (a thin layer over :mod:`emo8.annotate`).

Heavy imports (label-studio-sdk, numpy, pandas) happen inside the commands so that ``import emo8.cli`` stays fast.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from emo8.cli.app import app
from emo8.cli.common import PANEL_LABEL, Quiet, WorkspaceOpt, console, exit_on, out

if TYPE_CHECKING:
    from emo8.annotate.client import Client
    from emo8.core.workspace import Workspace

annotate_app = typer.Typer(
    no_args_is_help=True,
    help="Annotation rounds in Label Studio: serve, push, pull, import, status, aggregate.",
)
RoundOpt = Annotated[
    str, typer.Option("--round", "-r", help="Round name (as given to `emo8 select --round`).")
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="Label Studio URL (default: LABEL_STUDIO_URL, else the workspace's server)."),
]
LocalRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--local-files-root", help="The server's LOCAL_FILES_DOCUMENT_ROOT, when it can read this workspace."
    ),
]
LabelConfigOpt = Annotated[
    Path | None, typer.Option("--label-config", help="Label config XML (default annotations/emo8.xml).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the stage's errors into a one-paragraph message: exit 1 for a server that is down or fails to start,
    2 for wrong input or configuration (unknown round, bad export, missing API key, port taken)."""
    from emo8.annotate.errors import AnnotateError, ServerUnavailable
    from emo8.core.workspace import WorkspaceError

    with exit_on((ServerUnavailable, 1), ((AnnotateError, WorkspaceError), 2)):
        yield


def _open(workspace: Path) -> Workspace:
    from emo8.core.workspace import Workspace

    return Workspace.open(workspace)


def _client(
    ws: Workspace, url: str | None, local_files_root: Path | None = None
) -> tuple[Client, Path | None]:
    from emo8.annotate.client import connect
    from emo8.annotate.errors import ServerUnavailable
    from emo8.annotate.server import health, load_connection

    conn = load_connection(ws, url=url, local_files_root=local_files_root)
    if conn.managed and not health(conn.url):
        raise ServerUnavailable(
            f"this workspace's Label Studio ({conn.url}) is not running; start it with `emo8 annotate serve`"
        )

    def note(attempt: int, exc: BaseException) -> None:
        if attempt in (0, 3, 10):
            console.print(f"[yellow]Label Studio not answering ({type(exc).__name__}); retrying...[/]")

    return connect(conn.url, conn.api_key, on_retry=note), conn.local_files_root


@annotate_app.command("install")
def install_cmd(
    venv: Annotated[
        Path | None, typer.Option(help="Virtual environment (default .venv-labelstudio).")
    ] = None,
) -> None:
    """Install Label Studio into its own virtual environment (idempotent; `emo8 annotate serve` does it too)."""
    from emo8.annotate.server import ensure_label_studio

    with _errors():
        inst = ensure_label_studio(venv, log=lambda m: console.print(m))
    out.print(f"Label Studio {inst.version} ready in {inst.venv}")


@annotate_app.command("serve")
def serve_cmd(
    workspace: WorkspaceOpt = Path("."),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = a free one).")] = 0,
    data_dir: Annotated[
        Path | None, typer.Option(help="Server data (default <workspace>/labelstudio).")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Use this existing server instead (key from LABEL_STUDIO_API_KEY)."),
    ] = None,
    local_files_root: LocalRootOpt = None,
) -> None:
    """Start a local Label Studio for this workspace (or connect to an existing one with --url)."""
    import os

    from emo8.annotate import server as srv

    with _errors():
        ws = _open(workspace)
        if url is None:
            started = srv.serve(ws, port=port, data_dir=data_dir, log=lambda m: console.print(m))
            out.print(
                f"Label Studio is running at {started.url} (pid {started.pid}); admin {started.admin_email}"
            )
            out.print(f"  admin password and API token: {started.data_dir / srv.ADMIN_FILE} (mode 600)")
            return
        key = os.environ.get(srv.API_KEY_ENV) or typer.prompt(
            "API key (personal access token)", hide_input=True
        )
        if not srv.token_works(url, key):
            raise srv.ServerError(f"{url} refused the API key (or is not reachable)")
        srv.save_connection(ws, srv.Connection(url.rstrip("/"), key, False, local_files_root))
        out.print(
            f"workspace connected to {url.rstrip('/')}; token stored in {srv.token_path(ws)} (mode 600)"
        )


@annotate_app.command("stop")
def stop_cmd(workspace: WorkspaceOpt = Path(".")) -> None:
    """Stop the Label Studio that `emo8 annotate serve` started for this workspace."""
    from emo8.annotate.server import stop

    with _errors():
        stopped = stop(_open(workspace))
    out.print("Label Studio stopped" if stopped else "no Label Studio of this workspace was running")


@annotate_app.command("push")
def push_cmd(
    round_name: RoundOpt,
    workspace: WorkspaceOpt = Path("."),
    overlap: Annotated[
        int, typer.Option(help="Annotators per task (the project's maximum annotations).")
    ] = 3,
    gold_rate: Annotated[float, typer.Option(help="Share of gold items mixed in, unannounced.")] = 0.05,
    gold_file: Annotated[
        Path | None, typer.Option(help="CSV of gold items: item_id or sha256, label.")
    ] = None,
    predictions: Annotated[bool, typer.Option(help="Pre-select the suggested label.")] = True,
    image_urls: Annotated[str, typer.Option(help="local-files, source-url or template.")] = "local-files",
    image_url_template: Annotated[str | None, typer.Option(help="e.g. https://cdn/{sha256}{ext}")] = None,
    batch_size: Annotated[int, typer.Option(help="Tasks per import request.")] = 500,
    label_config: LabelConfigOpt = None,
    guidelines: Annotated[
        Path | None, typer.Option(help="Guidelines markdown (default annotations/guidelines.md).")
    ] = None,
    url: UrlOpt = None,
    local_files_root: LocalRootOpt = None,
) -> None:
    """Create the round's project (once) and import the tasks it lacks, with predictions and gold items."""
    from emo8.annotate.rounds import PushOptions, push_round

    with _errors():
        ws = _open(workspace)
        client, root = _client(ws, url, local_files_root)
        options = PushOptions(
            overlap=overlap, gold_rate=gold_rate, gold_file=gold_file, predictions=predictions, image_urls=image_urls,
            image_url_template=image_url_template, local_files_root=root, batch_size=batch_size,
            label_config=label_config, guidelines=guidelines,
        )  # fmt: skip
        summary = push_round(ws, round_name, client, options)
    skipped = ", ".join(f"{k}={v}" for k, v in summary.skipped.items()) or "none"
    out.print(
        f"round [bold]{summary.round}[/]: project {summary.project_id} ({summary.project_url}); "
        f"{summary.new_tasks} tasks imported, {summary.existing_tasks} already there; {summary.gold} gold; "
        f"{summary.with_predictions} new tasks with predictions; skipped: {skipped}; {summary.seconds:.1f}s"
    )


@annotate_app.command("pull")
def pull_cmd(
    round_name: RoundOpt,
    workspace: WorkspaceOpt = Path("."),
    page_size: Annotated[int, typer.Option(help="Tasks per request.")] = 500,
    label_config: LabelConfigOpt = None,
    url: UrlOpt = None,
    quiet: Quiet = False,
) -> None:
    """Copy every annotation of the round into the catalog (idempotent; edits and deletions are picked up)."""
    from emo8.annotate.rounds import PullOptions, pull_round

    def progress(pages: int, tasks: int) -> None:
        console.print(f"  read {tasks} tasks ({pages} pages)", highlight=False)

    with _errors():
        ws = _open(workspace)
        client, _ = _client(ws, url)
        options = PullOptions(page_size, None if quiet else progress, label_config)
        summary = pull_round(ws, round_name, client, options)
    _print_pull(summary)


@annotate_app.command("import")
def import_cmd(
    export_file: Annotated[Path, typer.Argument(help="Label Studio JSON export of the round's project.")],
    round_name: RoundOpt,
    workspace: WorkspaceOpt = Path("."),
    label_config: LabelConfigOpt = None,
) -> None:
    """Store the annotations of a Label Studio JSON export (a project run on another server) as a round."""
    from emo8.annotate.rounds import import_export

    with _errors():
        summary = import_export(_open(workspace), round_name, export_file, label_config)
    _print_pull(summary)


def _print_pull(summary: Any) -> None:
    c = summary.changes
    out.print(
        f"round [bold]{summary.round}[/]: {summary.tasks} tasks, {summary.annotations} annotations from "
        f"{summary.source}: {c.new} new, {c.updated} updated, {c.deleted} deleted, {c.unchanged} unchanged"
        + (f", {c.restored} restored" if c.restored else "")
        + f"; {summary.seconds:.1f}s"
    )
    if summary.skipped_tasks:
        console.print(
            f"[yellow]warning:[/] {summary.skipped_tasks} tasks without a workspace item were skipped"
        )
    if summary.unknown_values:
        console.print(
            f"[yellow]warning:[/] {summary.unknown_values} result values unknown to the label config"
        )


@annotate_app.command("status")
def status_cmd(
    workspace: WorkspaceOpt = Path("."),
    round_name: Annotated[str | None, typer.Option("--round", "-r", help="Only this round.")] = None,
    pull: Annotated[bool, typer.Option("--pull", help="Pull the round(s) first.")] = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Progress per round: tasks done/total, votes per annotator and per class, ETA (as of the last pull)."""
    from dataclasses import asdict

    from emo8.annotate.rounds import pull_round, round_status
    from emo8.annotate.store import AnnotationStore

    with _errors():
        ws = _open(workspace)
        known = {r["round"] for r in AnnotationStore(ws.catalog).rounds()}
        # rounds chosen by `emo8 select` that were neither pushed nor imported yet
        unpushed = {
            name: n
            for name, n in ws.catalog.rounds().items()
            if name not in known and round_name in (None, name)
        }
        names = None if round_name is None else ([] if round_name in unpushed else [round_name])
        if pull:
            client, _ = _client(ws, url)
            pushed = [r["round"] for r in AnnotationStore(ws.catalog).rounds() if r.get("project_id")]
            for name in pushed if names is None else names:
                pull_round(ws, name, client)
        statuses = round_status(ws, names)
    if as_json:
        out.print_json(json.dumps([_finite(asdict(s)) for s in statuses]))
        return
    for name, selected in unpushed.items():
        out.print(
            f"[bold]{name}[/]: {selected} item(s) selected, not in Label Studio yet; "
            f"`emo8 annotate push --round {name}` sends them (or `emo8 annotate import EXPORT --round {name}`)"
        )
    if not statuses and not unpushed:
        out.print(
            "no annotation rounds yet; `emo8 select --budget N --round NAME` chooses the items of one and "
            "`emo8 annotate push --round NAME` sends them to Label Studio"
        )
    for s in statuses:
        eta = (
            "done"
            if s.missing_votes == 0
            else (_hours(s.eta_hours) if s.eta_hours is not None else "unknown")
        )
        out.print(
            f"[bold]{s.round}[/] (project {s.project_id}): {s.done}/{s.tasks} tasks done ({s.gold} gold), "
            f"{s.votes} votes, {s.skipped} skipped, {s.missing_votes} votes missing; ETA {eta}; "
            f"last pull {s.pulled_at or 'never'}"
        )
        table = Table("annotator", "votes", "skipped", "median s/task", box=None, pad_edge=False)
        for who, stats in s.per_annotator.items():
            lead = stats["median_lead_time_s"]
            table.add_row(
                f"  {who}",
                f"{stats['votes']:.0f}",
                f"{stats['skipped']:.0f}",
                "-" if math.isnan(lead) else f"{lead:.1f}",
            )
        out.print(table)
        if s.per_class:
            out.print("  per class: " + ", ".join(f"{k}={v}" for k, v in sorted(s.per_class.items())))


def _hours(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@annotate_app.command("aggregate")
def aggregate_cmd(
    workspace: WorkspaceOpt = Path("."),
    method: Annotated[str, typer.Option(help="majority or dawid-skene.")] = "majority",
    min_votes: Annotated[int, typer.Option(help="Votes an item needs to be settled.")] = 3,
    min_agreement: Annotated[
        float, typer.Option(help="Winner's share of votes an item needs to be settled.")
    ] = 0.6,
    round_names: Annotated[
        list[str] | None, typer.Option("--round", "-r", help="Only these rounds (repeatable).")
    ] = None,
    annotator_threshold: Annotated[
        float, typer.Option(help="Report annotators whose quality is below this.")
    ] = 0.5,
    exclude_low_quality: Annotated[
        bool, typer.Option("--exclude-low-quality", help="Drop the votes of annotators below the threshold.")
    ] = False,
    exclude_annotator: Annotated[
        list[str] | None,
        typer.Option("--exclude-annotator", help="Drop this annotator's votes (repeatable)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Final labels, soft labels and agreement per item; Fleiss' kappa and Krippendorff's alpha; annotator quality."""
    from emo8.annotate.aggregate import AggregateConfig, aggregate

    config = AggregateConfig(
        method=method, min_votes=min_votes, min_agreement=min_agreement,
        rounds=tuple(round_names) if round_names else None, annotator_threshold=annotator_threshold,
        exclude_low_quality=exclude_low_quality, exclude_annotators=tuple(exclude_annotator or ()),
    )  # fmt: skip
    with _errors():
        ws = _open(workspace)
        report = aggregate(ws, config)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
        return
    counts = report.counts
    unsettled = ", ".join(
        f"{k.split(':', 1)[1]}={v}" for k, v in counts.items() if k.startswith("unsettled:")
    )
    out.print(
        f"{report.method}: {counts['items']} items, {counts['settled']} settled"
        + (f"; unsettled: {unsettled}" if unsettled else "")
    )
    if not any(stats.items for stats in report.agreement.values()):
        out.print("  agreement: no item has votes from 2 or more annotators yet, so none can be measured")
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
    out.print(table)
    table = Table(
        "annotator", "votes", "gold acc", "consensus", "DS acc", "quality", box=None, pad_edge=False
    )
    for a in report.annotators:
        flag = (
            " [red](below threshold" + (", excluded)" if a.excluded else ")") + "[/]"
            if a.below_threshold
            else ""
        )
        table.add_row(
            a.annotator + flag,
            str(a.votes),
            _num(a.gold_accuracy, a.gold_answers),
            _num(a.consensus_agreement, a.consensus_answers),
            _num(a.ds_accuracy),
            _num(a.quality),
        )
    out.print(table)
    out.print(f"report: {ws.reports_dir / 'annotate_aggregate.json'}")


def _num(value: float | None, n: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" + (f" (n={n})" if n is not None else "")


app.add_typer(annotate_app, name="annotate", rich_help_panel=PANEL_LABEL)
