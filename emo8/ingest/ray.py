"""Ingest on Ray: pending items sharded by host, fetched and validated by Ray actors, committed by the driver.

Registered as the ``ray`` implementation of :data:`emo8.ingest.run.INGEST_EXECUTORS`; imported only when chosen.

Politeness is enforced by partitioning: every host belongs to exactly one shard (a stable hash of the
hostname), and every shard is served by one :class:`IngestActor`, which runs one chunk at a time, so the
per-host concurrency, rate and ``Retry-After`` pauses of :mod:`emo8.ingest.download` hold across the whole cluster,
as does robots.txt. A list with fewer hosts than shards deals each host over several shards whose per-host limits
add up to the host's (see :func:`plan_shards`); those shards take their chunks from one queue, so none of them
idles while another still has work. Each actor runs the same polite downloader (SSRF guard included) and the same
:func:`emo8.ingest.run.check_and_store` as the local path, writing objects to the content-addressed store; only
compact :class:`~emo8.core.catalog.ItemOutcome` rows travel back. The driver keeps at most
:data:`QUEUED_PER_SHARD` chunks per shard in flight (back-pressure: ``ray.wait`` on a bounded window) and commits
through the local path's sink, so the catalog has one writer. A chunk whose actor dies is run again on the
restarted actor (content-addressed writes are idempotent); a killed driver leaves the unfinished items ``pending``
for the next run.

Actors are long-lived: one event loop serves all of a shard's chunks, validating each image as it arrives. On a
cluster the run joined (``ray_address`` set), they stay up, idle, for ``keep_alive`` seconds after the job, as
named detached actors, so that the next job on that cluster starts no worker process (starting one and importing
emo8 in it costs about a second per job); an actor that stays idle that long ends itself. The actors' names carry a
fingerprint of this code, so a job never reuses actors that run other code.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import os
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError
from yarl import URL

from emo8.core.executor import ExecutorConfig, ray_session, require_shared_store
from emo8.core.imaging import ValidationConfig
from emo8.core.workspace import ObjectStore
from emo8.ingest.download import DownloadConfig, FetchRequest, fetch_stream, new_event_loop, run_event_loop
from emo8.ingest.run import check_and_store, collector_paced, outcome_for, outcome_for_fetch_failure

if TYPE_CHECKING:
    import pandas as pd

    from emo8.core.catalog import ItemOutcome
    from emo8.core.workspace import Workspace
    from emo8.ingest.run import IngestOptions, OutcomeSink

#: One row of work: (item_id, url or None, local path or None).
Row = tuple[str, str | None, str | None]
#: Chunks per shard in flight: one running on the shard's actor and one queued behind it (the actor runs them one
#: after the other), so an actor never waits for the driver between chunks.
QUEUED_PER_SHARD = 2
#: The smallest chunk the shared queues deal out near their end (smaller chunks even out the shards' last chunks).
MIN_CHUNK = 32
#: The namespace of the actors kept on a cluster between jobs.
NAMESPACE = "emo8"


def host_of(url: str | None) -> str:
    """The host a URL is fetched from (the key of per-host politeness); ``""`` when it has none."""
    if not url:
        return ""
    try:
        return (URL(url).host or "").lower()
    except (ValueError, TypeError):
        return ""


def shard_of(host: str, shards: int) -> int:
    """The shard of ``host``: stable across runs and machines (crc32, not Python's salted ``hash``)."""
    return zlib.crc32(host.encode("utf-8", "surrogatepass")) % shards


def ingest_chunk(
    rows: list[Row],
    download: DownloadConfig,
    validation: ValidationConfig,
    store: ObjectStore,
    loop: asyncio.AbstractEventLoop | None = None,
) -> list[tuple[ItemOutcome, int]]:
    """Fetch (or read), validate and store one chunk of items; return ``(outcome, new bytes)`` per item.

    The downloads run on ``loop`` (a new one, closed after the call, when not given). Each image is validated on
    that loop as soon as its bytes are in, between the other downloads' turns: a shard's worker is one process on
    one CPU, and handing images to a decode thread cost more (5-10 % more CPU per image, measured: thread
    switches and the GIL) than the downloads waiting a few milliseconds, whose bytes keep arriving meanwhile.
    """
    done: list[tuple[ItemOutcome, int]] = []
    for item_id, url, path in rows:
        if url is None and path is not None:
            checked = check_and_store(path, validation, store)
            done.append((outcome_for(item_id, checked, None, 1), checked.new_bytes))
    requests = [FetchRequest(item_id, url) for item_id, url, _ in rows if url is not None]
    if requests:
        with collector_paced():
            fetched = _fetch_and_check(requests, download, validation, store)
            done += loop.run_until_complete(fetched) if loop is not None else run_event_loop(fetched)
    return done


async def _fetch_and_check(
    requests: list[FetchRequest], download: DownloadConfig, validation: ValidationConfig, store: ObjectStore
) -> list[tuple[ItemOutcome, int]]:
    done: list[tuple[ItemOutcome, int]] = []
    async for result in fetch_stream(requests, download):
        if not result.ok or result.data is None:
            done.append((outcome_for_fetch_failure(result), 0))
            continue
        checked = check_and_store(result.data, validation, store)
        result.data = None
        done.append(
            (outcome_for(result.key, checked, result.http_status, result.attempts), checked.new_bytes)
        )
    return done


class IngestActor:
    """A shard's worker: runs the chunks it is sent one after the other, on one event loop for all of them; with
    ``keep_alive`` > 0 it ends itself once idle that many seconds."""

    def __init__(self, keep_alive: float = 0.0) -> None:
        self.loop = new_event_loop()
        self.busy = False
        self.last_used = time.monotonic()
        if keep_alive > 0:
            threading.Thread(target=self._expire, args=(keep_alive,), daemon=True).start()

    def ingest_chunk(
        self, rows: list[Row], download: DownloadConfig, validation: ValidationConfig, store: ObjectStore
    ) -> list[tuple[ItemOutcome, int]]:
        """:func:`ingest_chunk` on this actor's event loop."""
        self.busy = True
        try:
            return ingest_chunk(rows, download, validation, store, self.loop)
        finally:
            self.busy, self.last_used = False, time.monotonic()

    def pid(self) -> int:
        """This actor's process id (tests and benchmarks tell fresh actors from reused ones by it)."""
        self.last_used = time.monotonic()
        return os.getpid()

    def _expire(self, keep_alive: float) -> None:
        while True:
            time.sleep(min(1.0, keep_alive))
            if not self.busy and time.monotonic() - self.last_used > keep_alive:
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return


def code_fingerprint() -> str:
    """A digest of the ingest code the actors run (emo8's core and ingest modules) and of the Python running it:
    kept actors are reused only by jobs that would run the same code."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"{sys.version}\0{sys.executable}".encode())
    for path in sorted([*root.glob("core/*.py"), *root.glob("ingest/**/*.py")]):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


@functools.cache
def _remote_actor() -> Any:
    return ray.remote(IngestActor)


class ActorPool:
    """The ingest actors of one job: anonymous ones that end with the job, or named detached ones kept for the
    next job (``keep_alive`` > 0 on a joined cluster), found again by name when they still run."""

    def __init__(self, size: int, config: ExecutorConfig, keep: bool) -> None:
        self.keep = keep
        self.keep_alive = config.keep_alive if keep else 0.0
        self.retries = config.task_retries
        self.prefix = f"emo8-ingest-{code_fingerprint()}-{size}" if keep else ""
        self.actors = [self._actor(i) for i in range(size)]

    def __len__(self) -> int:
        return len(self.actors)

    def _actor(self, index: int) -> Any:
        options: dict[str, Any] = {
            "max_restarts": self.retries,
            "max_task_retries": self.retries,
            "scheduling_strategy": "SPREAD",
        }
        if self.keep:
            options |= {"name": f"{self.prefix}-{index}", "namespace": NAMESPACE, "lifetime": "detached",
                        "get_if_exists": True}  # fmt: skip
        return _remote_actor().options(**options).remote(self.keep_alive)

    def __getitem__(self, index: int) -> Any:
        return self.actors[index % len(self.actors)]

    def replace(self, index: int, dead: Any) -> None:
        """A new actor in place of ``dead``, which died for good (or ended itself as the job began)."""
        index %= len(self.actors)
        if self.actors[index] is dead:  # not yet replaced by another of its chunks that failed
            self.actors[index] = self._actor(index)

    def close(self) -> None:
        """End the job's own actors now (kept ones end themselves once idle)."""
        if not self.keep:
            for actor in self.actors:
                ray.kill(actor)


def ingest_pending(ws: Workspace, pending: pd.DataFrame, options: IngestOptions, sink: OutcomeSink) -> None:
    """The ``ray`` executor: each shard's chunks go to its actor, at most :data:`QUEUED_PER_SHARD` in flight;
    every outcome goes to ``sink`` on the driver."""
    config = options.executor
    require_shared_store(ws.objects.shared, ws.objects.url)
    with ray_session(config) as session:
        shards = config.shards or max(1, int(session.resources().get("CPU", 1)))
        keep = session.joined and config.keep_alive > 0
        pool = ActorPool(shards, config, keep)  # the actors start while the rows are planned
        plan = plan_shards(pending, shards, config.chunk_size, options.download)
        validation, store = ray.put(options.validation), ray.put(ws.objects)
        in_flight: dict[Any, tuple[int, list[Row], int, Any]] = {}  # ref -> (shard, rows, attempt, actor)

        def submit(shard: int, rows: list[Row] | None = None, attempt: int = 0) -> None:
            rows = rows or plan[shard].chunks.take()
            if rows:
                actor = pool[shard]
                ref = actor.ingest_chunk.remote(rows, plan[shard].download, validation, store)
                in_flight[ref] = (shard, rows, attempt, actor)

        try:
            for _ in range(QUEUED_PER_SHARD):
                for shard in range(len(plan)):
                    submit(shard)
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    shard, rows, attempt, actor = in_flight.pop(ref)
                    try:
                        results = ray.get(ref)
                    except RayActorError:  # dead for good (restarts spent), or a kept actor that just ended
                        if attempt >= config.task_retries:
                            raise
                        pool.replace(shard, actor)
                        submit(shard, rows, attempt + 1)
                        continue
                    submit(shard)  # the shard's next chunk is queued before this one's outcomes are committed
                    for outcome, new_bytes in results:
                        sink.add(outcome, new_bytes)
        finally:
            pool.close()


class ChunkQueue:
    """Rows dealt out in chunks to the shards that share the queue: ``chunk_size`` at a time while much is left,
    then smaller ones (down to :data:`MIN_CHUNK`), so the shards finish at about the same time."""

    def __init__(self, rows: list[Row], chunk_size: int, consumers: int = 1) -> None:
        self.rows = deque(rows)
        self.chunk_size = max(1, chunk_size)
        self.consumers = max(1, consumers)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self) -> list[Row]:
        """The next chunk; empty when the queue is."""
        guided = math.ceil(len(self.rows) / (2 * QUEUED_PER_SHARD * self.consumers))
        size = min(self.chunk_size, max(guided, MIN_CHUNK))
        return [self.rows.popleft() for _ in range(min(size, len(self.rows)))]


