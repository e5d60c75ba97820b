"""UniEmoX fine-tuning throughput (images/s, MFU on GPU) and a learning check on real photos.

    python benchmarks/finetune_throughput.py throughput                 # tiny ViT on CPU, fp32
    python benchmarks/finetune_throughput.py throughput --device cuda   # base + large, bf16, MFU
    python benchmarks/finetune_throughput.py learning --photos ../shared/data/photos-dev --json out.json

``throughput`` times full training steps (forward, backward, AdamW with layer-wise decay groups) of the
fine-tuning classifier on synthetic batches (data loading excluded). FLOPs are counted analytically (matmuls, 2
per multiply-add; training = 3x forward); MFU = achieved / peak (989 TFLOP/s dense bf16 for H100/H200, 312 for
A100; not reported on CPU).

``learning`` compares, on the photo corpus's ``category`` labels (the largest categories, a content-hash
70/10/20 split made with ``uniemox data split``), (a) a linear probe of the offline ImageNet EfficientNet-Lite0
features (``--init efficientnet-lite0 --linear-probe --cache-features``) with (b) fine-tuning a tiny ViT
initialised from a short UniEmoX pretraining run on the same training images (random tiny CLIP teacher, so
mostly the MAE reconstruction signal), and (c) the same tiny ViT from random weights. All three go through
:func:`uniemox.finetune.finetune`; the test top-1 of the model with the best validation top-1 is reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from uniemox.classifier import Classifier, ViTBackbone
from uniemox.finetune import FinetuneConfig, finetune, make_optimizer, param_groups_lrd, soft_cross_entropy
from uniemox.models.mae import mae_config

PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def vit_train_flops(depth: int, dim: int, tokens: int, mlp_ratio: float = 4.0) -> float:
    """Training FLOPs per image: 3 x forward; forward per block = qkv+proj (8 N D^2) + MLP (4 r N D^2)
    + attention (4 N^2 D)."""
    per_block = 8 * tokens * dim**2 + 4 * mlp_ratio * tokens * dim**2 + 4 * tokens**2 * dim
    return 3.0 * depth * per_block


def throughput(size: str, batch: int, steps: int, device: str, img_size: int, **arch: Any) -> dict[str, Any]:
    dev = torch.device(device)
    cfg = mae_config(size, img_size=img_size, **arch)
    model = Classifier(ViTBackbone(cfg, "avg", 0.1), 8).to(dev)
    opt = make_optimizer("adamw", param_groups_lrd(model, 1e-3, 0.05, 0.75), 1e-3)
    x = torch.randn(batch, 3, img_size, img_size, device=dev)
    y = torch.softmax(torch.randn(batch, 8, device=dev), -1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def step() -> None:
        with autocast:
            loss = soft_cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    ips = batch * steps / dt
    tokens = 1 + (img_size // cfg.patch_size) ** 2
    flops = vit_train_flops(cfg.depth, cfg.embed_dim, tokens, cfg.mlp_ratio) * ips
    out: dict[str, Any] = {"size": size, "device": device, "batch": batch, "img_size": img_size,
                           "images_per_s": round(ips, 2), "tflops": round(flops / 1e12, 3)}  # fmt: skip
    if dev.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAKS.items() if k in name), None)
        out.update(gpu=name, peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                   mfu=round(flops / peak, 4) if peak else None)  # fmt: skip
    return out


def _categories(photos: Path, classes: int, per_class: int, work: Path) -> Path:
    with (photos / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    chosen = sorted(counts, key=lambda c: (-counts[c], c))[:classes]
    raw = work / "raw"
    taken: dict[str, int] = {}
    for r in rows:
        c = r["category"]
        if c in chosen and taken.get(c, 0) < per_class:
            taken[c] = taken.get(c, 0) + 1
            dst = raw / c / Path(r["file"]).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photos / r["file"], dst)
    from uniemox.benchmarks import split_dataset

    split_dataset("imagefolder", raw, work / "split", seed=0, ratios=(0.7, 0.1, 0.2))
    return work / "split"


def learning(
    photos: Path, classes: int, per_class: int, pretrain_steps: int, epochs: int, img: int, work: Path | None
) -> dict[str, Any]:
    """Runs under ``work`` (default: a new temporary directory); finished parts of an earlier run are reused."""
    from uniemox.testing import tiny_config, tiny_teacher
    from uniemox.train import pretrain

    work = work or Path(tempfile.mkdtemp(prefix="ft-learning-"))
    reuse = (work / "split" / "split.json").is_file()
    data = work / "split" if reuse else _categories(photos, classes, per_class, work)
    results: dict[str, Any] = {"classes": classes, "per_class_max": per_class, "data": str(data)}
    common = {
        "data": str(data),
        "dataset": "imagefolder",
        "num_workers": 2,
        "device": "cpu",
        "eval_batch_size": 32,
    }

    t = time.perf_counter()
    lite0 = finetune(FinetuneConfig(out=str(work / "lite0"), init="efficientnet-lite0", linear_probe=True,
                                    cache_features=True, epochs=100, batch_size=32, optimizer="adamw", base_lr=0.1,
                                    warmup_epochs=5, **common), resume="auto")  # fmt: skip
    results["lite0_linear_probe"] = _summary(lite0, time.perf_counter() - t)

    t = time.perf_counter()
    pcfg = tiny_config(data, work / "pretrain", tiny_teacher(work), max_steps=pretrain_steps,
                       ckpt_every=pretrain_steps)  # fmt: skip
    pcfg.model.img_size, pcfg.model.patch_size, pcfg.model.embed_dim, pcfg.model.depth = img, 8, 128, 4
    pcfg.model.num_heads, pcfg.optim.batch_size, pcfg.optim.warmup_steps = 4, 32, 20
    pcfg.data.num_workers = 2
    if not (work / "pretrain" / "encoder.pth").is_file():
        pretrain(pcfg)
    results["pretrain_s"] = round(time.perf_counter() - t, 1)
    vit = {"epochs": epochs, "batch_size": 32, "warmup_epochs": 2.0, "drop_path": 0.1, "mixup": 0.0, "cutmix": 0.0,
           "randaug": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "layer_decay": 0.75, "img_size": img}  # fmt: skip
    t = time.perf_counter()
    pre = finetune(FinetuneConfig(out=str(work / "vit-pretrained"), init=str(work / "pretrain" / "encoder.pth"),
                                  **vit, **common), resume="auto")  # fmt: skip
    results["tiny_vit_from_pretraining"] = _summary(pre, time.perf_counter() - t)
    t = time.perf_counter()
    arch = {"model": "mae_vit_tiny_patch16", "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4}
    scratch = finetune(FinetuneConfig(out=str(work / "vit-scratch"), random_init=True, **arch, **vit, **common),
                       resume="auto")  # fmt: skip
    results["tiny_vit_random_init"] = _summary(scratch, time.perf_counter() - t)
    results["chance_top1"] = 1 / classes
    return results


def _summary(result: Any, seconds: float) -> dict[str, Any]:
    m = result.test_metrics or {}
    return {"test_top1": m.get("top1"), "test_top3": m.get("top3"), "test_macro_f1": m.get("macro_f1"),
            "test_n": m.get("n"), "best_val_top1": result.best_val_top1, "steps": result.steps,
            "seconds": round(seconds, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("throughput", "learning"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--sizes", default=None, help="comma list of MAE sizes (default: tiny on CPU, base+large)"
    )
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/photos-dev"))
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--img", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="learning: working directory (reused)")
    args = parser.parse_args()
    from machine import cpu_model  # benchmarks/machine.py

    report: dict[str, Any] = {"cpu": cpu_model(), "threads": torch.get_num_threads()}
    if args.what == "throughput":
        gpu = args.device.startswith("cuda")
        sizes = args.sizes or (
            "mae_vit_base_patch16,mae_vit_large_patch16" if gpu else "mae_vit_tiny_patch16"
        )
        report["runs"] = [throughput(s, args.batch or (128 if gpu else 16), args.steps, args.device,
                                     224 if gpu else 112) for s in sizes.split(",")]  # fmt: skip
    else:
        report["learning"] = learning(args.photos, args.classes, args.per_class, args.pretrain_steps, args.epochs,
                                      args.img, args.work)  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
