"""Embeddings on Ray: Ray Data ``map_batches`` over an actor pool, one encoder per actor.

Registered as the ``ray`` implementation of :data:`emo8.embed.run.EMBED_EXECUTORS`; imported only when chosen.

The driver cuts the paths into the same batches as the local path (``batch_size`` consecutive items, the last
one shorter) and sends one batch per row, so every actor encodes exactly the batches the local executor would:
on CPU (with the driver's intra-op thread count, which CPU kernels' summation order depends on) the numbers
are identical bit for bit. Each actor loads the encoder from its spec (``num_gpus=1`` per
actor when the cluster has GPUs) and reads, decodes and preprocesses its batch with
:func:`emo8.embed.run.encode_sources`; results stream back in order (``preserve_order``), at most a bounded number
of batches ahead, and the driver writes the shards, their checksums and the id map exactly as the local path does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import ray
import torch

from emo8.core.executor import ray_session, require_shared_store
from emo8.core.workspace import read_location
from emo8.embed.encoders import Encoder, EncoderSpec, load_encoder
from emo8.embed.run import EmbedConfig, encode_sources


class EncodeBatches:
    """A Ray Data actor: loads one encoder, encodes whole batches of image paths."""

    def __init__(self, spec: EncoderSpec, preprocess: str, threads: int) -> None:
        torch.set_num_threads(threads)  # CPU kernels reduce in an order that depends on the thread count
        self.encoder = load_encoder(spec)
        self.preprocess = preprocess

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        oks, feats = [], []
        for paths in rows["paths"]:
            batch = [str(p) for p in paths]
            ok, out = encode_sources(
                self.encoder,
                batch,
                read_location,
                batch_size=len(batch),
                workers=0,
                preprocess=self.preprocess,
            )
            oks.append(ok)
            feats.append(out)
        return {"first": rows["first"], "ok": oks, "feats": feats}


def embed_batches(
    encoder: Encoder, paths: Sequence[str], config: EmbedConfig
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(indices, ok, embeddings)`` per batch, in order, computed by a pool of Ray actors."""
    if not paths:
        return
    require_shared_store(not paths[0].startswith("memory://"), paths[0].rsplit("/", 2)[0])
    with ray_session(config.executor):
        yield from _embed_batches(paths, config)


def _embed_batches(
    paths: Sequence[str], config: EmbedConfig
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    resources = ray_session.resources()
    gpus = int(resources.get("GPU", 0))
    spec = config.spec()
    if gpus == 0 and spec.device not in ("auto", "cpu"):
        raise ValueError(f"device {spec.device!r} asked for, but the Ray cluster has no GPU")
    actors = gpus or max(1, int(resources.get("CPU", 1)) - 1)
    step = config.batch_size
    rows = [{"first": i, "paths": list(paths[i : i + step])} for i in range(0, len(paths), step)]
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), 4 * actors)).map_batches(
        EncodeBatches,
        fn_constructor_args=(spec, config.preprocess, torch.get_num_threads()),
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else 1,
    )
    for out in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
        first = int(out["first"][0])
        ok = np.asarray(out["ok"][0], dtype=bool)
        feats = np.asarray(out["feats"][0], dtype=np.float32)
        yield np.arange(first, first + len(ok)), ok, feats
