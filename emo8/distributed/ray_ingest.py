"""Ingest on Ray: pending items sharded by host, fetched and validated by Ray tasks, committed by the driver.

Politeness is enforced by partitioning: every host belongs to exactly one shard (a stable hash of the
hostname), and a shard has at most one task running at any time (its chunks run one after the other), so the
per-host concurrency, rate and ``Retry-After`` pauses of :mod:`emo8.ingest.download` hold across the whole cluster, as
does robots.txt. A list with fewer hosts than shards deals each host over several shards whose per-host limits
add up to the host's (see :func:`plan_shards`). Each task runs the same polite downloader (SSRF guard included)
and the same :func:`emo8.ingest.run.check_and_store` as the local path, writing objects to the content-addressed store;
only compact :class:`~emo8.core.catalog.ItemOutcome` rows travel back. The driver keeps at most one task per shard
in flight (back-pressure: ``ray.wait`` on a bounded window) and commits through the local path's sink, so the
catalog has one writer. A task whose worker dies is run again by Ray (content-addressed writes are
idempotent); a killed driver leaves the unfinished items ``pending`` for the next run.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import ray
from yarl import URL

from emo8.core.executor import ExecutorConfig
from emo8.core.imaging import ValidationConfig
from emo8.core.workspace import ObjectStore
from emo8.ingest.download import DownloadConfig, FetchRequest, fetch_stream
from emo8.ingest.run import check_and_store, outcome_for, outcome_for_fetch_failure

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import numpy as np
    import pandas as pd

    from emo8.core.catalog import ItemOutcome
    from emo8.core.workspace import Workspace
    from emo8.embed.encoders import Encoder
    from emo8.embed.run import EmbedConfig
    from emo8.ingest.run import IngestOptions, OutcomeSink
    from emo8.label.people import DetectConfig, Detector, RowResult

#: One row of work: (item_id, url or None, local path or None).
Row = tuple[str, str | None, str | None]


class ray_session:
    """Connect to the cluster ``config`` names (or start a local instance); shut down only what it started."""

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        self.started = False

    def __enter__(self) -> None:
        if ray.is_initialized():
            return
        local = self.config.ray_address is None
        ray.init(
            address=self.config.ray_address or "local",  # "local": a new instance, even beside a running one
            num_cpus=(self.config.num_cpus or os.cpu_count() or 1) if local else None,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        self.started = True

    def __exit__(self, *exc: object) -> None:
        if self.started:
            ray.shutdown()


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
            checks.append(loop.run_in_executor(decoder, check, *args))
        await asyncio.gather(*checks)
    return done


class DetectActor:
    """One detector per Ray actor (OpenCV detectors are not shared between threads)."""

    def __init__(self, config: DetectConfig, store: ObjectStore) -> None:
        from emo8.label.people import create_detector

        self.detector, self.config, self.store = create_detector(config), config, store

    def detect(self, rows: list[Any]) -> list[RowResult]:
        from emo8.label.people import detect_row

        return [detect_row(self.detector, self.store, self.config.max_side, row) for row in rows]


class RayExecutor:
    """Runs ingest's fetch-validate-store step as Ray tasks, one shard of hosts per task at a time."""

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config

    def ingest_pending(
        self, ws: Workspace, pending: pd.DataFrame, options: IngestOptions, sink: OutcomeSink
    ) -> None:
        with ray_session(self.config):
            shards = self.config.shards or max(1, int(ray.cluster_resources().get("CPU", 1)))
            plan = plan_shards(pending, shards, self.config.chunk_size, options.download)
            task = ray.remote(ingest_chunk).options(
                num_cpus=1,
                max_retries=self.config.task_retries,
                retry_exceptions=False,
                name="emo8_ingest_chunk",
            )
            validation, store = ray.put(options.validation), ws.objects
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
                    for outcome, new_bytes in ray.get(ref):
                        sink.add(outcome, new_bytes)
                    submit(shard)

    def embed_batches(
        self, encoder: Encoder, paths: Sequence[str], config: EmbedConfig
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        from emo8.distributed.ray_embed import embed_batches

        with ray_session(self.config):
            yield from embed_batches(encoder, paths, config)

    def detect_batches(
        self, store: ObjectStore, config: DetectConfig, chunks: Sequence[Sequence[Any]], detector: Detector
    ) -> Iterator[list[RowResult]]:
        """Chunks go to a pool of actors, each with its own detector (created from ``config``), in order."""
        from ray.util import ActorPool

        with ray_session(self.config):
            gpus = int(ray.cluster_resources().get("GPU", 0))
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            uses_gpu = (
                gpus > 0 and config.device in ("auto", "cuda") and config.backend.startswith("torchvision")
            )
            actor = ray.remote(num_cpus=0 if uses_gpu else 1, num_gpus=1 if uses_gpu else 0, max_restarts=2)(
                DetectActor
            )
            local_config = replace(config, workers=1, progress=False, executor=ExecutorConfig())
            actors = [actor.remote(local_config, store) for _ in range(gpus if uses_gpu else cpus)]
            work = [list(chunk) for chunk in chunks]
            yield from ActorPool(actors).map(lambda a, chunk: a.detect.remote(chunk), work)  # type: ignore[arg-type]


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
