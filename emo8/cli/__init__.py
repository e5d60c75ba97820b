"""The ``emo8`` command line: a thin Typer layer over the library functions (each command calls one of them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from emo8.cli.common import (
    DEFAULT_WORKERS,
    PANEL_COLLECT,
    PANEL_CURATE,
    PANEL_LABEL,
    PANEL_RELEASE,
    PANEL_SETUP,
    Device,
    ExecutorKind,
    Quiet,
    RayAddress,
    Workers,
    WorkspaceOpt,
    add_version_option,
    console,
    exit_on,
    fail,
    ordered_group,
    out,
    warn,
)
from emo8.core.executor import ExecutorConfig, ExecutorError
from emo8.core.imaging import ValidationConfig
from emo8.core.workspace import Workspace, WorkspaceError
from emo8.ingest.download import DownloadConfig
from emo8.ingest.run import IngestOptions, IngestSummary, ingest, process_pending
from emo8.ingest.sources import SourceError, create_source
from emo8.label.people import BACKEND_CHOICES as PEOPLE_BACKENDS
from emo8.label.people import DEFAULT_BACKEND as DEFAULT_PEOPLE_BACKEND

#: Commands in pipeline order (``emo8 --help`` lists them by stage, in this order).
PIPELINE = (
    "init", "status", "ingest", "embed", "dedup", "detect-people", "suggest", "select", "annotate", "labels",
    "split", "release", "audit", "push", "takedown",
)  # fmt: skip
app = typer.Typer(
    cls=ordered_group(PIPELINE),
    no_args_is_help=True,
    help="Build, curate, version and audit the Emo8 visual-emotion dataset.",
)
add_version_option(app, "emo8")
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


def _open(workspace: Path) -> Workspace:
    with exit_on((WorkspaceError, 2)):
        return Workspace.open(workspace)


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
    ws = _open(workspace)
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


@app.command(rich_help_panel=PANEL_SETUP)
def init(
    path: Annotated[Path, typer.Argument(help="Directory to create the workspace in (new or empty).")],
    force: Annotated[
        bool, typer.Option("--force", help="Make a folder that already holds files a workspace anyway.")
    ] = False,
) -> None:
    """Create a workspace in a new or empty folder (idempotent on an existing workspace)."""
    problem = None if force else init_target_problem(path)
    if problem:
        fail(problem)
    with exit_on((WorkspaceError, 2)):
        ws = Workspace.init(path)
    out.print(f"workspace ready at {ws.root}")


def init_target_problem(path: Path) -> str | None:
    """Why ``emo8 init PATH`` should not turn ``path`` into a workspace, or None when it may.

    A workspace keeps its images in ``objects/``; a folder that already holds files (typically the images to
    ingest) would silently mix the two, so it is refused unless ``--force`` is given.
    """
    from emo8.core.workspace import CONFIG_NAME

    if not path.is_dir() or (path / CONFIG_NAME).is_file():
        return None
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        return None
    shown = ", ".join(sorted(p.name for p in entries)[:3]) + (", ..." if len(entries) > 3 else "")
    return (
        f"{path} is not empty ({len(entries)} entries: {shown}) and is not an Emo8 workspace. Create the "
        f"workspace in a new folder and ingest this one into it (`emo8 init NEW && emo8 ingest folder {path} "
        "-w NEW`), or pass --force to make this folder a workspace anyway."
    )


@app.command(rich_help_panel=PANEL_SETUP)
def status(
    workspace: WorkspaceOpt = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Where the workspace stands: items by status and source, labels, rounds, splits, releases, reports."""
    from emo8.pipeline.status import render_lines, workspace_status

    ws = _open(workspace)
    snapshot = workspace_status(ws)
    if as_json:
        out.print_json(json.dumps(snapshot.as_dict()))
        return
    out.print(f"[bold]{ws.root}[/]: {snapshot.items} items, {snapshot.valid} valid")
    for heading, rows in render_lines(snapshot):
        table = Table(title=heading, title_justify="left", show_header=False, box=None, pad_edge=False)
        for key, value in rows:
            table.add_row(f"  {key}", value)
        out.print(table)


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
    ws = _open(workspace)
    options = _options(
        concurrency, per_host, rate, timeout, retries, user_agent=user_agent,
        allow_private_networks=allow_private_networks, workers=workers, retry_failed=retry_failed, quiet=quiet,
        executor=executor, ray_address=ray_address,
    )  # fmt: skip
    with exit_on((ExecutorError, 2), (WorkspaceError, 1)):
        summary = process_pending(ws, None, options)
    _print_summary(summary)


