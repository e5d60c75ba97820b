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


@dataclass
class DataConfig:
    path: str = ""  # release directory, ImageFolder tree, EmoSet root, or Hugging Face Hub id
    split: str = "train"  # "train+val" joins splits
    image_col: str = "image"
    label_col: str = "label"
    person_boxes: str | None = None  # JSON written by `uniemox detect-persons` for images without boxes
    scale: tuple[float, float] = (0.2, 1.0)
    person_scale: tuple[float, float] = (0.5, 1.0)
    hflip: float = 0.5
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
    log_every: int = 1
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
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
