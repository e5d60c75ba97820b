"""Image embeddings per model key: computed in batches, stored as checksummed shards, loaded memory-mapped.

Layout of one model key's store (``<workspace>/embeddings/<safe key>/``, see :func:`emo8.embed.encoders.safe_key`)::

    manifest.json              key, dim, dtype, the encoder's fingerprint, the preprocessing, one entry per shard
    shard-000000.npy           (rows, dim) float16 or float32, L2-normalised rows
    shard-000000.ids.parquet   one column ``item_id``: row i of the .npy is that item

A shard is written to ``tmp/`` with fsync and renamed into place, and only the manifest (replaced atomically the
same way) makes it part of the store: a process killed at any moment leaves the previous manifest, and the next
run removes the orphan files and recomputes what they held. The manifest records the sha256 of both files of every
shard: :func:`load_embeddings` refuses a shard whose bytes changed (:class:`EmbeddingStoreError`), and
:func:`embed` quarantines such a shard (renamed ``*.corrupt``) and recomputes its items. After a run the shards
are compacted into one, so that :func:`load_embeddings` returns one ``np.memmap``.

The manifest records the preprocessing (:data:`emo8.embed.encoders.PREPROCESSING`; by default ``letterbox``: the whole
image, padded to a square). Embeddings computed with another preprocessing (stores written before it was recorded
used the model's centre crop) are not comparable: :func:`embed` with a different preprocessing recomputes the
store from scratch.

:func:`embed` is incremental: it embeds only the items (``valid``, ``duplicate`` or ``contaminated``, i.e. every
item whose bytes passed validation) that the store lacks. Items are processed in catalog order in batches that a
shard never splits, so a resumed run computes exactly the same batches, hence exactly the same numbers, as an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset

from emo8.core.catalog import utc_now
from emo8.core.executor import ExecutorConfig, StageExecutors
from emo8.core.imaging import load_rgb
from emo8.core.workspace import Workspace, read_location
from emo8.embed.base import EmbeddingStoreError
from emo8.embed.encoders import (
    DEFAULT_MODEL,
    DEFAULT_PREPROCESS,
    Encoder,
    EncoderSpec,
    load_encoder,
    safe_key,
)

#: Item statuses whose bytes passed validation, hence get an embedding.
EMBEDDABLE_STATUSES = ("valid", "duplicate", "contaminated")
MANIFEST = "manifest.json"
#: The preprocessing of stores whose manifest does not record one (the model's own centre-crop transform).
LEGACY_PREPROCESS = "center-crop"
STORE_FORMAT = 1
_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class EmbedConfig:
    """How :func:`embed` runs.

    Parameters
    ----------
    model
        Model key (see :mod:`emo8.embed.encoders`).
    weights, random_init, device
        Passed to :class:`~emo8.embed.encoders.EncoderSpec`.
    batch_size
        Images per forward pass.
    workers
        DataLoader worker processes that read and decode images (0 = in the main process).
    shard_size
        Rows per shard, rounded up to a multiple of ``batch_size``: the unit of resumption.
    dtype
        ``"float16"`` (half the disk and memory, cosine error ~1e-3) or ``"float32"``.
    compact
        Merge the shards into one at the end of a run (so loading is one memory map).
    preprocess
        Image preprocessing (:data:`emo8.embed.encoders.PREPROCESSING`), recorded in the store; a store computed with
        another one is recomputed.
    progress
        Show a progress bar.
    """

    model: str = DEFAULT_MODEL
    weights: str | None = None
    random_init: bool = False
    device: str = "auto"
    batch_size: int = 64
    workers: int = max(0, min(4, (os.cpu_count() or 1) - 1))
    shard_size: int = 8192
    dtype: str = "float16"
    compact: bool = True
    preprocess: str = DEFAULT_PREPROCESS
    progress: bool = True
    #: where the batches are encoded (:mod:`emo8.core.executor`); the store is always written here, in batch order
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def spec(self) -> EncoderSpec:
        return EncoderSpec(self.model, self.weights, self.random_init, self.device)


@dataclass
class EmbedSummary:
    """What one :func:`embed` run did."""

    key: str
    directory: str
    device: str
    dim: int
    new: int = 0
    total: int = 0
    failed: list[str] = field(default_factory=list)
    repaired_shards: list[str] = field(default_factory=list)
    seconds: float = 0.0
    preprocess: str = DEFAULT_PREPROCESS
    reset: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "directory": self.directory,
            "device": self.device,
            "dim": self.dim,
            "new": self.new,
            "total": self.total,
            "failed": self.failed,
            "repaired_shards": self.repaired_shards,
            "preprocess": self.preprocess,
            "reset": self.reset,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.new / self.seconds, 1) if self.seconds and self.new else None,
        }


# -- the store ------------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _atomic_replace(tmp: Path, path: Path) -> None:
    """fsync ``tmp`` (a file in the workspace's tmp/), make it world-readable like other outputs, rename it."""
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class EmbeddingStore:
    """The shards of one model key (see the module docstring); create with :meth:`for_key`."""

    def __init__(self, root: Path, tmp_dir: Path, key: str) -> None:
        self.root = root
        self.tmp_dir = tmp_dir
        self.key = key
        self._manifest: dict[str, Any] | None = None

    @classmethod
    def for_key(cls, ws: Workspace, key: str) -> EmbeddingStore:
        return cls(ws.embeddings_dir / safe_key(key), ws.tmp_dir, key)

    # -- manifest

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            if not self.exists():
                raise EmbeddingStoreError(
                    f"no embeddings for {self.key!r} in {self.root.parent}; run `emo8 embed --model {self.key}`"
                )
            try:
                self._manifest = json.loads(self.manifest_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise EmbeddingStoreError(f"cannot read {self.manifest_path}: {exc}") from exc
        return self._manifest

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["updated_at"] = utc_now()
        tmp = self._tmp_path()
        tmp.write_text(json.dumps(manifest, indent=2))
        _atomic_replace(tmp, self.manifest_path)
        self._manifest = manifest

    def _tmp_path(self) -> Path:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=".emb-")
        os.close(fd)
        return Path(name)

    @property
    def preprocess(self) -> str:
        """The preprocessing the stored rows were computed with."""
        return str(self.manifest.get("preprocess", LEGACY_PREPROCESS))

    def open(
        self, encoder: Encoder, dtype: str, info: dict[str, Any], preprocess: str = DEFAULT_PREPROCESS
    ) -> str | None:
        """Create the store for ``encoder`` or check that the existing one was computed by the same weights.

        A store computed with another ``preprocess`` is emptied (its shards deleted) so that every item is
        embedded again; the return value says so (None when nothing was reset).
        """
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}")
        reset = None
        if self.exists():
            m = self.manifest
            if m.get("fingerprint") != encoder.fingerprint or m.get("dim") != encoder.dim:
                raise EmbeddingStoreError(
                    f"embeddings for {self.key!r} in {self.root} were computed with other weights "
                    f"({m.get('fingerprint')}, dim {m.get('dim')}) than these ({encoder.fingerprint}, "
                    f"dim {encoder.dim}); use the same weights, or delete that directory to start over"
                )
            if self.preprocess == preprocess:
                return None
            reset = f"preprocessing changed from {self.preprocess} to {preprocess}: every item is re-embedded"
            for path in self.root.glob("shard-*"):
                path.unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self._save_manifest(
            {
                "format": STORE_FORMAT,
                "key": self.key,
                "dim": encoder.dim,
                "dtype": dtype,
                "fingerprint": encoder.fingerprint,
                "encoder": info,
                "preprocess": preprocess,
                "created_at": utc_now(),
                "next_shard": 0,
                "shards": [],
            }
        )
        return reset

    # -- shards

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self.manifest["shards"])

    def _files(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.npy", self.root / f"{name}.ids.parquet"

    def remove_orphans(self) -> list[str]:
        """Delete shard files the manifest does not list (left by a killed run); return their names."""
        listed = {p.name for s in self.shards for p in self._files(s["name"])}
        removed = []
        for path in self.root.glob("shard-*"):
            if path.name not in listed and not path.name.endswith(".corrupt"):
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    def verify(self) -> list[str]:
        """Return the names of shards whose files are missing or whose checksums do not match the manifest."""
        bad = []
        for shard in self.shards:
            npy, ids = self._files(shard["name"])
            if (
                not (npy.is_file() and ids.is_file())
                or _sha256_file(npy) != shard["npy_sha256"]
                or _sha256_file(ids) != shard["ids_sha256"]
            ):
                bad.append(shard["name"])
        return bad

    def quarantine(self, names: Sequence[str]) -> None:
        """Drop shards from the manifest and rename their files ``*.corrupt`` (kept for inspection)."""
        if not names:
            return
        manifest = dict(self.manifest)
        manifest["shards"] = [s for s in self.shards if s["name"] not in set(names)]
        self._save_manifest(manifest)
        for name in names:
            for path in self._files(name):
                if path.exists():
                    os.replace(path, path.with_name(path.name + ".corrupt"))

    def item_ids(self, verify: bool = True) -> list[str]:
        """Return the item ids of all committed rows, in row order (checksums checked when ``verify``)."""
        out: list[str] = []
        for shard in self.shards:
            out.extend(self._read_ids(shard, verify))
        return out

    def _read_ids(self, shard: dict[str, Any], verify: bool) -> list[str]:
        _, ids = self._files(shard["name"])
        self._check(ids, shard["ids_sha256"] if verify else None, shard["name"])
        values: list[str] = pq.read_table(ids).column("item_id").to_pylist()
        if len(values) != shard["rows"]:
            raise self._corrupt(shard["name"], "row count differs from the manifest")
        return values

    def _check(self, path: Path, sha256: str | None, name: str) -> None:
        if not path.is_file():
            raise self._corrupt(name, f"{path.name} is missing")
        if sha256 is not None and _sha256_file(path) != sha256:
            raise self._corrupt(name, f"checksum of {path.name} does not match the manifest")

    def _corrupt(self, name: str, why: str) -> EmbeddingStoreError:
        return EmbeddingStoreError(
            f"embedding shard {name} of {self.key!r} is corrupted ({why}); it is not used. "
            f"Run `emo8 embed --model {self.key}` to recompute it"
        )

    def add_shard(self, item_ids: Sequence[str], matrix: np.ndarray) -> str:
        """Write one shard atomically and commit it to the manifest; return its name."""
        if len(item_ids) != len(matrix):
            raise ValueError("one id per row")
        manifest = dict(self.manifest)
        name = f"shard-{manifest['next_shard']:06d}"
        npy, ids = self._files(name)
        data = np.ascontiguousarray(matrix, dtype=manifest["dtype"])
        tmp = self._tmp_path()
        with open(tmp, "wb") as handle:
            np.save(handle, data)
        npy_sha = _sha256_file(tmp)
        _atomic_replace(tmp, npy)
        tmp = self._tmp_path()
        pq.write_table(pa.table({"item_id": pa.array(list(item_ids), pa.string())}), tmp)
        ids_sha = _sha256_file(tmp)
        _atomic_replace(tmp, ids)
        entry = {"name": name, "rows": len(item_ids), "npy_sha256": npy_sha, "ids_sha256": ids_sha}
        manifest["shards"] = [*self.shards, entry]
        manifest["next_shard"] = manifest["next_shard"] + 1
        self._save_manifest(manifest)
        return name

    def compact(self, verify: bool = True) -> None:
        """Merge all shards into one (streamed through a memory map; old files removed after the commit)."""
        shards = self.shards
        if len(shards) <= 1:
            return
        dim, dtype = self.manifest["dim"], self.manifest["dtype"]
        ids: list[str] = []
        for shard in shards:
            ids.extend(self._read_ids(shard, verify))
        tmp = self._tmp_path()
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(ids), dim))
        row = 0
        for shard in shards:
            npy, _ = self._files(shard["name"])
            self._check(npy, shard["npy_sha256"] if verify else None, shard["name"])
            part = np.load(npy, mmap_mode="r")
            out[row : row + len(part)] = part
            row += len(part)
        out.flush()
        del out
        manifest = dict(self.manifest)
        name = f"shard-{manifest['next_shard']:06d}"
        npy, ids_path = self._files(name)
        npy_sha = _sha256_file(tmp)
        _atomic_replace(tmp, npy)
        tmp = self._tmp_path()
        pq.write_table(pa.table({"item_id": pa.array(ids, pa.string())}), tmp)
        ids_sha = _sha256_file(tmp)
        _atomic_replace(tmp, ids_path)
        manifest["shards"] = [{"name": name, "rows": len(ids), "npy_sha256": npy_sha, "ids_sha256": ids_sha}]
        manifest["next_shard"] += 1
        self._save_manifest(manifest)
        self.remove_orphans()

    def load(self, verify: bool = True) -> tuple[list[str], np.ndarray]:
        """Return ``(item_ids, matrix)``; see :func:`load_embeddings`."""
        shards = self.shards
        dim, dtype = self.manifest["dim"], self.manifest["dtype"]
        ids: list[str] = []
        parts: list[np.ndarray] = []
        for shard in shards:
            ids.extend(self._read_ids(shard, verify))
            npy, _ = self._files(shard["name"])
            self._check(npy, shard["npy_sha256"] if verify else None, shard["name"])
            try:
                part = np.load(npy, mmap_mode="r")
            except ValueError as exc:
                raise self._corrupt(shard["name"], str(exc)) from exc
            if part.shape != (shard["rows"], dim) or part.dtype != np.dtype(dtype):
                raise self._corrupt(shard["name"], f"shape {part.shape} {part.dtype}")
            parts.append(part)
        if not parts:
            return [], np.zeros((0, dim), dtype=dtype)
        matrix = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return ids, matrix


