"""Where the parallel stages run: a registry of executors, chosen by :class:`ExecutorConfig`.

``local`` (the default) runs the stages as they always ran: a process pool and one asyncio downloader on this
machine. ``ray`` runs them on a Ray cluster (``pip install emo8[ray]``): a fresh local Ray instance with this
machine's CPUs when ``ray_address`` is ``None``, or a running cluster (``"auto"`` or ``"ray://host:10001"`` /
a GCS address). The catalog is always written by the driver alone; see :mod:`emo8.distributed.ray_ingest`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import numpy as np
    import pandas as pd

    from emo8.core.workspace import ObjectStore, Workspace
    from emo8.embed.encoders import Encoder
    from emo8.embed.run import EmbedConfig
    from emo8.ingest.run import IngestOptions, OutcomeSink
    from emo8.label.people import DetectConfig, Detector, RowResult

__all__ = ["EXECUTORS", "Executor", "ExecutorConfig", "ExecutorError", "get_executor", "register_executor"]


class ExecutorError(RuntimeError):
    """An executor cannot run (unknown kind, Ray not installed, cluster unreachable)."""


@dataclass(frozen=True)
class ExecutorConfig:
    """Which executor runs the parallel stages, and its Ray settings.

    ``num_cpus`` sizes a local Ray instance (``None``: every CPU); ``shards`` is how many host shards ingest
    is split into (``None``: the cluster's CPUs); ``chunk_size`` items go to one Ray task; ``task_retries``
    is how often a task whose worker died is run again. ``chunk_size`` defaults to ``EMO8_RAY_CHUNK_SIZE``
    (256 when unset): smaller chunks commit sooner, larger ones fetch each host's robots.txt less often.
    """

    kind: str = "local"
    ray_address: str | None = None
    num_cpus: int | None = None
    shards: int | None = None
    chunk_size: int = field(default_factory=lambda: int(os.environ.get("EMO8_RAY_CHUNK_SIZE", "256")))
    task_retries: int = 3


class Executor(Protocol):
    """What an executor offers the stages."""

    def ingest_pending(
        self, ws: Workspace, pending: pd.DataFrame, options: IngestOptions, sink: OutcomeSink
    ) -> None:
        """Fetch, validate and store the ``pending`` catalog rows; hand every outcome to ``sink``."""

    def embed_batches(
        self, encoder: Encoder, paths: Sequence[str], config: EmbedConfig
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(indices, ok, embeddings)`` for consecutive batches of ``config.batch_size`` paths, in order
        (see :func:`emo8.embed.run.iter_embeddings`); the same batches give the same numbers on any executor."""

    def detect_batches(
        self, store: ObjectStore, config: DetectConfig, chunks: Sequence[Sequence[Any]], detector: Detector
    ) -> Iterator[list[RowResult]]:
        """Detect people in each chunk of ``(item_id, sha256, format, width, height)`` rows; one list per chunk,
        in order (see :func:`emo8.label.people.detect_row`); ``detector`` is used where it was created (local)."""


EXECUTORS: dict[str, Callable[[ExecutorConfig], Executor]] = {}


def register_executor(
    kind: str,
) -> Callable[[Callable[[ExecutorConfig], Executor]], Callable[[ExecutorConfig], Executor]]:
    """Register an executor factory under ``kind`` (decorator)."""

    def add(factory: Callable[[ExecutorConfig], Executor]) -> Callable[[ExecutorConfig], Executor]:
        EXECUTORS[kind] = factory
        return factory

    return add


@register_executor("local")
class LocalExecutor:
    """This machine: a fork process pool for decoding, one asyncio event loop for downloads."""

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config

    def ingest_pending(
        self, ws: Workspace, pending: pd.DataFrame, options: IngestOptions, sink: OutcomeSink
    ) -> None:
        from emo8.ingest.run import run_local_pending

        run_local_pending(ws, pending, options, sink)

    def embed_batches(
        self, encoder: Encoder, paths: Sequence[str], config: EmbedConfig
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        from emo8.embed.run import iter_embeddings

        return iter_embeddings(encoder, paths, batch_size=config.batch_size, workers=config.workers,
                               preprocess=config.preprocess)  # fmt: skip

    def detect_batches(
        self, store: ObjectStore, config: DetectConfig, chunks: Sequence[Sequence[Any]], detector: Detector
    ) -> Iterator[list[RowResult]]:
        from emo8.label.people import detect_batches_local

        return detect_batches_local(store, config, chunks, detector)


@register_executor("ray")
def _ray_executor(config: ExecutorConfig) -> Executor:
    try:
        from emo8.distributed.ray_ingest import RayExecutor
    except ImportError as exc:  # ray itself missing
        raise ExecutorError(
            f"The ray executor needs Ray ({exc}). Install it with `pip install 'emo8[ray]'`, "
            "or run with --executor local."
        ) from exc
    return RayExecutor(config)


def get_executor(config: ExecutorConfig) -> Executor:
    """The executor ``config.kind`` names; :class:`ExecutorError` for an unknown kind."""
    factory = EXECUTORS.get(config.kind)
    if factory is None:
        raise ExecutorError(
            f"Unknown executor {config.kind!r}: choose one of {', '.join(sorted(EXECUTORS))}."
        )
    return factory(config)
