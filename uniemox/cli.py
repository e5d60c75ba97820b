"""``uniemox`` command line: pretrain (derived from :mod:`uniemox.stage`), detect-persons, export-encoder, models.

Other modules add commands to :data:`app` (import it, decorate with ``@app.command(...)``). Errors reach the user as
one paragraph with the exit codes of ``emo8`` (see :data:`emo8.cli.common.EXIT_CODES`): wrap a command's work in
``with exit_on(*USAGE_ERRORS, *RUNTIME_ERRORS):``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from emo8.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    PANEL_PRETRAIN,
    PANEL_TOOLS,
    add_version_option,
    exit_on,
    ordered_group,
)
from emo8.cli.stages import add_stage_command
from uniemox.cli_downstream import register as register_downstream
from uniemox.stage import PRETRAIN, RUNTIME_ERRORS, USAGE_ERRORS, setup_logging

app = typer.Typer(
    cls=ordered_group(("pretrain", "detect-persons", "smoke", "export-encoder", "models")),
    help="UniEmoX pretraining on Emo8 / EmoSet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
add_version_option(app, "uniemox")


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "change the command" (exit 2): missing or unreadable inputs, unknown names, weights."""
    from uniemox.models.teacher import TeacherLoadError

    return (*USAGE_ERRORS, TeacherLoadError)


def errors() -> Any:
    """The context that turns UniEmoX's errors into one paragraph: exit 2 for bad input, 1 for runtime failures."""
    return exit_on((_usage_errors(), EXIT_USAGE), (RUNTIME_ERRORS, EXIT_FAILURE))


add_stage_command(app, PRETRAIN, quiet_flags=("--quiet", "-q", "--no-progress"))


@app.command("detect-persons", rich_help_panel=PANEL_PRETRAIN)
def detect_persons_cmd(
    data: Annotated[str, typer.Argument(help="Same data argument as pretrain.")],
    out: Annotated[
        Path, typer.Option(help="JSON to write (resumed if it exists); pass it to pretrain --person-boxes.")
    ],
    split: str = "train",
    backend: Annotated[
        str | None, typer.Option(help="A backend of `emo8 detect-people` (default: its default).")
    ] = None,
    weights: Annotated[str | None, typer.Option(help="Weights file (torchvision:NAME).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Minimum score (default: the backend's).")] = None,
) -> None:
    """Detect people once, with `emo8 detect-people`'s detectors, in images without person_boxes; cache the boxes."""
    from emo8.label.people import DEFAULT_BACKEND, DetectConfig
    from uniemox.data import open_source
    from uniemox.detect import detect_persons

    config = DetectConfig(backend=backend or DEFAULT_BACKEND, weights=weights, score_threshold=threshold)
    with errors():  # emo8.label.people.DetectorError is a ValueError: exit 2
        typer.echo(json.dumps(detect_persons(open_source(data, split), out, config=config)))


@app.command("export-encoder", rich_help_panel=PANEL_TOOLS)
def export_encoder_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A pretraining checkpoint (e.g. OUT/last.pt).")],
    out: Annotated[Path, typer.Argument(help="Where to write {'model': encoder state dict}.")],
) -> None:
    """Write the shared encoder under MAE/timm ViT key names, for fine-tuning."""
    from uniemox.checkpoint import export_encoder

    with errors():
        typer.echo(str(export_encoder(checkpoint, out)))


@app.command(rich_help_panel=PANEL_TOOLS)
def models() -> None:
    """List the registered model sizes and fusions."""
    from uniemox.models import FUSIONS, MAE_CONFIGS

    for name, c in MAE_CONFIGS.items():
        typer.echo(f"{name}: embed {c.embed_dim}, depth {c.depth}, heads {c.num_heads}, patch {c.patch_size}")
    typer.echo(f"fusions: {', '.join(FUSIONS)}")


@app.command(rich_help_panel=PANEL_PRETRAIN)
def smoke(
    out: Annotated[Path, typer.Option(help="Working directory for the tiny dataset and run.")],
    steps: int = 5,
) -> None:
    """A few CPU steps of a tiny student + tiny RANDOM CLIP on the bundled sample images (demo / CI)."""
    from uniemox.testing import make_hf_dataset, tiny_config, tiny_teacher
    from uniemox.train import pretrain as run

    setup_logging(True)
    out.mkdir(parents=True, exist_ok=True)
    data = make_hf_dataset(out / "samples-hf", n=32)
    cfg = tiny_config(data, out / "run", tiny_teacher(out), max_steps=steps, ckpt_every=steps)
    cfg.progress = False
    for row in run(cfg).history:
        typer.echo(
            f"step {int(row['step'])}: loss {row['loss']:.4f} (sim {row['l_sim']:.4f}, con {row['l_con']:.4f}, "
            f"rec {row['l_rec']:.4f}), {row['images_per_s']:.1f} img/s"
        )
    typer.echo(f"run directory: {out / 'run'}")


register_downstream(app)  # finetune, evaluate, predict, embed, report, data (uniemox/cli_downstream.py)
