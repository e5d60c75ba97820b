"""Stages: one typed settings model per stage, in one registry that the CLI, ``emo8 build`` and tests share.

A stage is a library function ``run(workspace, settings, progress) -> result`` plus the pydantic model of its
settings. Each setting is declared once, with :func:`setting` (name, type, default, bounds, help), and everything
else is derived from the model:

- the ``emo8`` command (:mod:`emo8.cli.stages` turns every field into a Typer option or argument);
- the step of a pipeline file (``emo8 build``: the step's ``settings:`` mapping is validated by the same model);
- the docs (``docs/cli.md`` is generated from the Typer apps, ``docs/pipelines.md`` lists the stage names).

A stage also says how a user reads its result (:class:`Summary`: lines, a problem that fails the command, or a
"waiting for people" message that pauses a build), which errors are the user's (exit 2) and which are the
world's (exit 1), and which workspace artifacts it reads and writes (for ``emo8 build``'s fingerprints).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

if TYPE_CHECKING:
    from emo8.core.workspace import Workspace

__all__ = [
    "STAGES",
    "CommaList",
    "Stage",
    "StageError",
    "StageSettings",
    "Summary",
    "get_stage",
    "problem_text",
    "register_stage",
    "setting",
    "settings_fingerprint",
]


class StageError(LookupError):
    """An unknown stage name."""


class StageSettings(BaseModel):
    """Base of every stage's settings: unknown keys are errors, values are validated and frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=False)


def setting(
    default: Any = ...,
    help: str = "",
    *,
    flag: str | None = None,
    short: str | None = None,
    argument: bool = False,
    fingerprint: bool = True,
    path_like: bool = False,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    examples: list[Any] | None = None,
) -> Any:
    """Declare one setting of a stage: its default (``...``: required), help text and bounds.

    ``flag`` overrides the CLI option name (default ``--field-name``; for a boolean ``"--x"`` gives a flag
    without a ``--no-x`` twin), ``short`` adds a one-letter alias, ``argument`` makes it a positional CLI
    argument. ``fingerprint=False`` marks a setting that cannot change the result (workers, device, progress):
    ``emo8 build`` does not re-run a stage when only such a setting changed. ``path_like`` marks a text setting
    that may name a local file or folder (or something else: a Hub id, an architecture): in a pipeline file a
    relative value that exists next to the file resolves against the file's folder, as ``Path`` settings do.
    """
    extra: Any = {
        "flag": flag, "short": short, "argument": argument, "fingerprint": fingerprint, "path_like": path_like,
    }  # fmt: skip
    bounds: Any = {k: v for k, v in (("ge", ge), ("le", le), ("gt", gt), ("lt", lt)) if v is not None}
    return Field(default, description=help, examples=examples, json_schema_extra=extra, **bounds)


def comma_list(value: Any) -> Any:
    """``"a,b"``, ``["a", "b,c"]`` -> ``("a", "b", "c")`` (blanks dropped): a repeated CLI option whose values may
    also be comma-separated, or a pipeline's string or list. Anything else passes on to the type check."""
    items = (value,) if isinstance(value, str) else value
    if isinstance(items, (list, tuple)) and all(isinstance(item, str) for item in items):
        return tuple(part.strip() for item in items for part in item.split(",") if part.strip())
    return value


#: A tuple-of-names setting: repeat the CLI option or separate values with commas; a pipeline gives a list or a string.
CommaList = Annotated[tuple[str, ...], BeforeValidator(comma_list)]


def own_field_order(model: type[BaseModel]) -> list[str]:
    """The model's fields for display: positional arguments, then the model's own fields, then inherited ones
    (pydantic lists inherited fields first; a reader wants what is special about a stage first)."""
    own = set(inspect.get_annotations(model))
    fields = list(model.model_fields)
    arguments = [f for f in fields if field_meta(model, f)["argument"]]
    rest = [f for f in fields if f not in arguments]
    return arguments + [f for f in rest if f in own] + [f for f in rest if f not in own]


def field_meta(model: type[BaseModel], name: str) -> dict[str, Any]:
    """The :func:`setting` extras of field ``name`` (flag, short, argument, fingerprint)."""
    extra = model.model_fields[name].json_schema_extra
    meta: dict[str, Any] = {
        "flag": None,
        "short": None,
        "argument": False,
        "fingerprint": True,
        "path_like": False,
    }
    if isinstance(extra, dict):
        meta.update(extra)
    return meta


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    return value


def problem_text(problem: Any) -> str:
    """One pydantic error's message for a user (pydantic's "Value error, " prefix removed)."""
    message = str(problem["msg"])
    return message.removeprefix("Value error, ")


