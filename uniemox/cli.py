"""``uniemox`` command line: pretrain, detect-persons, export-encoder, models."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from uniemox.config import DataConfig, LossConfig, ModelConfig, OptimConfig, PretrainConfig, TeacherConfig

app = typer.Typer(help="UniEmoX pretraining on Emo8 / EmoSet.", no_args_is_help=True, add_completion=False)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def pretrain(
    data: Annotated[str, typer.Option(help="Release dir, ImageFolder tree, EmoSet root, or HF Hub id.")],
    out: Annotated[Path, typer.Option(help="Output directory (checkpoints, log.csv, encoder.pth).")],
    model: Annotated[
        str, typer.Option(help="mae_vit_{tiny,small,base,large}_patch16")
    ] = "mae_vit_large_patch16",
    split: str = "train",
    teacher: Annotated[str, typer.Option(help="open_clip architecture or model-config JSON.")] = "ViT-B-16",
    teacher_pretrained: Annotated[
        str, typer.Option(help="open_clip tag, checkpoint file, or 'random' (tests only).")
    ] = "openai",
    person_boxes: Annotated[str | None, typer.Option(help="JSON from `uniemox detect-persons`.")] = None,
    img_size: int = 224,
    patch_size: int | None = None,
    embed_dim: Annotated[
        int | None, typer.Option(help="Override the registered width (tiny test models).")
    ] = None,
    depth: int | None = None,
    num_heads: int | None = None,
    decoder_dim: int = 512,
    decoder_depth: int = 8,
    decoder_heads: int = 16,
    mask_ratio: float = 0.75,
    norm_pix_loss: bool = False,
    fusion: Annotated[str, typer.Option(help="paper | scene | person | sum | gated")] = "paper",
    init_mae: Annotated[
        str | None, typer.Option(help="facebookresearch/mae checkpoint to start from.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Per rank and micro-step.")] = 64,
    accum_steps: int = 1,
    base_lr: float = 1e-3,
    min_lr: float = 0.0,
    weight_decay: float = 0.05,
    warmup_epochs: float = 40.0,
    warmup_steps: int | None = None,
    clip_grad: float | None = None,
    epochs: int = 400,
    max_steps: int | None = None,
    w_sim: float = 1.0,
    w_con: float = 1.0,
    w_rec: float = 1.0,
    seed: int = 0,
    num_workers: int = 4,
    ckpt_every: int = 1000,
    keep_checkpoints: int = 2,
    log_every: int = 1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    compile: bool = False,
    progress: bool = True,
    resume: Annotated[str | None, typer.Option(help="Checkpoint path, or 'auto' for OUT/last.pt.")] = None,
    verbose: bool = True,
) -> None:
    """Pretrain UniEmoX. Multi-GPU: torchrun --nproc-per-node N -m uniemox pretrain ..."""
    from uniemox.train import pretrain as run

    _setup_logging(verbose)
    cfg = PretrainConfig(
        out=str(out),
        data=DataConfig(path=data, split=split, person_boxes=person_boxes, num_workers=num_workers),
        model=ModelConfig(
            name=model, img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, decoder_embed_dim=decoder_dim, decoder_depth=decoder_depth,
            decoder_num_heads=decoder_heads, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
            fusion=fusion, init_mae=init_mae,
        ),
        teacher=TeacherConfig(arch=teacher, pretrained=teacher_pretrained),
        optim=OptimConfig(
            batch_size=batch_size, accum_steps=accum_steps, base_lr=base_lr, min_lr=min_lr,
            weight_decay=weight_decay, warmup_epochs=warmup_epochs, warmup_steps=warmup_steps,
            clip_grad=clip_grad,
        ),
        loss=LossConfig(w_sim=w_sim, w_con=w_con, w_rec=w_rec),
        epochs=epochs, max_steps=max_steps, seed=seed, ckpt_every=ckpt_every,
        keep_checkpoints=keep_checkpoints, log_every=log_every, device=device, compile=compile, progress=progress,
    )  # fmt: skip
    result = run(cfg, resume=resume)
    last = result.history[-1] if result.history else {}
    typer.echo(
        json.dumps(
            {"out": str(result.out), "steps": result.steps, **{k: last[k] for k in ("loss",) if k in last}}
        )
    )


@app.command("detect-persons")
def detect_persons_cmd(
    data: Annotated[str, typer.Argument(help="Same data argument as pretrain.")],
    out: Annotated[Path, typer.Option(help="JSON to write; pass it to pretrain --person-boxes.")],
    split: str = "train",
) -> None:
    """Detect people ONCE (OpenCV HOG) in images without person_boxes and cache the boxes."""
    from uniemox.data import open_source
    from uniemox.detect import detect_persons

    typer.echo(json.dumps(detect_persons(open_source(data, split), out)))


@app.command("export-encoder")
def export_encoder_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A pretraining checkpoint (e.g. OUT/last.pt).")],
    out: Annotated[Path, typer.Argument(help="Where to write {'model': encoder state dict}.")],
) -> None:
    """Write the shared encoder under MAE/timm ViT key names, for fine-tuning."""
    from uniemox.checkpoint import export_encoder

    typer.echo(str(export_encoder(checkpoint, out)))


@app.command()
def models() -> None:
    """List the registered model sizes and fusions."""
    from uniemox.models import FUSIONS, MAE_CONFIGS

    for name, c in MAE_CONFIGS.items():
        typer.echo(f"{name}: embed {c.embed_dim}, depth {c.depth}, heads {c.num_heads}, patch {c.patch_size}")
    typer.echo(f"fusions: {', '.join(FUSIONS)}")


@app.command()
def smoke(
    out: Annotated[Path, typer.Option(help="Working directory for the tiny dataset and run.")],
    steps: int = 5,
) -> None:
    """A few CPU steps of a tiny student + tiny RANDOM CLIP on the bundled sample images (demo / CI)."""
    from uniemox.testing import make_hf_dataset, tiny_config, tiny_teacher
    from uniemox.train import pretrain as run

    _setup_logging(True)
    out.mkdir(parents=True, exist_ok=True)
    data = make_hf_dataset(out / "samples-hf", n=32)
    cfg = tiny_config(data, out / "run", tiny_teacher(out), max_steps=steps, ckpt_every=steps)
    cfg.progress = False
    for row in run(cfg).history:
        typer.echo(
            f"step {int(row['step'])}: loss {row['loss']:.4f} (sim {row['l_sim']:.4f}, con {row['l_con']:.4f}, "
            f"rec {row['l_rec']:.4f}), {row['images_per_s']:.1f} img/s"
        )
    typer.echo(f"run directory: {out / 'run'}")
