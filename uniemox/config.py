"""Pretraining configuration: plain dataclasses, saved as JSON with every run and inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class ModelConfig:
    name: str = "mae_vit_large_patch16"  # a key of uniemox.models.MAE_CONFIGS (the paper: ViT-L/16)
    img_size: int = 224
    patch_size: int | None = None  # None: the registered value (16)
    embed_dim: int | None = None  # None: the registered value; set only for tiny test models
    depth: int | None = None
    num_heads: int | None = None
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    fusion: str = "paper"  # a key of uniemox.models.FUSIONS
    init_mae: str | None = None  # a facebookresearch/mae checkpoint to start from


@dataclass
class TeacherConfig:
    arch: str = "ViT-B-16"  # an open_clip architecture, or the path of an open_clip model-config JSON
    pretrained: str = "openai"  # an open_clip tag, a local checkpoint file, or "random" (tests only)
    precision: str = "fp32"  # fp32 (TF32 matmuls on GPUs) or bf16 (a choice to validate: see docs/uniemox.md)


@dataclass
class DataConfig:
    path: str = ""  # release directory, ImageFolder tree, EmoSet root, or Hugging Face Hub id
    split: str = "train"  # "train+val" joins splits
    image_col: str = "image"
    label_col: str = "label"
    person_boxes: str | None = (
        None  # JSON of boxes for images whose rows carry none ({"boxes": {index: [...]}})
    )
    scale: tuple[float, float] = (0.2, 1.0)
    person_jitter: float = 0.05  # the person box's size and centre move by up to this share of its sides
    hflip: float = 0.5
    brightness_scale: str | None = None  # None: the data source's (Emo8, EmoSet: "unit"); or "unit" / "8bit"
    colorfulness_scale: str | None = None  # None: the source's (Emo8 "hasler", EmoSet "unit")
    num_workers: int = 4


@dataclass
class OptimConfig:
    batch_size: int = 64  # per rank and micro-step
    accum_steps: int = 1  # effective batch = batch_size * accum_steps * world_size
    base_lr: float = 1e-3  # lr = base_lr * effective_batch / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 40.0
    warmup_steps: int | None = None  # overrides warmup_epochs
    clip_grad: float | None = None


@dataclass
class LossConfig:
    w_sim: float = 1.0
    w_con: float = 1.0
    w_rec: float = 1.0


@dataclass
class PretrainConfig:
    out: str = "runs/uniemox"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 400
    max_steps: int | None = None  # optimiser steps; overrides epochs
    seed: int = 0
    ckpt_every: int = 1000  # optimiser steps; 0 = only at the end
    keep_checkpoints: int = 2  # step checkpoints kept besides last.pt (0 = keep all)
    log_every: int = 20  # optimiser steps per log row (the row holds the means over those steps)
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the student (before the DDP wrap)
    progress: bool = True
    tensorboard: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        nested = {"data": DataConfig, "model": ModelConfig, "teacher": TeacherConfig, "optim": OptimConfig,
                  "loss": LossConfig}  # fmt: skip
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            value = d[f.name]
            if f.name in nested:
                known = {g.name for g in fields(nested[f.name])}
                value = nested[f.name](**{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in value.items() if k in known})  # fmt: skip
            kwargs[f.name] = value
        return cls(**kwargs)


#: ``uniemox pretrain`` option (parameter name) -> the setting it sets (dotted path in PretrainConfig). A resume
#: compares only the options a user actually gave with the checkpoint's settings.
PRETRAIN_OPTIONS: dict[str, str] = {
    "data": "data.path", "out": "out", "split": "data.split", "person_boxes": "data.person_boxes",
    "num_workers": "data.num_workers", "person_jitter": "data.person_jitter",
    "brightness_scale": "data.brightness_scale", "colorfulness_scale": "data.colorfulness_scale",
    "model": "model.name", "img_size": "model.img_size", "patch_size": "model.patch_size",
    "embed_dim": "model.embed_dim", "depth": "model.depth", "num_heads": "model.num_heads",
    "decoder_dim": "model.decoder_embed_dim", "decoder_depth": "model.decoder_depth",
    "decoder_heads": "model.decoder_num_heads", "mask_ratio": "model.mask_ratio",
    "norm_pix_loss": "model.norm_pix_loss", "fusion": "model.fusion", "init_mae": "model.init_mae",
    "teacher": "teacher.arch", "teacher_pretrained": "teacher.pretrained", "teacher_precision": "teacher.precision",
    "batch_size": "optim.batch_size", "accum_steps": "optim.accum_steps", "base_lr": "optim.base_lr",
    "min_lr": "optim.min_lr", "weight_decay": "optim.weight_decay", "warmup_epochs": "optim.warmup_epochs",
    "warmup_steps": "optim.warmup_steps", "clip_grad": "optim.clip_grad",
    "w_sim": "loss.w_sim", "w_con": "loss.w_con", "w_rec": "loss.w_rec",
    "epochs": "epochs", "max_steps": "max_steps", "seed": "seed", "ckpt_every": "ckpt_every",
    "keep_checkpoints": "keep_checkpoints", "log_every": "log_every", "device": "device", "compile": "compile",
    "quiet": "progress",
}  # fmt: skip


def option_of(setting: str) -> str:
    """The ``uniemox pretrain`` option that sets ``setting`` (dotted), e.g. ``--batch-size``; "" if none."""
    names = [k for k, v in PRETRAIN_OPTIONS.items() if v == setting]
    return f"--{names[0].replace('_', '-')}" if names else ""
