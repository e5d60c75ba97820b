"""Pipeline files: load a ``PIPELINE.yaml``, validate all of it against the stage registry, locate every mistake.

A pipeline file (``docs/pipelines.md``) names a workspace and a list of steps; each step is a registered stage
(:mod:`emo8.core.stage`) and its ``settings:``, validated by the very model the stage's CLI command is derived
from. :func:`load_pipeline` checks the whole file before anything runs and collects every mistake, each as
``FILE:LINE: FIELD: what is wrong (what is allowed)``; :class:`PipelineError` carries them all.
"""

from __future__ import annotations

import hashlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from emo8.core.stage import STAGES, Stage, StageSettings, field_meta, own_field_order, problem_text

__all__ = [
    "SCHEMA_VERSION",
    "TOP_LEVEL_KEYS",
    "Pipeline",
    "PipelineError",
    "ServeSpec",
    "Step",
    "load_pipeline",
]

SCHEMA_VERSION = 1
TOP_LEVEL_KEYS = ("emo8", "name", "description", "workspace", "serve", "defaults", "steps")
STEP_KEYS = ("stage", "name", "settings")
SERVE_KEYS = ("directory", "port")

KeyPath = tuple[str | int, ...]


class PipelineError(ValueError):
    """A pipeline file that cannot run: every problem found, each naming the file, line and field."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        head = f"{path}: {len(problems)} problem(s) in the pipeline file" if len(problems) > 1 else ""
        super().__init__("\n".join([head, *problems]) if head else problems[0])


@dataclass(frozen=True)
class ServeSpec:
    """A loopback static file server that runs while the build runs."""

    name: str
    directory: Path
    port: int


@dataclass(frozen=True)
class Step:
    """One validated step: its position, unique name, stage and settings (defaults filled, paths resolved)."""

    index: int
    name: str
    stage: Stage[Any, Any]
    settings: StageSettings
    line: int


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline file."""

    path: Path
    text: str
    sha256: str
    name: str
    description: str
    workspace: Path
    serve: tuple[ServeSpec, ...]
    steps: tuple[Step, ...]

    def step_names(self) -> list[str]:
        return [step.name for step in self.steps]

    def step(self, name: str) -> Step:
        return next(step for step in self.steps if step.name == name)


# -- locating fields ------------------------------------------------------------------------------------------


