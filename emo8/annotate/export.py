"""Reading Label Studio tasks (from the API or a JSON export file) into :class:`AnnotationRecord` rows.

A Label Studio JSON export is a list of tasks; each task has an integer ``id``, a ``data`` object (emo8's tasks
carry ``item_id``; ``sha256`` is accepted too) and an ``annotations`` list. Each annotation has an integer ``id``,
``completed_by`` (a user id or a user object), a ``result`` list and optionally ``was_cancelled``, ``ground_truth``,
``lead_time``, ``created_at``, ``updated_at``. :func:`check_export` verifies exactly that and names the first
problems it finds (task position, task id, field), so a wrong file is rejected before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emo8.annotate.errors import ExportFormatError
from emo8.annotate.labelconfig import LabelConfig
from emo8.annotate.store import AnnotationRecord

#: How many problems an error message lists before "and N more".
MAX_PROBLEMS = 5


@dataclass
class ParsedTasks:
    """Annotations and task ids read from a list of tasks, plus what had to be skipped and why."""

    records: list[AnnotationRecord] = field(default_factory=list)
    task_ids: dict[str, int] = field(default_factory=dict)
    tasks: int = 0
    skipped_tasks: list[str] = field(default_factory=list)
    unknown_values: int = 0


def load_export(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a Label Studio JSON export; raise :class:`ExportFormatError` with a clear message if unusable."""
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportFormatError(f"cannot read {target}: {exc}") from exc
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportFormatError(
            f"{target} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "expected a Label Studio JSON export (Export > JSON)"
        ) from exc
    check_export(payload, str(target))
    return list(payload)


def check_export(payload: Any, name: str = "export") -> None:
    """Raise :class:`ExportFormatError` unless ``payload`` has the shape of a Label Studio JSON export."""
    if isinstance(payload, dict) and "tasks" not in payload and "data" in payload:
        payload = [payload]
    if not isinstance(payload, list):
        kind = type(payload).__name__
        hint = (
            " (JSON_MIN and CSV exports lack annotation ids: export as JSON)"
            if isinstance(payload, dict)
            else ""
        )
        raise ExportFormatError(
            f"{name} is not a Label Studio JSON export: expected a list of tasks, got {kind}{hint}"
        )
    problems: list[str] = []
    for position, task in enumerate(payload):
        problems.extend(_task_problems(position, task))
        if len(problems) > 50:
            break
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS])
        more = f"; and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        raise ExportFormatError(f"{name} is not a usable Label Studio JSON export: {shown}{more}")


def _task_problems(position: int, task: Any) -> list[str]:
    where = f"task #{position}"
    if not isinstance(task, dict):
        return [f"{where} is a {type(task).__name__}, not an object"]
    if not _is_int(task.get("id")):
        return [f"{where} has no integer 'id'"]
    where = f"task #{position} (id {task['id']})"
    problems: list[str] = []
    data = task.get("data")
    if not isinstance(data, dict):
        problems.append(f"{where} has no 'data' object")
    elif not isinstance(data.get("item_id"), str) and not isinstance(data.get("sha256"), str):
        problems.append(f"{where}: 'data' has no 'item_id' (tasks must come from `emo8 annotate push`)")
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        return [*problems, f"{where}: 'annotations' is not a list"]
    for index, ann in enumerate(annotations):
        at = f"{where} annotation #{index}"
        if not isinstance(ann, dict):
            problems.append(f"{at} is not an object")
            continue
        if not _is_int(ann.get("id")):
            problems.append(f"{at} has no integer 'id'")
        who = ann.get("completed_by")
        if not (_is_int(who) or (isinstance(who, dict) and _is_int(who.get("id")))):
            problems.append(f"{at} has no 'completed_by' user")
        if not isinstance(ann.get("result"), list):
            problems.append(f"{at} has no 'result' list")
        lead = ann.get("lead_time")
        if lead is not None and not isinstance(lead, (int, float)):
            problems.append(f"{at}: 'lead_time' is not a number")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_tasks(
    tasks: Iterable[Mapping[str, Any]],
    config: LabelConfig,
    users: Mapping[int, str] | None = None,
    resolve_item: Callable[[Mapping[str, Any]], str | None] | None = None,
) -> ParsedTasks:
    """Turn tasks (API dicts or export entries, already checked) into annotation records.

    ``users`` maps user ids to e-mails (the annotator column; ``user:<id>`` when unknown). ``resolve_item`` maps a
    task's ``data`` to a workspace item id (default: ``data["item_id"]``); tasks it cannot resolve are skipped and
    listed in :attr:`ParsedTasks.skipped_tasks`.
    """
    users = users or {}
    resolve = resolve_item or (lambda data: data.get("item_id"))
    parsed = ParsedTasks()
    for task in tasks:
        parsed.tasks += 1
        task_id = int(task["id"])
        item_id = resolve(task.get("data") or {})
        if item_id is None:
            parsed.skipped_tasks.append(f"task {task_id}")
            continue
        parsed.task_ids.setdefault(item_id, task_id)
        for ann in task.get("annotations") or []:
            record = _record(ann, task_id, item_id, config, users)
            parsed.unknown_values += len(config.parse_result(ann.get("result") or []).unknown)
            parsed.records.append(record)
    return parsed


def _record(
    ann: Mapping[str, Any], task_id: int, item_id: str, config: LabelConfig, users: Mapping[int, str]
) -> AnnotationRecord:
    who = ann.get("completed_by")
    user_id: int | None
    email: str | None = None
    if isinstance(who, dict):
        user_id = int(who["id"])
        email = who.get("email")
    else:
        user_id = int(who) if who is not None else None
    if email is None and user_id is not None:
        email = users.get(user_id)
    if email is None:
        email = _username_from(ann.get("created_username"))
    result = list(ann.get("result") or [])
    answer = config.parse_result(result)
    cancelled = bool(ann.get("was_cancelled"))
    lead = ann.get("lead_time")
    return AnnotationRecord(
        annotation_id=int(ann["id"]),
        task_id=task_id,
        item_id=item_id,
        annotator=email or (f"user:{user_id}" if user_id is not None else "unknown"),
        annotator_id=user_id,
        choice=None if cancelled else answer.choice,
        flags=answer.flags,
        style=answer.style,
        lead_time=float(lead) if isinstance(lead, (int, float)) else None,
        was_cancelled=cancelled,
        ground_truth=bool(ann.get("ground_truth")),
        created_at=_text(ann.get("created_at")),
        updated_at=_text(ann.get("updated_at")),
        result=json.dumps(result, sort_keys=True, ensure_ascii=False),
    )


def _username_from(created_username: Any) -> str | None:
    """Label Studio's ``created_username`` reads ``" email, id"``; return the e-mail part."""
    if not isinstance(created_username, str):
        return None
    name = created_username.rsplit(",", 1)[0].strip()
    return name or None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
