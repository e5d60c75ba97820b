"""The ingest stages (``ingest-folder``, ``ingest-urls``, ``ingest-openverse``, ``ingest-hf``, ``ingest-resume``):
their settings, declared once for the CLI and pipelines, and how their results read.

The validation settings (:class:`ValidationSettings`) are shared by every ingest stage, the fetch settings
(:class:`FetchSettings`: politeness, timeouts, executor) by the stages that download (URL lists, Openverse,
resume). Each run function maps its settings onto :class:`~emo8.ingest.run.IngestOptions` and a source, and
calls :func:`~emo8.ingest.run.ingest` (or :func:`~emo8.ingest.run.process_pending`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import field_validator
from rich.markup import escape

from emo8.core.executor import ExecutorConfig, ExecutorError
from emo8.core.imaging import ValidationConfig
from emo8.core.stage import (
    PANEL_COLLECT,
    CommaList,
    Stage,
    StageSettings,
    Summary,
    executor_setting,
    path_digest,
    ray_address_setting,
    register_stage,
    setting,
    workers_setting,
)
from emo8.core.workspace import Workspace, WorkspaceError
from emo8.ingest.download import DownloadConfig
from emo8.ingest.run import IngestOptions, IngestSummary, ingest, process_pending
from emo8.ingest.sources import Source, SourceError, create_source
from emo8.ingest.sources.openverse import DEFAULT_API_URL, OpenverseSearch, OpenverseSource

__all__ = [
    "INGEST_FOLDER",
    "INGEST_HF",
    "INGEST_OPENVERSE",
    "INGEST_RESUME",
    "INGEST_URLS",
    "FetchSettings",
    "FolderSettings",
    "HFSettings",
    "IngestResult",
    "OpenverseSettings",
    "ResumeSettings",
    "UrlsSettings",
    "ValidationSettings",
]

_VALIDATION = ValidationConfig()
_DOWNLOAD = DownloadConfig()


def _words(value: Any) -> Any:
    """A single string (a pipeline's ``query: storm``) becomes a one-item list; lists pass as they are."""
    return (value,) if isinstance(value, str) else value


# -- settings every ingest stage shares -----------------------------------------------------------------------


class ValidationSettings(StageSettings):
    """What every ingest stage checks of an image before it is stored, and how many workers decode."""

    workers: int = workers_setting()
    min_side: int = setting(_VALIDATION.min_side, "Reject images whose shorter side is below this.", ge=1)
    max_pixels: int = setting(
        _VALIDATION.max_pixels, "Reject images with more pixels (decompression bombs).", ge=1
    )

    def ingest_options(self, progress: bool) -> IngestOptions:
        """The library's :class:`IngestOptions` for these settings."""
        return IngestOptions(
            validation=ValidationConfig(min_side=self.min_side, max_pixels=self.max_pixels),
            workers=self.workers,
            progress=progress,
        )


class FetchSettings(ValidationSettings):
    """How the downloading ingest stages fetch (URL lists, Openverse, resume): politeness, limits, executor."""

    concurrency: int = setting(
        _DOWNLOAD.max_concurrency, "Global limit of requests in flight.", ge=1, fingerprint=False
    )
    per_host: int = setting(
        _DOWNLOAD.per_host_concurrency, "Limit of requests in flight per host.", ge=1, fingerprint=False
    )
    rate: float = setting(0.0, "Max requests per second per host (0 = unlimited).", ge=0, fingerprint=False)
    timeout: float = setting(_DOWNLOAD.total_timeout, "Total seconds per attempt.", gt=0)
    retries: int = setting(
        _DOWNLOAD.retries, "Extra attempts on timeouts, connection errors, 429 and 5xx.", ge=0
    )
    max_mb: float = setting(
        _DOWNLOAD.max_bytes / 1024 / 1024, "Abort bodies larger than this many MiB.", gt=0
    )
    user_agent: str = setting(_DOWNLOAD.user_agent, "User-Agent sent with every request (say who you are).")
    allow_private_networks: bool = setting(
        False, "Allow loopback/private addresses (tests, intranets).", flag="--allow-private-networks"
    )
    retry_failed: bool = setting(False, "Retry items whose fetch failed before.", flag="--retry-failed")
    transfer_mb: int = setting(
        IngestOptions.transfer_mb,
        "Shared memory (MiB) that hands downloaded bodies to the decode workers (0: spool them to files).",
        ge=0,
        fingerprint=False,
    )
    executor: str = executor_setting()
    ray_address: str | None = ray_address_setting()

    def ingest_options(self, progress: bool) -> IngestOptions:
        """The library's :class:`IngestOptions` for these settings (downloads included)."""
        download = DownloadConfig(
            user_agent=self.user_agent, max_concurrency=self.concurrency, per_host_concurrency=self.per_host,
            per_host_rate=self.rate or None, total_timeout=self.timeout, retries=self.retries,
            max_bytes=int(self.max_mb * 1024 * 1024), allow_private_networks=self.allow_private_networks,
        )  # fmt: skip
        base = super().ingest_options(progress)
        return IngestOptions(
            download, base.validation, workers=self.workers, retry_failed=self.retry_failed, progress=progress,
            executor=ExecutorConfig(self.executor, self.ray_address), transfer_mb=self.transfer_mb,
        )  # fmt: skip


# -- what an ingest stage returns and how it reads ------------------------------------------------------------


@dataclass
class IngestResult:
    """One ingest run: the library's summary, the source's warnings and (Openverse) results dropped by
    negative keywords."""

    summary: IngestSummary
    warnings: list[str] = field(default_factory=list)
    excluded: int = 0


def _ingest(ws: Workspace, source: Source, options: IngestOptions) -> IngestResult:
    summary = ingest(ws, source, options)
    return IngestResult(summary, list(getattr(source, "warnings", [])), int(getattr(source, "excluded", 0)))


def summarize_ingest(result: IngestResult, settings: StageSettings) -> Summary:
    """New and known items, speed, outcomes by status and reason, the first failures, take-downs."""
    summary = result.summary
    rate = f" ({summary.processed / summary.seconds:.1f} items/s)" if summary.seconds else ""
    lines = [
        f"[bold]{escape(summary.source)}[/]: {summary.new} new, {summary.known} already known; "
        f"processed {summary.processed} in {summary.seconds:.1f}s{rate}; "
        f"{summary.merged} merged onto existing content; {summary.bytes_stored / 1e6:.1f} MB stored"
    ]
    if result.excluded:
        lines.append(f"  excluded: {result.excluded} result(s) whose title or tags hold a negative keyword")
    if summary.statuses:
        lines.append("  status: " + ", ".join(f"{k}={v}" for k, v in summary.statuses.most_common()))
    if summary.reasons:
        lines.append("  reasons: " + ", ".join(f"{k}={v}" for k, v in summary.reasons.most_common()))
    failed = sum(summary.statuses[s] for s in ("failed", "invalid"))
    if summary.failures:
        shown = len(summary.failures)
        lines.append(f"  {failed} failed or invalid" + (f", the first {shown}:" if failed > shown else ":"))
        for where, reason, detail in summary.failures:
            lines.append(f"    {escape(where)}: {reason}" + (f" ({escape(detail)})" if detail else ""))
    if summary.taken_down:
        lines.append(f"  take-down: {summary.taken_down} item(s) removed because they copy taken-down images")
    return Summary(lines, warnings=result.warnings)


def _ingest_stage(
    name: str, settings: type[Any], run: Any, help: str, **extra: Any
) -> Stage[Any, IngestResult]:
    """Register an ingest stage: command ``emo8 ingest <last part of name>``, same errors, same outputs."""
    return register_stage(
        Stage(
            name=name, settings=settings, run=run, summarize=summarize_ingest,
            command=("ingest", name.removeprefix("ingest-")), help=help,
            usage_errors=(SourceError, ExecutorError), runtime_errors=(WorkspaceError,),
            reads=extra.pop("reads", ()), writes=("table:items", "dir:objects"), panel=PANEL_COLLECT, **extra,
        )
    )  # fmt: skip


# -- ingest-folder ----------------------------------------------------------------------------------------------


class FolderSettings(ValidationSettings):
    """Settings of ``emo8 ingest folder`` / a pipeline's ``ingest-folder`` step."""

    directory: Path = setting(..., "Folder of images.", argument=True)
    recursive: bool = setting(
        False, "Also read the images in subfolders (all levels).", flag="--recursive", short="-r"
    )
    label_from_dir: bool = setting(False, "Weak label = parent folder.", flag="--label-from-dir")
    domain: str | None = setting(None, "Domain/style of these images.")
    keyword: str | None = setting(None, "Keyword to record.")
    license: str | None = setting(None, "Licence of these images (SPDX id).")


def run_ingest_folder(ws: Workspace, settings: FolderSettings, progress: bool) -> IngestResult:
    """Register and store the images of a local folder."""
    source = create_source(
        "folder", directory=str(settings.directory), recursive=settings.recursive,
        label_from_dir=settings.label_from_dir, domain=settings.domain, keyword=settings.keyword,
        license=settings.license,
    )  # fmt: skip
    return _ingest(ws, source, settings.ingest_options(progress))


def folder_inputs(settings: FolderSettings) -> str:
    """The folder's listing (names, sizes, mtimes; subfolders only with ``recursive``)."""
    return path_digest(settings.directory, recursive=settings.recursive)


INGEST_FOLDER = _ingest_stage(
    "ingest-folder", FolderSettings, run_ingest_folder, "Ingest image files from a local folder.",
    inputs=folder_inputs,
)  # fmt: skip


# -- ingest-urls ------------------------------------------------------------------------------------------------


class UrlsSettings(FetchSettings):
    """Settings of ``emo8 ingest urls`` / a pipeline's ``ingest-urls`` step."""

    url_list: Path = setting(..., "csv, tsv, jsonl or parquet (optionally .gz).", argument=True)
    url_col: str = setting("url", "Column holding the URL.")
    caption_col: str = setting("caption", "Column holding the caption/title.")
    domain: str | None = setting(None, "Domain for rows without one.")
    keyword: str | None = setting(None, "Keyword for rows without one.")


def run_ingest_urls(ws: Workspace, settings: UrlsSettings, progress: bool) -> IngestResult:
    """Download, validate and store the images of a URL list."""
    source = create_source(
        "urls", path=str(settings.url_list), url_col=settings.url_col, caption_col=settings.caption_col,
        domain=settings.domain, keyword=settings.keyword,
    )  # fmt: skip
    return _ingest(ws, source, settings.ingest_options(progress))


def urls_inputs(settings: UrlsSettings) -> str:
    """The URL list's bytes."""
    return path_digest(settings.url_list)


INGEST_URLS = _ingest_stage(
    "ingest-urls", UrlsSettings, run_ingest_urls,
    "Download and ingest the images of a URL list (img2dataset-compatible columns).", inputs=urls_inputs,
)  # fmt: skip


# -- ingest-openverse -------------------------------------------------------------------------------------------


class OpenverseSettings(FetchSettings):
    """Settings of ``emo8 ingest openverse`` / a pipeline's ``ingest-openverse`` step: one or several queries
    (e.g. the synonyms of one emotion x style pair), negative keywords, a result cap across the queries."""

    query: tuple[str, ...] = setting(
        ..., "Search words, e.g. an emotion keyword; repeat it for several queries.", flag="--query"
    )
    exclude: tuple[str, ...] = setting(
        (), "Negative keyword: results whose title or tags hold it are dropped; repeat it for several."
    )
    max_results: int = setting(200, "Maximum number of results (over all queries).", flag="--max", ge=1)
    license_type: str | None = setting(None, "commercial, modification, all-cc...")
    licenses: CommaList = setting(
        (), "Only these licences (by, by-sa, by-nd, by-nc, cc0, pdm...); repeat it or use commas."
    )
    label: str | None = setting(None, "Weak label for the results (default: the query).")
    domain: str | None = setting(None, "Domain/style for the results.")
    api_url: str = setting(DEFAULT_API_URL, "Openverse API base URL.")

    @field_validator("query", "exclude", mode="before")
    @classmethod
    def _one_or_several(cls, value: Any) -> Any:
        return _words(value)

    @field_validator("query")
    @classmethod
    def _queries_not_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(not q.strip() for q in value):
            raise ValueError("give at least one query, and no empty one")
        return value


def run_ingest_openverse(ws: Workspace, settings: OpenverseSettings, progress: bool) -> IngestResult:
    """Search Openverse with each query, interleave the results (at most ``max_results``), ingest them."""
    shared: dict[str, Any] = dict(
        max_results=settings.max_results, license_type=settings.license_type, label=settings.label,
        api_url=settings.api_url, domain=settings.domain, user_agent=settings.user_agent,
        licenses=settings.licenses, exclude=settings.exclude,
    )  # fmt: skip
    searches = [OpenverseSource(query=query, **shared) for query in settings.query]
    source = OpenverseSearch(searches, max_results=settings.max_results)
    return _ingest(ws, source, settings.ingest_options(progress))


INGEST_OPENVERSE = _ingest_stage(
    "ingest-openverse", OpenverseSettings, run_ingest_openverse,
    "Search Openverse (CC-licensed images) and ingest the results.",
)  # fmt: skip


# -- ingest-hf --------------------------------------------------------------------------------------------------


class HFSettings(ValidationSettings):
    """Settings of ``emo8 ingest hf`` / a pipeline's ``ingest-hf`` step."""

    dataset: str = setting(..., "Local dataset directory or hub id.", argument=True, path_like=True)
    image_col: str = setting("image", "Image column.")
    label_col: str = setting("label", "Label column ('' for none).")
    split: str | None = setting(None, "Only this split.")
    domain: str | None = setting(None, "Domain for rows without one.")


def run_ingest_hf(ws: Workspace, settings: HFSettings, progress: bool) -> IngestResult:
    """Register and store the images of a Hugging Face dataset (a local directory or a hub id)."""
    source = create_source(
        "hf", dataset=settings.dataset, image_col=settings.image_col, label_col=settings.label_col or None,
        split=settings.split, domain=settings.domain,
    )  # fmt: skip
    return _ingest(ws, source, settings.ingest_options(progress))


def hf_inputs(settings: HFSettings) -> str:
    """A local dataset directory's listing; a hub id is named by the settings alone (``""``)."""
    path = Path(settings.dataset)
    return path_digest(path) if path.exists() else ""


INGEST_HF = _ingest_stage(
    "ingest-hf", HFSettings, run_ingest_hf, "Ingest the images of a Hugging Face dataset.", inputs=hf_inputs
)


# -- ingest-resume ----------------------------------------------------------------------------------------------


class ResumeSettings(FetchSettings):
    """Settings of ``emo8 ingest resume`` / a pipeline's ``ingest-resume`` step."""


def run_ingest_resume(ws: Workspace, settings: ResumeSettings, progress: bool) -> IngestResult:
    """Fetch, validate and store every pending item of every source."""
    return IngestResult(process_pending(ws, None, settings.ingest_options(progress)))


INGEST_RESUME = _ingest_stage(
    "ingest-resume", ResumeSettings, run_ingest_resume,
    "Finish every pending item of every source (after a crash or an interrupted run).", reads=("table:items",),
)  # fmt: skip
