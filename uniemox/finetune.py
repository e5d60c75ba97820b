"""Fine-tuning and linear probing on the emotion benchmarks (MAE's recipe), one process or torchrun DDP.

Fine-tuning (defaults = the paper's recipe): global-average-pooled ViT -> fc_norm -> linear head; drop-path 0.2;
AdamW (0.9, 0.999), weight decay 0.05 (not on norms, biases, position/class tokens), lr = base_lr x batch / 256
with base_lr 1e-3; layer-wise lr decay 0.75, applied: the parameters of layer i (0 = patch embedding, CLS and
position embeddings; i = block i-1; depth + 1 = fc_norm and head) train with lr x 0.75 ** (depth + 1 - i);
5 warm-up epochs then cosine to 1e-6; RandAugment m9-mstd0.5, random erasing 0.25, mixup 0.8, cutmix 1.0,
label smoothing 0.1 (timm). Model selection on validation top-1 (``best.pt``); the best model is then evaluated
on the test split (``metrics.json``).

Linear probing (``linear_probe=True``, MAE's protocol): frozen encoder in eval mode, CLS token after ``norm``,
BatchNorm1d(affine=False) + linear head, LARS, base_lr 0.1, no weight decay, random-resized-crop + flip only;
``cache_features=True`` computes the frozen features once (centre crops) and trains the head on them.

Determinism: every sample's augmentation is seeded by (seed, epoch, index) and every step's mixup and drop-path
by (seed, step, rank); the batch order comes from :class:`uniemox.data.GlobalBatchSampler`. So a resumed run
continues exactly, and N processes with batch B/N take the same steps as one process with batch B (without mixup,
whose pairs are formed inside each rank's batch).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset

from uniemox.benchmarks import BenchmarkError, LabeledSource, MissingSplitError, open_benchmark
from uniemox.checkpoint import _load
from uniemox.classifier import (
    BackboneRequest,
    Classifier,
    Preprocess,
    build_backbone,
    classifier_state,
)
from uniemox.data import GlobalBatchSampler
from uniemox.evaluate import batched, compute_metrics, source_probs, write_eval_outputs
from uniemox.train import WarmupCosine, init_distributed

log = logging.getLogger(__name__)
LOG_FIELDS = ("step", "epoch", "lr", "loss", "val_top1", "val_top3", "images_per_s")

#: Settings that may change on resume without changing the math.
RESUME_FREE = frozenset({"out", "num_workers", "device", "progress", "stop_at", "eval_batch_size"})

#: Recipe defaults per mode; a FinetuneConfig field left at None takes its mode's value.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "finetune": {"optimizer": "adamw", "base_lr": 1e-3, "weight_decay": 0.05, "layer_decay": 0.75,
                 "warmup_epochs": 5.0, "drop_path": 0.2, "smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0,
                 "randaug": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "pool": "avg"},
    "linear_probe": {"optimizer": "lars", "base_lr": 0.1, "weight_decay": 0.0, "layer_decay": 1.0,
                     "warmup_epochs": 10.0, "drop_path": 0.0, "smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0,
                     "randaug": "", "reprob": 0.0, "pool": "cls"},
}  # fmt: skip


@dataclass
class FinetuneConfig:
    out: str = "runs/finetune"
    data: str = ""
    dataset: str = "emo8"
    init: str | None = None  # checkpoint file or encoder key (see uniemox.classifier)
    weights: str | None = None  # weights file for timm:/open_clip: keys
    random_init: bool = False
    model: str = "mae_vit_base_patch16"  # ViT size with --random-init
    img_size: int | None = None
    patch_size: int | None = None  # ViT overrides with --random-init (tiny test models)
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    linear_probe: bool = False
    cache_features: bool = False
    polarity: bool = False
    soft_labels: bool = False
    fraction: float = 1.0
    fraction_seed: int = 0
    epochs: int = 100
    max_steps: int | None = None  # optimiser steps; overrides epochs (and sets the schedule's length)
    stop_at: int | None = None  # stop (with a checkpoint) after this step, schedule unchanged; resume later
    batch_size: int = 64  # per rank
    optimizer: str | None = None  # adamw | lars | sgd
    base_lr: float | None = None
    min_lr: float = 1e-6
    weight_decay: float | None = None
    layer_decay: float | None = None
    warmup_epochs: float | None = None
    warmup_steps: int | None = None
    drop_path: float | None = None
    smoothing: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    randaug: str | None = None  # timm auto_augment string; "" = none
    reprob: float | None = None
    pool: str | None = None  # avg | cls
    clip_grad: float | None = None
    seed: int = 0
    num_workers: int = 4
    device: str = "auto"
    eval_batch_size: int = 64
    image_col: str | None = None
    label_col: str | None = None
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> FinetuneConfig:
        """A copy with every None recipe field set from :data:`PROTOCOLS` for this mode."""
        proto = PROTOCOLS["linear_probe" if self.linear_probe else "finetune"]
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in proto.items():
            if values.get(k) is None:
                values[k] = v
        return FinetuneConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- optimiser: layer-wise lr decay ---------------------------------------------------------------------------

NO_DECAY = ("pos_embed", "cls_token")


def layer_scales(num_layers: int, decay: float) -> list[float]:
    """lr multiplier of layer ids 0 .. num_layers (the top, where the head sits): decay ** (num_layers - id)."""
    return [decay ** (num_layers - i) for i in range(num_layers + 1)]


def param_groups_lrd(
    model: Classifier, lr: float, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """One group per (layer, decay/no-decay), each with its own ``lr`` = ``lr x scale`` (MAE's lr_decay.py)."""
    top = model.backbone.num_layers
    scales = layer_scales(top, layer_decay)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = top if name.startswith("head") else model.backbone.layer_id(name.removeprefix("backbone."))
        no_decay = p.ndim == 1 or name.rsplit(".", 1)[-1] in NO_DECAY
        g = groups.setdefault((layer, no_decay), {
            "params": [], "names": [], "layer_id": layer, "lr_scale": scales[layer], "lr": lr * scales[layer],
            "weight_decay": 0.0 if no_decay else weight_decay,
        })  # fmt: skip
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def make_optimizer(name: str, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    plain = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    if name == "adamw":
        return torch.optim.AdamW(plain, lr=lr, betas=(0.9, 0.999))
    if name == "sgd":
        return torch.optim.SGD(plain, lr=lr, momentum=0.9)
    if name == "lars":
        from timm.optim import Lars

        return Lars(plain, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose adamw, lars or sgd")


# --- targets and losses ---------------------------------------------------------------------------------------


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c target_c log softmax(logits)_c; target rows are distributions."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def smooth(target: torch.Tensor, smoothing: float) -> torch.Tensor:
    return target * (1 - smoothing) + smoothing / target.shape[-1]


def training_targets(source: LabeledSource, soft_labels: bool) -> np.ndarray:
    """(N, C) target distributions: one-hot labels, or Emo8's vote distributions with ``soft_labels``."""
    if soft_labels:
        if source.soft is None:
            raise BenchmarkError(
                f"--soft-labels needs a label_distribution column (Emo8 releases); {source.dataset} has none"
            )
        return source.soft.astype(np.float32)
    return np.eye(len(source.classes), dtype=np.float32)[source.labels]


def fraction_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified ``fraction`` of the items (at least one per class), the same for the same labels and seed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, 7919])
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(idx)[: max(1, math.ceil(fraction * len(idx)))])
    return np.sort(np.concatenate(chosen))


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