class _Lines:
    """Maps a key path (``("steps", 2, "settings", "model")``) to its line in the composed YAML node tree."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def node(self, path: KeyPath) -> tuple[yaml.Node | None, yaml.Node | None]:
        """The (key node, value node) at ``path``; the deepest existing one when part of the path is missing."""
        key_node: yaml.Node | None = None
        node = self.root
        for part in path:
            if isinstance(node, yaml.MappingNode):
                found = next(((k, v) for k, v in node.value if k.value == part), None)
                if found is None:
                    return key_node, node
                key_node, node = found
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                key_node, node = None, node.value[part]
            else:
                return key_node, node
        return key_node, node

    def line(self, path: KeyPath, of_key: bool = False) -> int:
        """1-based line of the value at ``path`` (or of its key with ``of_key``)."""
        key_node, value_node = self.node(path)
        chosen = key_node if (of_key and key_node is not None) or value_node is None else value_node
        return chosen.start_mark.line + 1 if chosen is not None else 1


def _field(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _Problems:
    """Every mistake found in one file, as ``(line, "FILE:LINE: FIELD: message")``, shown sorted by line."""

    def __init__(self, path: Path, lines: _Lines) -> None:
        self.path = path
        self.lines = lines
        self.items: list[tuple[int, str]] = []

    def add(self, where: KeyPath, message: str, of_key: bool = False, line: int | None = None) -> None:
        at = line if line is not None else self.lines.line(where, of_key)
        label = f"{_field(where)}: " if where else ""
        self.items.append((at, f"{self.path}:{at}: {label}{message}"))

    def raise_if_any(self) -> None:
        if self.items:
            raise PipelineError(self.path, [text for _, text in sorted(self.items, key=lambda item: item[0])])


def _duplicate_keys(node: yaml.Node | None, path: KeyPath, problems: _Problems) -> None:
    """YAML keeps the last of two equal keys silently; a pipeline file treats that as a mistake."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if key.value in seen:
                problems.add((*path, key.value), f"given twice (first on line {seen[key.value]})", line=line)
            seen.setdefault(key.value, line)
            _duplicate_keys(value, (*path, key.value), problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _duplicate_keys(item, (*path, index), problems)


# -- settings -------------------------------------------------------------------------------------------------


def _is_path_type(annotation: Any) -> tuple[bool, bool]:
    """(whether ``annotation`` is a Path, possibly optional; whether it is a list/tuple of them)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return next(
            (found for a in typing.get_args(annotation) if (found := _is_path_type(a))[0]), (False, False)
        )
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return (bool(args) and _is_path_type(args[0])[0], True)
    return (isinstance(annotation, type) and issubclass(annotation, Path), False)


def _resolve_paths(stage: Stage[Any, Any], values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative path-typed settings resolve against the pipeline file's folder."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            return path if path.is_absolute() else (base / path).resolve()
        return value

    def resolve_if_local(value: Any) -> Any:  # path_like text: resolve only what exists next to the file
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            candidate = base / Path(value).expanduser()
            return str(candidate.resolve()) if candidate.exists() else value
        return value

    resolved = dict(values)
    for name, info in stage.settings.model_fields.items():
        if name not in resolved:
            continue
        is_path, many = _is_path_type(info.annotation)
        if field_meta(stage.settings, name)["path_like"] and not is_path:
            value = resolved[name]
            resolved[name] = (
                [resolve_if_local(v) for v in value] if isinstance(value, list) else resolve_if_local(value)
            )
        elif is_path:
            value = resolved[name]
            resolved[name] = (
                [resolve(v) for v in value] if many and isinstance(value, list) else resolve(value)
            )
    return resolved


def _settings_problems(
    stage: Stage[Any, Any],
    error: ValidationError,
    where: KeyPath,
    from_defaults: set[str],
    problems: _Problems,
) -> None:
    allowed = ", ".join(own_field_order(stage.settings))
    for problem in error.errors():
        loc = problem["loc"]
        name = str(loc[0]) if loc else ""
        rest = [str(part) for part in loc[1:]]
        suffix = f"[{']['.join(rest)}]" if rest else ""
        if problem["type"] == "extra_forbidden":
            problems.add(
                (*where, "settings", name),
                f"unknown setting of stage {stage.name!r}; its settings are: {allowed}",
                of_key=True,
            )
        elif problem["type"] == "missing":
            problems.add(
                (*where, "stage"),
                f"stage {stage.name!r} needs setting {name!r} (add it under `settings:`); its settings are: "
                f"{allowed}",
            )
        elif name in from_defaults:
            problems.add(("defaults", name), f"{problem_text(problem)} (for stage {stage.name!r})")
        else:
            field = stage.settings.model_fields.get(name)
            help_text = (
                (field.description or "").replace("\\[", "[") if field is not None else ""
            )  # no markup
            hint = f" ({help_text})" if help_text else ""
            problems.add(
                (*where, "settings", name), f"{suffix}{' ' if suffix else ''}{problem_text(problem)}{hint}"
            )


# -- loading --------------------------------------------------------------------------------------------------


def load_pipeline(
    path: str | Path,
    workspace: Path | None = None,
    from_step: str | None = None,
    until_step: str | None = None,
) -> Pipeline:
    """Read and validate the pipeline file at ``path`` against :data:`emo8.core.stage.STAGES`.

    ``workspace`` overrides the file's ``workspace:``; ``from_step`` / ``until_step`` are checked against the
    step names. Raises :class:`PipelineError` listing every problem found (nothing has run).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(path, [f"{path}: cannot read the pipeline file: {exc}"]) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise PipelineError(path, [f"{path}:{line}: YAML syntax error: {what}"]) from exc
    except yaml.YAMLError as exc:
        raise PipelineError(path, [f"{path}: YAML syntax error: {exc}"]) from exc
    problems = _Problems(path, _Lines(root))
    if not isinstance(data, dict):
        problems.add((), f"a pipeline file is a mapping with the keys {', '.join(TOP_LEVEL_KEYS)}", line=1)
        problems.raise_if_any()
    _duplicate_keys(root, (), problems)
    base = path.resolve().parent
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            problems.add((key,), f"unknown key; the keys are: {', '.join(TOP_LEVEL_KEYS)}", of_key=True)
    if "emo8" not in data:
        problems.add((), f"missing `emo8: {SCHEMA_VERSION}` (the pipeline schema version)", line=1)
    elif data["emo8"] != SCHEMA_VERSION:
        problems.add(
            ("emo8",), f"schema version {data['emo8']!r} is not supported; this emo8 reads {SCHEMA_VERSION}"
        )
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.add(
            ("name",) if "name" in data else (),
            "a pipeline needs a `name:` (text)",
            line=None if "name" in data else 1,
        )
    description = data.get("description") or ""
    if not isinstance(description, str):
        problems.add(("description",), "must be text")
    ws_path = workspace
    if ws_path is None:
        ws_value = data.get("workspace")
        if isinstance(ws_value, str) and ws_value.strip():
            ws_path = (base / Path(ws_value).expanduser()).resolve()
        elif "workspace" in data:
            problems.add(("workspace",), "must be a folder path (relative to the pipeline file's folder)")
        else:
            problems.add((), "no workspace: add `workspace: PATH` to the file or pass --workspace", line=1)
    serve = _serve(data.get("serve"), base, problems)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.add(("defaults",), "must be a mapping of setting name -> value")
        defaults = {}
    steps = _steps(data.get("steps"), "steps" in data, defaults, base, problems)
    known = [step.name for step in steps]
    for flag, value in (("--from", from_step), ("--until", until_step)):
        if value is not None and value not in known:
            problems.items.append(
                (0, f"{path}: {flag} {value!r} is not a step; the steps are: {', '.join(known)}")
            )
    if from_step in known and until_step in known and known.index(from_step) > known.index(until_step):
        problems.items.append((0, f"{path}: --from {from_step!r} comes after --until {until_step!r}"))
    problems.raise_if_any()
    return Pipeline(
        path=path.resolve(), text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), name=str(name),
        description=description, workspace=Path(str(ws_path)), serve=serve, steps=tuple(steps),
    )  # fmt: skip