def main() -> None:
    """Entry point for ``python -m emo8``."""
    app()


# -- audit, split, release, push, take-down ---------------------------------------------------------------------------


@app.command("audit", rich_help_panel=PANEL_RELEASE)
def audit_cmd(
    workspace: WorkspaceOpt = Path("."),
    out_path: Annotated[
        Path | None, typer.Option("--out", help="HTML report (default reports/audit.html).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Embedding model key for the probe.")] = None,
    probe: Annotated[str, typer.Option(help="Probe for confident learning: linear or knn.")] = "linear",
    min_agreement: Annotated[float, typer.Option(help="Agreement below this is 'low'.")] = 0.6,
    queue: Annotated[
        str | None, typer.Option(help="Save the flagged items as this annotation round's selection.")
    ] = None,
    workers: Workers = DEFAULT_WORKERS,
    quiet: Quiet = False,
) -> None:
    """Audit label quality, distributions, bias and image quality (HTML + JSON report)."""
    from emo8.release.audit import AuditConfig, audit

    ws = _open(workspace)
    config = AuditConfig(
        out=out_path, model=model, probe=probe, min_agreement=min_agreement, queue=queue, workers=workers,
        progress=not quiet,
    )  # fmt: skip
    with exit_on((ValueError, 2)):
        result = audit(ws, config)
    kinds = ", ".join(f"{k} {v}" for k, v in result.label_kinds.items()) or "none"
    out.print(f"[bold]audit[/]: {result.items} valid items, {result.labelled} labelled ({kinds})")
    if not result.labelled:
        out.print("  [yellow]no labelled items[/]: the label-quality sections are skipped")
    for key, sec in result.sections.items():
        text = f"skipped: {sec.skipped}" if sec.skipped else sec.summary
        out.print(f"  [bold]{key}[/]: {text}")
    if queue:
        out.print(f"  queued {result.queued} new item(s) for round {queue!r}")
    out.print(f"  report: {result.html} and {result.json} ({result.seconds:.1f}s)")


@app.command("split", rich_help_panel=PANEL_RELEASE)
def split_cmd(
    workspace: WorkspaceOpt = Path("."),
    ratios: Annotated[str, typer.Option(help="train,validation,test shares.")] = "0.8,0.05,0.15",
    seed: Annotated[int, typer.Option(help="Fixes the placement order of new groups.")] = 0,
    reassign: Annotated[
        bool, typer.Option("--reassign", help="Ignore existing splits (existing items may move).")
    ] = False,
    model: Annotated[str | None, typer.Option(help="Embedding model key for the cosine check.")] = None,
    phash_max_distance: Annotated[int | None, typer.Option(help="pHash radius (default: dedup's).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Compute and verify, write nothing.")] = False,
    quiet: Quiet = False,
) -> None:
    """Group-aware, stratified, stable train/validation/test splits, verified free of near-duplicate leaks."""
    from emo8.release.split import SPLITS, SplitConfig, SplitError, assign_splits, parse_ratios

    ws = _open(workspace)
    with exit_on((SplitError, 2)):
        config = SplitConfig(
            ratios=parse_ratios(ratios), seed=seed, reassign=reassign, model=model,
            phash_max_distance=phash_max_distance, progress=not quiet,
        )  # fmt: skip
        result, _items = assign_splits(ws, config, write=not dry_run)
    total = sum(result.counts.values()) or 1
    shares = ", ".join(f"{s} {result.counts[s]} ({result.counts[s] / total:.1%})" for s in SPLITS)
    out.print(
        f"[bold]split[/]{' (dry run)' if dry_run else ''}: {result.candidates} items in {result.groups} groups"
    )
    out.print(f"  released candidates: {shares}")
    out.print(
        f"  new {result.new}, kept {result.kept}, moved {result.moved} (to keep near-duplicates together)"
    )
    if result.oversized_keys:
        out.print(f"  not kept together (too large): {result.oversized_keys}")
    colour = "green" if result.leaks.clean else "red"
    out.print(f"  leak check: [{colour}]{result.leaks.summary()}[/]")
    if not result.leaks.clean:
        raise typer.Exit(1)