@dataclass
class Shard:
    """One shard: the queue it takes its chunks from (shared by the shards of a split host) and the download
    limits they run under."""

    download: DownloadConfig
    chunks: ChunkQueue


def plan_shards(pending: pd.DataFrame, shards: int, chunk_size: int, download: DownloadConfig) -> list[Shard]:
    """Split the pending rows into shards: URLs by host, local files spread over their own shards.

    With at least as many hosts as shards, every host belongs to one shard (a stable hash of its name) with the
    full per-host limits. With fewer hosts (a list from one or two sites), each host's items are dealt over
    ``split`` sub-shards whose per-host concurrency and rate are the host's limits divided by ``split``, so
    the sum over the cluster never exceeds them; the sub-shards of a host share one queue. (A ``Retry-After``
    pause then holds in the sub-shard that received it, and each chunk reads robots.txt once.)
    """
    hosts: dict[str, list[Row]] = {}
    files: list[Row] = []
    for item_id, url, path in zip(pending.item_id, pending.url, pending.source_path, strict=True):
        if isinstance(url, str):
            hosts.setdefault(host_of(url), []).append((item_id, url, None))
        elif isinstance(path, str):
            files.append((item_id, None, path))
    split = max(1, min(shards // max(1, len(hosts)), download.per_host_concurrency))
    plan: list[Shard] = []
    if split == 1:
        groups: list[list[Row]] = [[] for _ in range(shards)]
        for host, rows in hosts.items():
            groups[shard_of(host, shards)].extend(rows)
        plan += [Shard(download, ChunkQueue(rows, chunk_size)) for rows in groups if rows]
    else:
        rate = download.per_host_rate
        host_download = replace(
            download,
            per_host_concurrency=download.per_host_concurrency // split,
            per_host_rate=rate / split if rate else None,
        )
        for rows in hosts.values():
            queue = ChunkQueue(rows, chunk_size, split)
            plan += [Shard(host_download, queue) for _ in range(split)]
    if files:
        queue = ChunkQueue(files, chunk_size, min(shards, len(files)))
        plan += [Shard(download, queue) for _ in range(min(shards, len(files)))]
    return plan