# --- datasets -------------------------------------------------------------------------------------------------


class TrainImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Indexed by (epoch, index): the augmented image, seeded by (seed, epoch, index), and its target row."""

    def __init__(self, source: LabeledSource, targets: np.ndarray, transform: Callable[[Any], torch.Tensor],
                 seed: int) -> None:  # fmt: skip
        self.source, self.targets, self.transform, self.seed = (
            source,
            torch.from_numpy(targets),
            transform,
            seed,
        )

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        s = _seed_of(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)
            x = self.transform(self.source.load_image(index))
        random.setstate(py_state)
        np.random.set_state(np_state)
        return x, self.targets[index]


class TrainFeatures(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, features: torch.Tensor, targets: np.ndarray) -> None:
        self.features, self.targets = features, torch.from_numpy(targets)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[key[1]], self.targets[key[1]]


def _posterize_at_least_one_bit(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize, except that 0 bits (RandAugment's top magnitude with ``inc1``) keeps 1 bit: Pillow >= 11
    refuses 0 bits (older Pillow returned a black image; 1 bit is the nearest it accepts)."""
    from PIL import ImageOps

    return img if bits_to_keep >= 8 else ImageOps.posterize(img, max(1, int(bits_to_keep)))


def _safe_randaugment(transform: Any) -> None:
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if "Posterize" in str(getattr(op, "name", "")):
                op.aug_fn = _posterize_at_least_one_bit