def _serve(value: Any, base: Path, problems: _Problems) -> tuple[ServeSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        problems.add(("serve",), "must be a mapping: NAME: {directory: PATH, port: NUMBER}")
        return ()
    servers = []
    for name, spec in value.items():
        where: KeyPath = ("serve", name)
        if not isinstance(spec, dict):
            problems.add(where, "must be a mapping {directory: PATH, port: NUMBER}")
            continue
        for key in spec:
            if key not in SERVE_KEYS:
                problems.add(
                    (*where, key), f"unknown key; the keys are: {', '.join(SERVE_KEYS)}", of_key=True
                )
        directory, port = spec.get("directory"), spec.get("port")
        folder = (base / str(directory)).resolve() if isinstance(directory, str) else None
        if folder is None:
            problems.add(where, "needs `directory:` (a folder path)")
        elif not folder.is_dir():
            problems.add((*where, "directory"), f"{folder} is not a folder")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            problems.add(
                (*where, "port") if "port" in spec else where, "needs `port:` a number from 1 to 65535"
            )
        elif folder is not None:
            servers.append(ServeSpec(str(name), folder, port))
    ports = [s.port for s in servers]
    for spec in servers:
        if ports.count(spec.port) > 1:
            problems.add(("serve", spec.name, "port"), f"port {spec.port} is used by two servers")
    return tuple(servers)


def _steps(value: Any, given: bool, defaults: dict[str, Any], base: Path, problems: _Problems) -> list[Step]:
    if not isinstance(value, list) or not value:
        problems.add(
            ("steps",) if given else (),
            "a pipeline needs `steps:`, a list of {stage, name, settings}",
            line=None if given else 1,
        )
        return []
    steps: list[Step] = []
    used_defaults: set[str] = set()
    names: dict[str, int] = {}
    for index, raw in enumerate(value):
        where: KeyPath = ("steps", index)
        if not isinstance(raw, dict):
            problems.add(where, "a step is a mapping with the keys stage, name, settings")
            continue
        for key in raw:
            if key not in STEP_KEYS:
                problems.add(
                    (*where, key), f"unknown key; a step's keys are: {', '.join(STEP_KEYS)}", of_key=True
                )
        stage_name = raw.get("stage")
        if not isinstance(stage_name, str) or stage_name not in STAGES:
            shown = f"unknown stage {stage_name!r}" if "stage" in raw else "a step needs `stage:`"
            problems.add(
                (*where, "stage") if "stage" in raw else where,
                f"{shown}; the stages are: {', '.join(STAGES)}",
            )
            continue
        stage = STAGES[stage_name]
        line = problems.lines.line(where)
        explicit = raw.get("name")
        if "name" in raw and (not isinstance(explicit, str) or not explicit.strip()):
            problems.add((*where, "name"), "a step name is non-empty text")
            explicit = None
        if explicit:
            step_name = explicit
            if step_name in names:
                problems.add(
                    (*where, "name"),
                    f"duplicate step name {step_name!r} (also the step on line {names[step_name]}); "
                    "step names are unique",
                )
        else:
            step_name, n = stage_name, 1
            while step_name in names:
                n += 1
                step_name = f"{stage_name}-{n}"
        names.setdefault(step_name, line)
        given_settings = raw.get("settings") or {}
        if not isinstance(given_settings, dict):
            problems.add(
                (*where, "settings"),
                f"must be a mapping; the settings of {stage_name!r} are: {', '.join(stage.settings.model_fields)}",
            )
            continue
        filled = {
            k: v for k, v in defaults.items() if k in stage.settings.model_fields and k not in given_settings
        }
        used_defaults.update(filled)
        values = _resolve_paths(stage, {**filled, **given_settings}, base)
        try:
            settings = stage.settings.model_validate(values)
        except ValidationError as exc:
            _settings_problems(stage, exc, where, set(filled), problems)
            continue
        steps.append(Step(index, step_name, stage, settings, line))
    stage_names = {s.get("stage") for s in value if isinstance(s, dict)}
    for key in defaults:
        if key not in used_defaults and not any(
            key in STAGES[s].settings.model_fields for s in stage_names if isinstance(s, str) and s in STAGES
        ):
            problems.add(("defaults", key), "no step's stage has this setting", of_key=True)
    return steps
