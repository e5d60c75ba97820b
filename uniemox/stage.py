"""The ``uniemox-pretrain``, ``uniemox-finetune`` and ``uniemox-evaluate`` stages: one settings model each, from
which the ``uniemox pretrain|finetune|evaluate`` commands are derived, and which a pipeline step validates.

The commands have no ``--workspace`` (``Stage(workspace=False)``): they read a dataset wherever it is. In a pipeline
the step gets the build's workspace, and ``data: latest`` names the workspace's newest release.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from emo8.core.stage import (
    DEFAULT_WORKERS,
    PANEL_FINETUNE,
    PANEL_PRETRAIN,
    WORKERS_HELP,
    Stage,
    StageSettings,
    Summary,
    device_setting,
    path_digest,
    register_stage,
    setting,
)
from emo8.core.workspace import Workspace
from uniemox.config import (
    PRETRAIN_OPTIONS,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    TeacherConfig,
)
from uniemox.datapath import RELEASE_FILE, DataPathError, check_data_path, release_dirs

__all__ = ["EVALUATE", "FINETUNE", "LATEST", "PRETRAIN", "UsageError", "resolve_data", "setup_logging"]

#: The ``data`` value that names the workspace's newest release (pipelines).
LATEST = "latest"

DATA_HELP = (
    "Release dir, ImageFolder tree, EmoSet root, or HF Hub id (in a pipeline, 'latest': the workspace's newest "
    "release)."
)
DATASET_HELP = "Benchmark: emo8, fi, emoset, emotion6, unbiasedemo, caer-s, heco, hf, imagefolder."
IMAGE_COL_HELP = "Hugging Face data: the image column (default: first Image)."
LABEL_COL_HELP = "Hugging Face data: the ClassLabel column (default: label, else the first)."


class UsageError(ValueError):
    """A uniemox input that cannot work (weights that cannot be loaded...): exit 2, like every ValueError."""


#: Exceptions that mean "change the command" (exit 2) and runtime failures (exit 1); the teacher's load error is
#: re-raised as :class:`UsageError` by the run functions, so that registering the stages does not import torch.
USAGE_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, KeyError,
)  # fmt: skip
RUNTIME_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError)


def setup_logging(verbose: bool) -> None:
    """Our INFO lines when ``verbose`` (loggers ``uniemox`` and ``emo8``), else warnings only.

    Other libraries stay at WARNING: open_clip logs every step of building a model at INFO on the root logger.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("uniemox", "emo8"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def resolve_data(data: str, ws: Workspace | None) -> str:
    """``data`` as a dataset path: ``latest`` becomes the newest release of ``ws`` (:class:`DataPathError` without
    a workspace or a release); anything else is returned as it is."""
    if data != LATEST:
        return data
    if ws is None:
        raise DataPathError(
            "--data latest names a workspace's newest release and works in a pipeline step; on the command line "
            "pass the release directory, e.g. --data WORKSPACE/releases/X.Y.Z"
        )
    releases = [r for r in release_dirs(ws.releases_dir, depth=1) if (r / RELEASE_FILE).is_file()]
    if not releases:
        raise DataPathError(
            f"data: latest: the workspace {ws.root} has no release yet; add a release step before this one "
            "(or run `emo8 release`)"
        )
    return str(releases[-1])


def _data_inputs(data: str) -> str:
    """A digest of a local dataset (its listing), ``latest`` and Hub ids digest to themselves."""
    path = Path(data).expanduser()
    return path_digest(path) if data != LATEST and path.exists() else data


def _json_line(values: dict[str, Any]) -> str:
    """One JSON line, with rich markup characters escaped (the summary is printed through rich)."""
    from rich.markup import escape

    return escape(json.dumps(values))


# -- pretrain ---------------------------------------------------------------------------------------------------------


class PretrainSettings(StageSettings):
    """Settings of ``uniemox pretrain`` / a pipeline's ``uniemox-pretrain`` step. Field names are the keys of
    :data:`uniemox.config.PRETRAIN_OPTIONS` (a resume compares the settings given with the checkpoint's)."""

    data: str = setting(..., DATA_HELP, path_like=True)
    out: Path = setting(..., "Output directory (checkpoints, log.csv, encoder.pth).")
    model: str = setting("mae_vit_large_patch16", "mae_vit_{tiny,small,base,large}_patch16")
    split: str = setting("train", "Split(s) to train on ('train+val' joins splits).")
    teacher: str = setting("ViT-B-16", "open_clip architecture or model-config JSON.", path_like=True)
    teacher_pretrained: str = setting(
        "openai", "open_clip tag, checkpoint file, or 'random' (tests only).", path_like=True
    )
    teacher_precision: str = setting("fp32", "Teacher weights: fp32 (TF32 on GPUs) or bf16.")
    brightness_scale: str | None = setting(None, "unit | 8bit (default: the data source's).")
    colorfulness_scale: str | None = setting(
        None, "hasler | unit (default: the data source's: Emo8 hasler, EmoSet unit)."
    )
    person_boxes: str | None = setting(None, "JSON from `uniemox detect-persons`.", path_like=True)
    img_size: int = setting(224, "Input image side in pixels.", ge=1)
    patch_size: int | None = setting(None, "Override the registered patch size (tiny test models).", ge=1)
    embed_dim: int | None = setting(None, "Override the registered width (tiny test models).", ge=1)
    depth: int | None = setting(None, "Override the registered depth (tiny test models).", ge=1)
    num_heads: int | None = setting(None, "Override the registered heads (tiny test models).", ge=1)
    decoder_dim: int = setting(512, "MAE decoder width.", ge=1)
    decoder_depth: int = setting(8, "MAE decoder blocks.", ge=1)
    decoder_heads: int = setting(16, "MAE decoder heads.", ge=1)
    mask_ratio: float = setting(0.75, "Share of patches masked.", ge=0.0, lt=1.0)
    norm_pix_loss: bool = setting(
        False, "Per-patch normalised reconstruction targets.", flag="--norm-pix-loss"
    )
    fusion: str = setting("paper", "paper | scene | person | sum | gated")
    init_mae: str | None = setting(None, "facebookresearch/mae checkpoint to start from.", path_like=True)
    batch_size: int = setting(64, "Per rank and micro-step.", ge=1)
    accum_steps: int = setting(1, "Micro-steps per optimiser step.", ge=1)
    base_lr: float = setting(1e-3, "lr = base_lr x effective batch / 256.", gt=0.0)
    min_lr: float = setting(0.0, "Floor of the cosine schedule.", ge=0.0)
    weight_decay: float = setting(0.05, "AdamW weight decay.", ge=0.0)
    warmup_epochs: float = setting(40.0, "Linear warm-up, in epochs.", ge=0.0)
    warmup_steps: int | None = setting(None, "Linear warm-up, in steps (overrides --warmup-epochs).", ge=0)
    clip_grad: float | None = setting(None, "Clip the gradient norm to this.", gt=0.0)
    epochs: int = setting(400, "Epochs (the schedule's length unless --max-steps).", ge=1)
    max_steps: int | None = setting(None, "Optimiser steps (overrides --epochs).", ge=1)
    w_sim: float = setting(1.0, "Weight of the similarity (distillation) loss.")
    w_con: float = setting(1.0, "Weight of the contrastive loss.")
    w_rec: float = setting(1.0, "Weight of the reconstruction loss.")
    seed: int = setting(0, "Random seed.")
    num_workers: int = setting(
        DEFAULT_WORKERS, WORKERS_HELP, flag="--workers", short="--num-workers", ge=0, fingerprint=False
    )
    ckpt_every: int = setting(
        1000, "Steps between checkpoints (0: only at the end).", ge=0, fingerprint=False
    )
    keep_checkpoints: int = setting(2, "Step checkpoints kept besides last.pt.", ge=0, fingerprint=False)
    log_every: int = setting(20, "Steps per log row (the row holds their means).", ge=1, fingerprint=False)
    device: str = device_setting()
    compile: bool = setting(False, "torch.compile the student.", flag="--compile", fingerprint=False)
    resume: str | None = setting(None, "Checkpoint path, or 'auto' for OUT/last.pt.", fingerprint=False)


def pretrain_config(settings: PretrainSettings, data: str, progress: bool) -> PretrainConfig:
    """The library's :class:`~uniemox.config.PretrainConfig` of ``settings`` (``data`` already resolved)."""
    s = settings
    return PretrainConfig(
        out=str(s.out),
        data=DataConfig(path=data, split=s.split, person_boxes=s.person_boxes, num_workers=s.num_workers,
                        brightness_scale=s.brightness_scale, colorfulness_scale=s.colorfulness_scale),
        model=ModelConfig(
            name=s.model, img_size=s.img_size, patch_size=s.patch_size, embed_dim=s.embed_dim, depth=s.depth,
            num_heads=s.num_heads, decoder_embed_dim=s.decoder_dim, decoder_depth=s.decoder_depth,
            decoder_num_heads=s.decoder_heads, mask_ratio=s.mask_ratio, norm_pix_loss=s.norm_pix_loss,
            fusion=s.fusion, init_mae=s.init_mae,
        ),
        teacher=TeacherConfig(arch=s.teacher, pretrained=s.teacher_pretrained, precision=s.teacher_precision),
        optim=OptimConfig(
            batch_size=s.batch_size, accum_steps=s.accum_steps, base_lr=s.base_lr, min_lr=s.min_lr,
            weight_decay=s.weight_decay, warmup_epochs=s.warmup_epochs, warmup_steps=s.warmup_steps,
            clip_grad=s.clip_grad,
        ),
        loss=LossConfig(w_sim=s.w_sim, w_con=s.w_con, w_rec=s.w_rec),
        epochs=s.epochs, max_steps=s.max_steps, seed=s.seed, ckpt_every=s.ckpt_every,
        keep_checkpoints=s.keep_checkpoints, log_every=s.log_every, device=s.device, compile=s.compile,
        progress=progress,
    )  # fmt: skip


def run_pretrain(ws: Workspace | None, settings: PretrainSettings, progress: bool) -> dict[str, Any]:
    """Pretrain (or resume) with ``settings``; a resume compares only the settings that were given
    (``model_fields_set``: the options typed, or the keys of a pipeline step) with the checkpoint's."""
    from uniemox.models.teacher import TeacherLoadError
    from uniemox.train import pretrain

    setup_logging(progress)
    data = resolve_data(settings.data, ws)
    check_data_path(data)  # before anything is written into out
    explicit = {PRETRAIN_OPTIONS[n] for n in settings.model_fields_set if n in PRETRAIN_OPTIONS}
    explicit.add("progress")  # this invocation's choice (--quiet), never the checkpoint's
    try:
        result = pretrain(
            pretrain_config(settings, data, progress), resume=settings.resume, explicit=explicit
        )
    except TeacherLoadError as exc:
        raise UsageError(str(exc)) from exc
    last = result.history[-1] if result.history else {}
    return {"out": str(result.out), "steps": result.steps, **{k: last[k] for k in ("loss",) if k in last}}


def summarize_json(result: dict[str, Any], settings: StageSettings) -> Summary:
    """The result as one JSON line (what scripts read from the command's last line)."""
    return Summary([_json_line(result)])


PRETRAIN = register_stage(
    Stage(
        name="uniemox-pretrain",
        settings=PretrainSettings,
        run=run_pretrain,
        summarize=summarize_json,
        command=("pretrain",),
        help="Pretrain UniEmoX. Multi-GPU: torchrun --nproc-per-node N -m uniemox pretrain ...",
        usage_errors=USAGE_ERRORS,
        runtime_errors=RUNTIME_ERRORS,
        reads=("dir:releases",),
        writes=(),
        inputs=lambda s: _data_inputs(s.data),
        panel=PANEL_PRETRAIN,
        workspace=False,
    )
)


# -- finetune ---------------------------------------------------------------------------------------------------------


class FinetuneSettings(StageSettings):
    """Settings of ``uniemox finetune`` / a pipeline's ``uniemox-finetune`` step (None: the protocol's value)."""

    data: str = setting(..., DATA_HELP, path_like=True)
    out: Path = setting(..., "Run directory (best.pt, last.pt, log.csv, metrics.json).")
    dataset: str = setting("emo8", DATASET_HELP)
    init: str | None = setting(
        None,
        "Checkpoint (pretraining last.pt, encoder.pth, MAE/timm/UniEmoX .pth) or encoder key "
        "(timm:ARCH, open_clip:ARCH/TAG, efficientnet-lite0).",
    )
    weights: str | None = setting(None, "Weights file for timm:/open_clip: keys.")
    random_init: bool = setting(False, "Train a --model ViT from random weights.", flag="--random-init")
    model: str = setting("mae_vit_base_patch16", "ViT size with --random-init.")
    linear_probe: bool = setting(
        False, "Frozen encoder + BatchNorm + linear head (MAE).", flag="--linear-probe"
    )
    cache_features: bool = setting(
        False, "Linear probe on cached centre-crop features.", flag="--cache-features"
    )
    fraction: float = setting(1.0, "Train on this stratified share of the train split.", gt=0.0, le=1.0)
    fraction_seed: int = setting(0, "Seed of the --fraction subset.")
    soft_labels: bool = setting(False, "Train on Emo8's label_distribution (soft CE).", flag="--soft-labels")
    polarity: bool = setting(False, "2-class mode (positive / negative).", flag="--polarity")
    epochs: int = setting(100, "Epochs.", ge=1)
    max_steps: int | None = setting(None, "Optimiser steps (overrides --epochs).", ge=1)
    batch_size: int = setting(64, "Per process.", ge=1)
    base_lr: float | None = setting(None, "lr = base_lr x batch / 256 (1e-3; probe 0.1).", gt=0.0)
    layer_decay: float | None = setting(None, "Layer-wise lr decay (0.75; probe 1).", gt=0.0, le=1.0)
    weight_decay: float | None = setting(None, "Weight decay (the protocol's by default).", ge=0.0)
    warmup_epochs: float | None = setting(None, "Warm-up epochs (the protocol's by default).", ge=0.0)
    drop_path: float | None = setting(None, "Stochastic depth rate.", ge=0.0, le=1.0)
    smoothing: float | None = setting(None, "Label smoothing.", ge=0.0, le=1.0)
    mixup: float | None = setting(None, "Mixup alpha (0: off).", ge=0.0)
    cutmix: float | None = setting(None, "CutMix alpha (0: off).", ge=0.0)
    randaug: str | None = setting(None, "timm RandAugment string; '' = off.")
    reprob: float | None = setting(None, "Random erasing probability.", ge=0.0, le=1.0)
    optimizer: str | None = setting(None, "adamw | lars | sgd")
    img_size: int | None = setting(None, "Input side in pixels (default: the backbone's).", ge=1)
    num_heads: int | None = setting(None, "Heads of a ViT checkpoint of unregistered width.", ge=1)
    seed: int = setting(0, "Random seed.")
    num_workers: int = setting(4, "Data loader workers per process.", ge=0, fingerprint=False)
    device: str = device_setting()
    resume: str | None = setting(None, "OUT/last.pt, or 'auto'.", fingerprint=False)
    image_col: str | None = setting(None, IMAGE_COL_HELP)
    label_col: str | None = setting(None, LABEL_COL_HELP)


def run_finetune(ws: Workspace | None, settings: FinetuneSettings, progress: bool) -> dict[str, Any]:
    """Fine-tune or linear-probe with ``settings`` (:func:`uniemox.finetune.finetune`)."""
    from uniemox.finetune import FinetuneConfig, finetune

    setup_logging(progress)
    fields = settings.model_dump(exclude={"out", "data", "resume"})
    cfg = FinetuneConfig(out=str(settings.out), data=resolve_data(settings.data, ws), **fields)
    result = finetune(cfg, resume=settings.resume)
    test = result.test_metrics or {}
    return {
        "out": str(result.out), "steps": result.steps, "best_val_top1": result.best_val_top1,
        **{f"test_{k}": test[k] for k in ("top1", "top3", "macro_f1") if k in test},
    }  # fmt: skip


FINETUNE = register_stage(
    Stage(
        name="uniemox-finetune",
        settings=FinetuneSettings,
        run=run_finetune,
        summarize=summarize_json,
        command=("finetune",),
        help="Fine-tune (MAE recipe) or linear-probe on a benchmark. Multi-GPU: torchrun --nproc-per-node N -m "
        "uniemox finetune ...",
        usage_errors=USAGE_ERRORS,
        runtime_errors=RUNTIME_ERRORS,
        reads=("dir:releases",),
        writes=(),
        inputs=lambda s: _data_inputs(s.data),
        panel=PANEL_FINETUNE,
        workspace=False,
    )
)


# -- evaluate ---------------------------------------------------------------------------------------------------------


class EvaluateSettings(StageSettings):
    """Settings of ``uniemox evaluate`` / a pipeline's ``uniemox-evaluate`` step."""

    ckpt: str = setting(..., "A fine-tuned classifier (OUT/best.pt or the run directory).", path_like=True)
    data: str = setting(..., DATA_HELP, path_like=True)
    dataset: str = setting("emo8", DATASET_HELP)
    split: str = setting("test", "The split to evaluate.")
    polarity: bool = setting(False, "Evaluate the 2-class mode.", flag="--polarity")
    out: Path | None = setting(None, "Output dir (default: next to the checkpoint).")
    batch_size: int = setting(64, "Images per batch.", ge=1, fingerprint=False)
    num_workers: int = setting(0, "Data loader workers.", ge=0, fingerprint=False)
    device: str = device_setting()
    image_col: str | None = setting(None, IMAGE_COL_HELP)
    label_col: str | None = setting(None, LABEL_COL_HELP)


def run_evaluate(ws: Workspace | None, settings: EvaluateSettings, progress: bool) -> dict[str, Any]:
    """Evaluate a classifier with ``settings`` (:func:`uniemox.evaluate.evaluate`); the headline metrics."""
    from uniemox.evaluate import EvalRequest, evaluate

    s = settings
    metrics = evaluate(
        EvalRequest(s.ckpt, resolve_data(s.data, ws), s.dataset, s.split, s.polarity,
                    str(s.out) if s.out else None, s.batch_size, s.num_workers, s.device, s.image_col,
                    s.label_col)
    )  # fmt: skip
    return {k: metrics[k] for k in ("dataset", "split", "n", "top1", "top3", "macro_f1") if k in metrics}


EVALUATE = register_stage(
    Stage(
        name="uniemox-evaluate",
        settings=EvaluateSettings,
        run=run_evaluate,
        summarize=summarize_json,
        command=("evaluate",),
        help="Top-1/top-3, macro-F1, per-class accuracy and confusion matrix (PNG + JSON); on Emo8 also "
        "per-domain accuracy and agreement with the annotators' votes.",
        usage_errors=USAGE_ERRORS,
        runtime_errors=RUNTIME_ERRORS,
        reads=("dir:releases",),
        writes=(),
        inputs=lambda s: f"{_data_inputs(s.data)}:{path_digest(Path(s.ckpt))}",
        panel=PANEL_FINETUNE,
        workspace=False,
    )
)