def train_transform(cfg: FinetuneConfig, pre: Preprocess) -> Callable[[Any], torch.Tensor]:
    import timm.data

    transform: Callable[[Any], torch.Tensor] = timm.data.create_transform(
        input_size=pre.img_size, is_training=True, auto_augment=cfg.randaug or None, color_jitter=None,  # type: ignore[arg-type]
        re_prob=cfg.reprob or 0.0, re_mode="pixel", re_count=1, interpolation="bicubic", mean=pre.mean,
        std=pre.std,
    )  # fmt: skip
    _safe_randaugment(transform)
    return transform


def _feature_cache(model: Classifier, source: LabeledSource, cfg: FinetuneConfig, out: Path, device: torch.device
                   ) -> torch.Tensor:  # fmt: skip
    """Frozen-encoder features of every image (centre crops), cached under ``out/features``."""
    key = hashlib.sha256(
        json.dumps([cfg.init, cfg.weights, model.backbone.spec, source.dataset, source.split, source.ids,
                    asdict(model.backbone.preprocess)], default=str).encode()
    ).hexdigest()[:16]  # fmt: skip
    path = out / "features" / f"{source.split}-{key}.pt"
    if path.is_file():
        return torch.as_tensor(torch.load(path, weights_only=True))
    backbone = model.backbone.eval()
    feats = torch.from_numpy(batched(backbone, source.load_image, len(source),
                                     model.backbone.preprocess.eval_transform(), batch_size=cfg.eval_batch_size,
                                     num_workers=cfg.num_workers, device=device))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return feats


# --- the loop -------------------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    out: Path
    steps: int
    best_val_top1: float | None
    test_metrics: dict[str, Any] | None
    history: list[dict[str, float]]


def _open_split(cfg: FinetuneConfig, split: str, required: bool) -> LabeledSource | None:
    try:
        return open_benchmark(cfg.dataset, cfg.data, split, polarity=cfg.polarity, image_col=cfg.image_col,
                              label_col=cfg.label_col)  # fmt: skip
    except MissingSplitError as exc:
        if required:
            raise
        log.warning("no %s split (%s)", split, exc)
        return None


def _evaluate_probs(model: Classifier, source: LabeledSource, cfg: FinetuneConfig, device: torch.device,
                    feats: torch.Tensor | None) -> np.ndarray:  # fmt: skip
    if feats is not None:
        model.eval()
        with torch.no_grad():
            return F.softmax(model.head(feats.to(device)).float(), -1).cpu().numpy()
    return source_probs(model, source, model.backbone.preprocess.eval_transform(), batch_size=cfg.eval_batch_size,
                        num_workers=cfg.num_workers, device=device)  # fmt: skip


