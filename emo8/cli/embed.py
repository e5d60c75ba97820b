"""``emo8 embed``: embeddings of every validated item, incremental and resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emo8.cli.app import app
from emo8.cli.common import (
    DEFAULT_WORKERS,
    PANEL_CURATE,
    Device,
    ExecutorKind,
    Quiet,
    RayAddress,
    Workers,
    WorkspaceOpt,
    exit_on,
    out,
)
from emo8.cli.stages import open_workspace
from emo8.core.executor import ExecutorConfig, ExecutorError


@app.command("embed", rich_help_panel=PANEL_CURATE)
def embed_cmd(
    workspace: WorkspaceOpt = Path("."),
    model: Annotated[
        str, typer.Option(help="Model key: efficientnet-lite0, open_clip:ARCH\\[/TAG], timm:ARCH.")
    ] = "efficientnet-lite0",
    weights: Annotated[
        Path | None, typer.Option(help="Local checkpoint (open_clip:ARCH, timm:ARCH).")
    ] = None,
    random_init: Annotated[
        bool, typer.Option("--random-init", help="Random weights (smoke tests only; never a fallback).")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    device: Device = "auto",
    workers: Workers = DEFAULT_WORKERS,
    dtype: Annotated[str, typer.Option(help="Stored precision: float16 or float32.")] = "float16",
    quiet: Quiet = False,
    executor: ExecutorKind = "local",
    ray_address: RayAddress = None,
) -> None:
    """Embed every validated item that has no embedding for the model yet (incremental, resumable)."""
    from emo8.embed.encoders import EncoderKeyError, WeightsError
    from emo8.embed.run import EmbedConfig, EmbeddingStoreError, embed

    ws = open_workspace(workspace)
    config = EmbedConfig(
        model=model, weights=str(weights) if weights else None, random_init=random_init, device=device,
        batch_size=batch_size, workers=workers, dtype=dtype, progress=not quiet,
        executor=ExecutorConfig(executor, ray_address),
    )  # fmt: skip
    with exit_on(((WeightsError, EncoderKeyError, ValueError, ExecutorError), 2), (EmbeddingStoreError, 1)):
        summary = embed(ws, config)
    info = summary.as_dict()
    rate = f", {info['images_per_second']} images/s" if info["images_per_second"] else ""
    out.print(
        f"[bold]embed {summary.key}[/]: {summary.new} new, {summary.total} stored ({summary.dim}-d {dtype}) "
        f"in {summary.seconds:.1f}s{rate} on {summary.device}"
    )
    if summary.failed:
        out.print(
            f"  {len(summary.failed)} unreadable item(s), retried next run: {', '.join(summary.failed[:5])}"
        )
    if summary.repaired_shards:
        out.print(f"  corrupted shard(s) quarantined and recomputed: {', '.join(summary.repaired_shards)}")
