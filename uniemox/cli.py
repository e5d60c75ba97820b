"""``uniemox`` command line: pretrain, detect-persons, export-encoder, models.

Other modules add commands to :data:`app` (import it, decorate with ``@app.command(...)``). Errors reach the user as
one paragraph with the exit codes of ``emo8`` (see :data:`emo8.cli.common.EXIT_CODES`): wrap a command's work in
``with exit_on(*USAGE_ERRORS, *RUNTIME_ERRORS):``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from emo8.cli.common import (
    DEFAULT_WORKERS,
    EXIT_FAILURE,
    EXIT_USAGE,
    PANEL_PRETRAIN,
    PANEL_TOOLS,
    QUIET_HELP,
    WORKERS_HELP,
    Device,
    add_version_option,
    exit_on,
    ordered_group,
)
from uniemox.cli_downstream import register as register_downstream
from uniemox.cli_downstream import setup_logging
from uniemox.config import DataConfig, LossConfig, ModelConfig, OptimConfig, PretrainConfig, TeacherConfig

app = typer.Typer(
    cls=ordered_group(("pretrain", "detect-persons", "smoke", "export-encoder", "models")),
    help="UniEmoX pretraining on Emo8 / EmoSet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
add_version_option(app, "uniemox")


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "change the command" (exit 2): missing or unreadable inputs, unknown names, weights."""
    from uniemox.models.teacher import TeacherLoadError

    return (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, KeyError, TeacherLoadError)


def errors() -> Any:
    """The context that turns UniEmoX's errors into one paragraph: exit 2 for bad input, 1 for runtime failures."""
    return exit_on((_usage_errors(), EXIT_USAGE), ((OSError, RuntimeError), EXIT_FAILURE))


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", "--no-progress", help=QUIET_HELP)]


@app.command(rich_help_panel=PANEL_PRETRAIN)
def pretrain(
    ctx: typer.Context,
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
    teacher_precision: Annotated[
        str, typer.Option(help="Teacher weights: fp32 (TF32 on GPUs) or bf16.")
    ] = "fp32",
    brightness_scale: Annotated[
        str | None, typer.Option(help="unit | 8bit (default: the data source's).")
    ] = None,
    colorfulness_scale: Annotated[
        str | None, typer.Option(help="hasler | unit (default: the data source's: Emo8 hasler, EmoSet unit).")
    ] = None,
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
    norm_pix_loss: Annotated[
        bool, typer.Option("--norm-pix-loss", help="Per-patch normalised reconstruction targets.")
    ] = False,
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
    num_workers: Annotated[
        int,
        typer.Option("--workers", "--num-workers", help=WORKERS_HELP),
    ] = DEFAULT_WORKERS,
    ckpt_every: int = 1000,
    keep_checkpoints: int = 2,
    log_every: Annotated[int, typer.Option(help="Steps per log row (the row holds their means).")] = 20,
    device: Device = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the student.")] = False,
    quiet: QuietOpt = False,
    resume: Annotated[str | None, typer.Option(help="Checkpoint path, or 'auto' for OUT/last.pt.")] = None,
) -> None:
    """Pretrain UniEmoX. Multi-GPU: torchrun --nproc-per-node N -m uniemox pretrain ..."""
    from uniemox.datapath import check_data_path
    from uniemox.train import pretrain as run

    setup_logging(not quiet)
    progress = not quiet
    with errors():
        check_data_path(data)  # before anything is written into --out
    cfg = PretrainConfig(
        out=str(out),
        data=DataConfig(path=data, split=split, person_boxes=person_boxes, num_workers=num_workers,
                        brightness_scale=brightness_scale, colorfulness_scale=colorfulness_scale),
        model=ModelConfig(
            name=model, img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, decoder_embed_dim=decoder_dim, decoder_depth=decoder_depth,
            decoder_num_heads=decoder_heads, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
            fusion=fusion, init_mae=init_mae,
        ),
        teacher=TeacherConfig(arch=teacher, pretrained=teacher_pretrained, precision=teacher_precision),
        optim=OptimConfig(
            batch_size=batch_size, accum_steps=accum_steps, base_lr=base_lr, min_lr=min_lr,
            weight_decay=weight_decay, warmup_epochs=warmup_epochs, warmup_steps=warmup_steps,
            clip_grad=clip_grad,
        ),
        loss=LossConfig(w_sim=w_sim, w_con=w_con, w_rec=w_rec),
        epochs=epochs, max_steps=max_steps, seed=seed, ckpt_every=ckpt_every,
        keep_checkpoints=keep_checkpoints, log_every=log_every, device=device, compile=compile, progress=progress,
    )  # fmt: skip
    with errors():
        result = run(cfg, resume=resume, explicit=_given_settings(ctx))
    last = result.history[-1] if result.history else {}
    typer.echo(
        json.dumps(
            {"out": str(result.out), "steps": result.steps, **{k: last[k] for k in ("loss",) if k in last}}
        )
    )


