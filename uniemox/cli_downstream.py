"""``uniemox`` downstream commands: finetune, evaluate, predict, embed, report, data split.

``finetune`` and ``evaluate`` are derived from their stages' settings (:mod:`uniemox.stage`); the others are thin
wrappers: each builds a config and calls the library (:mod:`uniemox.finetune`, :mod:`uniemox.evaluate`,
:mod:`uniemox.report`, :mod:`uniemox.benchmarks`). Bad input exits 2, runtime failures 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from emo8.cli.common import Device
from emo8.cli.stages import add_stage_command
from uniemox.stage import DATASET_HELP, EVALUATE, FINETUNE, setup_logging

__all__ = ["register", "setup_logging"]

PANEL = "Fine-tune and evaluate"


def _errors() -> Any:
    """The ``uniemox`` CLI's error context (exit 2 for bad input, 1 for runtime failures)."""
    from uniemox.cli import errors

    return errors()


DatasetOpt = Annotated[str, typer.Option(help=DATASET_HELP)]
DataOpt = Annotated[
    str,
    typer.Option(help="Dataset root (release dir, ImageFolder tree, EmoSet root) or Hugging Face Hub id."),
]


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
    add_stage_command(app, FINETUNE, quiet_flags=("--quiet", "-q", "--no-verbose"))
    add_stage_command(app, EVALUATE)
    for name, fn in (("predict", predict_cmd), ("embed", embed_cmd), ("report", report_cmd)):
        app.command(name, rich_help_panel=PANEL)(fn)
    app.add_typer(data_app, name="data", rich_help_panel=PANEL)
