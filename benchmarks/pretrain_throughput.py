"""UniEmoX pretraining throughput: images/s, peak memory, step-time breakdown and model FLOPs utilisation.

    python benchmarks/pretrain_throughput.py                       # tiny + small on CPU
    python benchmarks/pretrain_throughput.py --device cuda         # base + large, bf16, on a GPU
    python benchmarks/pretrain_throughput.py --sizes tiny --batch 16 --steps 5 --json out.json
    python benchmarks/pretrain_throughput.py --mode loop --steps 40      # the real training loop (train.py)
    python benchmarks/pretrain_throughput.py --mode data --images DIR    # the data pipeline alone, draft on/off
    python benchmarks/pretrain_throughput.py --device cuda --compare-teacher-bf16

``--mode model`` (the default) times the phases below with the training code's pieces; ``--mode loop`` runs
``uniemox.train.pretrain`` itself (a tiny 32 px student and a tiny random CLIP on CPU; ``--sizes`` at 224 px with
ViT-B/16 on a GPU) and reports images/s from its log rows, first row excluded; ``--mode data`` measures samples/s
of the two-stream pipeline (decode, crops, uint8) with JPEG draft decoding on and off.

Each step is timed in phases: data (waiting for the loader), teacher (CLIP ViT-B/16 image forward), student
forward, student backward, optimiser. On CUDA every phase ends with a synchronize (this costs a little
throughput, reported as is). FLOPs are counted analytically (matmuls only, 2 per multiply-add): the student's
forward+backward = 3x its forward (encoder on the visible tokens of both streams, decoder on all scene patches),
plus 1x the teacher's forward (prompt embeddings are cached, so no text tower per step). MFU = achieved / peak:
989 TFLOP/s dense bf16 on an H100 SXM; on CPU the peak is estimated from lscpu (cores x clock x 32 fp32
FLOP/cycle for two 256-bit FMA pipes) and is only indicative. Teacher weights are random (speed does not
depend on them). Data: the bundled sample images through the real two-stream pipeline, or --synthetic.
The teacher runs in fp32 (TF32 matmuls on GPUs) as in training; ``--compare-teacher-bf16`` reports how far
bf16 moves its similarity profiles (the L_con and L_sim between fp32 and bf16 Omegas; 0 = identical).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from uniemox.data import (
    AugmentConfig,
    GlobalBatchSampler,
    PretrainDataset,
    build_prompts,
    open_source,
    to_unit,
)
from uniemox.losses import con_loss, pretraining_losses, sim_loss
from uniemox.models import ClipTeacher, MAEConfig, UniEmoX, load_open_clip, mae_config, prompt_embeddings
from uniemox.models.teacher import PRECISIONS
from uniemox.testing import make_hf_dataset, make_imagefolder, tiny_config, tiny_teacher
from uniemox.train import param_groups, pretrain

H100_BF16_PEAK = 989e12
TEACHER = {"width": 768, "depth": 12, "patch": 16, "img": 224, "embed": 512}  # CLIP ViT-B/16


def vit_forward_flops(tokens: int, width: int, depth: int, mlp_ratio: float = 4.0) -> float:
    """Transformer blocks: qkv + proj + MLP matmuls (2 * tokens * width^2 * (4 + 2 mlp_ratio)) + attention."""
    per_block = 2 * tokens * width * width * (4 + 2 * mlp_ratio) + 4 * tokens * tokens * width
    return depth * per_block


def student_forward_flops(c: MAEConfig, mask_ratio: float, streams: int = 2) -> float:
    patches = c.num_patches
    visible = 1 + int(patches * (1 - mask_ratio))
    patch_embed = 2 * patches * 3 * c.patch_size**2 * c.embed_dim  # the conv runs on every patch
    encoder = patch_embed + vit_forward_flops(visible, c.embed_dim, c.depth, c.mlp_ratio)
    decoder = (
        2 * visible * c.embed_dim * c.decoder_embed_dim
        + vit_forward_flops(patches + 1, c.decoder_embed_dim, c.decoder_depth, c.mlp_ratio)
        + 2 * (patches + 1) * c.decoder_embed_dim * 3 * c.patch_size**2
    )
    return streams * encoder + decoder


def teacher_forward_flops() -> float:
    t = TEACHER
    patches = (t["img"] // t["patch"]) ** 2
    return (
        2 * patches * 3 * t["patch"] ** 2 * t["width"]
        + vit_forward_flops(patches + 1, t["width"], t["depth"])
        + 2 * t["width"] * t["embed"]
    )


def cpu_model() -> tuple[str, float]:
    """(model name, estimated fp32 peak FLOP/s) from lscpu."""
    try:
        info = dict(
            line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if ":" in line
        )  # fmt: skip
    except OSError:
        return platform.processor() or "unknown", float("nan")
    info = {k.strip(): v.strip() for k, v in info.items()}
    mhz = float(info.get("CPU max MHz") or float(info.get("BogoMIPS", "0")) / 2)
    cores = len(os.sched_getaffinity(0))
    return info.get("Model name", "unknown"), cores * mhz * 1e6 * 32


@dataclass
class Result:
    model: str
    device: str
    batch: int
    steps: int
    images_per_s: float
    step_ms: float
    data_ms: float
    teacher_ms: float
    forward_ms: float
    backward_ms: float
    optimizer_ms: float
    peak_mem_gb: float
    gflop_per_image: float
    achieved_tflops: float
    mfu: float
    teacher_bf16_l_con: float | None = None  # mean L_con(bf16 Omega, fp32 Omega) over the timed batches
    teacher_bf16_l_sim: float | None = None


def run(size: str, args: argparse.Namespace, data_dir: Path, peak: float) -> Result:
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    cfg = mae_config(f"mae_vit_{size}_patch16", decoder_depth=args.decoder_depth)
    model_t, tok = load_open_clip("ViT-B-16", "random", device)
    dtype = PRECISIONS[args.teacher_precision]
    teacher = ClipTeacher(model_t.to(device=device, dtype=dtype), tok, dtype).to(device)
    other = None
    if args.compare_teacher_bf16:  # the same weights in bf16 (or fp32 when the teacher runs in bf16)
        odtype = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
        other = ClipTeacher(load_open_clip("ViT-B-16", "random", device)[0], tok).to(device)
        other.model.load_state_dict(teacher.model.state_dict())
        other.model.to(odtype)
        other.dtype = odtype
    profile_gaps: list[tuple[float, float]] = []
    compared: list[tuple[torch.Tensor, torch.Tensor]] = []
    student = UniEmoX(cfg, teacher.embed_dim).to(device)
    if args.compile:
        student = torch.compile(student)  # type: ignore[assignment]
    opt = torch.optim.AdamW(param_groups(student, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=on_cuda)
    source = open_source(str(data_dir))
    meta = source.metadata()
    prompts, ids = build_prompts(meta, source.scales, teacher.prompt_fits)
    lam_all = prompt_embeddings(teacher, prompts, "bench")
    ds = PretrainDataset(source, meta, ids, AugmentConfig(cfg.img_size), cfg.num_patches, seed=0)
    total = args.warmup + args.steps
    loader = DataLoader(
        ds, batch_sampler=GlobalBatchSampler(len(ds), args.batch, 1, 0, 0, total), num_workers=args.workers,
        pin_memory=on_cuda, persistent_workers=args.workers > 0,
    )  # fmt: skip
    synthetic = None
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda)
    times: dict[str, float] = dict.fromkeys(("data", "teacher", "forward", "backward", "optimizer"), 0.0)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    batches = iter(loader)
    start = 0.0
    for step in range(total):
        if step == args.warmup:
            sync()
            times = dict.fromkeys(times, 0.0)
            start = time.perf_counter()
        t0 = time.perf_counter()
        if args.synthetic and synthetic is not None:
            batch = synthetic
        else:
            batch = {k: to_unit(v, device) for k, v in next(batches).items()}  # uint8 -> float on the device
            synthetic = batch
        sync()
        t1 = time.perf_counter()
        omega = teacher.encode_images(batch["scene"])
        lam = lam_all[batch["prompt_id"]]
        if other is not None and step >= args.warmup and len(compared) < 4:
            compared.append((batch["scene"], omega))  # compared after the timed steps
        sync()
        t2 = time.perf_counter()
        with autocast:
            out = student(batch["scene"], batch["person"], batch["scene_noise"], batch["person_noise"])
        terms = pretraining_losses(out.gamma, omega, lam, teacher.logit_scale, out.pred, out.target, out.mask)
        sync()
        t3 = time.perf_counter()
        terms["loss"].backward()
        sync()
        t4 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t5 = time.perf_counter()
        for k, (a, b) in zip(times, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)), strict=True):
            times[k] += b - a
    elapsed = time.perf_counter() - start
    for scene, omega in compared:
        assert other is not None
        o2 = other.encode_images(scene)
        t = teacher.logit_scale
        profile_gaps.append((float(con_loss(o2, omega, lam_all, t)), float(sim_loss(o2, omega))))
    images = args.steps * args.batch
    flops = 3 * student_forward_flops(cfg, 0.75) + teacher_forward_flops()
    achieved = flops * images / elapsed
    mem = (
        torch.cuda.max_memory_allocated() / 2**30
        if on_cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    ms = {k: 1000 * v / args.steps for k, v in times.items()}
    return Result(
        model=f"mae_vit_{size}_patch16", device=args.device, batch=args.batch, steps=args.steps,
        images_per_s=images / elapsed, step_ms=1000 * elapsed / args.steps, data_ms=ms["data"],
        teacher_ms=ms["teacher"], forward_ms=ms["forward"], backward_ms=ms["backward"],
        optimizer_ms=ms["optimizer"], peak_mem_gb=mem, gflop_per_image=flops / 1e9,
        achieved_tflops=achieved / 1e12, mfu=achieved / peak,
        teacher_bf16_l_con=sum(g[0] for g in profile_gaps) / len(profile_gaps) if profile_gaps else None,
        teacher_bf16_l_sim=sum(g[1] for g in profile_gaps) / len(profile_gaps) if profile_gaps else None,
    )  # fmt: skip


def bench_dataset(root: Path, min_images: int) -> Path:
    """The bundled sample images as an Emo8-style dataset, repeated until it holds ``min_images`` rows (a GPU
    batch is larger than the 64 samples)."""
    import datasets

    ds = datasets.load_from_disk(str(make_hf_dataset(root / "samples", n=64)))["train"]
    reps = max(1, math.ceil(min_images / len(ds)))
    datasets.DatasetDict({"train": datasets.concatenate_datasets([ds] * reps)}).save_to_disk(str(root / "ds"))
    return root / "ds"


def run_loop(size: str, args: argparse.Namespace, data_dir: Path, work: Path) -> dict[str, float | str]:
    """The real loop (``uniemox.train.pretrain``): images/s over its log rows after the first."""
    teacher = tiny_teacher(work)
    cfg = tiny_config(
        data_dir, work / f"loop-{size}", teacher, max_steps=args.warmup + args.steps, ckpt_every=0
    )
    cfg.optim.batch_size, cfg.data.num_workers, cfg.log_every = args.batch, args.workers, args.log_every
    cfg.device, cfg.compile = args.device, args.compile
    if args.device == "cuda":  # the real sizes at 224 px with the ViT-B/16 teacher (random weights)
        cfg.model = type(cfg.model)(name=f"mae_vit_{size}_patch16", decoder_depth=args.decoder_depth)
        cfg.teacher.arch, cfg.teacher.precision = "ViT-B-16", args.teacher_precision
    rows = [r for r in pretrain(cfg).history if r["step"] > args.warmup]
    steps = [b["step"] - a["step"] for a, b in zip([{"step": args.warmup}, *rows[:-1]], rows, strict=True)]
    seconds = sum(r["step_s"] * n for r, n in zip(rows, steps, strict=True))
    images = args.batch * sum(steps)
    return {"model": cfg.model.name if args.device == "cuda" else "tiny-32px", "images_per_s": images / seconds,
            "step_ms": 1000 * seconds / sum(steps), "log_every": args.log_every}  # fmt: skip


def run_data(args: argparse.Namespace, image_dir: Path) -> list[dict[str, float | str]]:
    """Samples/s of the two-stream pipeline at 224 px on the images of ``image_dir``, draft on and off."""
    source = open_source(str(image_dir))
    meta = source.metadata()
    out: list[dict[str, float | str]] = []
    n = min(len(meta), args.batch * args.steps)
    for draft in (False, True):
        ds = PretrainDataset(source, meta, [0] * len(meta), AugmentConfig(224, draft=draft), 196, seed=0)
        ds[(0, 0)]  # warm-up
        start = time.perf_counter()
        for i in range(n):
            ds[(1, i)]
        elapsed = time.perf_counter() - start
        out.append({"draft": str(draft), "samples_per_s": n / elapsed, "ms_per_sample": 1000 * elapsed / n})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="model", choices=["model", "loop", "data"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", nargs="+", default=None, help="default: tiny small (cpu), base large (cuda)")
    p.add_argument("--batch", type=int, default=None, help="default: 8 (cpu), 128 (cuda)")
    p.add_argument("--steps", type=int, default=None, help="timed steps; default 4 (cpu), 20 (cuda)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="data workers; default 1 (cpu), 12 (cuda)")
    p.add_argument("--decoder-depth", type=int, default=8)
    p.add_argument("--synthetic", action="store_true", help="reuse the first batch: model throughput only")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--teacher-precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument(
        "--compare-teacher-bf16", action="store_true", help="profile gap of a bf16 teacher (model mode)"
    )
    p.add_argument("--log-every", type=int, default=20, help="loop mode: steps per log row")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 in CPU loop mode)")
    p.add_argument(
        "--images", type=Path, default=None, help="data mode: a folder of images (default: samples)"
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    gpu = args.device == "cuda"
    threads = args.threads or (1 if args.mode == "loop" and not gpu else None)
    if (
        threads
    ):  # the tiny loop model gains nothing from intra-op threads that fight the data worker for cores
        torch.set_num_threads(threads)
    args.sizes = args.sizes or (["base", "large"] if gpu else ["tiny", "small"])
    args.batch = args.batch or (128 if gpu else 8)
    args.steps = args.steps or (20 if gpu else 4)
    args.workers = args.workers if args.workers is not None else (12 if gpu else 1)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        name, peak = torch.cuda.get_device_name(), H100_BF16_PEAK
        if "H100" not in name:
            print(f"note: MFU is against the H100 bf16 peak; this device is {name}")
    else:
        name, peak = cpu_model()
    print(f"device: {name} ({args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    if args.mode == "loop":
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = bench_dataset(Path(tmp), 2 * args.batch)
            rows = [
                run_loop(size, args, data_dir, Path(tmp)) for size in args.sizes[: 1 if not gpu else None]
            ]
        for row in rows:
            print(" | ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if args.json:
            args.json.write_text(json.dumps({"device": name, "mode": "loop", "results": rows}))
        return
    if args.mode == "data":
        with tempfile.TemporaryDirectory() as tmp:
            image_dir = args.images or make_imagefolder(Path(tmp) / "folder", n=64)
            rows = run_data(args, image_dir)
        for row in rows:
            print(" | ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if args.json:
            args.json.write_text(json.dumps({"device": name, "mode": "data", "results": rows}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = bench_dataset(Path(tmp), 2 * args.batch)
        results = [run(size, args, data_dir, peak) for size in args.sizes]
    header = ("model", "img/s", "step ms", "data", "teacher", "fwd", "bwd", "optim", "peak GB", "GF/img", "TF/s",
              "MFU")  # fmt: skip
    print(" | ".join(header))
    for r in results:
        print(
            f"{r.model} | {r.images_per_s:.2f} | {r.step_ms:.0f} | {r.data_ms:.0f} | {r.teacher_ms:.0f} | "
            f"{r.forward_ms:.0f} | {r.backward_ms:.0f} | {r.optimizer_ms:.0f} | {r.peak_mem_gb:.2f} | "
            f"{r.gflop_per_image:.1f} | {r.achieved_tflops:.3f} | {100 * r.mfu:.1f}%"
        )
        if r.teacher_bf16_l_con is not None:
            print(
                f"  teacher bf16 vs fp32: L_con {r.teacher_bf16_l_con:.2e}, L_sim {r.teacher_bf16_l_sim:.2e}"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"device": name, "peak_flops": peak, "results": [asdict(r) for r in results]})
        )


if __name__ == "__main__":
    main()
