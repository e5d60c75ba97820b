"""``uniemox`` downstream commands: finetune, evaluate, predict, embed, report, data split.

Thin wrappers: each builds a config and calls the library (:mod:`uniemox.finetune`, :mod:`uniemox.evaluate`,
:mod:`uniemox.report`, :mod:`uniemox.benchmarks`). Bad input exits 2, runtime failures 1.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from emo8.cli.common import Device

PANEL = "Fine-tune and evaluate"


def _errors() -> Any:
    """The ``uniemox`` CLI's error context (exit 2 for bad input, 1 for runtime failures)."""
    from uniemox.cli import errors

    return errors()


DatasetOpt = Annotated[
    str,
    typer.Option(help="Benchmark: emo8, fi, emoset, emotion6, unbiasedemo, caer-s, heco, hf, imagefolder."),
]
DataOpt = Annotated[
    str,
    typer.Option(help="Dataset root (release dir, ImageFolder tree, EmoSet root) or Hugging Face Hub id."),
]
ImageColOpt = Annotated[
    str | None, typer.Option(help="Hugging Face data: the image column (default: first Image).")
]
LabelColOpt = Annotated[
    str | None,
    typer.Option(help="Hugging Face data: the ClassLabel column (default: label, else the first)."),
]


def setup_logging(verbose: bool) -> None:
    """Our INFO lines when ``verbose`` (loggers ``uniemox`` and ``emo8``), else warnings only.

    Other libraries stay at WARNING: open_clip logs every step of building a model at INFO on the root logger.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("uniemox", "emo8"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def finetune_cmd(
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Run directory (best.pt, last.pt, log.csv, metrics.json).")],
    dataset: DatasetOpt = "emo8",
    init: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint (pretraining last.pt, encoder.pth, MAE/timm/UniEmoX .pth) or encoder key "
            "(timm:ARCH, open_clip:ARCH/TAG, efficientnet-lite0)."
        ),
    ] = None,
    weights: Annotated[str | None, typer.Option(help="Weights file for timm:/open_clip: keys.")] = None,
    random_init: Annotated[
        bool, typer.Option("--random-init", help="Train a --model ViT from random weights.")
    ] = False,
    model: Annotated[str, typer.Option(help="ViT size with --random-init.")] = "mae_vit_base_patch16",
    linear_probe: Annotated[
        bool, typer.Option("--linear-probe", help="Frozen encoder + BatchNorm + linear head (MAE).")
    ] = False,
    cache_features: Annotated[
        bool, typer.Option("--cache-features", help="Linear probe on cached centre-crop features.")
    ] = False,
    fraction: Annotated[float, typer.Option(help="Train on this stratified share of the train split.")] = 1.0,
    fraction_seed: int = 0,
    soft_labels: Annotated[
        bool, typer.Option("--soft-labels", help="Train on Emo8's label_distribution (soft CE).")
    ] = False,
    polarity: Annotated[bool, typer.Option("--polarity", help="2-class mode (positive / negative).")] = False,
    epochs: int = 100,
    max_steps: int | None = None,
    batch_size: Annotated[int, typer.Option(help="Per process.")] = 64,
    base_lr: Annotated[
        float | None, typer.Option(help="lr = base_lr x batch / 256 (1e-3; probe 0.1).")
    ] = None,
    layer_decay: Annotated[float | None, typer.Option(help="Layer-wise lr decay (0.75; probe 1).")] = None,
    weight_decay: float | None = None,
    warmup_epochs: float | None = None,
    drop_path: float | None = None,
    smoothing: float | None = None,
    mixup: float | None = None,
    cutmix: float | None = None,
    randaug: Annotated[str | None, typer.Option(help="timm RandAugment string; '' = off.")] = None,
    reprob: float | None = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw | lars | sgd")] = None,
    img_size: int | None = None,
    num_heads: Annotated[
        int | None, typer.Option(help="Heads of a ViT checkpoint of unregistered width.")
    ] = None,
    seed: int = 0,
    num_workers: int = 4,
    device: Device = "auto",
    resume: Annotated[str | None, typer.Option(help="OUT/last.pt, or 'auto'.")] = None,
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
    verbose: bool = True,
) -> None:
    """Fine-tune (MAE recipe) or linear-probe on a benchmark. Multi-GPU: torchrun --nproc-per-node N -m uniemox
    finetune ..."""
    from uniemox.finetune import FinetuneConfig, finetune

    setup_logging(verbose)
    cfg = FinetuneConfig(
        out=str(out), data=data, dataset=dataset, init=init, weights=weights, random_init=random_init, model=model,
        linear_probe=linear_probe, cache_features=cache_features, fraction=fraction, fraction_seed=fraction_seed,
        soft_labels=soft_labels, polarity=polarity, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        base_lr=base_lr, layer_decay=layer_decay, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        drop_path=drop_path, smoothing=smoothing, mixup=mixup, cutmix=cutmix, randaug=randaug, reprob=reprob,
        optimizer=optimizer, img_size=img_size, num_heads=num_heads, seed=seed, num_workers=num_workers,
        device=device, image_col=image_col, label_col=label_col,
    )  # fmt: skip
    with _errors():
        result = finetune(cfg, resume=resume)
    test = result.test_metrics or {}
    typer.echo(json.dumps({"out": str(result.out), "steps": result.steps, "best_val_top1": result.best_val_top1,
                           **{f"test_{k}": test[k] for k in ("top1", "top3", "macro_f1") if k in test}}))  # fmt: skip


def evaluate_cmd(
    ckpt: Annotated[str, typer.Option(help="A fine-tuned classifier (OUT/best.pt or the run directory).")],
    data: DataOpt,
    dataset: DatasetOpt = "emo8",
    split: str = "test",
    polarity: Annotated[bool, typer.Option("--polarity", help="Evaluate the 2-class mode.")] = False,
    out: Annotated[Path | None, typer.Option(help="Output dir (default: next to the checkpoint).")] = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: Device = "auto",
    image_col: ImageColOpt = None,
    label_col: LabelColOpt = None,
) -> None:
    """Top-1/top-3, macro-F1, per-class accuracy and confusion matrix (PNG + JSON); on Emo8 also per-domain
    accuracy and agreement with the annotators' votes."""
    from uniemox.evaluate import EvalRequest, evaluate

    with _errors():
        m = evaluate(EvalRequest(ckpt, data, dataset, split, polarity, str(out) if out else None, batch_size,
                                 num_workers, device, image_col, label_col))  # fmt: skip
    typer.echo(json.dumps({k: m[k] for k in ("dataset", "split", "n", "top1", "top3", "macro_f1") if k in m}))


