"""Person detection on Ray: chunks of stored images go to a pool of actors, one detector per actor.

Registered as the ``ray`` implementation of :data:`emo8.label.people.DETECT_EXECUTORS`; imported only when chosen.
Each actor creates its own detector from the config (OpenCV detectors are not shared between threads; GPU
detectors get one GPU per actor when the cluster has GPUs) and reads the images from the object store itself;
results come back in chunk order and the driver writes them to the catalog.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import ray
from ray.util import ActorPool

from emo8.core.executor import ExecutorConfig, ray_session, require_shared_store
from emo8.core.workspace import ObjectStore
from emo8.label.people import DetectConfig, Detector, RowResult, create_detector, detect_row


class DetectActor:
    """One detector per Ray actor."""

    def __init__(self, config: DetectConfig, store: ObjectStore) -> None:
        self.detector, self.config, self.store = create_detector(config), config, store

    def detect(self, rows: list[Any]) -> list[RowResult]:
        return [detect_row(self.detector, self.store, self.config.max_side, row) for row in rows]


def detect_batches(
    store: ObjectStore, config: DetectConfig, chunks: Sequence[Sequence[Any]], detector: Detector
) -> Iterator[list[RowResult]]:
    """The ``ray`` executor: one result list per chunk, in order; ``detector`` (the driver's) is not used."""
    require_shared_store(store.shared, store.url)
    with ray_session(config.executor):
        resources = ray_session.resources()
        gpus = int(resources.get("GPU", 0))
        cpus = max(1, int(resources.get("CPU", 1)))
        uses_gpu = gpus > 0 and config.device in ("auto", "cuda") and config.backend.startswith("torchvision")
        actor = ray.remote(num_cpus=0 if uses_gpu else 1, num_gpus=1 if uses_gpu else 0, max_restarts=2)(
            DetectActor
        )
        local_config = replace(config, workers=1, progress=False, executor=ExecutorConfig())
        actors = [actor.remote(local_config, store) for _ in range(gpus if uses_gpu else cpus)]
        work = [list(chunk) for chunk in chunks]
        yield from ActorPool(actors).map(lambda a, chunk: a.detect.remote(chunk), work)  # type: ignore[arg-type]
