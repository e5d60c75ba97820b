"""Classifiers for fine-tuning and linear probing: a backbone (this project's ViT, a timm or open_clip model) plus
a head, built from any checkpoint flavour; saved and reloaded as one self-describing file.

Backbones (:data:`BACKBONES`): ``vit`` is the MAE ViT of :mod:`uniemox.models` (its ``PatchEmbed`` and ``Block``),
with MAE's fine-tuning pooling (global average pool -> ``fc_norm``) or the CLS token (-> ``norm``), drop-path and
per-layer ids for layer-wise lr decay; ``timm`` and ``open_clip`` wrap :func:`emo8.embed.encoders.load_encoder`, so
ImageNet backbones, EfficientNet-Lite0 and CLIP visual towers run through the same commands.

``--init`` takes a file or an encoder key:

* this project's pretraining checkpoint (``OUT/last.pt``), its exported encoder (``OUT/encoder.pth``), or a
  fine-tuned classifier of this module (its encoder is reused);
* a facebookresearch/mae checkpoint, a timm ViT checkpoint or a public UniEmoX checkpoint: all use MAE/timm key
  names (``patch_embed.*``, ``cls_token``, ``pos_embed``, ``blocks.N.*``, ``norm.*``); decoder, mask token, alpha/
  beta projections and classification heads are dropped and listed in the init report;
* ``timm:ARCH`` (with ``--weights PATH``), ``open_clip:ARCH/TAG`` or ``open_clip:ARCH`` (``--weights PATH``),
  ``efficientnet-lite0``.

Random weights only with ``random_init=True``; absent weights raise :class:`InitError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uniemox.checkpoint import _load
from uniemox.models.mae import ENCODER_PREFIXES, MAE_CONFIGS, MAEConfig, mae_config
from uniemox.models.pos_embed import interpolate_pos_embed, sincos_pos_embed_2d
from uniemox.models.uniemox import IMAGENET_MEAN, IMAGENET_STD
from uniemox.models.vit import Block, PatchEmbed

log = logging.getLogger(__name__)

CLASSIFIER_KIND = "uniemox-classifier"
ENCODER_KEY_FAMILIES = ("timm:", "open_clip:", "efficientnet-lite0")


class InitError(ValueError):
    """Missing or unusable initial weights; the message says what was expected."""


@dataclass(frozen=True)
class Preprocess:
    """What evaluation and prediction do to an image: resize to img_size / crop_pct, centre crop, normalise."""

    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875

    def eval_transform(self) -> Callable[[Any], torch.Tensor]:
        import timm.data

        transform: Callable[[Any], torch.Tensor] = timm.data.create_transform(
            input_size=self.img_size, is_training=False, crop_pct=self.crop_pct, interpolation="bicubic",
            mean=self.mean, std=self.std,
        )  # fmt: skip
        return transform


# --- backbones ------------------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """Image (B, 3, S, S) normalised -> pooled features (B, num_features)."""

    num_features: int
    num_layers: int  # layer ids run 0 .. num_layers (the head sits at num_layers)
    spec: dict[str, Any]  # enough to rebuild the architecture without weights
    preprocess: Preprocess

    def layer_id(self, name: str) -> int:
        """Layer id of parameter ``name`` for layer-wise lr decay (0 = input side, num_layers = top)."""
        return self.num_layers


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class ViTBackbone(Backbone):
    """The MAE encoder of :mod:`uniemox.models` (same parameter names) for classification.

    ``pool="avg"``: mean of the patch tokens -> ``fc_norm`` (MAE fine-tuning; the encoder's final ``norm`` is not
    used). ``pool="cls"``: the CLS token after ``norm`` (MAE linear probing). Drop-path grows linearly from 0 to
    ``drop_path`` over the blocks. Layer ids: patch embedding, CLS and position embeddings 0, block i -> i + 1,
    the rest (``fc_norm``/``norm``) depth + 1, as in MAE's ``lr_decay.py``.
    """

    def __init__(self, arch: MAEConfig, pool: str = "avg", drop_path: float = 0.0) -> None:
        super().__init__()
        if pool not in ("avg", "cls"):
            raise ValueError(f"pool must be 'avg' or 'cls', got {pool!r}")
        d = arch.embed_dim
        self.arch, self.pool = arch, pool
        self.patch_embed = PatchEmbed(arch.img_size, arch.patch_size, arch.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(d, self.patch_embed.grid_size)[None])
        self.blocks = nn.ModuleList([Block(d, arch.num_heads, arch.mlp_ratio) for _ in range(arch.depth)])
        self.drop_path_rates = [float(x) for x in torch.linspace(0, drop_path, arch.depth)]
        self.norm: nn.Module = nn.LayerNorm(d, eps=1e-6) if pool == "cls" else nn.Identity()
        self.fc_norm: nn.Module = nn.LayerNorm(d, eps=1e-6) if pool == "avg" else nn.Identity()
        self.num_features, self.num_layers = d, arch.depth + 1
        self.spec = {"kind": "vit", "arch": asdict(arch), "pool": pool, "drop_path": drop_path}
        self.preprocess = Preprocess(img_size=arch.img_size)
        nn.init.normal_(self.cls_token, std=0.02)

    def layer_id(self, name: str) -> int:
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        match = re.match(r"blocks\.(\d+)\.", name)
        return int(match[1]) + 1 if match else self.num_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + L, D)
        for blk, p in zip(self.blocks, self.drop_path_rates, strict=True):
            if p == 0.0 or not self.training:
                x = blk(x)
            else:  # Block's own residual structure, with stochastic depth on each branch
                block: Any = blk
                x = x + _drop_path(block.attn(block.norm1(x)), p, True)
                x = x + _drop_path(block.mlp(block.norm2(x)), p, True)
        if self.pool == "avg":
            out: torch.Tensor = self.fc_norm(x[:, 1:].mean(dim=1))
            return out
        out = self.norm(x)[:, 0]
        return out


class EncoderBackbone(Backbone):
    """A timm model or an open_clip visual tower loaded through :mod:`emo8.embed.encoders` (one layer for lr decay)."""

    def __init__(self, key: str, weights: str | None, random_init: bool) -> None:
        super().__init__()
        from emo8.embed.encoders import EncoderKeyError, EncoderSpec, WeightsError, load_encoder

        try:
            enc = load_encoder(EncoderSpec(key, weights=weights, random_init=random_init, device="cpu"))
        except (WeightsError, EncoderKeyError) as exc:
            raise InitError(str(exc)) from exc
        model: Any = enc.model
        self.family = "open_clip" if key.startswith("open_clip:") else "timm"
        if self.family == "open_clip":
            self.net: nn.Module = model.visual
            size = getattr(model.visual, "image_size", 224)
            size = int(size[0] if isinstance(size, (tuple, list)) else size)
            mean = tuple(getattr(model.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
            std = tuple(getattr(model.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
            self.preprocess = Preprocess(size, mean, std, 1.0)  # type: ignore[arg-type]
            self.num_features = int(model.visual.output_dim)
        else:
            import timm.data

            self.net = model
            cfg = timm.data.resolve_model_data_config(model)
            self.preprocess = Preprocess(int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]),
                                         float(cfg.get("crop_pct", 0.875)))  # fmt: skip
            self.num_features = int(model.num_features)
        self.num_layers = 0
        self.spec = {"kind": "encoder", "key": key}
        self.fingerprint = enc.fingerprint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net: Any = self.net
        if self.family == "open_clip":
            out: torch.Tensor = net(x)
            return out
        out = net.forward_head(net.forward_features(x), pre_logits=True)
        return out


# --- the classifier -------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """backbone -> head. ``linear_probe``: the head is BatchNorm1d(affine=False) + Linear (MAE's protocol)."""

    def __init__(self, backbone: Backbone, num_classes: int, linear_probe: bool = False) -> None:
        super().__init__()
        self.backbone, self.linear_probe = backbone, linear_probe
        d = backbone.num_features
        linear = nn.Linear(d, num_classes)
        nn.init.trunc_normal_(linear.weight, std=0.01 if linear_probe else 2e-5)
        nn.init.zeros_(linear.bias)
        self.head: nn.Module = (
            nn.Sequential(nn.BatchNorm1d(d, affine=False, eps=1e-6), linear) if linear_probe else linear
        )
        if linear_probe:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.linear_probe:
            self.backbone.eval()  # frozen: no drop-path, no BatchNorm statistics updates
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear_probe:
            with torch.no_grad():
                return self.backbone(x)
        out: torch.Tensor = self.backbone(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


# --- initial weights ------------------------------------------------------------------------------------------


@dataclass
class InitReport:
    """What ``--init`` loaded: flavour, loaded/missing/dropped keys."""

    source: str
    flavour: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    interpolated: bool = False


@dataclass
class EncoderWeights:
    state_dict: dict[str, torch.Tensor]
    arch: MAEConfig | None  # known architecture (our checkpoints); None = infer from the tensors
    flavour: str
    dropped: list[str]
    backbone_spec: dict[str, Any] | None = None  # set for classifier checkpoints


def _strip(sd: dict[str, Any]) -> dict[str, Any]:
    sd = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    for prefix in ("mae.", "encoder.", "backbone.", "visual_encoder."):
        if sd and sum(k.startswith(prefix) for k in sd) >= len(sd) / 2:
            sd = {k.removeprefix(prefix): v for k, v in sd.items()}
    return sd


def _arch_from_model_config(m: dict[str, Any]) -> MAEConfig:
    return mae_config(m.get("name", "mae_vit_large_patch16"), img_size=m.get("img_size"),
                      patch_size=m.get("patch_size"), embed_dim=m.get("embed_dim"), depth=m.get("depth"),
                      num_heads=m.get("num_heads"))  # fmt: skip


def read_encoder_checkpoint(path: str | Path) -> EncoderWeights:
    """Any supported checkpoint file -> the ViT encoder's tensors under MAE/timm names (see module docstring)."""
    ckpt = _load(path)
    if not isinstance(ckpt, dict):
        raise InitError(f"{path} is not a checkpoint (a dict of tensors)")
    if ckpt.get("kind") == CLASSIFIER_KIND:
        sd = {k.removeprefix("backbone."): v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
        spec = ckpt["backbone"]
        arch = MAEConfig(**spec["arch"]) if spec.get("kind") == "vit" else None
        return EncoderWeights(sd, arch, "uniemox-classifier", ["head.*"], spec)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    if config is not None and "optimizer" in ckpt and "teacher" in config:  # a pretraining checkpoint
        flavour, arch = "uniemox-pretrain", _arch_from_model_config(config["model"])
    elif (
        config is not None and "name" in config and "model" in ckpt
    ):  # `uniemox export-encoder` / encoder.pth
        flavour, arch = "uniemox-encoder", _arch_from_model_config(config)
    else:
        flavour, arch = "mae/timm", None
    raw = ckpt.get("model", ckpt.get("state_dict", ckpt))
    if not isinstance(raw, dict):
        raise InitError(f"{path} holds no state dict")
    sd = _strip(raw)
    keep = {k: v for k, v in sd.items() if k.startswith((*ENCODER_PREFIXES, "fc_norm."))}
    dropped = sorted(k for k in sd if k not in keep)
    if flavour == "mae/timm" and any(
        re.match(r"(alpha|beta|proj_scene|proj_person|fusion)", k) for k in dropped
    ):
        flavour = "uniemox-public"
    elif flavour == "mae/timm" and any(k.startswith("decoder") for k in dropped):
        flavour = "mae"
    if "cls_token" not in keep or not any(k.startswith("blocks.") for k in keep):
        raise InitError(
            f"{path} holds no ViT encoder (no cls_token / blocks.N.* among {len(sd)} tensors, e.g. "
            f"{sorted(sd)[:5]}); expected a UniEmoX pretraining checkpoint, an exported encoder, an MAE, timm-ViT "
            "or public UniEmoX checkpoint, or use an encoder key (timm:ARCH --weights PATH, open_clip:ARCH/TAG)"
        )
    return EncoderWeights(keep, arch, flavour, dropped)


def infer_vit_config(sd: dict[str, torch.Tensor], num_heads: int | None = None) -> MAEConfig:
    """Architecture of an MAE/timm ViT state dict (heads from the registered size of the same width)."""
    d = int(sd["cls_token"].shape[-1])
    patch = int(sd["patch_embed.proj.weight"].shape[-1])
    depth = 1 + max(int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    mlp_ratio = sd["blocks.0.mlp.fc1.weight"].shape[0] / d
    grid = round((sd["pos_embed"].shape[1] - 1) ** 0.5) if "pos_embed" in sd else 14
    heads = num_heads or next(
        (c.num_heads for c in MAE_CONFIGS.values() if c.embed_dim == d), max(1, d // 64)
    )
    return MAEConfig(img_size=grid * patch, patch_size=patch, embed_dim=d, depth=depth, num_heads=heads,
                     mlp_ratio=mlp_ratio)  # fmt: skip


def _load_vit_weights(backbone: ViTBackbone, w: EncoderWeights, source: str) -> InitReport:
    own = backbone.state_dict()
    sd = dict(w.state_dict)
    report = InitReport(source, w.flavour, dropped=list(w.dropped))
    if "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
        sd["pos_embed"] = interpolate_pos_embed(sd["pos_embed"], backbone.patch_embed.num_patches)
        report.interpolated = True
    if backbone.pool == "avg":
        report.dropped += [k for k in sd if k.startswith("norm.")]  # MAE: fc_norm replaces norm
    clean = {k: v for k, v in sd.items() if k in own}
    bad = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in clean.items() if v.shape != own[k].shape
    ]
    if bad:
        raise InitError(f"{source} does not fit the ViT {backbone.arch}: {bad[:5]}")
    missing, _ = backbone.load_state_dict(clean, strict=False)
    report.missing = sorted(missing)
    essential = [k for k in report.missing if not k.startswith(("fc_norm.", "norm.", "pos_embed"))]
    if essential:
        raise InitError(f"{source} lacks encoder weights {essential[:5]} ({len(essential)} in all)")
    report.loaded = len(clean)
    return report


@dataclass
class BackboneRequest:
    """How to build the backbone (see :func:`build_backbone`)."""

    init: str | None = None
    weights: str | None = None
    random_init: bool = False
    model: str = "mae_vit_base_patch16"  # ViT size for --random-init
    img_size: int | None = None  # None: the checkpoint's / 224
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    pool: str = "avg"
    drop_path: float = 0.0


def build_backbone(req: BackboneRequest) -> tuple[Backbone, InitReport]:
    """Backbone with its initial weights, and what was loaded. Never random unless ``random_init``."""
    init = req.init
    if init and init.startswith(ENCODER_KEY_FAMILIES):
        enc = EncoderBackbone(init, req.weights, req.random_init)
        return enc, InitReport(init, "random-init" if req.random_init else enc.spec["key"])
    if init is None:
        if not req.random_init:
            raise InitError(
                "no initial weights: pass --init CKPT (a UniEmoX pretraining checkpoint or encoder.pth, an MAE/"
                "timm/UniEmoX checkpoint, or timm:ARCH / open_clip:ARCH/TAG), or --random-init to train from "
                "scratch"
            )
        arch = mae_config(req.model, img_size=req.img_size or 224, patch_size=req.patch_size,
                          embed_dim=req.embed_dim, depth=req.depth, num_heads=req.num_heads)  # fmt: skip
        return ViTBackbone(arch, req.pool, req.drop_path), InitReport("random", "random-init")
    if req.random_init:
        raise InitError("pass either --init or --random-init, not both")
    path = Path(init).expanduser()
    if not path.is_file():
        raise InitError(
            f"checkpoint {path} does not exist; --init takes a checkpoint file or an encoder key "
            f"({', '.join(ENCODER_KEY_FAMILIES)}...)"
        )
    weights = read_encoder_checkpoint(path)
    if weights.backbone_spec is not None and weights.backbone_spec.get("kind") == "encoder":
        enc = EncoderBackbone(weights.backbone_spec["key"], None, random_init=True)  # architecture only
        enc.load_state_dict(weights.state_dict)
        return enc, InitReport(str(path), weights.flavour, loaded=len(weights.state_dict))
    arch = weights.arch or infer_vit_config(weights.state_dict, req.num_heads)
    if req.img_size:
        arch = MAEConfig(**{**asdict(arch), "img_size": req.img_size})
    backbone = ViTBackbone(arch, req.pool, req.drop_path)
    report = _load_vit_weights(backbone, weights, str(path))
    log.info("init %s (%s): %d tensors, dropped %d", path, report.flavour, report.loaded, len(report.dropped))
    return backbone, report


def rebuild_backbone(spec: dict[str, Any]) -> Backbone:
    """The architecture a classifier checkpoint describes (weights are loaded by the caller)."""
    if spec["kind"] == "vit":
        return ViTBackbone(MAEConfig(**spec["arch"]), spec["pool"], spec.get("drop_path", 0.0))
    return EncoderBackbone(spec["key"], None, random_init=True)


# --- classifier checkpoints -----------------------------------------------------------------------------------


def classifier_state(
    model: Classifier, classes: tuple[str, ...], dataset: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The self-describing checkpoint written as ``best.pt``/``final.pt``."""
    return {
        "kind": CLASSIFIER_KIND,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "backbone": model.backbone.spec,
        "linear_probe": model.linear_probe,
        "classes": list(classes),
        "dataset": dataset,
        "preprocess": asdict(model.backbone.preprocess),
        **(extra or {}),
    }


@dataclass
class LoadedClassifier:
    model: Classifier
    classes: tuple[str, ...]
    dataset: str
    preprocess: Preprocess
    meta: dict[str, Any]


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> LoadedClassifier:
    """A checkpoint written by ``uniemox finetune`` (``OUT/best.pt``, or ``OUT/last.pt``), ready for eval."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "best.pt"
    ckpt = _load(p)
    if isinstance(ckpt, dict) and "classifier" in ckpt and ckpt.get("kind") != CLASSIFIER_KIND:
        ckpt = ckpt["classifier"]  # a training state (last.pt) carries the classifier checkpoint inside
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CLASSIFIER_KIND:
        raise InitError(f"{p} is not a fine-tuned UniEmoX classifier (write one with `uniemox finetune`)")
    backbone = rebuild_backbone(ckpt["backbone"])
    model = Classifier(backbone, len(ckpt["classes"]), bool(ckpt["linear_probe"]))
    model.load_state_dict(ckpt["model"])
    pre = ckpt.get("preprocess") or {}
    preprocess = Preprocess(int(pre.get("img_size", 224)), tuple(pre.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
                            tuple(pre.get("std", IMAGENET_STD)), float(pre.get("crop_pct", 0.875)))  # type: ignore[arg-type]  # fmt: skip
    model.backbone.preprocess = preprocess
    meta = {k: v for k, v in ckpt.items() if k not in ("model",)}
    return LoadedClassifier(
        model.eval().to(device), tuple(ckpt["classes"]), str(ckpt["dataset"]), preprocess, meta
    )
