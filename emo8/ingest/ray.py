"""Ingest on Ray: pending items sharded by host, fetched and validated by Ray tasks, committed by the driver.

Registered as the ``ray`` implementation of :data:`emo8.ingest.run.INGEST_EXECUTORS`; imported only when chosen.

Politeness is enforced by partitioning: every host belongs to exactly one shard (a stable hash of the
hostname), and a shard has at most one task running at any time (its chunks run one after the other), so the
per-host concurrency, rate and ``Retry-After`` pauses of :mod:`emo8.ingest.download` hold across the whole cluster,
as does robots.txt. A list with fewer hosts than shards deals each host over several shards whose per-host limits
add up to the host's (see :func:`plan_shards`). Each task runs the same polite downloader (SSRF guard included)
and the same :func:`emo8.ingest.run.check_and_store` as the local path, writing objects to the content-addressed
store; only compact :class:`~emo8.core.catalog.ItemOutcome` rows travel back. The driver keeps at most one task per
shard in flight (back-pressure: ``ray.wait`` on a bounded window) and commits through the local path's sink, so the
catalog has one writer. A task whose worker dies is run again by Ray (content-addressed writes are idempotent); a
killed driver leaves the unfinished items ``pending`` for the next run.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import ray
from yarl import URL

from emo8.core.executor import ray_session, require_shared_store
from emo8.core.imaging import ValidationConfig
from emo8.core.workspace import ObjectStore
from emo8.ingest.download import DownloadConfig, FetchRequest, fetch_stream
from emo8.ingest.run import check_and_store, outcome_for, outcome_for_fetch_failure

if TYPE_CHECKING:
    import pandas as pd

    from emo8.core.catalog import ItemOutcome
    from emo8.core.workspace import Workspace
    from emo8.ingest.run import IngestOptions, OutcomeSink

#: One row of work: (item_id, url or None, local path or None).
Row = tuple[str, str | None, str | None]


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
    rows: list[Row], download: DownloadConfig, validation: ValidationConfig, store: ObjectStore
) -> list[tuple[ItemOutcome, int]]:
    """Fetch (or read), validate and store one chunk of items; return ``(outcome, new bytes)`` per item.

    Runs in a Ray worker; decoding runs in a helper thread so downloads keep flowing while an image decodes.
    """
    done: list[tuple[ItemOutcome, int]] = []
    for item_id, url, path in rows:
        if url is None and path is not None:
            checked = check_and_store(path, validation, store)
            done.append((outcome_for(item_id, checked, None, 1), checked.new_bytes))
    requests = [FetchRequest(item_id, url) for item_id, url, _ in rows if url is not None]
    if requests:
        done.extend(asyncio.run(_fetch_and_check(requests, download, validation, store)))
    return done


async def _fetch_and_check(
    requests: list[FetchRequest], download: DownloadConfig, validation: ValidationConfig, store: ObjectStore
) -> list[tuple[ItemOutcome, int]]:
    loop = asyncio.get_running_loop()
    done: list[tuple[ItemOutcome, int]] = []
    checks: list[asyncio.Future[None]] = []
    with ThreadPoolExecutor(1) as decoder:

        def check(key: str, data: bytes, status: int | None, attempts: int) -> None:
            checked = check_and_store(data, validation, store)
            done.append((outcome_for(key, checked, status, attempts), checked.new_bytes))

        async for result in fetch_stream(requests, download):
            if not result.ok or result.data is None:
                done.append((outcome_for_fetch_failure(result), 0))
                continue
            args = (result.key, result.data, result.http_status, result.attempts)
            result.data = None
            checks.append(loop.run_in_executor(decoder, check, *args))
        await asyncio.gather(*checks)
    return done


def ingest_pending(ws: Workspace, pending: pd.DataFrame, options: IngestOptions, sink: OutcomeSink) -> None:
    """The ``ray`` executor: run the shards' chunks as Ray tasks, at most one per shard in flight; every outcome
    goes to ``sink`` on the driver."""
    config = options.executor
    require_shared_store(ws.objects.shared, ws.objects.url)
    with ray_session(config):
        shards = config.shards or max(1, int(ray_session.resources().get("CPU", 1)))
        plan = plan_shards(pending, shards, config.chunk_size, options.download)
        task = ray.remote(ingest_chunk).options(
            num_cpus=1, max_retries=config.task_retries, retry_exceptions=False, name="emo8_ingest_chunk"
        )
        validation, store = ray.put(options.validation), ray.put(ws.objects)
        in_flight: dict[Any, int] = {}  # object ref -> shard (at most one per shard)

        def submit(shard: int) -> None:
            if plan[shard].chunks:
                ref = task.remote(plan[shard].chunks.popleft(), plan[shard].download, validation, store)
                in_flight[ref] = shard

        for shard in range(len(plan)):
            submit(shard)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                shard = in_flight.pop(ref)
                submit(shard)  # the shard's next chunk starts before this one's outcomes are committed
                for outcome, new_bytes in ray.get(ref):
                    sink.add(outcome, new_bytes)


@dataclass
class Shard:
    """The work of one shard: its chunks, run one after the other, and the download limits they run under."""

    download: DownloadConfig
    chunks: deque[list[Row]]


def plan_shards(pending: pd.DataFrame, shards: int, chunk_size: int, download: DownloadConfig) -> list[Shard]:
    """Split the pending rows into shards: URLs by host, local files spread evenly over their own shards.

    With at least as many hosts as shards, every host belongs to one shard (a stable hash of its name) with the
    full per-host limits. With fewer hosts (a list from one or two sites), each host's items are dealt over
    ``split`` sub-shards whose per-host concurrency and rate are the host's limits divided by ``split``, so
    the sum over the cluster never exceeds them. (A ``Retry-After`` pause then holds in the sub-shard that
    received it, and each sub-shard reads robots.txt once.)
    """
    hosts: dict[str, list[Row]] = {}
    files: list[Row] = []
    for item_id, url, path in zip(pending.item_id, pending.url, pending.source_path, strict=True):
        if isinstance(url, str):
            hosts.setdefault(host_of(url), []).append((item_id, url, None))
        elif isinstance(path, str):
            files.append((item_id, None, path))
    split = max(1, min(shards // max(1, len(hosts)), download.per_host_concurrency))
    groups: list[list[Row]]
    if split == 1:
        groups = [[] for _ in range(shards)]
        for host, rows in hosts.items():
            groups[shard_of(host, shards)].extend(rows)
        host_download = download
    else:
        groups = [rows[j::split] for rows in hosts.values() for j in range(split)]
        rate = download.per_host_rate
        host_download = replace(
            download,
            per_host_concurrency=download.per_host_concurrency // split,
            per_host_rate=rate / split if rate else None,
        )
    plan = [Shard(host_download, _chunked(rows, chunk_size)) for rows in groups if rows]
    if files:
        plan += [
            Shard(download, _chunked(files[i::shards], chunk_size)) for i in range(shards) if files[i::shards]
        ]
    return plan


def _chunked(rows: list[Row], size: int) -> deque[list[Row]]:
    return deque(rows[i : i + size] for i in range(0, len(rows), size))
