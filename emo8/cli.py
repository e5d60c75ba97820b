"""The ``emo8`` command line: a thin Typer layer over the library functions (each command calls one of them)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from emo8.download import DownloadConfig
from emo8.imaging import ValidationConfig
from emo8.ingest import IngestOptions, IngestSummary, ingest, process_pending
from emo8.sources import SourceError, create_source
from emo8.workspace import Workspace, WorkspaceError

app = typer.Typer(
    no_args_is_help=True, help="Build, curate, version and audit the Emo8 visual-emotion dataset."
)
ingest_app = typer.Typer(no_args_is_help=True, help="Add images from a source to the workspace.")
app.add_typer(ingest_app, name="ingest")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

WorkspaceOpt = Annotated[
    Path,
    typer.Option(
        "--workspace", "-w", envvar="EMO8_WORKSPACE", help="Workspace directory (env EMO8_WORKSPACE)."
    ),
]
# Fetch and validation options shared by the ingest commands.
Concurrency = Annotated[int, typer.Option(help="Global limit of requests in flight.")]
PerHost = Annotated[int, typer.Option(help="Limit of requests in flight per host.")]
Rate = Annotated[float, typer.Option(help="Max requests per second per host (0 = unlimited).")]
Timeout = Annotated[float, typer.Option(help="Total seconds per attempt.")]
Retries = Annotated[int, typer.Option(help="Extra attempts on timeouts, connection errors, 429 and 5xx.")]
MaxMB = Annotated[float, typer.Option(help="Abort bodies larger than this many MiB.")]
UserAgent = Annotated[str, typer.Option(help="User-Agent sent with every request (say who you are).")]
AllowPrivate = Annotated[
    bool,
    typer.Option("--allow-private-networks", help="Allow loopback/private addresses (tests, intranets)."),
]
Workers = Annotated[int, typer.Option(help="Decode worker processes.")]
MinSide = Annotated[int, typer.Option(help="Reject images whose shorter side is below this.")]
MaxPixels = Annotated[int, typer.Option(help="Reject images with more pixels (decompression bombs).")]
RetryFailed = Annotated[bool, typer.Option("--retry-failed", help="Retry items whose fetch failed before.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def _open(workspace: Path) -> Workspace:
    try:
        return Workspace.open(workspace)
    except WorkspaceError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


def _options(
    concurrency: int = 64,
    per_host: int = 16,
    rate: float = 0.0,
    timeout: float = 30.0,
    retries: int = 3,
    max_mb: float = 32.0,
    user_agent: str = DownloadConfig().user_agent,
    allow_private_networks: bool = False,
    workers: int = max(1, os.cpu_count() or 1),
    min_side: int = ValidationConfig().min_side,
    max_pixels: int = ValidationConfig().max_pixels,
    retry_failed: bool = False,
    quiet: bool = False,
) -> IngestOptions:
    download = DownloadConfig(
        user_agent=user_agent,
        max_concurrency=concurrency,
        per_host_concurrency=per_host,
        per_host_rate=rate or None,
        total_timeout=timeout,
        retries=retries,
        max_bytes=int(max_mb * 1024 * 1024),
        allow_private_networks=allow_private_networks,
    )
    validation = ValidationConfig(min_side=min_side, max_pixels=max_pixels)
    return IngestOptions(download, validation, workers=workers, retry_failed=retry_failed, progress=not quiet)


def _run_ingest(workspace: Path, source_name: str, options: IngestOptions, **source_options: Any) -> None:
    ws = _open(workspace)
    try:
        source = create_source(source_name, **source_options)
        summary = ingest(ws, source, options)
    except SourceError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    except WorkspaceError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    for warning in getattr(source, "warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")
    _print_summary(summary)


def _print_summary(summary: IngestSummary) -> None:
    rate = f"{summary.processed / summary.seconds:.1f} items/s" if summary.seconds else ""
    out.print(
        f"[bold]{summary.source}[/]: {summary.new} new, {summary.known} already known; "
        f"processed {summary.processed} in {summary.seconds:.1f}s {rate}; "
        f"{summary.merged} merged onto existing content; {summary.bytes_stored / 1e6:.1f} MB stored"
    )
    if summary.statuses:
        out.print("  status: " + ", ".join(f"{k}={v}" for k, v in summary.statuses.most_common()))
    if summary.reasons:
        out.print("  reasons: " + ", ".join(f"{k}={v}" for k, v in summary.reasons.most_common()))


@app.command()
def init(path: Annotated[Path, typer.Argument(help="Directory to create the workspace in.")]) -> None:
    """Create a workspace (idempotent)."""
    try:
        ws = Workspace.init(path)
    except WorkspaceError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    out.print(f"workspace ready at {ws.root}")


@app.command()
def status(
    workspace: WorkspaceOpt = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts of items by status, reason, source, domain and weak label."""
    ws = _open(workspace)
    counts = ws.status()
    if as_json:
        out.print_json(json.dumps(counts))
        return
    total = sum(counts["status"].values())
    out.print(f"[bold]{ws.root}[/]: {total} items")
    for facet, values in counts.items():
        if not values:
            continue
        table = Table(title=facet, title_justify="left", show_header=False, box=None, pad_edge=False)
        for key, count in values.items():
            table.add_row(f"  {key}", str(count))
        out.print(table)