def settings_fingerprint(settings: StageSettings) -> str:
    """sha256 of the settings that can change a stage's result (canonical JSON; ``fingerprint=False`` fields out)."""
    kept = {
        name: _jsonable(getattr(settings, name))
        for name in type(settings).model_fields
        if field_meta(type(settings), name)["fingerprint"]
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


@dataclass
class Summary:
    """What a stage tells its user: ``lines`` (rich markup), ``warnings``; ``problem`` fails the command (exit
    1) and stops a build; ``waiting`` (a build pauses there) says what people must do before it can go on."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problem: str | None = None
    waiting: str | None = None


S = TypeVar("S", bound=StageSettings)
R = TypeVar("R")


@dataclass(frozen=True)
class Stage(Generic[S, R]):
    """One registered stage. ``command`` is its CLI path (``("ingest", "urls")``); ``reads`` / ``writes`` name
    workspace artifacts (catalog tables ``table:NAME``, folders ``dir:PATH``) for ``emo8 build``; ``inputs``
    digests what a stage reads from outside the workspace (a source folder, a URL list) from its settings."""

    name: str
    settings: type[S]
    run: Callable[[Workspace, S, bool], R]
    summarize: Callable[[R, S], Summary]
    command: tuple[str, ...]
    help: str
    usage_errors: tuple[type[BaseException], ...] = ()
    runtime_errors: tuple[type[BaseException], ...] = ()
    reads: tuple[str, ...] = ("table:items",)
    writes: tuple[str, ...] = ("table:items",)
    inputs: Callable[[S], str] | None = None
    panel: str | None = None
    workspace: bool = True  # False: the CLI command has no --workspace and ``run`` gets None (uniemox stages)


#: Every registered stage by name, in registration order (which is pipeline order within a package).
STAGES: dict[str, Stage[Any, Any]] = {}


def register_stage(stage: Stage[S, R]) -> Stage[S, R]:
    """Add ``stage`` to :data:`STAGES` (a second registration under the same name replaces the first)."""
    STAGES[stage.name] = stage
    return stage


def get_stage(name: str) -> Stage[Any, Any]:
    """The stage called ``name``; :class:`StageError` naming the known stages otherwise."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; the stages are: {', '.join(STAGES)}")
    return STAGES[name]


def path_digest(path: Path, recursive: bool = True) -> str:
    """A digest of what a step reads: a file's bytes (sha256), or a folder's listing (relative names, sizes,
    mtimes; ``recursive`` or the top level only), walked one folder at a time so that memory stays bounded by the
    largest single folder, not the whole tree (``objects/`` holds one file per image). A missing path is ``"-"``."""
    path = Path(path)
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    if not path.is_dir():
        return "-"
    h = hashlib.sha256()

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    walk(Path(entry.path), f"{prefix}{entry.name}/")
            elif entry.is_file():
                stat = entry.stat()
                h.update(f"{prefix}{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())

    walk(path, "")
    return h.hexdigest()


#: Help panels, in pipeline order: ``emo8 --help`` lists the commands grouped by stage.
PANEL_SETUP = "1. Set up"
PANEL_COLLECT = "2. Collect"
PANEL_CURATE = "3. Curate"
PANEL_LABEL = "4. Label"
PANEL_RELEASE = "5. Split, release, audit"
PANEL_PRETRAIN = "Pretrain"
PANEL_FINETUNE = "Fine-tune and evaluate"
PANEL_TOOLS = "Tools"

PANELS = (
    PANEL_SETUP, PANEL_COLLECT, PANEL_CURATE, PANEL_LABEL, PANEL_RELEASE, PANEL_PRETRAIN, PANEL_FINETUNE, PANEL_TOOLS,
)  # fmt: skip


# -- settings several stages share -------------------------------------------------------------------------------

#: Default of ``workers`` wherever a stage decodes images in parallel: the CPUs, at most 8.
DEFAULT_WORKERS = max(1, min(8, os.cpu_count() or 1))
WORKERS_HELP = "Parallel workers reading and decoding images (default: CPUs, max 8)."


def workers_setting(default: int = DEFAULT_WORKERS, help: str = WORKERS_HELP) -> Any:
    """``workers``: parallelism only, so not part of a stage's fingerprint."""
    return setting(default, help, ge=1, fingerprint=False)


def device_setting() -> Any:
    """``device``: where a model runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``); not part of the fingerprint."""
    return setting("auto", "auto (cuda when available), cpu or cuda.", fingerprint=False)


def executor_setting() -> Any:
    """``executor``: ``local`` or ``ray`` (:mod:`emo8.core.executor`); not part of the fingerprint."""
    return setting(
        "local", "Where the work runs: local (this machine) or ray (a Ray cluster).", fingerprint=False
    )


def ray_address_setting() -> Any:
    """``ray_address``: with the ray executor, ``auto`` or a cluster address (None: start one here)."""
    return setting(
        None, "With --executor ray: auto or an address (default: start one here).", fingerprint=False
    )