def finetune(cfg: FinetuneConfig, resume: str | None = None) -> FinetuneResult:
    """Fine-tune or linear-probe; writes OUT/{config.json, log.csv, init_report.json, best.pt, last.pt,
    metrics.json (best model on test), eval-*/}. ``resume``: a last.pt path or "auto"."""
    cfg = cfg.resolved()
    info = init_distributed(cfg.device)
    device = info.device
    out = Path(cfg.out)
    ckpt: dict[str, Any] | None = None
    if resume == "auto":
        resume = str(out / "last.pt") if (out / "last.pt").is_file() else None
    if resume is not None:
        ckpt = _load(resume)
        if "optimizer" not in ckpt or "classifier" not in ckpt:
            raise ValueError(f"{resume} is not a fine-tuning training state (OUT/last.pt)")
        saved = ckpt["classifier"].get("config") or {}
        changed = sorted(k for k, v in cfg.to_dict().items() if k not in RESUME_FREE and saved.get(k, v) != v)
        if changed:
            log.warning("resuming with settings that differ from the checkpoint's: %s", changed)

    torch.manual_seed(cfg.seed)  # the same head initialisation on every rank
    backbone, report = build_backbone(BackboneRequest(
        init=cfg.init, weights=cfg.weights, random_init=cfg.random_init, model=cfg.model, img_size=cfg.img_size,
        patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
        pool=cfg.pool or "avg", drop_path=cfg.drop_path or 0.0,
    ))  # fmt: skip
    train_src = _open_split(cfg, "train", True)
    assert train_src is not None
    val_src = _open_split(cfg, "val", False)
    test_src = _open_split(cfg, "test", False)
    keep = fraction_indices(train_src.labels, cfg.fraction, cfg.fraction_seed)
    if len(keep) != len(train_src):
        train_src = train_src.subset(keep)
    targets = training_targets(train_src, cfg.soft_labels)

    num_classes = len(train_src.classes)
    model = Classifier(backbone, num_classes, cfg.linear_probe).to(device)

    use_cache = cfg.linear_probe and cfg.cache_features
    train_feats = val_feats = None
    if use_cache:
        train_feats = _feature_cache(model, train_src, cfg, out, device).cpu()
        val_feats = _feature_cache(model, val_src, cfg, out, device) if val_src is not None else None
        dataset: Dataset[Any] = TrainFeatures(train_feats, targets)
    else:
        dataset = TrainImages(train_src, targets, train_transform(cfg, backbone.preprocess), cfg.seed)

    eff_batch = cfg.batch_size * info.world_size
    lr = float(cfg.base_lr or 0.0) * eff_batch / 256
    steps_per_epoch = len(train_src) // eff_batch
    if steps_per_epoch == 0:
        raise BenchmarkError(f"{len(train_src)} training images are fewer than one batch of {eff_batch}")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup = (
        cfg.warmup_steps
        if cfg.warmup_steps is not None
        else round((cfg.warmup_epochs or 0) * steps_per_epoch)
    )
    groups = param_groups_lrd(model, lr, float(cfg.weight_decay or 0.0), float(cfg.layer_decay or 1.0))
    optimizer = make_optimizer(cfg.optimizer or "adamw", groups, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup, total, cfg.min_lr / max(lr, 1e-12))
    )
    step, best, best_step = 0, -1.0, 0
    history: list[dict[str, float]] = []
    if ckpt is not None:
        model.load_state_dict(ckpt["classifier"]["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, best, best_step = int(ckpt["step"]), float(ckpt["best_val_top1"]), int(ckpt["best_step"])
        log.info("resumed at step %d", step)

    mixup_fn = None
    if (cfg.mixup or 0) > 0 or (cfg.cutmix or 0) > 0:
        from timm.data import Mixup

        if cfg.batch_size % 2:
            raise ValueError(f"mixup/cutmix need an even batch size per process, got {cfg.batch_size}")
        mixup_fn = Mixup(mixup_alpha=cfg.mixup or 0.0, cutmix_alpha=cfg.cutmix or 0.0, label_smoothing=0.0,
                         num_classes=num_classes)  # fmt: skip

    train_module: nn.Module = model.head if use_cache else model
    ddp: nn.Module = (DDP(train_module, device_ids=[device.index] if device.type == "cuda" else None)
                      if info.world_size > 1 else train_module)  # fmt: skip
    sampler = GlobalBatchSampler(
        len(train_src), cfg.batch_size, info.world_size, info.rank, cfg.seed, total, step
    )
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=0 if use_cache else cfg.num_workers,
                        pin_memory=device.type == "cuda")  # fmt: skip
    extra = {"init": cfg.init if not cfg.random_init else f"random:{cfg.model}", "fraction": cfg.fraction,
             "polarity": cfg.polarity, "soft_labels": cfg.soft_labels, "config": cfg.to_dict()}  # fmt: skip
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        (out / "init_report.json").write_text(json.dumps(asdict(report), indent=2))
        (out / "lr_groups.json").write_text(json.dumps(
            [{"layer_id": g["layer_id"], "lr_scale": g["lr_scale"], "lr": g["lr"], "params": g["names"]}
             for g in groups], indent=2))  # fmt: skip
        log.info("lr %.3g (base %.3g x %d / 256), %d steps (%d/epoch), warm-up %d, layer decay %s",
                 lr, cfg.base_lr, eff_batch, total, steps_per_epoch, warmup, cfg.layer_decay)  # fmt: skip
    log_file = (out / "log.csv").open("a", newline="") if info.is_main else None
    writer = csv.DictWriter(log_file, fieldnames=LOG_FIELDS) if log_file is not None else None
    if writer is not None and log_file is not None and log_file.tell() == 0:
        writer.writeheader()

    def validate() -> dict[str, float]:
        if val_src is None or not info.is_main:
            return {}
        probs = _evaluate_probs(model, val_src, cfg, device, val_feats)
        m = compute_metrics(probs, val_src.labels, val_src.classes)
        return {"val_top1": m["top1"], "val_top3": m["top3"]}

    def save(path: Path, state: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    train_module.train()
    model.train()
    t0, seen = time.perf_counter(), 0
    for x, y in loader:
        s = _seed_of(cfg.seed, step, info.rank)
        torch.manual_seed(s)  # drop-path
        np.random.seed(s % 2**32)  # timm's mixup draws from numpy
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        y = smooth(y, cfg.smoothing or 0.0)
        if mixup_fn is not None:
            lam = mixup_fn._mix_batch(x)  # mixes x in place (batch mode), returns the mixing weight
            y = lam * y + (1 - lam) * y.flip(0)
        with autocast:
            logits = ddp(x)
        loss = soft_cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optimizer.step()
        current_lr = float(optimizer.param_groups[-1]["lr"])
        scheduler.step()
        step += 1
        seen += len(x) * info.world_size
        if step % steps_per_epoch == 0 or step in (total, cfg.stop_at):
            row: dict[str, float] = {"step": step, "epoch": (step - 1) // steps_per_epoch, "lr": current_lr,
                                     "loss": float(loss.detach()),
                                     "images_per_s": seen / max(time.perf_counter() - t0, 1e-9)}  # fmt: skip
            row.update(validate())
            model.train()
            history.append(row)
            if info.is_main:
                assert writer is not None and log_file is not None
                writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})
                log_file.flush()
                score = row.get("val_top1", float(step))  # no validation split: the latest model wins
                state = classifier_state(model, train_src.classes, train_src.dataset,
                                         {**extra, "step": step, "val_top1": row.get("val_top1")})  # fmt: skip
                if score > best:
                    best, best_step = score, step
                    save(out / "best.pt", state)
                save(out / "last.pt", {"classifier": state, "optimizer": optimizer.state_dict(),
                                       "scheduler": scheduler.state_dict(), "step": step, "best_val_top1": best,
                                       "best_step": best_step})  # fmt: skip
            if info.world_size > 1:
                dist.barrier()
            t0, seen = time.perf_counter(), 0
        if cfg.stop_at is not None and step >= cfg.stop_at:
            break
    if log_file is not None:
        log_file.close()

    test_metrics = None
    if info.is_main and test_src is not None and step >= total and (out / "best.pt").is_file():
        from uniemox.classifier import load_classifier

        best_clf = load_classifier(out / "best.pt", device)
        probs = source_probs(best_clf.model, test_src, best_clf.preprocess.eval_transform(),
                             batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers, device=device)  # fmt: skip
        test_metrics = compute_metrics(
            probs, test_src.labels, test_src.classes, test_src.domains, test_src.soft
        )
        test_metrics.update({"dataset": test_src.dataset, "split": "test", "run": out.name, "checkpoint":
                             str(out / "best.pt"), "init": extra["init"], "polarity": cfg.polarity,
                             "mode": "linear-probe" if cfg.linear_probe else "finetune", "fraction": cfg.fraction,
                             "soft_labels": cfg.soft_labels, "best_step": best_step,
                             "best_val_top1": best if val_src is not None else None})  # fmt: skip
        write_eval_outputs(out / f"eval-{test_src.dataset}-test", test_metrics, probs, test_src)
        (out / "metrics.json").write_text(json.dumps(test_metrics, indent=2))
    if info.world_size > 1:
        dist.barrier()
    return FinetuneResult(out, step, best if val_src is not None else None, test_metrics, history)
