"""UniEmoX pretraining loop: one process, or torchrun DDP (NCCL on GPUs, gloo on CPU). Only rank 0 writes.

The loop never waits for the GPU between log rows: loss terms and the gradient norm are summed on the device
and fetched (and reduced across ranks) once per ``log_every`` steps; images arrive as uint8 and become floats
on the device.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from uniemox.checkpoint import (
    encoder_state_dict,
    load_checkpoint,
    load_mae_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from uniemox.config import PretrainConfig, option_of
from uniemox.data import (
    AugmentConfig,
    GlobalBatchSampler,
    PretrainDataset,
    SampleMeta,
    build_prompts,
    open_source,
    to_unit,
)
from uniemox.losses import LossWeights, pretraining_losses
from uniemox.models import ClipTeacher, UniEmoX, mae_config, prompt_embeddings

log = logging.getLogger(__name__)
LOG_FIELDS = ("step", "epoch", "lr", "loss", "l_sim", "l_con", "l_rec", "grad_norm", "images_per_s", "data_s",
              "step_s", "person_fallback", "gpu_mem_gb")  # fmt: skip
#: Values averaged over the steps of a log row (on the device, fetched once per row).
MEAN_FIELDS = ("loss", "l_sim", "l_con", "l_rec", "grad_norm")


# --- distributed ---


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Read torchrun's environment; NCCL when on CUDA, gloo otherwise."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return DistInfo(rank, world, torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def reduce_log_values(sums: torch.Tensor, fallback: int, info: DistInfo) -> tuple[list[float], int]:
    """This rank's on-device sums (MEAN_FIELDS) and person-fallback count -> the means over ranks and the
    count summed over ranks, in ONE all-reduce and one device-to-host copy."""
    t = torch.cat(
        [sums.to(torch.float64), torch.tensor([float(fallback)], dtype=torch.float64, device=sums.device)]
    )
    if info.world_size > 1:
        dist.all_reduce(t)
    values = t.tolist()
    return [v / info.world_size for v in values[:-1]], round(values[-1])


def gather_prompt_ids(ids: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's (b,) prompt ids -> the global micro-batch's (b * world,), in rank order."""
    if info.world_size == 1:
        return ids
    parts = [torch.empty_like(ids) for _ in range(info.world_size)]
    dist.all_gather(parts, ids)
    return torch.cat(parts)