@app.command("release", rich_help_panel=PANEL_RELEASE)
def release_cmd(
    version: Annotated[str, typer.Option("--version", help="Semantic version X.Y.Z.")],
    workspace: WorkspaceOpt = Path("."),
    fmt: Annotated[str, typer.Option("--format", help="hf, imagefolder or both.")] = "hf",
    min_agreement: Annotated[
        float | None, typer.Option(help="Also require this agreement of annotated labels.")
    ] = None,
    allow_weak_labels: Annotated[
        bool,
        typer.Option(
            "--allow-weak-labels", help="Bootstrap only: also release items whose only label is a weak label."
        ),
    ] = False,
    no_imported_labels: Annotated[
        bool, typer.Option("--no-imported-labels", help="Do not release labels from `emo8 labels import`.")
    ] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Release directory.")] = None,
    imagefolder_out: Annotated[
        Path | None, typer.Option(help="ImageFolder root (default <out>/imagefolder).")
    ] = None,
    repo: Annotated[str | None, typer.Option(help="Hub repo ORG/NAME for the card's usage snippet.")] = None,
    max_shard_mb: Annotated[float, typer.Option(help="Image MB per parquet shard.")] = 500.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rewrite an existing release.")] = False,
    allow_leaks: Annotated[
        bool, typer.Option("--allow-leaks", help="Release despite cross-split leaks.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Write a versioned Hugging Face dataset release (and/or an ImageFolder tree) with card and CHANGELOG."""
    from emo8.core.curation import LabelPolicy
    from emo8.release.publish import NothingToRelease, ReleaseConfig, ReleaseError, parse_formats, release

    ws = _open(workspace)
    config = ReleaseConfig(
        version=version,
        formats=parse_formats(fmt),
        labels=LabelPolicy(min_agreement, allow_weak_labels, not no_imported_labels),
        out=out_dir, imagefolder_out=imagefolder_out, max_shard_bytes=int(max_shard_mb * 1024 * 1024),
        overwrite=overwrite, repo_id=repo, allow_leaks=allow_leaks, progress=not quiet,
    )  # fmt: skip
    with exit_on((NothingToRelease, 1, "no release"), (ReleaseError, 2)):
        result = release(ws, config)
    total = sum(result.splits.values())
    out.print(f"[bold]release {result.version}[/]: {total} images at {result.path}")
    out.print("  splits: " + ", ".join(f"{k} {v}" for k, v in result.splits.items()))
    out.print("  classes: " + ", ".join(f"{k} {v}" for k, v in result.classes.items()))
    out.print("  label sources: " + ", ".join(f"{k} {v}" for k, v in sorted(result.label_sources.items())))
    if result.label_sources.get("weak"):
        out.print(
            f"  [yellow]BOOTSTRAP RELEASE[/]: {result.label_sources['weak']} labels are weak labels from source "
            "metadata, not settled annotations (label_source = weak)"
        )
    if result.held_back:
        out.print("  held back: " + ", ".join(f"{k} {v}" for k, v in sorted(result.held_back.items())))
    if result.newly_split:
        out.print(f"  assigned splits to {result.newly_split} new item(s) first")
    out.print(f"  leak check: {result.leaks.summary()}")
    if result.previous:
        out.print(f"  vs {result.previous}: " + ", ".join(f"{k} {v}" for k, v in result.changes.items()))
    shards = sum(f.endswith(".parquet") for f in result.files)
    out.print(f"  parquet: {result.parquet_bytes / 1e6:.1f} MB in {shards} shard(s)")
    if result.imagefolder is not None:
        out.print(f"  imagefolder: {result.imagefolder}")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


@app.command("push", rich_help_panel=PANEL_RELEASE)
def push_cmd(
    version: Annotated[str, typer.Option("--version", help="The local release X.Y.Z.")],
    repo: Annotated[str, typer.Option("--repo", help="Hub dataset repo ORG/NAME.")],
    workspace: WorkspaceOpt = Path("."),
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    endpoint: Annotated[
        str | None, typer.Option(help="Hub URL (default HF_ENDPOINT or huggingface.co).")
    ] = None,
    xet: Annotated[
        bool | None, typer.Option("--xet/--no-xet", help="Xet uploads (default: only on huggingface.co).")
    ] = None,
) -> None:
    """Upload a release to the Hugging Face Hub as one commit and tag it vX.Y.Z (token: HF_TOKEN or login)."""
    from emo8.release.hub import PushConfig, PushError, PushInputError, push_release

    ws = _open(workspace)
    with exit_on((PushInputError, 2), (PushError, 1)):
        result = push_release(ws, PushConfig(version, repo, private, endpoint, xet=xet))
    if result.noop:
        out.print(f"[bold]{repo}[/] already has {result.tag} with identical content: nothing to do")
        return
    out.print(
        f"[bold]pushed {version}[/] to {repo} ({result.url}): commit {result.commit}, tag {result.tag}; "
        f"{len(result.uploaded)} file(s) uploaded, {len(result.unchanged)} unchanged, {len(result.deleted)} deleted"
    )


@app.command("takedown", rich_help_panel=PANEL_RELEASE)
def takedown_cmd(
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded verbatim).")],
    workspace: WorkspaceOpt = Path("."),
    sha256: Annotated[str | None, typer.Option("--sha256", help="sha256 of the image bytes.")] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Image URL or the page it was published on.")
    ] = None,
    author: Annotated[str | None, typer.Option("--author", help="Every image of this author.")] = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the stored bytes.")] = False,
) -> None:
    """Remove an image and every copy of it from all later releases (by hash, URL or author)."""
    from emo8.core.takedown import TakedownError, TakedownRequest, take_down

    ws = _open(workspace)
    with exit_on((TakedownError, 2)):
        result = take_down(ws, TakedownRequest(reason, sha256=sha256, url=url, author=author, purge=purge))
    out.print(
        f"[bold]{result.takedown_id}[/] ({result.selector}): {result.matched} item(s) matched, "
        f"{len(result.removed)} removed with their copies; {len(result.hashes)} hash(es) recorded"
    )
    if purge:
        out.print(
            f"  purged {result.purged_objects} stored object(s); deleted reports: {result.purged_reports or 'none'}"
        )
    if result.in_local_releases:
        console.print(
            f"[yellow]warning:[/] already in local release(s) {', '.join(result.in_local_releases)}: releases are "
            "immutable; withdraw them (and their Hub tags) if they were published"
        )


# -- suggest, select, detect-people, labels ---------------------------------------------------------------------------

labels_app = typer.Typer(
    no_args_is_help=True, help="Labels from outside the pipeline (curators, other tools)."
)
app.add_typer(labels_app, name="labels", rich_help_panel=PANEL_LABEL)


@app.command("suggest", rich_help_panel=PANEL_LABEL)
def suggest_cmd(
    workspace: WorkspaceOpt = Path("."),
    model: Annotated[str, typer.Option(help="Embedding model key (run `emo8 embed` with it first).")] = (
        "efficientnet-lite0"
    ),
    k: Annotated[int, typer.Option("--k", help="Neighbours per kNN vote.")] = 20,
    zero_shot: Annotated[
        bool, typer.Option("--zero-shot/--no-zero-shot", help="CLIP zero-shot (open_clip models only).")
    ] = True,
    weights: Annotated[str | None, typer.Option(help="Encoder weights for the text tower.")] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Random text tower (tests).")] = False,
    device: Device = "auto",
    min_labels: Annotated[int, typer.Option(help="Labels per class before the linear probe runs.")] = 5,
    folds: Annotated[int, typer.Option(help="Cross-validation folds.")] = 5,
    labels: Annotated[
        str, typer.Option(help="Label sources, highest precedence first.")
    ] = "annotation,imported,weak",
    seed: Annotated[int, typer.Option(help="Seed of the folds.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Suggest an emotion for every item: zero-shot CLIP, kNN votes, linear probe; pooled and calibrated."""
    from emo8.embed.encoders import EncoderKeyError, WeightsError
    from emo8.label.suggest import SuggestConfig, SuggestError, suggest

    ws = _open(workspace)
    config = SuggestConfig(
        model=model, k=k, zero_shot=zero_shot, weights=weights, random_init=random_init, device=device,
        min_labels_per_class=min_labels, folds=folds,
        label_sources=tuple(s.strip() for s in labels.split(",") if s.strip()), seed=seed,
    )  # fmt: skip
    notes: list[str] = []
    with exit_on(((SuggestError, WeightsError, EncoderKeyError), 2)):
        result = suggest(ws, config, progress=not quiet, notes=notes)
    for note in notes:
        out.print(f"  note: {note}")
    by_source = ", ".join(f"{k}={v}" for k, v in sorted(result.labels_by_source.items())) or "none"
    out.print(
        f"[bold]suggest {model}[/]: {result.suggested} item(s) suggested, {result.up_to_date} up to date "
        f"(version {result.version}); {result.labelled} labelled ({by_source})"
    )
    if result.missing_embeddings:
        out.print(
            f"  {result.missing_embeddings} valid item(s) have no embedding: run `emo8 embed --model {model}`"
        )
    if not result.suggested:
        return
    out.print("  sources: " + ", ".join(result.sources))
    for name, why in result.skipped.items():
        out.print(f"  skipped {name}: {why}")
    pooling = result.pooling
    weights_text = ", ".join(f"{n}={w}" for n, w in pooling.get("weights", {}).items())
    out.print(f"  pooling: {weights_text}; temperature {pooling.get('temperature')}")
    overall = result.metrics.get("overall", {})
    if "combined" in overall:
        comb, raw = overall["combined"], overall["combined_uncalibrated"]
        out.print(
            f"  cross-validated: accuracy {comb['accuracy']:.3f}, macro-F1 {comb['macro_f1']:.3f}, "
            f"ECE {comb['ece']:.3f} (before calibration {raw['ece']:.3f}); "
            f"majority baseline {result.metrics['majority_baseline']:.3f}"
        )
    out.print("  suggested: " + ", ".join(f"{k} {v}" for k, v in sorted(result.predicted.items())))
    out.print(f"  report: {result.html_path} and {result.report_path} ({result.seconds:.1f}s)")


@app.command("select", rich_help_panel=PANEL_LABEL)
def select_cmd(
    budget: Annotated[int, typer.Option("--budget", help="Items the round should hold.")],
    workspace: WorkspaceOpt = Path("."),
    strategy: Annotated[str, typer.Option(help="uncertainty, balanced, diverse or random.")] = "uncertainty",
    round_name: Annotated[
        str | None, typer.Option("--round", help="Round name (default: a new round-<k>).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    measure: Annotated[str, typer.Option(help="Uncertainty: margin or entropy.")] = "margin",
    model: Annotated[str, typer.Option(help="Embedding model key (diverse).")] = "efficientnet-lite0",
    pool_factor: Annotated[
        int, typer.Option(help="diverse: pick among pool_factor x budget uncertain.")
    ] = 10,
) -> None:
    """Choose the items of the next annotation round (never duplicates, settled or already-selected items)."""
    from emo8.label.selection import SelectConfig, SelectError, select

    ws = _open(workspace)
    config = SelectConfig(
        budget=budget, strategy=strategy, round=round_name, seed=seed, measure=measure, model=model,
        pool_factor=pool_factor,
    )  # fmt: skip
    with exit_on((SelectError, 2)):
        result = select(ws, config)
    excluded = ", ".join(f"{k}={v}" for k, v in sorted(result.excluded.items())) or "none"
    out.print(
        f"[bold]{result.round}[/] ({result.strategy}): {result.selected} new item(s) selected, "
        f"{result.already + result.selected} in the round (budget {result.budget}); "
        f"pool {result.pool}, excluded: {excluded}"
    )
    if result.per_class:
        out.print(
            "  suggested classes: " + ", ".join(f"{k} {v}" for k, v in sorted(result.per_class.items()))
        )


@app.command("detect-people", rich_help_panel=PANEL_CURATE)
def detect_people_cmd(
    workspace: WorkspaceOpt = Path("."),
    backend: Annotated[str, typer.Option(help=", ".join(PEOPLE_BACKENDS) + ".")] = DEFAULT_PEOPLE_BACKEND,
    weights: Annotated[str | None, typer.Option(help="Weights file (torchvision:NAME).")] = None,
    random_init: Annotated[
        bool, typer.Option("--random-init", help="torchvision:NAME with random weights (tests).")
    ] = False,
    threshold: Annotated[float | None, typer.Option(help="Minimum score (default: the backend's).")] = None,
    max_side: Annotated[int, typer.Option(help="Downscale images to this longer side first.")] = 640,
    batch_size: Annotated[int, typer.Option(help="Images per batch / transaction.")] = 32,
    workers: Workers = 1,  # one: the OpenCV detectors are shared by the threads and are not thread-safe
    device: Device = "auto",
    redo: Annotated[
        bool, typer.Option("--redo", help="Recompute items already done by this backend.")
    ] = False,
    quiet: Quiet = False,
    executor: ExecutorKind = "local",
    ray_address: RayAddress = None,
) -> None:
    """Detect people and faces; store person boxes (original pixels) and face counts per item."""
    from emo8.label.people import DetectConfig, DetectorError, detect_people

    ws = _open(workspace)
    config = DetectConfig(
        backend=backend, weights=weights, random_init=random_init, score_threshold=threshold, max_side=max_side,
        batch_size=batch_size, workers=workers, device=device, redo=redo, progress=not quiet,
        executor=ExecutorConfig(executor, ray_address),
    )  # fmt: skip
    with exit_on((DetectorError, 2), (ExecutorError, 2)):
        result = detect_people(ws, config)
    rate = f" ({result.images_per_second:.1f} images/s)" if result.processed else ""
    out.print(
        f"[bold]detect-people {result.backend}[/]: {result.processed} image(s) in {result.seconds:.1f}s{rate}, "
        f"{result.already} already done; {result.with_person} with a person, {result.faces} face(s), "
        f"{result.errors} unreadable"
    )


@labels_app.command("import")
def labels_import_cmd(
    file: Annotated[Path, typer.Argument(help="CSV with item_id or sha256, and label.")],
    workspace: WorkspaceOpt = Path("."),
    id_col: Annotated[str | None, typer.Option(help="Id column (default item_id, else sha256).")] = None,
    label_col: Annotated[str, typer.Option(help="Label column.")] = "label",
) -> None:
    """Import emotion labels (column imported_label); suggest learns from them, release can ship them."""
    from emo8.label.suggest import SuggestError, import_labels

    ws = _open(workspace)
    with exit_on((SuggestError, 2)):
        result = import_labels(ws, file, id_col=id_col, label_col=label_col)
    out.print(
        f"[bold]labels import[/]: {result.rows} row(s): {result.updated} updated, {result.unchanged} unchanged, "
        f"{result.unknown_item} unknown item(s), {result.unknown_label} unknown label(s), "
        f"{result.not_valid} on non-valid items"
    )
    if result.per_class:
        out.print("  per class: " + ", ".join(f"{k} {v}" for k, v in sorted(result.per_class.items())))


from emo8.cli.annotate import annotate_app  # noqa: E402

app.add_typer(annotate_app, name="annotate", rich_help_panel=PANEL_LABEL)


# -- embed, dedup --------------------------------------------------------------------------------------------------


@app.command("embed", rich_help_panel=PANEL_CURATE)
def embed_cmd(
    workspace: WorkspaceOpt = Path("."),
    model: Annotated[
        str, typer.Option(help="Model key: efficientnet-lite0, open_clip:ARCH\\[/TAG], timm:ARCH.")
    ] = "efficientnet-lite0",
    weights: Annotated[
        Path | None, typer.Option(help="Local checkpoint (open_clip:ARCH, timm:ARCH).")
    ] = None,
    random_init: Annotated[
        bool, typer.Option("--random-init", help="Random weights (smoke tests only; never a fallback).")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    device: Device = "auto",
    workers: Workers = DEFAULT_WORKERS,
    dtype: Annotated[str, typer.Option(help="Stored precision: float16 or float32.")] = "float16",
    quiet: Quiet = False,
    executor: ExecutorKind = "local",
    ray_address: RayAddress = None,
) -> None:
    """Embed every validated item that has no embedding for the model yet (incremental, resumable)."""
    from emo8.embed.encoders import EncoderKeyError, WeightsError
    from emo8.embed.run import EmbedConfig, EmbeddingStoreError, embed

    ws = _open(workspace)
    config = EmbedConfig(
        model=model, weights=str(weights) if weights else None, random_init=random_init, device=device,
        batch_size=batch_size, workers=workers, dtype=dtype, progress=not quiet,
        executor=ExecutorConfig(executor, ray_address),
    )  # fmt: skip
    with exit_on(((WeightsError, EncoderKeyError, ValueError, ExecutorError), 2), (EmbeddingStoreError, 1)):
        summary = embed(ws, config)
    info = summary.as_dict()
    rate = f", {info['images_per_second']} images/s" if info["images_per_second"] else ""
    out.print(
        f"[bold]embed {summary.key}[/]: {summary.new} new, {summary.total} stored ({summary.dim}-d {dtype}) "
        f"in {summary.seconds:.1f}s{rate} on {summary.device}"
    )
    if summary.failed:
        out.print(
            f"  {len(summary.failed)} unreadable item(s), retried next run: {', '.join(summary.failed[:5])}"
        )
    if summary.repaired_shards:
        out.print(f"  corrupted shard(s) quarantined and recomputed: {', '.join(summary.repaired_shards)}")


from emo8.cli.stages import add_stage_command  # noqa: E402
from emo8.dedup.stage import DEDUP  # noqa: E402

add_stage_command(app, DEDUP)
