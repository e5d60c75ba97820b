"""Ingest: register a source's records, then fetch, validate and store every pending item.

The pieces, each behind one function: a source yields records (emo8.ingest.sources), the catalog registers them
(every row accounted for before any byte is fetched), the downloader or :func:`~emo8.ingest.sources.read_local` gets the
bytes, :func:`~emo8.core.imaging.inspect_image` validates them in a process pool (one decode each), the workspace stores
valid bytes content-addressed, and outcomes are committed in batches, each batch one transaction. A killed run
leaves the unfinished items ``pending``; the next run picks them up, so every origin ends up recorded exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import itertools
import multiprocessing
import operator
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from emo8.core.catalog import SIGNAL_COLUMNS, ItemOutcome, OriginRecord, batched
from emo8.core.executor import ExecutorConfig, StageExecutors
from emo8.core.imaging import ImageInfo, ValidationConfig, inspect_image
from emo8.core.takedown import enforce
from emo8.core.workspace import ObjectStore, Workspace
from emo8.ingest.download import DownloadConfig, FetchRequest, FetchResult, fetch_stream, run_event_loop
from emo8.ingest.sources import Source, read_local
from emo8.ingest.transfer import Shared, TransferArena, attach, read_shared

#: Fetch failures that are a site's policy (or our SSRF guard), not an error: recorded as ``skipped``.
POLICY_REASONS = frozenset({"robots_txt", "x_robots_tag", "private_address"})
#: Failed or invalid items an :class:`IngestSummary` names one by one (all of them are counted).
FAILURES_NAMED = 5


@dataclass
class IngestOptions:
    """How to fetch and validate: ``workers`` decode processes, each sent up to ``batch_size`` images at a time
    (fewer when the bodies would fill too much of the shared memory, see :func:`hand_off_bytes`); outcomes are
    committed every ``commit_every`` items (one transaction each)."""

    download: DownloadConfig = field(default_factory=DownloadConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    workers: int = max(1, os.cpu_count() or 1)
    commit_every: int = 1024
    #: images per round trip to a decode worker (local files: fewer, so that every worker gets some)
    batch_size: int = 64
    #: shared memory (MiB) through which downloaded bodies reach the decode workers; 0 spools them to files
    transfer_mb: int = 64
    retry_failed: bool = False
    register_chunk: int = 5000
    progress: bool = True
    #: where fetching and validation run (:mod:`emo8.core.executor`); the catalog is always written here
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


@dataclass
class IngestSummary:
    """What one ingest run did."""

    source: str
    new: int = 0
    known: int = 0
    processed: int = 0
    merged: int = 0
    bytes_stored: int = 0
    taken_down: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    #: The first :data:`FAILURES_NAMED` failed or invalid items: ``(URL or file, reason, detail)``.
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str, reason: str | None, where: str, error: str | None) -> None:
        """Count one item's outcome; name it if it is among the first few failures."""
        self.statuses[status] += 1
        if reason:
            self.reasons[reason] += 1
        if status in ("failed", "invalid") and len(self.failures) < FAILURES_NAMED:
            self.failures.append((where, reason or status, (error or "")[:200]))

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "new": self.new,
            "known": self.known,
            "processed": self.processed,
            "merged": self.merged,
            "bytes_stored": self.bytes_stored,
            "taken_down": self.taken_down,
            "statuses": dict(self.statuses),
            "reasons": dict(self.reasons),
            "failures": [list(f) for f in self.failures],
            "seconds": round(self.seconds, 3),
            "items_per_second": round(self.processed / self.seconds, 1) if self.seconds else None,
        }