def predict_cmd(
    ckpt: Annotated[str, typer.Option(help="A fine-tuned classifier (OUT/best.pt).")],
    images: Annotated[list[Path], typer.Argument(help="Image files and/or directories.")],
    out: Annotated[
        Path | None, typer.Option(help="CSV to write (path, label, confidence, p_<class>...).")
    ] = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: Device = "auto",
) -> None:
    """Per-emotion probabilities and the top label of each image (the evaluation preprocessing)."""
    from uniemox.evaluate import predict

    with _errors():
        frame = predict(ckpt, images, out, batch_size=batch_size, num_workers=num_workers, device=device)
    if out is None:
        typer.echo(frame.to_csv(index=False), nl=False)
    else:
        typer.echo(json.dumps({"out": str(out), "images": len(frame)}))


def embed_cmd(
    ckpt: Annotated[
        str, typer.Option(help="Classifier, pretraining checkpoint, encoder.pth or encoder key.")
    ],
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Directory for features.npy and ids.parquet.")],
    dataset: DatasetOpt = "emo8",
    split: str = "train",
    weights: str | None = None,
    pool: Annotated[str, typer.Option(help="cls | avg (ViT sources other than classifiers).")] = "cls",
    batch_size: int = 64,
    num_workers: int = 0,
    device: Device = "auto",
) -> None:
    """Backbone features of one split (.npy) with their ids (parquet), for retrieval and probing."""
    from uniemox.evaluate import embed

    with _errors():
        info = embed(ckpt, data, dataset, out, split=split, weights=weights, pool=pool, batch_size=batch_size,
                     num_workers=num_workers, device=device)  # fmt: skip
    typer.echo(json.dumps(info))


def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories or metrics.json files.")],
    out: Annotated[
        Path | None, typer.Option(help="Write OUT.md and OUT.csv (default: print Markdown).")
    ] = None,
    metric: Annotated[str, typer.Option(help="Cell value: top1, top3, macro_f1.")] = "top1",
) -> None:
    """Collect metrics.json files into a table shaped like the paper's (methods x datasets)."""
    from uniemox.report import collect, write_report

    with _errors():
        rows = collect(runs)
        text = write_report(rows, out, metric)
    typer.echo(text if out is None else json.dumps({"markdown": f"{out}.md", "csv": f"{out}.csv"}))


data_app = typer.Typer(help="Benchmark data: splits.", no_args_is_help=True)


@data_app.command("split")
def split_cmd(
    name: Annotated[
        str, typer.Argument(help="Benchmark name (sets the ratios: FI 80/5/15, others 70/10/20).")
    ],
    src: Annotated[Path, typer.Option(help="Raw dataset: <src>/<class>/*.jpg.")],
    out: Annotated[Path, typer.Option(help="Output root: <out>/{train,val,test}/<class>/.")],
    seed: int = 0,
    copy: Annotated[bool, typer.Option("--copy", help="Copy files instead of hard-linking.")] = False,
) -> None:
    """Make the documented stratified split deterministically (ordered by content hash, not by path)."""
    from uniemox.benchmarks import split_dataset

    with _errors():
        result = split_dataset(name, src, out, seed=seed, copy=copy)
    typer.echo(json.dumps({"out": str(result.out), "counts": {s: sum(c.values()) for s, c in result.counts.items()},
                           "duplicates": result.duplicates}))  # fmt: skip


@data_app.command("list")
def list_cmd() -> None:
    """The registered benchmarks and their classes."""
    from uniemox.benchmarks import BENCHMARKS

    for name, spec in BENCHMARKS.items():
        classes = ", ".join(spec.classes) or "(from the data)"
        typer.echo(f"{name} [{spec.layout}]: {classes}")


def register(app: typer.Typer) -> None:
    """Add the downstream commands to the ``uniemox`` app."""
    for name, fn in (("finetune", finetune_cmd), ("evaluate", evaluate_cmd), ("predict", predict_cmd),
                     ("embed", embed_cmd), ("report", report_cmd)):  # fmt: skip
        app.command(name, rich_help_panel=PANEL)(fn)
    app.add_typer(data_app, name="data", rich_help_panel=PANEL)