def load_embeddings(ws: Workspace, key: str, verify: bool = True) -> tuple[list[str], np.ndarray]:
    """Return the embeddings stored for model ``key``: ``(item_ids, matrix)``.

    Parameters
    ----------
    ws
        The workspace.
    key
        Model key, as given to :func:`embed`.
    verify
        Check every shard's sha256 against the manifest first (reads the files once; on by default).

    Returns
    -------
    ``item_ids[i]`` is the item of ``matrix[i]``; ``matrix`` is ``(n, dim)`` float16/float32 with L2-normalised
    rows, a read-only ``np.memmap`` when the store is compact (after every completed :func:`embed`), an
    in-memory array otherwise.

    Raises
    ------
    EmbeddingStoreError
        No embeddings for ``key``, or a shard is corrupted (it is never used silently).
    """
    return EmbeddingStore.for_key(ws, key).load(verify)


def stored_models(ws: Workspace) -> list[str]:
    """Return the model keys that have an embedding store in ``ws``."""
    keys = []
    for manifest in sorted(ws.embeddings_dir.glob(f"*/{MANIFEST}")):
        try:
            keys.append(json.loads(manifest.read_text())["key"])
        except (OSError, json.JSONDecodeError, KeyError):
            continue
    return keys


def store_preprocess(ws: Workspace, key: str) -> str:
    """The preprocessing the store of ``key`` was computed with (to embed more images the same way)."""
    return EmbeddingStore.for_key(ws, key).preprocess


