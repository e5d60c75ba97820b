"""Checkpoints: training state (save/resume), MAE initialisation, and encoder export for fine-tuning."""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from uniemox.models.mae import ENCODER_PREFIXES, MaskedAutoencoderViT
from uniemox.models.pos_embed import interpolate_pos_embed

log = logging.getLogger(__name__)


def _load(path: str | Path) -> Any:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(
            f"{path} holds more than tensors and plain values, so it is not loaded (pickle is unsafe); "
            "re-save just its state dict: torch.save({'model': ckpt['model']}, 'clean.pth')"
        ) from exc


# --- RNG states (kept as tensors and plain values so checkpoints load with weights_only=True) ---


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- training checkpoints ---


def save_checkpoint(state: dict[str, Any], out: Path, step: int, keep: int) -> Path:
    """Write ``checkpoint-STEP.pt`` atomically, point ``last.pt`` at it, and prune to the newest ``keep``."""
    path = out / f"checkpoint-{step:08d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    last_tmp = out / "last.pt.tmp"
    last_tmp.unlink(missing_ok=True)
    try:
        os.link(path, last_tmp)
    except OSError:
        torch.save(state, last_tmp)
    last_tmp.replace(out / "last.pt")
    if keep > 0:
        for old in sorted(out.glob("checkpoint-*.pt"))[:-keep]:
            old.unlink()
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    ckpt = _load(path)
    for key in ("model", "optimizer", "scheduler", "step", "config"):
        if key not in ckpt:
            raise ValueError(f"{path} is not a UniEmoX training checkpoint (no {key!r})")
    return dict(ckpt)


# --- MAE initialisation ---


@dataclass
class InitReport:
    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    interpolated: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"MAE init from {self.path}: {len(self.loaded)} tensors loaded, {len(self.missing)} missing "
            f"{self.missing[:8]}, {len(self.unexpected)} unexpected {self.unexpected[:8]}, "
            f"{len(self.mismatched)} shape-mismatched {self.mismatched[:8]}, pos-embed interpolated: "
            f"{self.interpolated}"
        )


def load_mae_checkpoint(mae: MaskedAutoencoderViT, path: str | Path) -> InitReport:
    """Load a facebookresearch/mae checkpoint ({"model": state_dict}, MAE key names) into ``mae``.

    Position embeddings of another grid are bicubically interpolated; other shape mismatches are skipped and
    reported. Release checkpoints (mae_pretrain_vit_*.pth) hold the encoder only: the decoder is then reported
    missing and keeps its fresh initialisation.
    """
    ckpt = _load(path)
    sd: dict[str, torch.Tensor] = ckpt.get("model", ckpt.get("state_dict", ckpt))
    sd = {k.removeprefix("module.").removeprefix("mae."): v for k, v in sd.items()}
    own = mae.state_dict()
    report = InitReport(str(path))
    clean: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if key in ("pos_embed", "decoder_pos_embed") and value.shape != own[key].shape:
            value = interpolate_pos_embed(value, own[key].shape[1] - 1)
            report.interpolated.append(key)
        if value.shape != own[key].shape:
            report.mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
            continue
        clean[key] = value
    missing, _ = mae.load_state_dict(clean, strict=False)
    report.missing, report.loaded = sorted(missing), sorted(clean)
    log.info(report.summary())
    return report


# --- encoder export ---


def encoder_state_dict(student: nn.Module) -> dict[str, torch.Tensor]:
    """The shared encoder's weights under MAE/timm ViT names (``patch_embed.*``, ``blocks.*``...)."""
    sd = student.state_dict()
    return {
        k.removeprefix("mae."): v.detach().cpu().clone()
        for k, v in sd.items()
        if k.startswith("mae.") and k.removeprefix("mae.").startswith(ENCODER_PREFIXES)
    }


def export_encoder(checkpoint: str | Path, out: str | Path) -> Path:
    """Training checkpoint -> ``{"model": encoder weights, "config": ...}``, loadable by MAE's fine-tuning."""
    ckpt = load_checkpoint(checkpoint)
    sd = {
        k.removeprefix("mae."): v
        for k, v in ckpt["model"].items()
        if k.startswith("mae.") and k.removeprefix("mae.").startswith(ENCODER_PREFIXES)
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd, "config": ckpt["config"]["model"], "step": ckpt["step"]}, out)
    return out