def _given_settings(ctx: typer.Context) -> set[str]:
    """The settings (dotted config paths) whose options the user gave; a resume checks only these."""
    from uniemox.config import PRETRAIN_OPTIONS

    def given(name: str) -> bool:  # by name: typer may bring its own copy of click's ParameterSource
        source = ctx.get_parameter_source(name)
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

    return {PRETRAIN_OPTIONS[n] for n in PRETRAIN_OPTIONS if given(n)}


@app.command("detect-persons", rich_help_panel=PANEL_PRETRAIN)
def detect_persons_cmd(
    data: Annotated[str, typer.Argument(help="Same data argument as pretrain.")],
    out: Annotated[
        Path, typer.Option(help="JSON to write (resumed if it exists); pass it to pretrain --person-boxes.")
    ],
    split: str = "train",
    backend: Annotated[
        str | None, typer.Option(help="A backend of `emo8 detect-people` (default: its default).")
    ] = None,
    weights: Annotated[str | None, typer.Option(help="Weights file (torchvision:NAME).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Minimum score (default: the backend's).")] = None,
) -> None:
    """Detect people once, with `emo8 detect-people`'s detectors, in images without person_boxes; cache the boxes."""
    from emo8.label.people import DEFAULT_BACKEND, DetectConfig
    from uniemox.data import open_source
    from uniemox.detect import detect_persons

    config = DetectConfig(backend=backend or DEFAULT_BACKEND, weights=weights, score_threshold=threshold)
    with errors():  # emo8.label.people.DetectorError is a ValueError: exit 2
        typer.echo(json.dumps(detect_persons(open_source(data, split), out, config=config)))


@app.command("export-encoder", rich_help_panel=PANEL_TOOLS)
def export_encoder_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A pretraining checkpoint (e.g. OUT/last.pt).")],
    out: Annotated[Path, typer.Argument(help="Where to write {'model': encoder state dict}.")],
) -> None:
    """Write the shared encoder under MAE/timm ViT key names, for fine-tuning."""
    from uniemox.checkpoint import export_encoder

    with errors():
        typer.echo(str(export_encoder(checkpoint, out)))


@app.command(rich_help_panel=PANEL_TOOLS)
def models() -> None:
    """List the registered model sizes and fusions."""
    from uniemox.models import FUSIONS, MAE_CONFIGS

    for name, c in MAE_CONFIGS.items():
        typer.echo(f"{name}: embed {c.embed_dim}, depth {c.depth}, heads {c.num_heads}, patch {c.patch_size}")
    typer.echo(f"fusions: {', '.join(FUSIONS)}")


@app.command(rich_help_panel=PANEL_PRETRAIN)
def smoke(
    out: Annotated[Path, typer.Option(help="Working directory for the tiny dataset and run.")],
    steps: int = 5,
) -> None:
    """A few CPU steps of a tiny student + tiny RANDOM CLIP on the bundled sample images (demo / CI)."""
    from uniemox.testing import make_hf_dataset, tiny_config, tiny_teacher
    from uniemox.train import pretrain as run

    setup_logging(True)
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


register_downstream(app)  # finetune, evaluate, predict, embed, report, data (uniemox/cli_downstream.py)