def store_spec(ws: Workspace, key: str, device: str = "auto") -> EncoderSpec:
    """Return the :class:`EncoderSpec` that produced the store of ``key`` (to embed more images the same way)."""
    info = EmbeddingStore.for_key(ws, key).manifest.get("encoder", {})
    return EncoderSpec(
        key, info.get("weights"), bool(info.get("random_init")), device, int(info.get("seed", 0))
    )


# -- computing embeddings -----------------------------------------------------------------------------------


class _ImageDataset(Dataset[tuple[int, torch.Tensor, bool]]):
    """Index -> ``(index, preprocessed image, ok)``; unreadable images give ``ok=False`` and zeros."""

    def __init__(
        self,
        sources: Sequence[Any],
        read: Callable[[Any], bytes | str | os.PathLike[str]],
        preprocess: Callable[[Image.Image], torch.Tensor],
        max_side: int,
    ) -> None:
        self.sources = sources
        self.read = read
        self.preprocess = preprocess
        self.max_side = max_side
        self.blank = preprocess(Image.new("RGB", (max_side, max_side)))

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, bool]:
        try:
            image = load_rgb(self.read(self.sources[index]), max_side=self.max_side)
            return index, self.preprocess(image), True
        except Exception:  # unreadable bytes: reported by the caller, never fatal
            return index, torch.zeros_like(self.blank), False


