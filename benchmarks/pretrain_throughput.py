"""UniEmoX pretraining throughput: images/s, peak memory, step-time breakdown and model FLOPs utilisation.

    python benchmarks/pretrain_throughput.py                       # tiny + small on CPU
    python benchmarks/pretrain_throughput.py --device cuda         # base + large, bf16, on a GPU
    python benchmarks/pretrain_throughput.py --sizes tiny --batch 16 --steps 5 --json out.json

Each step is timed in phases: data (waiting for the loader), teacher (CLIP ViT-B/16 image forward), student
forward, student backward, optimiser. On CUDA every phase ends with a synchronize (this costs a little
throughput, reported as is). FLOPs are counted analytically (matmuls only, 2 per multiply-add): the student's
forward+backward = 3x its forward (encoder on the visible tokens of both streams, decoder on all scene patches),
plus 1x the teacher's forward (prompt embeddings are cached, so no text tower per step). MFU = achieved / peak:
989 TFLOP/s dense bf16 on an H100 SXM; on CPU the peak is estimated from lscpu (cores x clock x 32 fp32
FLOP/cycle for two 256-bit FMA pipes) and is only indicative. Teacher weights are random (speed does not
depend on them). Data: the bundled sample images through the real two-stream pipeline, or --synthetic.
"""

from __future__ import annotations

import argparse
import json
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

from uniemox.data import AugmentConfig, GlobalBatchSampler, PretrainDataset, build_prompts, open_source
from uniemox.losses import pretraining_losses
from uniemox.models import ClipTeacher, MAEConfig, UniEmoX, load_open_clip, mae_config, prompt_embeddings
from uniemox.testing import make_hf_dataset
from uniemox.train import param_groups

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


def run(size: str, args: argparse.Namespace, data_dir: Path, peak: float) -> Result:
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    cfg = mae_config(f"mae_vit_{size}_patch16", decoder_depth=args.decoder_depth)
    model_t, tok = load_open_clip("ViT-B-16", "random", device)
    dtype = torch.bfloat16 if on_cuda else torch.float32
    teacher = ClipTeacher(model_t.to(device=device, dtype=dtype), tok, dtype).to(device)
    student = UniEmoX(cfg, teacher.embed_dim).to(device)
    if args.compile:
        student = torch.compile(student)  # type: ignore[assignment]
    opt = torch.optim.AdamW(param_groups(student, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=on_cuda)
    source = open_source(str(data_dir))
    meta = source.metadata()
    prompts, ids = build_prompts(meta)
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
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            synthetic = batch
        sync()
        t1 = time.perf_counter()
        omega = teacher.encode_images(batch["scene"])
        lam = lam_all[batch["prompt_id"]]
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
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", nargs="+", default=None, help="default: tiny small (cpu), base large (cuda)")
    p.add_argument("--batch", type=int, default=None, help="default: 8 (cpu), 128 (cuda)")
    p.add_argument("--steps", type=int, default=None, help="timed steps; default 4 (cpu), 20 (cuda)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="data workers; default 1 (cpu), 12 (cuda)")
    p.add_argument("--decoder-depth", type=int, default=8)
    p.add_argument("--synthetic", action="store_true", help="reuse the first batch: model throughput only")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    gpu = args.device == "cuda"
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
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = make_hf_dataset(Path(tmp) / "ds", n=64)
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
    if args.json:
        args.json.write_text(
            json.dumps({"device": name, "peak_flops": peak, "results": [asdict(r) for r in results]})
        )


if __name__ == "__main__":
    main()
