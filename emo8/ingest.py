"""Ingest: register a source's records, then fetch, validate and store every pending item.

The pieces, each behind one function: a source yields records (emo8.sources), the catalog registers them
(every row accounted for before any byte is fetched), the downloader or :func:`~emo8.sources.read_local` gets the
bytes, :func:`~emo8.imaging.inspect_image` validates them in a process pool (one decode each), the workspace stores
valid bytes content-addressed, and outcomes are committed in batches, each batch one transaction. A killed run
leaves the unfinished items ``pending``; the next run picks them up, so every origin ends up recorded exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from emo8.catalog import SIGNAL_COLUMNS, ItemOutcome, OriginRecord
from emo8.download import DownloadConfig, FetchRequest, FetchResult, fetch_stream
from emo8.imaging import ImageInfo, ValidationConfig, inspect_image
from emo8.sources import Source, read_local
from emo8.workspace import Workspace

#: Fetch failures that are a site's policy (or our SSRF guard), not an error: recorded as ``skipped``.
POLICY_REASONS = frozenset({"robots_txt", "x_robots_tag", "private_address"})


@dataclass
class IngestOptions:
    """How to fetch and validate. ``workers`` decode processes; outcomes are committed every ``commit_every``."""

    download: DownloadConfig = field(default_factory=DownloadConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    workers: int = max(1, os.cpu_count() or 1)
    commit_every: int = 256
    retry_failed: bool = False
    register_chunk: int = 5000
    progress: bool = True


@dataclass
class IngestSummary:
    """What one ingest run did."""

    source: str
    new: int = 0
    known: int = 0
    processed: int = 0
    merged: int = 0
    bytes_stored: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "new": self.new,
            "known": self.known,
            "processed": self.processed,
            "merged": self.merged,
            "bytes_stored": self.bytes_stored,
            "statuses": dict(self.statuses),
            "reasons": dict(self.reasons),
            "seconds": round(self.seconds, 3),
            "items_per_second": round(self.processed / self.seconds, 1) if self.seconds else None,
        }


def ingest(ws: Workspace, source: Source, options: IngestOptions | None = None) -> IngestSummary:
    """Register every record of ``source`` in ``ws`` and process the pending items of that source.

    Idempotent: origins already in the catalog are counted as ``known`` and left alone; a re-run after a crash
    finishes what was pending. Returns an :class:`IngestSummary`.
    """
    options = options or IngestOptions()
    summary = IngestSummary(source=source.name)
    started = time.perf_counter()
    for chunk in _chunked(source.records(), options.register_chunk):
        new, known = ws.catalog.register(chunk)
        summary.new += new
        summary.known += known
    process_pending(ws, source.name, options, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def process_pending(
    ws: Workspace,
    source: str | None = None,
    options: IngestOptions | None = None,
    summary: IngestSummary | None = None,
) -> IngestSummary:
    """Fetch, validate and store every ``pending`` item (of one source, or all); return the summary."""
    options = options or IngestOptions()
    summary = summary or IngestSummary(source=source or "all")
    started = time.perf_counter()
    if options.retry_failed:
        failed = ws.catalog.items(["item_id", "source", "reason"], where="status = 'failed'")
        failed = failed[(failed.reason != "malformed_row") & ((failed.source == source) if source else True)]
        ws.catalog.reset(failed.item_id.tolist())
    pending = ws.catalog.pending(source)
    if pending.empty:
        summary.seconds += time.perf_counter() - started
        return summary
    sink = _OutcomeSink(ws, options.commit_every, summary)
    remote = pending[pending.url.notna()]
    local = pending[pending.url.isna() & pending.source_path.notna()]
    with _progress(options.progress, len(pending)) as progress, _decode_pool(options.workers) as pool:
        sink.progress = progress
        try:
            if len(local):
                _process_local(ws, local, options, pool, sink)
            if len(remote):
                asyncio.run(_process_remote(ws, remote, options, pool, sink))
        finally:
            sink.flush()
    summary.seconds += time.perf_counter() - started
    return summary


# -- the pieces ----------------------------------------------------------------------------------------------


def inspect_bytes(data: bytes, config: ValidationConfig) -> tuple[str, ImageInfo]:
    """Return ``(sha256 of data, ImageInfo)``; runs in a decode worker process."""
    return hashlib.sha256(data).hexdigest(), inspect_image(data, config)


def outcome_for(
    item_id: str, sha256: str, info: ImageInfo, http_status: int | None, attempts: int
) -> ItemOutcome:
    """Turn a validation result into a catalog outcome (invalid bytes are not stored and carry no sha256)."""
    if not info.ok:
        return ItemOutcome(item_id, "invalid", info.reason, info.error, http_status, attempts)
    signals = {k: v for k, v in info.as_dict().items() if k in SIGNAL_COLUMNS}
    return ItemOutcome(item_id, "valid", None, None, http_status, attempts, sha256, signals)


def outcome_for_fetch_failure(result: FetchResult) -> ItemOutcome:
    """Turn a failed fetch into a catalog outcome: ``skipped`` for policy refusals, ``failed`` otherwise."""
    status = "skipped" if result.reason in POLICY_REASONS else "failed"
    return ItemOutcome(result.key, status, result.reason, result.error, result.http_status, result.attempts)


class _OutcomeSink:
    """Buffers outcomes and commits them in batches (one transaction each); counts them in the summary."""

    def __init__(self, ws: Workspace, every: int, summary: IngestSummary) -> None:
        self.ws, self.every, self.summary = ws, every, summary
        self.buffer: list[ItemOutcome] = []
        self.last_flush = time.monotonic()
        self.progress: Progress | None = None

    def store_and_add(
        self, item_id: str, data: bytes, sha256: str, info: ImageInfo, http: int | None, tries: int
    ) -> None:
        if info.ok:
            path = self.ws.object_path(sha256, info.format)
            if not path.exists():
                self.ws.store_object(data, info.format, sha256)
                self.summary.bytes_stored += len(data)
        self.add(outcome_for(item_id, sha256, info, http, tries))

    def add(self, outcome: ItemOutcome) -> None:
        self.buffer.append(outcome)
        self.summary.processed += 1
        self.summary.statuses[outcome.status] += 1
        if outcome.reason:
            self.summary.reasons[outcome.reason] += 1
        if self.progress is not None:
            self.progress.advance(self.progress.task_ids[0])
        if len(self.buffer) >= self.every or time.monotonic() - self.last_flush > 2.0:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            merged = self.ws.catalog.apply(self.buffer)
            self.summary.merged += len(merged)
            self.buffer = []
        self.last_flush = time.monotonic()


def _process_local(
    ws: Workspace, rows: pd.DataFrame, options: IngestOptions, pool: ProcessPoolExecutor, sink: _OutcomeSink
) -> None:
    """Read local origins and validate them in the pool, with a bounded number in flight."""
    in_flight: dict[Future[tuple[str, ImageInfo]], tuple[str, bytes]] = {}
    limit = options.workers * 4

    def drain(block_until: int) -> None:
        while len(in_flight) > block_until:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                item_id, data = in_flight.pop(future)
                sha256, info = future.result()
                sink.store_and_add(item_id, data, sha256, info, None, 1)

    for item_id, source_path in zip(rows.item_id, rows.source_path, strict=True):
        try:
            data = read_local(source_path)
        except FileNotFoundError as exc:
            sink.add(ItemOutcome(item_id, "failed", "missing_file", str(exc), attempts=1))
            continue
        except OSError as exc:
            sink.add(ItemOutcome(item_id, "failed", "unreadable", str(exc), attempts=1))
            continue
        in_flight[pool.submit(inspect_bytes, data, options.validation)] = (item_id, data)
        drain(limit)
    drain(0)


async def _process_remote(
    ws: Workspace, rows: pd.DataFrame, options: IngestOptions, pool: ProcessPoolExecutor, sink: _OutcomeSink
) -> None:
    """Download remote origins and validate each response in the pool while the next ones download."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(options.workers * 8)
    tasks: set[asyncio.Task[None]] = set()

    async def validate(result: FetchResult) -> None:
        try:
            assert result.data is not None
            sha256, info = await loop.run_in_executor(pool, inspect_bytes, result.data, options.validation)
            sink.store_and_add(result.key, result.data, sha256, info, result.http_status, result.attempts)
        finally:
            slots.release()

    requests = (FetchRequest(key, url) for key, url in zip(rows.item_id, rows.url, strict=True))
    async for result in fetch_stream(requests, options.download):
        if not result.ok or result.data is None:
            sink.add(outcome_for_fetch_failure(result))
            continue
        await slots.acquire()
        task = loop.create_task(validate(result))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


class _decode_pool:
    """A process pool for decoding, started (forked) before any thread or event loop exists."""

    def __init__(self, workers: int) -> None:
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))

    def __enter__(self) -> ProcessPoolExecutor:
        self.pool.submit(os.getpid).result()  # with "fork", the first submit launches every worker
        return self.pool

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _progress(enabled: bool, total: int) -> Progress:
    progress = Progress(
        TextColumn("[bold]ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
    progress.add_task("ingest", total=total)
    return progress


def _chunked(records: Iterable[OriginRecord], size: int) -> Iterator[list[OriginRecord]]:
    iterator = iter(records)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