def iter_embeddings(
    encoder: Encoder,
    sources: Sequence[Any],
    read: Callable[[Any], bytes | str | os.PathLike[str]] = lambda s: s,
    batch_size: int = 64,
    workers: int = 0,
    preprocess: str = DEFAULT_PREPROCESS,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(indices, ok, embeddings)`` per batch for ``sources`` (paths, or anything ``read`` turns into
    bytes or a path), decoded by ``workers`` DataLoader processes and transformed by ``preprocess``
    (:data:`emo8.embed.encoders.PREPROCESSING`); embeddings are float32, L2-normalised, and rows with ``ok == False``
    (unreadable images) are zeros.
    """
    dataset = _ImageDataset(sources, read, encoder.preprocessor(preprocess), max_side=1024)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=encoder.device.type == "cuda",
        persistent_workers=False,
    )
    for index, pixels, ok in loader:
        feats = encoder.encode_images(pixels).numpy()
        ok_np = ok.numpy().astype(bool)
        feats[~ok_np] = 0.0
        yield index.numpy(), ok_np, feats


def encode_sources(
    encoder: Encoder,
    sources: Sequence[Any],
    read: Callable[[Any], bytes | str | os.PathLike[str]] = lambda s: s,
    batch_size: int = 64,
    workers: int = 0,
    preprocess: str = DEFAULT_PREPROCESS,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ok, embeddings)`` for all ``sources`` at once (for small sets; see :func:`iter_embeddings`)."""
    out = np.zeros((len(sources), encoder.dim), dtype=np.float32)
    ok_all = np.zeros(len(sources), dtype=bool)
    for index, ok, feats in iter_embeddings(encoder, sources, read, batch_size, workers, preprocess):
        out[index] = feats
        ok_all[index] = ok
    return ok_all, out


def embed_batches_local(
    encoder: Encoder, paths: Sequence[str], config: EmbedConfig
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The ``local`` executor: :func:`iter_embeddings` over ``paths`` (object locations, read with
    :func:`~emo8.core.workspace.read_location`) with ``config``'s batches and workers."""
    return iter_embeddings(encoder, paths, read_location, batch_size=config.batch_size, workers=config.workers,
                           preprocess=config.preprocess)  # fmt: skip


#: How an executor encodes: ``(encoder, paths, config) -> (indices, ok, embeddings)`` for consecutive batches of
#: ``config.batch_size`` paths, in order; the same batches give the same numbers on any executor.
BatchEncoder = Callable[
    [Encoder, Sequence[str], EmbedConfig], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]
]
#: Embedding's implementation per executor kind (see :mod:`emo8.core.executor`); Ray's in :mod:`emo8.embed.ray`.
EMBED_EXECUTORS: StageExecutors[BatchEncoder] = StageExecutors("embed")
EMBED_EXECUTORS.register("local", embed_batches_local)
EMBED_EXECUTORS.register("ray", "emo8.embed.ray:embed_batches")


def embed(ws: Workspace, config: EmbedConfig | None = None, encoder: Encoder | None = None) -> EmbedSummary:
    """Embed every item of ``ws`` that passed validation and has no embedding for ``config.model`` yet.

    Parameters
    ----------
    ws
        The workspace.
    config
        Model key, weights, batching and device (see :class:`EmbedConfig`).
    encoder
        An already loaded encoder for ``config.model`` (saves loading it twice); loaded from ``config`` if None.

    Returns
    -------
    An :class:`EmbedSummary`. Items whose bytes cannot be read are listed in ``failed`` and retried next run.

    Raises
    ------
    emo8.embed.encoders.WeightsError
        The model's weights are missing (never replaced by random ones unless ``random_init``).
    EmbeddingStoreError
        The store for this key was computed with other weights.
    """
    config = config or EmbedConfig()
    started = time.perf_counter()
    encoder = encoder or load_encoder(config.spec())
    store = EmbeddingStore.for_key(ws, config.model)
    info = {"weights": config.weights, "random_init": config.random_init, "seed": 0}
    encoder.preprocessor(config.preprocess)  # an unknown name fails before the store is touched
    reset = store.open(encoder, config.dtype, info, config.preprocess)
    summary = EmbedSummary(config.model, str(store.root), str(encoder.device), encoder.dim)
    summary.preprocess, summary.reset = config.preprocess, reset
    store.remove_orphans()
    summary.repaired_shards = store.verify()
    store.quarantine(summary.repaired_shards)
    done = set(store.item_ids(verify=False))  # just verified
    marks = ", ".join(f"'{s}'" for s in EMBEDDABLE_STATUSES)
    items = ws.items(["item_id", "sha256", "format"], where=f"status IN ({marks}) AND sha256 IS NOT NULL")
    todo = items[~items.item_id.isin(done)].reset_index(drop=True)
    # files, or URLs of an object store elsewhere: every executor reads them with read_location
    paths = [ws.objects.location(s, f) for s, f in zip(todo.sha256, todo.format, strict=True)]
    shard_rows = max(1, math.ceil(config.shard_size / config.batch_size)) * config.batch_size
    ids_buf: list[str] = []
    vec_buf: list[np.ndarray] = []
    pending = 0

    def commit() -> None:
        nonlocal pending
        if ids_buf:
            store.add_shard(list(ids_buf), np.concatenate(vec_buf))
            summary.new += len(ids_buf)
        ids_buf.clear()
        vec_buf.clear()
        pending = 0

    with _progress(config.progress, len(todo), config.model) as progress:
        for index, ok, feats in EMBED_EXECUTORS.get(config.executor)(encoder, paths, config):
            ids_buf.extend(todo.item_id.iloc[index[ok]].tolist())
            vec_buf.append(feats[ok])
            summary.failed.extend(todo.item_id.iloc[index[~ok]].tolist())
            pending += len(index)
            progress.advance(progress.task_ids[0], len(index))
            if pending >= shard_rows:
                commit()
        commit()
    if config.compact:
        store.compact(verify=False)
    summary.total = sum(s["rows"] for s in store.shards)
    summary.seconds = time.perf_counter() - started
    return summary


def _progress(enabled: bool, total: int, key: str) -> Progress:
    progress = Progress(
        TextColumn(f"[bold]embed {key}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
    progress.add_task("embed", total=total)
    return progress