# --- optimiser and schedule ---

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: not on norms, biases, position or class/mask tokens."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class WarmupCosine:
    """LR multiplier per optimiser step: linear warm-up to 1, then cosine down to ``min_ratio``."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --- logging ---


class RunLogger:
    """CSV (always) and TensorBoard (when installed) on rank 0; a no-op elsewhere."""

    def __init__(self, out: Path, active: bool, tensorboard: bool) -> None:
        self.active = active
        self.tb: Any = None
        if not active:
            return
        self.file = (out / "log.csv").open("a", newline="")
        self.csv = csv.DictWriter(self.file, fieldnames=LOG_FIELDS)
        if self.file.tell() == 0:
            self.csv.writeheader()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:
                log.info("tensorboard is not installed: CSV log only")

    def write(self, row: dict[str, float]) -> None:
        if not self.active:
            return
        self.csv.writerow({k: row.get(k, "") for k in LOG_FIELDS})
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch"):
                    self.tb.add_scalar(f"pretrain/{k}", v, int(row["step"]))

    def close(self) -> None:
        if self.active:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _progress(active: bool, total: int, start: int) -> tuple[Any, Any]:
    if not active:
        return nullcontext(), None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("pretrain"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn())  # fmt: skip
    return bar, bar.add_task("pretrain", total=total, completed=start, info="")


# --- set-up ---


def _merge_detected_boxes(meta: list[SampleMeta], path: str | None) -> list[SampleMeta]:
    if not path:
        return meta
    from uniemox.data import best_person_box

    blob = json.loads(Path(path).read_text())
    boxes: dict[str, Any] = blob["boxes"]
    if blob.get("count") not in (None, len(meta)):
        raise ValueError(f"{path} was made for {blob['count']} images, the data has {len(meta)}")
    return [
        SampleMeta(m.attributes, best_person_box(boxes.get(str(i)))) if m.box is None else m
        for i, m in enumerate(meta)
    ]


def build_student(cfg: PretrainConfig, teacher_dim: int) -> UniEmoX:
    m = cfg.model
    arch = mae_config(
        m.name, img_size=m.img_size, patch_size=m.patch_size, embed_dim=m.embed_dim, depth=m.depth,
        num_heads=m.num_heads, decoder_embed_dim=m.decoder_embed_dim, decoder_depth=m.decoder_depth,
        decoder_num_heads=m.decoder_num_heads,
    )  # fmt: skip
    return UniEmoX(arch, teacher_dim, fusion=m.fusion, mask_ratio=m.mask_ratio)


#: Settings that do not change what a run computes, step by step: a resumed run may take new values for them.
#: (A new ``max_steps``/``epochs`` re-stretches the cosine schedule over the new total from the resume point.)
RESUME_OVERRIDABLE = frozenset(
    {"out", "progress", "tensorboard", "max_steps", "epochs", "device", "compile", "log_every", "ckpt_every",
     "keep_checkpoints", "data.num_workers"}
)  # fmt: skip


class ResumeError(ValueError):
    """A resume asked for settings that would change what the checkpointed run computes."""


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def resume_config(
    saved: PretrainConfig, given: PretrainConfig, explicit: Collection[str] | None = None, source: str = ""
) -> PretrainConfig:
    """The config of a resumed run: the checkpoint's, with ``given``'s values for :data:`RESUME_OVERRIDABLE`.

    ``explicit``: the dotted setting names the user actually gave (the CLI passes those); None = every setting
    of ``given`` (the Python API). A given setting outside RESUME_OVERRIDABLE that differs from the checkpoint
    raises :class:`ResumeError` naming it.
    """
    old, new = _flat(saved.to_dict()), _flat(given.to_dict())
    keys = list(new) if explicit is None else [k for k in explicit if k in new]
    refused = [k for k in keys if k not in RESUME_OVERRIDABLE and new[k] != old.get(k)]
    if refused:
        diffs = "; ".join(
            f"{k}{f' ({option_of(k)})' if option_of(k) else ''} is {old.get(k)!r} in the checkpoint but "
            f"{new[k]!r} was given"
            for k in refused
        )
        raise ResumeError(
            f"cannot resume{' from ' + source if source else ''}: {diffs}. These settings change what the run "
            "computes, so a resumed run must keep the checkpoint's values: drop them from the command (or give "
            "the checkpoint's values), or start a new run in another --out. A resume may change only: "
            f"{', '.join(sorted(RESUME_OVERRIDABLE))}."
        )
    merged = saved.to_dict()
    for k in keys:
        if k in RESUME_OVERRIDABLE:
            *parents, leaf = k.split(".")
            section = merged
            for part in parents:
                section = section[part]
            section[leaf] = new[k]
    return PretrainConfig.from_dict(merged)


def _resolve_resume(
    cfg: PretrainConfig, resume: str | None, explicit: Collection[str] | None
) -> tuple[PretrainConfig, dict[str, Any] | None]:
    """``resume`` = a checkpoint path or "auto" (OUT/last.pt if it exists); see :func:`resume_config`."""
    if resume == "auto":
        resume = str(Path(cfg.out) / "last.pt") if (Path(cfg.out) / "last.pt").is_file() else None
    if resume is None:
        return cfg, None
    ckpt = load_checkpoint(resume)
    explicit = None if explicit is None else {*explicit, "out"}  # the run directory is always the given one
    resumed = resume_config(PretrainConfig.from_dict(ckpt["config"]), cfg, explicit, resume)
    return resumed, ckpt


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    out: Path
    steps: int


def pretrain(
    cfg: PretrainConfig, resume: str | None = None, explicit: Collection[str] | None = None
) -> TrainResult:
    """Run (or resume) pretraining. ``resume``: a checkpoint path or "auto"; ``explicit``: the settings the
    user gave on the command line (dotted names), which a resume compares with the checkpoint's."""
    info = init_distributed(cfg.device)
    cfg, ckpt = _resolve_resume(cfg, resume, explicit)
    out = Path(cfg.out)
    _seed_all(cfg.seed)  # the same on every rank while models are built (random teachers must agree)
    device, on_cuda = info.device, info.device.type == "cuda"
    if on_cuda:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for the fp32 teacher

    # data
    source = open_source(cfg.data.path, cfg.data.split, cfg.data.image_col, cfg.data.label_col)
    scales = replace(
        source.scales,
        **{k: v for k, v in (("brightness", cfg.data.brightness_scale), ("colorfulness", cfg.data.colorfulness_scale))
           if v is not None},
    )  # fmt: skip
    meta = _merge_detected_boxes(source.metadata(), cfg.data.person_boxes)
    with_box = sum(m.box is not None for m in meta)

    # teacher, prompts (fitted to its text encoder) and their embeddings (computed once per distinct prompt)
    teacher = ClipTeacher.from_open_clip(
        cfg.teacher.arch, cfg.teacher.pretrained, device, cfg.teacher.precision
    )
    prompts, prompt_ids = build_prompts(meta, scales, teacher.prompt_fits)
    shortened = sum(not teacher.prompt_fits(p) for p in build_prompts(meta, scales)[0])  # distinct prompts
    data_report = {
        "images": len(meta),
        "with_person_box": with_box,
        "whole_image_person_stream": len(meta) - with_box,
        "distinct_prompts": len(prompts),
        "prompts_shortened_to_fit": shortened,
        "attribute_scales": asdict(scales),
        "layout": source.name,
    }
    log.info("data: %s", data_report)
    fingerprint = f"{cfg.teacher.arch}|{cfg.teacher.pretrained}|{cfg.teacher.precision}"
    # student, optimiser, schedule: built and checked before anything is written (so is config.json, below)
    model = build_student(cfg, teacher.embed_dim).to(device)
    init_mae = cfg.model.init_mae if ckpt is None else None
    init_report = load_mae_checkpoint(model.mae, init_mae) if init_mae else None
    o = cfg.optim
    global_micro = o.batch_size * info.world_size
    eff_batch = global_micro * o.accum_steps
    lr = o.base_lr * eff_batch / 256
    steps_per_epoch = len(meta) // eff_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(meta)} images are fewer than one effective batch of {eff_batch}")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        if init_report is not None:
            (out / "init_report.json").write_text(json.dumps(asdict(init_report), indent=2))
    lam_all = prompt_embeddings(
        teacher, prompts, fingerprint, out / "prompt_embeddings.pt" if info.is_main else None
    )
    logit_scale = teacher.logit_scale
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup = o.warmup_steps if o.warmup_steps is not None else round(o.warmup_epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(
        param_groups(model, o.weight_decay), lr=lr, betas=o.betas, fused=True if on_cuda else None
    )
    schedule = WarmupCosine(warmup, total, o.min_lr / lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    _seed_all(cfg.seed + info.rank)
    step, fallback = 0, 0  # fallback: this rank's person-stream whole-image count (rank 0 carries the total)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        # the state dict restored the saved schedule (its total); a resume may have extended the run
        schedule = WarmupCosine(
            warmup, total, o.min_lr / lr
        )  # loading wrote the saved values into the old one
        scheduler.lr_lambdas = [schedule] * len(optimizer.param_groups)
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * schedule(scheduler.last_epoch)
        step = int(ckpt["step"])
        fallback = int(ckpt.get("person_fallback", 0)) if info.is_main else 0
        states = ckpt.get("rng") or []
        if len(states) == info.world_size:
            set_rng_state(states[info.rank])
        log.info("resumed from step %d", step)
    if step >= total:
        log.info("nothing to do: step %d >= total %d", step, total)
    if cfg.compile:
        model.compile()  # in place, before the DDP wrap; parameter names (and checkpoints) stay the same
    ddp_model: nn.Module = (
        DDP(model, device_ids=[device.index] if on_cuda else None) if info.world_size > 1 else model
    )

    augment = AugmentConfig(
        cfg.model.img_size, cfg.data.scale, (3 / 4, 4 / 3), cfg.data.person_jitter, cfg.data.hflip
    )
    dataset = PretrainDataset(source, meta, prompt_ids, augment, model.mae.patch_embed.num_patches, cfg.seed)
    sampler = GlobalBatchSampler(len(meta), o.batch_size, info.world_size, info.rank, cfg.seed,
                                 total * o.accum_steps, step * o.accum_steps)  # fmt: skip
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers, pin_memory=on_cuda,
                        persistent_workers=False)  # fmt: skip
    weights = LossWeights(cfg.loss.w_sim, cfg.loss.w_con, cfg.loss.w_rec)
    autocast: AbstractContextManager[Any] = (
        torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()
    )
    logger = RunLogger(out, info.is_main, cfg.tensorboard)
    if info.is_main:
        (out / "data_report.json").write_text(json.dumps(data_report, indent=2))
        log.info(
            "lr %.3g (base %.3g x %d / 256), %d steps (%d/epoch), warm-up %d",
            *(lr, o.base_lr, eff_batch, total, steps_per_epoch, warmup),
        )

    history: list[dict[str, float]] = []
    batches = iter(loader)
    bar, task = _progress(cfg.progress and info.is_main, total, step)
    params = [p for p in model.parameters() if p.requires_grad]
    sums = torch.zeros(len(MEAN_FIELDS), dtype=torch.float64, device=device)  # this log row's running sums
    row_steps, row_data_s, row_start = 0, 0.0, time.perf_counter()
    model.train()
    with bar:
        while step < total:
            for micro in range(o.accum_steps):
                td = time.perf_counter()
                cpu_batch = next(batches)
                row_data_s += time.perf_counter() - td
                fallback += int((~cpu_batch["used_box"]).sum())  # on the host: no device sync
                scene, person = to_unit(cpu_batch["scene"], device), to_unit(cpu_batch["person"], device)
                noise_s, noise_p, ids = (
                    cpu_batch[k].to(device, non_blocking=True)
                    for k in ("scene_noise", "person_noise", "prompt_id")
                )
                omega = teacher.encode_images(scene)  # (b, E): the same augmented scene images
                lam = lam_all[gather_prompt_ids(ids, info)]  # (b * world, E)
                sync = micro == o.accum_steps - 1 or info.world_size == 1
                ctx = ddp_model.no_sync() if isinstance(ddp_model, DDP) and not sync else nullcontext()
                with ctx:
                    with autocast:
                        s = ddp_model(scene, person, noise_s, noise_p)
                    terms = pretraining_losses(
                        *(s.gamma, omega, lam, logit_scale, s.pred, s.target, s.mask),
                        weights=weights,
                        norm_pix=cfg.model.norm_pix_loss,
                    )
                    (terms["loss"] / o.accum_steps).backward()
                sums[:4] += torch.stack([terms[k].detach() for k in MEAN_FIELDS[:4]]).double() / o.accum_steps
            if o.clip_grad:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, o.clip_grad)
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            sums[4] += grad_norm.double()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            current_lr = float(optimizer.param_groups[0]["lr"])
            scheduler.step()
            step += 1
            row_steps += 1
            if step % cfg.log_every == 0 or step == total:
                means, fallback_total = reduce_log_values(sums / row_steps, fallback, info)  # the one sync
                dt = time.perf_counter() - row_start
                row: dict[str, float] = {
                    "step": step, "epoch": (step - 1) // steps_per_epoch, "lr": current_lr,
                    **dict(zip(MEAN_FIELDS, means, strict=True)), "person_fallback": fallback_total,
                    "images_per_s": eff_batch * row_steps / dt, "data_s": row_data_s / row_steps,
                    "step_s": dt / row_steps,
                    "gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if on_cuda else 0.0,
                }  # fmt: skip
                history.append(row)
                logger.write(row)
                sums.zero_()
                row_steps, row_data_s, row_start = 0, 0.0, time.perf_counter()
                if task is not None:
                    info_text = f"loss {row['loss']:.4f} {row['images_per_s']:.1f} img/s"
                    bar.update(task, completed=step, info=info_text)
            elif task is not None:
                bar.update(task, completed=step)
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == total:
                _checkpoint(
                    cfg, model, optimizer, scheduler, step, out, info, _total_fallback(fallback, info)
                )
    logger.close()
    if info.is_main:
        torch.save({"model": encoder_state_dict(model), "config": asdict(cfg.model)}, out / "encoder.pth")
    if info.world_size > 1:
        dist.barrier()
    return TrainResult(history, out, step)


def _total_fallback(fallback: int, info: DistInfo) -> int:
    """The person-fallback count summed over ranks (checkpoints only: one small collective)."""
    if info.world_size == 1:
        return fallback
    t = torch.tensor([fallback], dtype=torch.int64, device=info.device)
    dist.all_reduce(t)
    return int(t.item())


def _checkpoint(
    cfg: PretrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    out: Path,
    info: DistInfo,
    person_fallback: int,
) -> None:
    states: list[Any] = [None] * info.world_size
    if info.world_size > 1:
        dist.all_gather_object(states, rng_state())
    else:
        states = [rng_state()]
    if info.is_main:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "config": cfg.to_dict(),
            "rng": states,
            "world_size": info.world_size,
            "person_fallback": person_fallback,
        }
        save_checkpoint(state, out, step, cfg.keep_checkpoints)