def ingest(ws: Workspace, source: Source, options: IngestOptions | None = None) -> IngestSummary:
    """Register every record of ``source`` in ``ws`` and process the pending items of that source.

    Idempotent: origins already in the catalog are counted as ``known`` and left alone; a re-run after a crash
    finishes what was pending. Returns an :class:`IngestSummary`.
    """
    options = options or IngestOptions()
    INGEST_EXECUTORS.get(options.executor)  # an unknown or unavailable executor fails before registering
    summary = IngestSummary(source=source.name)
    started = time.perf_counter()
    with collector_paced():  # thousands of records alive per chunk
        for chunk in batched(source.records(), options.register_chunk):
            # rows a source already knows to be unusable (e.g. malformed URL-list rows) are outcomes of this run too
            settled = [r for r in chunk if r.status != "pending"]
            fresh = _unknown_origins(ws, settled)
            new, known = ws.catalog.register(chunk)
            summary.new += new
            summary.known += known
            for record in fresh:
                where = record.url or record.source_path or record.origin_key
                summary.count(record.status, record.reason, where, record.error)
    process_pending(ws, source.name, options, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def process_pending(
    ws: Workspace,
    source: str | None = None,
    options: IngestOptions | None = None,
    summary: IngestSummary | None = None,
) -> IngestSummary:
    """Fetch, validate and store every ``pending`` item (of one source, or all); return the summary.

    Recorded take-downs are then re-applied (:func:`emo8.core.takedown.enforce`): an item that copies a taken-down
    image is ``removed`` at once (counted in ``taken_down``), and bytes of a purged take-down that arrived again
    are deleted again.
    """
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
    sink.where = dict(zip(pending.item_id, pending.url.fillna(pending.source_path).fillna(""), strict=True))
    run_pending = INGEST_EXECUTORS.get(options.executor)
    with _progress(options.progress, len(pending)) as progress:
        sink.progress = progress
        try:
            run_pending(ws, pending, options, sink)
        finally:
            sink.flush()
    # copies of images taken down earlier never stay: removed now, and purged bytes that came back deleted again
    summary.taken_down += sum(enforce(ws).values())
    summary.seconds += time.perf_counter() - started
    return summary


# -- the pieces ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """What a decode worker found for one item: a read failure, or the sha256 and validation of its bytes."""

    sha256: str | None = None
    info: ImageInfo | None = None
    new_bytes: int = 0
    read_failure: tuple[str, str] | None = None


@dataclass(frozen=True)
class Spooled:
    """Downloaded bytes handed to a decode worker as a file in the workspace's ``tmp/`` that the worker owns: it
    renames the file into the object store when the image is valid and new, and deletes it otherwise. Cheaper
    than pickling the bytes through the pool's pipe, and the store's own write becomes a rename."""

    path: str


_spooled = itertools.count()


def spool(data: bytes, store: ObjectStore) -> Spooled | bytes:
    """Write downloaded bytes to a new file in ``store.tmp`` for a decode worker; the bytes themselves when the
    file cannot be written (the worker then stores them, reporting a full disk as the store always does)."""
    path = store.tmp / f".part-dl-{os.getpid()}-{next(_spooled)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileNotFoundError:
        store.tmp.mkdir(parents=True, exist_ok=True)
        return spool(data, store)
    except OSError:
        return data
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except OSError:
        path.unlink(missing_ok=True)
        return data
    return Spooled(str(path))


def _check_spooled(source: Spooled, config: ValidationConfig, store: ObjectStore) -> Checked:
    """:func:`check_and_store` for a spooled download: the file is moved into the store or deleted, never left."""
    new = False
    try:
        with open(source.path, "rb") as handle:
            data = handle.read()
        sha256 = hashlib.sha256(data).hexdigest()
        info = inspect_image(data, config)
        if info.ok:
            new = store.put_spooled(source.path, data, info.format, sha256)
        return Checked(sha256, info, len(data) if new else 0)
    finally:
        if not new:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(source.path)


def check_and_store(
    source: bytes | str | Spooled | Shared, config: ValidationConfig, store: ObjectStore
) -> Checked:
    """Validate downloaded bytes (or a :class:`Spooled` download), or the bytes at a local locator (a file path
    or ``hf://...``), and store them if valid; runs in a decode worker, so reading, decoding and writing all
    happen off the event loop.

    Invalid bytes are never stored.
    """
    if isinstance(source, Spooled):
        return _check_spooled(source, config, store)
    if isinstance(source, Shared):
        source = read_shared(source)
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = read_local(source)
        except FileNotFoundError as exc:
            return Checked(read_failure=("missing_file", str(exc)))
        except OSError as exc:
            return Checked(read_failure=("unreadable", str(exc)))
    sha256 = hashlib.sha256(data).hexdigest()
    info = inspect_image(data, config)
    new = info.ok and store.put(data, info.format, sha256)[1]
    return Checked(sha256, info, len(data) if new else 0)


#: The signal columns of an :class:`ImageInfo`, in :data:`SIGNAL_COLUMNS` order (one C call per outcome).
_signals_of = operator.attrgetter(*SIGNAL_COLUMNS)


def outcome_for(item_id: str, checked: Checked, http_status: int | None, attempts: int) -> ItemOutcome:
    """Turn a worker's finding into a catalog outcome (invalid bytes carry no sha256: they are not stored)."""
    if checked.read_failure is not None:
        return ItemOutcome(item_id, "failed", *checked.read_failure, http_status, attempts)
    info = checked.info
    assert info is not None
    if not info.ok:
        return ItemOutcome(item_id, "invalid", info.reason, info.error, http_status, attempts)
    signals = dict(zip(SIGNAL_COLUMNS, _signals_of(info), strict=True))
    return ItemOutcome(item_id, "valid", None, None, http_status, attempts, checked.sha256, signals)


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
        self.where: dict[str, str] = {}  # item_id -> URL or file, to name failures

    def add(self, outcome: ItemOutcome, new_bytes: int = 0) -> None:
        self.buffer.append(outcome)
        self.summary.processed += 1
        self.summary.bytes_stored += new_bytes
        where = self.where.get(outcome.item_id) or outcome.item_id
        self.summary.count(outcome.status, outcome.reason, where, outcome.error)
        if self.progress is not None and not self.progress.disable:
            self.progress.advance(self.progress.task_ids[0])
        if len(self.buffer) >= self.every or time.monotonic() - self.last_flush > 2.0:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            merged = self.ws.catalog.apply(self.buffer)
            self.summary.merged += len(merged)
            self.buffer = []
        self.last_flush = time.monotonic()


#: The public name of the outcome sink that executors hand their outcomes to.
OutcomeSink = _OutcomeSink


def run_local_pending(
    ws: Workspace, pending: pd.DataFrame, options: IngestOptions, sink: _OutcomeSink
) -> None:
    """The ``local`` executor: local files through the decode pool, then URLs through one asyncio downloader."""
    remote = pending[pending.url.notna()]
    local = pending[pending.url.isna() & pending.source_path.notna()]
    arena = TransferArena(options.transfer_mb << 20) if len(remote) and options.transfer_mb > 0 else None
    # a store only this process sees (memory://) is written by threads of this process, not forked workers
    with _decode_pool(options.workers, arena, threads=not ws.objects.shared) as pool:
        if len(local):
            _process_local(ws, local, options, pool, sink)
        if len(remote):
            with collector_paced():
                run_event_loop(_process_remote(ws, remote, options, pool, sink, arena))


#: How an executor runs ingest's fetch-validate-store step: ``(ws, pending rows, options, sink) -> None``.
PendingRunner = Callable[[Workspace, pd.DataFrame, IngestOptions, _OutcomeSink], None]
#: Ingest's implementation per executor kind (see :mod:`emo8.core.executor`); Ray's in :mod:`emo8.ingest.ray`.
INGEST_EXECUTORS: StageExecutors[PendingRunner] = StageExecutors("ingest")
INGEST_EXECUTORS.register("local", run_local_pending)
INGEST_EXECUTORS.register("ray", "emo8.ingest.ray:ingest_pending")


def check_batch(
    sources: list[bytes | str | Spooled | Shared], config: ValidationConfig, store: ObjectStore
) -> list[Checked]:
    """:func:`check_and_store` over a batch (one round trip to a worker per batch, not per image)."""
    return [check_and_store(source, config, store) for source in sources]


def _process_local(
    ws: Workspace, rows: pd.DataFrame, options: IngestOptions, pool: Executor, sink: _OutcomeSink
) -> None:
    """Validate local origins in the pool (workers read the files themselves), a bounded number in flight."""
    in_flight: dict[Future[list[Checked]], list[str]] = {}

    def drain(block_until: int) -> None:
        while len(in_flight) > block_until:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                for item_id, checked in zip(in_flight.pop(future), future.result(), strict=True):
                    sink.add(outcome_for(item_id, checked, None, 1), checked.new_bytes)

    size = max(1, min(options.batch_size, -(-len(rows) // (2 * max(1, options.workers)))))
    for start in range(0, len(rows), size):
        chunk = rows.iloc[start : start + size]
        future = pool.submit(check_batch, chunk.source_path.tolist(), options.validation, ws.objects)
        in_flight[future] = chunk.item_id.tolist()
        drain(options.workers * 2)
    drain(0)


async def _process_remote(
    ws: Workspace,
    rows: pd.DataFrame,
    options: IngestOptions,
    pool: Executor,
    sink: _OutcomeSink,
    arena: TransferArena | None = None,
) -> None:
    """Download remote origins; bodies go to the pool in batches for validation while the next ones download.

    A batch is sent when it is full (``batch_size`` images or :func:`hand_off_bytes` bytes), or after half a
    second, so a slow or rate-limited host never holds downloaded images back for long. Its bodies travel in
    ``arena`` (shared memory, see :mod:`emo8.ingest.transfer`), or as spooled files when there is no arena or no
    room in it.
    """
    loop = asyncio.get_running_loop()
    in_flight = options.workers * 3
    slots = asyncio.Semaphore(in_flight)  # batches in flight
    tasks: set[asyncio.Task[None]] = set()
    batch = HandOffBatch(options.batch_size, hand_off_bytes(arena, in_flight))

    async def validate(results: list[FetchResult]) -> None:
        try:
            bodies = [r.data for r in results if r.data is not None]
            placed = arena.place(bodies) if arena is not None else None
            sources: list[bytes | str | Spooled | Shared]
            sources = list(placed[1]) if placed else [spool(body, ws.objects) for body in bodies]
            for r in results:
                r.data = None  # the bytes live in the arena or in the spooled file now
            try:
                checked = await loop.run_in_executor(
                    pool, check_batch, sources, options.validation, ws.objects
                )
                if placed and arena is not None:
                    arena.release(placed[0])  # only once the workers are done (never after a failure)
            except BaseException:  # cancelled or failed: no spooled file is left behind in tmp/
                for source in sources:
                    if isinstance(source, Spooled):
                        with contextlib.suppress(OSError):
                            os.unlink(source.path)
                raise
            for result, found in zip(results, checked, strict=True):
                sink.add(outcome_for(result.key, found, result.http_status, result.attempts), found.new_bytes)
        finally:
            slots.release()

    async def send_batch() -> None:
        await slots.acquire()
        if not batch.results:  # the other sender took it while we waited for a slot
            slots.release()
            return
        task = loop.create_task(validate(batch.take()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def send_stale_batches() -> None:
        while True:
            await asyncio.sleep(0.5)
            if batch.results:
                await send_batch()

    ticker = loop.create_task(send_stale_batches())
    keys, urls = rows.item_id.tolist(), rows.url.tolist()
    requests = map(FetchRequest, keys, urls)
    try:
        async for result in fetch_stream(requests, options.download):
            if not result.ok or result.data is None:
                sink.add(outcome_for_fetch_failure(result))
                continue
            if batch.add(result):
                await send_batch()
    finally:
        ticker.cancel()
    if batch.results:
        await send_batch()
    while tasks:
        await asyncio.gather(*tasks)


def hand_off_bytes(arena: TransferArena | None, in_flight: int) -> int:
    """Body bytes at which a batch goes to a decode worker before it holds ``batch_size`` images: small enough
    that ``in_flight`` batches fill at most half of ``arena``, so a batch of large images still travels through
    shared memory rather than spooled files. Unbounded without an arena."""
    if arena is None:
        return 1 << 62
    return max(1, arena.size // (2 * max(1, in_flight)))


@dataclass
class HandOffBatch:
    """Downloaded results waiting for a decode worker: full at ``max_items`` results or ``max_bytes`` bytes of
    bodies, whichever comes first."""

    max_items: int
    max_bytes: int
    results: list[FetchResult] = field(default_factory=list)
    size: int = 0

    def add(self, result: FetchResult) -> bool:
        """Add one downloaded result; return whether the batch is now full."""
        self.results.append(result)
        self.size += len(result.data or b"")
        return len(self.results) >= self.max_items or self.size >= self.max_bytes

    def take(self) -> list[FetchResult]:
        """The results so far; the batch starts empty again."""
        results, self.results, self.size = self.results, [], 0
        return results


class _decode_pool:
    """A process pool for decoding, started (forked) before any thread or event loop exists."""

    def __init__(self, workers: int, arena: TransferArena | None = None, threads: bool = False) -> None:
        self.arena = arena
        fork = multiprocessing.get_context("fork")
        self.pool: Executor
        if threads:
            if arena is not None:
                attach(arena.memory)  # the threads share this process's view of the arena
            self.pool = ThreadPoolExecutor(max_workers=workers)
        elif arena is None:
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=fork)
        else:  # the initializer's argument is forked, not pickled: the workers share the arena's memory
            self.pool = ProcessPoolExecutor(
                max_workers=workers, mp_context=fork, initializer=attach, initargs=(arena.memory,)
            )

    def __enter__(self) -> Executor:
        self.pool.submit(os.getpid).result()  # with "fork", the first submit launches every worker
        return self.pool

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.arena is not None:
            self.arena.close()


#: Net allocations between two young-generation collections while the downloads run (CPython 3.10-3.12: 700).
YOUNG_COLLECTION_EVERY = 10_000


@contextlib.contextmanager
def collector_paced(young_every: int = YOUNG_COLLECTION_EVERY) -> Iterator[None]:
    """Pace Python's cyclic garbage collector for a loop that keeps thousands of objects alive (the download loop,
    registering a chunk of records), then restore it.

    The objects that exist on entry (modules, the pending rows, ...) are frozen out of the collector, so a full
    collection no longer walks them, and the young generation is collected every ``young_every`` net allocations
    rather than every 700: each young collection walks every live object in flight, and at the default pace the
    collector took about a tenth of the event loop's CPU and a fifth of registering. Reference counting still
    frees every acyclic object at once; cycles are freed at the next collection.
    """
    threshold = gc.get_threshold()
    freeze = gc.get_freeze_count() == 0  # a caller's own freeze is left as it is
    if freeze:
        gc.freeze()
    gc.set_threshold(max(young_every, threshold[0]), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if freeze:
            gc.unfreeze()


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


def _unknown_origins(ws: Workspace, records: list[OriginRecord]) -> list[OriginRecord]:
    """The records whose origin the catalog has not registered yet."""
    if not records:
        return []
    keys = [r.origin_key for r in records]
    known: set[str] = set()
    db = ws.catalog.connect()
    for start in range(0, len(keys), 500):
        part = keys[start : start + 500]
        rows = db.execute(
            f"SELECT origin_key FROM origins WHERE origin_key IN ({', '.join('?' * len(part))})", part
        )
        known.update(row[0] for row in rows)
    return [r for r in records if r.origin_key not in known]
