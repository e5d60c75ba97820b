"""The ``embed`` stage: its settings (declared once, for the CLI and pipelines) and how its result reads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rich.markup import escape

from emo8.core.executor import ExecutorConfig, ExecutorError
from emo8.core.stage import (
    DEFAULT_WORKERS,
    PANEL_CURATE,
    WORKERS_HELP,
    Stage,
    StageSettings,
    Summary,
    device_setting,
    executor_setting,
    ray_address_setting,
    register_stage,
    setting,
)
from emo8.core.workspace import Workspace
from emo8.embed.base import DEFAULT_MODEL, EmbeddingStoreError, EncoderKeyError, ModelKey, WeightsError

if TYPE_CHECKING:
    from emo8.embed.run import EmbedSummary

__all__ = ["EMBED", "EmbedSettings", "ModelKey", "run_embed", "summarize_embed"]


class EmbedSettings(StageSettings):
    """Settings of ``emo8 embed`` / a pipeline's ``embed`` step."""

    model: ModelKey = setting(
        DEFAULT_MODEL, "Model key: efficientnet-lite0, open_clip:ARCH\\[/TAG], timm:ARCH."
    )
    weights: Path | None = setting(None, "Local checkpoint (open_clip:ARCH, timm:ARCH).")
    random_init: bool = setting(
        False, "Random weights (smoke tests only; never a fallback).", flag="--random-init"
    )
    batch_size: int = setting(64, "Images per forward pass.", ge=1, fingerprint=False)
    device: str = device_setting()
    workers: int = setting(
        DEFAULT_WORKERS, WORKERS_HELP, ge=0, fingerprint=False
    )  # 0: decode in this process
    dtype: Literal["float16", "float32"] = setting("float16", "Stored precision: float16 or float32.")
    executor: str = executor_setting()
    ray_address: str | None = ray_address_setting()


def run_embed(ws: Workspace, settings: EmbedSettings, progress: bool) -> EmbedSummary:
    """Run :func:`emo8.embed.run.embed` with ``settings``."""
    from emo8.embed.run import EmbedConfig, embed  # torch: loaded when the stage runs, not with the CLI

    config = EmbedConfig(
        model=settings.model, weights=str(settings.weights) if settings.weights else None,
        random_init=settings.random_init, device=settings.device, batch_size=settings.batch_size,
        workers=settings.workers, dtype=settings.dtype, progress=progress,
        executor=ExecutorConfig(settings.executor, settings.ray_address),
    )  # fmt: skip
    return embed(ws, config)


def summarize_embed(summary: EmbedSummary, settings: EmbedSettings) -> Summary:
    """New and stored embeddings, their size and speed; unreadable items and repaired shards."""
    info = summary.as_dict()
    rate = f", {info['images_per_second']} images/s" if info["images_per_second"] else ""
    lines = [
        f"[bold]embed {escape(summary.key)}[/]: {summary.new} new, {summary.total} stored ({summary.dim}-d "
        f"{settings.dtype}) in {summary.seconds:.1f}s{rate} on {summary.device}"
    ]
    if summary.failed:
        lines.append(
            f"  {len(summary.failed)} unreadable item(s), retried next run: {', '.join(summary.failed[:5])}"
        )
    if summary.repaired_shards:
        lines.append(f"  corrupted shard(s) quarantined and recomputed: {', '.join(summary.repaired_shards)}")
    return Summary(lines)


EMBED = register_stage(
    Stage(
        name="embed",
        settings=EmbedSettings,
        run=run_embed,
        summarize=summarize_embed,
        command=("embed",),
        help="Embed every validated item that has no embedding for the model yet (incremental, resumable).",
        usage_errors=(WeightsError, EncoderKeyError, ValueError, ExecutorError),
        runtime_errors=(EmbeddingStoreError,),
        reads=("table:items",),
        writes=("dir:embeddings",),
        panel=PANEL_CURATE,
    )
)