@ingest_app.command("folder")
def ingest_folder(
    directory: Annotated[Path, typer.Argument(help="Folder of images.")],
    workspace: WorkspaceOpt = Path("."),
    recursive: Annotated[bool, typer.Option("--recursive", "-r")] = False,
    label_from_dir: Annotated[
        bool, typer.Option("--label-from-dir", help="Weak label = parent folder.")
    ] = False,
    domain: Annotated[str | None, typer.Option(help="Domain/style of these images.")] = None,
    keyword: Annotated[str | None, typer.Option(help="Keyword to record.")] = None,
    license: Annotated[str | None, typer.Option(help="Licence of these images (SPDX id).")] = None,
    workers: Workers = max(1, os.cpu_count() or 1),
    min_side: MinSide = ValidationConfig().min_side,
    max_pixels: MaxPixels = ValidationConfig().max_pixels,
    quiet: Quiet = False,
) -> None:
    """Ingest image files from a local folder."""
    options = _options(workers=workers, min_side=min_side, max_pixels=max_pixels, quiet=quiet)
    _run_ingest(
        workspace,
        "folder",
        options,
        directory=str(directory),
        recursive=recursive,
        label_from_dir=label_from_dir,
        domain=domain,
        keyword=keyword,
        license=license,
    )


@ingest_app.command("urls")
def ingest_urls(
    url_list: Annotated[Path, typer.Argument(help="csv, tsv, jsonl or parquet (optionally .gz).")],
    workspace: WorkspaceOpt = Path("."),
    url_col: Annotated[str, typer.Option(help="Column holding the URL.")] = "url",
    caption_col: Annotated[str, typer.Option(help="Column holding the caption/title.")] = "caption",
    domain: Annotated[str | None, typer.Option(help="Domain for rows without one.")] = None,
    keyword: Annotated[str | None, typer.Option(help="Keyword for rows without one.")] = None,
    concurrency: Concurrency = 64,
    per_host: PerHost = 16,
    rate: Rate = 0.0,
    timeout: Timeout = 30.0,
    retries: Retries = 3,
    max_mb: MaxMB = 32.0,
    user_agent: UserAgent = DownloadConfig().user_agent,
    allow_private_networks: AllowPrivate = False,
    workers: Workers = max(1, os.cpu_count() or 1),
    min_side: MinSide = ValidationConfig().min_side,
    max_pixels: MaxPixels = ValidationConfig().max_pixels,
    retry_failed: RetryFailed = False,
    quiet: Quiet = False,
) -> None:
    """Download and ingest the images of a URL list (img2dataset-compatible columns)."""
    options = _options(
        concurrency, per_host, rate, timeout, retries, max_mb, user_agent, allow_private_networks,
        workers, min_side, max_pixels, retry_failed, quiet,
    )  # fmt: skip
    _run_ingest(
        workspace, "urls", options, path=str(url_list), url_col=url_col, caption_col=caption_col,
        domain=domain, keyword=keyword,
    )  # fmt: skip


