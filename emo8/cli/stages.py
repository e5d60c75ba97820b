"""Typer commands derived from the stage registry: one option per settings field, declared nowhere else.

:func:`add_stage_command` reads a stage's settings model (:mod:`emo8.core.stage`) and builds the command:
``--workspace`` and ``--quiet``, then every field as an option (or an argument), with its type, default,
bounds, choices and help. The command validates the settings with the model, runs the stage's library
function and prints its :class:`~emo8.core.stage.Summary`; errors become exit codes (2: the user's, 1: the
world's). ``emo8 build`` validates a pipeline step with the very same model, so both accept the same settings.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal

import click
import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape

from emo8.cli.common import QUIET_HELP, exit_on, fail, out, warn
from emo8.core.stage import Stage, StageSettings, Summary, field_meta, own_field_order, problem_text
from emo8.core.workspace import Workspace, WorkspaceError

__all__ = ["add_stage_command", "print_summary", "settings_error_text"]

#: Parameters every stage command has besides its settings.
COMMON_PARAMS = ("workspace", "quiet")


def _option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(annotation, False)``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _cli_type(annotation: Any) -> tuple[Any, click.ParamType | None, bool]:
    """The Python type Typer should see, a click type for choices, and whether the option repeats."""
    inner, _optional = _strip_optional(annotation)
    origin = typing.get_origin(inner)
    if origin is Literal:  # Typer shows and checks the choices itself (it has no click_type= any more)
        return annotation, None, False
    if origin in (list, tuple):
        item = typing.get_args(inner)[0]
        item_type, choice, _ = _cli_type(item)
        return list[item_type] | None, choice, True  # type: ignore[valid-type]
    return annotation, None, False


def _parameter(model: type[BaseModel], name: str) -> inspect.Parameter:
    info = model.model_fields[name]
    meta = field_meta(model, name)
    python_type, click_type, repeated = _cli_type(info.annotation)
    required = info.is_required()
    default: Any = ... if required else info.default
    if repeated and default is not ...:
        default = list(default) if default else None
    help_text = info.description or ""
    bounds: dict[str, Any] = {}
    for constraint in info.metadata:
        if getattr(constraint, "ge", None) is not None:
            bounds["min"] = constraint.ge
        if getattr(constraint, "le", None) is not None:
            bounds["max"] = constraint.le
    extra: dict[str, Any] = {"help": help_text}
    if click_type is not None:
        extra["click_type"] = click_type
    if meta["argument"]:
        param_info: Any = typer.Argument(default, **extra, show_default=not required)
    else:
        decls = [meta["flag"] or _option_name(name)]
        if info.annotation is bool and default is True and not meta["flag"]:
            decls = [f"{_option_name(name)}/--no-{name.replace('_', '-')}"]
        if meta["short"]:
            decls.append(meta["short"])
        param_info = typer.Option(default, *decls, **extra, **bounds)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=param_info, annotation=python_type)


def settings_error_text(error: ValidationError) -> str:
    """A ValidationError as one paragraph: ``--name: what is wrong`` per problem."""
    parts = []
    for problem in error.errors():
        loc = ".".join(str(x) for x in problem["loc"])
        parts.append(f"{_option_name(loc)}: {problem_text(problem)}")
    return "; ".join(parts)


def build_settings(stage: Stage[Any, Any], values: dict[str, Any]) -> StageSettings:
    """The stage's settings from CLI values (``None`` for an unset repeated option keeps the default)."""
    given = {k: v for k, v in values.items() if not (v is None and k in _repeated(stage.settings))}
    try:
        return stage.settings.model_validate(given)
    except ValidationError as exc:
        fail(settings_error_text(exc), 2)


def _repeated(model: type[BaseModel]) -> set[str]:
    return {n for n, f in model.model_fields.items() if _cli_type(f.annotation)[2]}


def print_summary(summary: Summary) -> None:
    """Print a stage's summary lines and warnings; exit 1 when it reports a problem."""
    for line in summary.lines:
        out.print(line, highlight=False)
    for message in summary.warnings:
        warn(message)
    if summary.waiting:
        out.print(f"[yellow]waiting:[/] {escape(summary.waiting)}", highlight=False)
    if summary.problem:
        fail(summary.problem, 1)


def open_workspace(path: Path) -> Workspace:
    """Open the workspace at ``path``; exit 2 with the reason when it is not one."""
    try:
        return Workspace.open(path)
    except WorkspaceError as exc:
        fail(str(exc), 2, cause=exc)


def run_stage_command(
    stage: Stage[Any, Any], workspace: Path, quiet: bool, values: dict[str, Any]
) -> Summary:
    """What every derived command does: validate, open the workspace, run, summarise (exit codes on errors)."""
    settings = build_settings(stage, values)
    ws: Any = open_workspace(workspace) if stage.workspace else None
    rules: list[tuple[Any, ...]] = []
    if stage.usage_errors:
        rules.append((stage.usage_errors, 2))
    if stage.runtime_errors:
        rules.append((stage.runtime_errors, 1))
    with exit_on(*rules):
        result = stage.run(ws, settings, not quiet)
    summary = stage.summarize(result, settings)
    print_summary(summary)
    return summary


def given_values(values: dict[str, Any], ctx: typer.Context) -> dict[str, Any]:
    """The ``values`` the user gave (command line, environment): an option left at its default stays out, so the
    settings' ``model_fields_set`` names what was asked for, as for a pipeline step that names only some settings
    (``uniemox pretrain --resume`` compares only those with the checkpoint)."""

    def given(name: str) -> bool:  # by name: typer may bring its own copy of click's ParameterSource
        source = ctx.get_parameter_source(name)
        return source is None or source.name != "DEFAULT"

    return {k: v for k, v in values.items() if given(k)}


def add_stage_command(
    app: typer.Typer,
    stage: Stage[Any, Any],
    name: str | None = None,
    quiet_flags: tuple[str, ...] = ("--quiet", "-q"),
) -> None:
    """Add ``stage`` to ``app`` as command ``name`` (default: the last part of ``stage.command``).

    ``quiet_flags``: the spellings of ``--quiet`` (a command may keep an older one, e.g. ``--no-progress``).
    A stage with ``workspace=False`` gets no ``--workspace`` option."""
    from emo8.cli.common import WorkspaceOpt

    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
    if stage.workspace:
        params.append(
            inspect.Parameter(
                "workspace", inspect.Parameter.KEYWORD_ONLY, default=Path("."), annotation=WorkspaceOpt
            )
        )
    params += [_parameter(stage.settings, field) for field in own_field_order(stage.settings)]
    params.append(
        inspect.Parameter(
            "quiet",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(False, *quiet_flags, help=QUIET_HELP),
            annotation=bool,
        )
    )

    def command(**kwargs: Any) -> None:
        ctx, workspace, quiet = kwargs.pop("ctx"), kwargs.pop("workspace", Path(".")), kwargs.pop("quiet")
        run_stage_command(stage, workspace, quiet, given_values(kwargs, ctx))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = stage.help
    command.__name__ = (name or stage.command[-1]).replace("-", "_")
    app.command(name or stage.command[-1], rich_help_panel=stage.panel)(command)
