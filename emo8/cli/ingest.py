"""``emo8 ingest ...``: add images from a source (folder, URL list, Openverse, Hugging Face)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from emo8.cli.app import app
from emo8.cli.common import (
    DEFAULT_WORKERS,
    PANEL_COLLECT,
    ExecutorKind,
    Quiet,
    RayAddress,
    Workers,
    WorkspaceOpt,
    exit_on,
    out,
    warn,
)
from emo8.cli.stages import open_workspace
from emo8.core.executor import ExecutorConfig, ExecutorError
from emo8.core.imaging import ValidationConfig
from emo8.core.workspace import WorkspaceError
from emo8.ingest.download import DownloadConfig
from emo8.ingest.run import IngestOptions, IngestSummary, ingest, process_pending
from emo8.ingest.sources import SourceError, create_source

ingest_app = typer.Typer(no_args_is_help=True, help="Add images from a source to the workspace.")
app.add_typer(ingest_app, name="ingest", rich_help_panel=PANEL_COLLECT)
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
MinSide = Annotated[int, typer.Option(help="Reject images whose shorter side is below this.")]
MaxPixels = Annotated[int, typer.Option(help="Reject images with more pixels (decompression bombs).")]
RetryFailed = Annotated[bool, typer.Option("--retry-failed", help="Retry items whose fetch failed before.")]


def _options(
    concurrency: int = 64,
    per_host: int = 16,
    rate: float = 0.0,
    timeout: float = 30.0,
    retries: int = 3,
    max_mb: float = 32.0,
    user_agent: str = DownloadConfig().user_agent,
    allow_private_networks: bool = False,
    workers: int = DEFAULT_WORKERS,
    min_side: int = ValidationConfig().min_side,
    max_pixels: int = ValidationConfig().max_pixels,
    retry_failed: bool = False,
    quiet: bool = False,
    executor: str = "local",
    ray_address: str | None = None,
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
    return IngestOptions(
        download, validation, workers=workers, retry_failed=retry_failed, progress=not quiet,
        executor=ExecutorConfig(executor, ray_address),
    )  # fmt: skip


def _run_ingest(workspace: Path, source_name: str, options: IngestOptions, **source_options: Any) -> None:
    ws = open_workspace(workspace)
    with exit_on((SourceError, 2), (ExecutorError, 2), (WorkspaceError, 1)):
        source = create_source(source_name, **source_options)
        summary = ingest(ws, source, options)
    for warning in getattr(source, "warnings", []):
        warn(warning)
    _print_summary(summary)


def _print_summary(summary: IngestSummary) -> None:
    rate = f" ({summary.processed / summary.seconds:.1f} items/s)" if summary.seconds else ""
    out.print(
        f"[bold]{summary.source}[/]: {summary.new} new, {summary.known} already known; "
        f"processed {summary.processed} in {summary.seconds:.1f}s{rate}; "
        f"{summary.merged} merged onto existing content; {summary.bytes_stored / 1e6:.1f} MB stored",
        highlight=False,
    )
    if summary.statuses:
        out.print("  status: " + ", ".join(f"{k}={v}" for k, v in summary.statuses.most_common()))
    if summary.reasons:
        out.print("  reasons: " + ", ".join(f"{k}={v}" for k, v in summary.reasons.most_common()))
    failed = sum(summary.statuses[s] for s in ("failed", "invalid"))
    if summary.failures:
        shown = len(summary.failures)
        out.print(f"  {failed} failed or invalid" + (f", the first {shown}:" if failed > shown else ":"))
        for where, reason, detail in summary.failures:
            out.print(
                f"    {escape(where)}: {reason}" + (f" ({escape(detail)})" if detail else ""), highlight=False
            )
    if summary.taken_down:
        out.print(f"  take-down: {summary.taken_down} item(s) removed because they copy taken-down images")


@ingest_app.command("folder")
def ingest_folder(
    directory: Annotated[Path, typer.Argument(help="Folder of images.")],
    workspace: WorkspaceOpt = Path("."),
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Also read the images in subfolders (all levels).")
    ] = False,
    label_from_dir: Annotated[
        bool, typer.Option("--label-from-dir", help="Weak label = parent folder.")
    ] = False,
    domain: Annotated[str | None, typer.Option(help="Domain/style of these images.")] = None,
    keyword: Annotated[str | None, typer.Option(help="Keyword to record.")] = None,
    license: Annotated[str | None, typer.Option(help="Licence of these images (SPDX id).")] = None,
    workers: Workers = DEFAULT_WORKERS,
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
    workers: Workers = DEFAULT_WORKERS,
    min_side: MinSide = ValidationConfig().min_side,
    max_pixels: MaxPixels = ValidationConfig().max_pixels,
    retry_failed: RetryFailed = False,
    quiet: Quiet = False,
    executor: ExecutorKind = "local",
    ray_address: RayAddress = None,
) -> None:
    """Download and ingest the images of a URL list (img2dataset-compatible columns)."""
    options = _options(
        concurrency, per_host, rate, timeout, retries, max_mb, user_agent, allow_private_networks,
        workers, min_side, max_pixels, retry_failed, quiet, executor, ray_address,
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
    workers: Workers = DEFAULT_WORKERS,
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
    workers: Workers = DEFAULT_WORKERS,
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
    workers: Workers = DEFAULT_WORKERS,
    retry_failed: RetryFailed = False,
    quiet: Quiet = False,
    executor: ExecutorKind = "local",
    ray_address: RayAddress = None,
) -> None:
    """Finish every pending item of every source (after a crash or an interrupted run)."""
    ws = open_workspace(workspace)
    options = _options(
        concurrency, per_host, rate, timeout, retries, user_agent=user_agent,
        allow_private_networks=allow_private_networks, workers=workers, retry_failed=retry_failed, quiet=quiet,
        executor=executor, ray_address=ray_address,
    )  # fmt: skip
    with exit_on((ExecutorError, 2), (WorkspaceError, 1)):
        summary = process_pending(ws, None, options)
    _print_summary(summary)