@ingest_app.command("openverse")
def ingest_openverse(
    query: Annotated[str, typer.Option("--query", help="Search words, e.g. an emotion keyword.")],
    workspace: WorkspaceOpt = Path("."),
    max_results: Annotated[int, typer.Option("--max", help="Maximum number of results.")] = 200,
    license_type: Annotated[str | None, typer.Option(help="commercial, modification, all-cc...")] = None,
    label: Annotated[
        str | None, typer.Option(help="Weak label for the results (default: the query).")
    ] = None,
    domain: Annotated[str | None, typer.Option(help="Domain/style for the results.")] = None,
    api_url: Annotated[str, typer.Option(help="Openverse API base URL.")] = "https://api.openverse.org",
    concurrency: Concurrency = 64,
    per_host: PerHost = 16,
    rate: Rate = 0.0,
    timeout: Timeout = 30.0,
    retries: Retries = 3,
    max_mb: MaxMB = 32.0,
    user_agent: UserAgent = DownloadConfig().user_agent,
    allow_private_networks: AllowPrivate = False,
    workers: Workers = max(1, os.cpu_count() or 1),
    retry_failed: RetryFailed = False,
    quiet: Quiet = False,
) -> None:
    """Search Openverse (CC-licensed images) and ingest the results."""
    options = _options(
        concurrency, per_host, rate, timeout, retries, max_mb, user_agent, allow_private_networks,
        workers, retry_failed=retry_failed, quiet=quiet,
    )  # fmt: skip
    _run_ingest(
        workspace, "openverse", options, query=query, max_results=max_results, license_type=license_type,
        label=label, domain=domain, api_url=api_url, user_agent=user_agent,
    )  # fmt: skip


@ingest_app.command("hf")
def ingest_hf(
    dataset: Annotated[str, typer.Argument(help="Local dataset directory or hub id.")],
    workspace: WorkspaceOpt = Path("."),
    image_col: Annotated[str, typer.Option(help="Image column.")] = "image",
    label_col: Annotated[str, typer.Option(help="Label column ('' for none).")] = "label",
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    domain: Annotated[str | None, typer.Option(help="Domain for rows without one.")] = None,
    workers: Workers = max(1, os.cpu_count() or 1),
    quiet: Quiet = False,
) -> None:
    """Ingest the images of a Hugging Face dataset."""
    options = _options(workers=workers, quiet=quiet)
    _run_ingest(
        workspace, "hf", options, dataset=dataset, image_col=image_col, label_col=label_col or None,
        split=split, domain=domain,
    )  # fmt: skip


@ingest_app.command("resume")
def ingest_resume(
    workspace: WorkspaceOpt = Path("."),
    concurrency: Concurrency = 64,
    per_host: PerHost = 16,
    rate: Rate = 0.0,
    timeout: Timeout = 30.0,
    retries: Retries = 3,
    user_agent: UserAgent = DownloadConfig().user_agent,
    allow_private_networks: AllowPrivate = False,
    workers: Workers = max(1, os.cpu_count() or 1),
    retry_failed: RetryFailed = False,
    quiet: Quiet = False,
) -> None:
    """Finish every pending item of every source (after a crash or an interrupted run)."""
    ws = _open(workspace)
    options = _options(
        concurrency, per_host, rate, timeout, retries, user_agent=user_agent,
        allow_private_networks=allow_private_networks, workers=workers, retry_failed=retry_failed, quiet=quiet,
    )  # fmt: skip
    _print_summary(process_pending(ws, None, options))


def main() -> None:
    """Entry point for ``python -m emo8``."""
    app()
