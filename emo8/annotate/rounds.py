"""Annotation rounds: push a round's selection to Label Studio, pull (or import) its annotations, report progress.

A *round* is a named selection of items (``emo8 select --round NAME`` stores it in the catalog's ``selections``
table). :func:`push_round` turns it into one Label Studio project with one task per item (plus unannounced gold
items), :func:`pull_round` copies every annotation back into the ``annotations`` table, :func:`import_export` does
the same from a JSON export file, and :func:`round_status` summarises progress. Push and pull are idempotent:
re-running them adds only what is missing and never duplicates a task or an annotation.
"""

from __future__ import annotations

import csv
import math
import random
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from emo8.annotate.client import Client
from emo8.annotate.errors import AnnotateError, RoundError, ServerUnavailable
from emo8.annotate.export import ParsedTasks, load_export, parse_tasks
from emo8.annotate.labelconfig import LabelConfig, guidelines_html
from emo8.annotate.store import AnnotationStore, ReplaceSummary
from emo8.core.catalog import utc_now
from emo8.core.taxonomy import EMOTIONS, normalise_label
from emo8.core.workspace import Workspace

#: Item columns written by the suggestion stage that push turns into predictions.
SUGGESTION_COLUMNS = ("suggested_label", "suggestion_probs", "suggestion_version")


# -- image URLs: a registry of ways to point a task at an item's image -----------------------------------------------

ImageUrl = Callable[[Workspace, Mapping[str, Any], "PushOptions"], "str | None"]


def _local_files_url(ws: Workspace, item: Mapping[str, Any], options: PushOptions) -> str | None:
    if not item.get("sha256") or options.local_files_root is None:
        return None
    path = ws.object_path(str(item["sha256"]), item.get("format"))
    relative = path.relative_to(options.local_files_root).as_posix()
    return f"/data/local-files/?d={quote(relative)}"


def _source_url(ws: Workspace, item: Mapping[str, Any], options: PushOptions) -> str | None:
    url = item.get("url")
    return str(url) if url else None


def _template_url(ws: Workspace, item: Mapping[str, Any], options: PushOptions) -> str | None:
    if not options.image_url_template or not item.get("sha256"):
        return None
    suffix = ws.object_path(str(item["sha256"]), item.get("format")).suffix
    return options.image_url_template.format(sha256=item["sha256"], item_id=item["item_id"], ext=suffix)


#: How task image URLs are built: ``local-files`` serves the workspace's own objects through the server's local
#: file serving (servers emo8 starts, or any server whose ``LOCAL_FILES_DOCUMENT_ROOT`` contains the workspace);
#: ``source-url`` uses the URL the item was downloaded from; ``template`` formats ``--image-url-template`` with
#: ``{sha256}``, ``{item_id}`` and ``{ext}`` (e.g. a CDN mirror of ``objects/``).
IMAGE_URLS: dict[str, ImageUrl] = {
    "local-files": _local_files_url,
    "source-url": _source_url,
    "template": _template_url,
}


# -- push --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushOptions:
    """Settings of :func:`push_round`.

    ``overlap`` is the number of annotators per task (the project's maximum annotations); ``gold_rate`` the share
    of gold items added to the round (from ``gold_file``, a CSV with ``item_id`` or ``sha256`` and ``label``
    columns, and from items settled by earlier rounds); ``image_urls`` a key of :data:`IMAGE_URLS`;
    ``local_files_root`` the server's local files document root; ``batch_size`` tasks per import request.
    """

    overlap: int = 3
    gold_rate: float = 0.05
    gold_file: Path | None = None
    predictions: bool = True
    image_urls: str = "local-files"
    image_url_template: str | None = None
    local_files_root: Path | None = None
    batch_size: int = 500
    label_config: Path | None = None
    guidelines: Path | None = None
    seed: int = 0


@dataclass(frozen=True)
class PushSummary:
    """What :func:`push_round` did: ``new_tasks`` imported now, ``existing_tasks`` found on the server already."""

    round: str
    project_id: int
    project_url: str
    selected: int
    gold: int
    new_tasks: int
    existing_tasks: int
    with_predictions: int
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def workspace_tag(ws: Workspace) -> str:
    """Return the workspace's short random id (created once), which keeps project titles apart on shared servers."""
    annotate = ws.config.setdefault("annotate", {})
    if not annotate.get("workspace_id"):
        annotate["workspace_id"] = uuid.uuid4().hex[:8]
        ws.save_config()
    return str(annotate["workspace_id"])


def project_title(ws: Workspace, round_name: str) -> str:
    """Return the Label Studio project title of ``round_name`` in this workspace."""
    return f"Emo8 {round_name} [{workspace_tag(ws)}]"


def push_round(
    ws: Workspace, round_name: str, client: Client, options: PushOptions | None = None
) -> PushSummary:
    """Create (once) the round's project and import the tasks it lacks; return a :class:`PushSummary`.

    The project gets the label config, the guidelines as instructions and ``maximum_annotations = overlap``. Each
    task carries ``image`` and ``item_id`` (nothing reveals gold items) and, when the item has suggestions, a
    prediction with the suggestion's ``model_version``, ``score`` and pre-selected choice. The server's task list
    is read first, so a re-run (or a run after a crash mid-import) imports only what is missing.

    Parameters
    ----------
    ws
        The workspace; the round's items come from its ``selections`` table.
    round_name
        The round (as given to ``emo8 select --round``).
    client
        The Label Studio to push to (see :func:`emo8.annotate.client.connect`).
    options
        Overlap, gold items, predictions, image URLs, batch size (see :class:`PushOptions`).

    Returns
    -------
    A :class:`PushSummary`. Raises :class:`RoundError` when the round has no selection or the server cannot read
    the workspace's images, :class:`emo8.annotate.errors.ServerUnavailable` when the server stays away.
    """
    options = options or PushOptions()
    started = time.monotonic()
    if options.image_urls not in IMAGE_URLS:
        raise RoundError(
            f"unknown image URL mode {options.image_urls!r}; choose from {', '.join(IMAGE_URLS)}"
        )
    if options.overlap < 1:
        raise RoundError("overlap must be at least 1")
    store = AnnotationStore(ws.catalog)
    selection = ws.catalog.selection(round_name)
    if not selection:
        raise RoundError(
            f"round {round_name!r} has no selected items; run `emo8 select --round {round_name}` first"
        )
    config = LabelConfig.load(options.label_config)
    project_id = _ensure_project(ws, store, client, round_name, config, options)
    if options.image_urls == "local-files":
        _ensure_local_storage(ws, client, project_id, options)

    _plan_gold(ws, store, round_name, selection, options)
    planned = store.tasks(round_name)
    on_server = _server_tasks(client, project_id)
    planned_ids = set(planned["item_id"].tolist())
    store.set_task_ids(round_name, {k: v for k, v in on_server.items() if k in planned_ids})
    items = _item_rows(ws, list(planned["item_id"]))
    payloads, skipped = _payloads(ws, planned, items, options, config)
    existing = sum(1 for item_id in payloads if item_id in on_server)
    missing = [item_id for item_id in payloads if item_id not in on_server]
    with_predictions = sum(1 for item_id in missing if payloads[item_id].get("predictions"))
    new = _import_missing(store, client, round_name, project_id, missing, payloads, options.batch_size)
    versions = Counter(
        p["model_version"] for item_id in missing for p in payloads[item_id].get("predictions", [])
    )
    if versions:
        client.update_project(
            project_id, model_version=versions.most_common(1)[0][0], show_collab_predictions=True
        )
    store.save_round(round_name, pushed_at=utc_now())
    return PushSummary(
        round=round_name,
        project_id=project_id,
        project_url=f"{client.url}/projects/{project_id}/data",
        selected=len(selection),
        gold=int(planned["is_gold"].sum()),
        new_tasks=new,
        existing_tasks=existing,
        with_predictions=with_predictions,
        skipped=dict(skipped),
        seconds=time.monotonic() - started,
    )


def _ensure_project(
    ws: Workspace,
    store: AnnotationStore,
    client: Client,
    round_name: str,
    config: LabelConfig,
    options: PushOptions,
) -> int:
    title = project_title(ws, round_name)
    settings: dict[str, Any] = {
        "expert_instruction": guidelines_html(options.guidelines),
        "show_instruction": True,
        "maximum_annotations": options.overlap,
        "show_skip_button": True,
        "enable_empty_annotation": False,
        "show_annotation_history": False,
        "show_collab_predictions": options.predictions,
        "show_overlap_first": True,
        "sampling": "Uniform sampling",
    }
    record = store.round(round_name)
    project = None
    if record and record.get("project_id") and record.get("server_url") == client.url:
        project = client.project(int(record["project_id"]))
    if project is None:
        project = next((p for p in client.projects() if p.title == title), None)
    if project is None:
        project = client.create_project(title=title, label_config=config.xml, **settings)
    else:
        client.update_project(int(project.id), **settings)
    project_id = int(project.id)
    store.save_round(
        round_name,
        server_url=client.url,
        project_id=project_id,
        overlap=options.overlap,
        gold_rate=options.gold_rate,
        image_urls=options.image_urls,
    )
    return project_id


def _ensure_local_storage(ws: Workspace, client: Client, project_id: int, options: PushOptions) -> None:
    root = options.local_files_root
    if root is None:
        raise RoundError(
            "the server cannot read this workspace's files: use the server of `emo8 annotate serve`, pass "
            "--local-files-root (the server's LOCAL_FILES_DOCUMENT_ROOT), or --image-urls source-url|template"
        )
    objects = ws.objects_dir.resolve()
    if not objects.is_relative_to(root):
        raise RoundError(f"{objects} is not below the server's local files root {root}")
    if not any(Path(s.path).resolve() == objects for s in client.local_storages(project_id)):
        client.create_local_storage(project_id, str(objects), title="emo8 workspace objects")


def _plan_gold(
    ws: Workspace, store: AnnotationStore, round_name: str, selection: Sequence[str], options: PushOptions
) -> None:
    """Record the round's tasks: the selection, then gold items up to ``gold_rate`` of it (chosen once)."""
    existing = store.tasks(round_name)
    have_gold = int(existing["is_gold"].sum()) if len(existing) else 0
    target = math.ceil(options.gold_rate * len(selection)) if options.gold_rate > 0 else 0
    rows: list[tuple[str, bool, str | None]] = [(item_id, False, None) for item_id in selection]
    if target > have_gold:
        taken = set(selection) | set(existing["item_id"])
        pool = sorted(
            (i, label) for i, label in gold_candidates(ws, options.gold_file).items() if i not in taken
        )
        rng = random.Random(options.seed ^ zlib.crc32(round_name.encode()))
        chosen = rng.sample(pool, min(len(pool), target - have_gold))
        rows.extend((item_id, True, label) for item_id, label in chosen)
    store.plan_tasks(round_name, rows)


def gold_candidates(ws: Workspace, gold_file: Path | None = None) -> dict[str, str]:
    """Return ``{item_id: label}`` usable as gold: the rows of ``gold_file`` and items settled by earlier rounds.

    ``gold_file`` is a CSV with a ``label`` column and an ``item_id`` or ``sha256`` column; labels must be emotions.
    """
    candidates: dict[str, str] = {}
    columns = set(ws.catalog.columns())
    if {"label", "settled"} <= columns:
        settled = ws.items(
            ["item_id", "label"], where="settled = 1 AND label IS NOT NULL AND status = 'valid'"
        )
        candidates.update(zip(settled["item_id"], settled["label"], strict=True))
    if gold_file is not None:
        valid = ws.items(["item_id", "sha256"], where="status = 'valid'")
        by_sha = dict(zip(valid["sha256"], valid["item_id"], strict=True))
        known = set(valid["item_id"])
        with open(gold_file, newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                label = normalise_label(row.get("label"))
                item_id = row.get("item_id") or by_sha.get(row.get("sha256") or "")
                if label is None:
                    raise RoundError(
                        f"{gold_file}:{line}: label {row.get('label')!r} is not one of the 8 emotions"
                    )
                if item_id in known:
                    candidates[str(item_id)] = label
    return candidates


def _server_tasks(client: Client, project_id: int) -> dict[str, int]:
    """Return ``{item_id: task id}`` of the project's tasks (the lowest id when an item has several)."""
    found: dict[str, int] = {}
    for page in client.task_pages(project_id, page_size=1000, annotations=False):
        for task in page:
            item_id = (task.get("data") or {}).get("item_id")
            if isinstance(item_id, str):
                found[item_id] = min(int(task["id"]), found.get(item_id, int(task["id"])))
    return found


def _item_rows(ws: Workspace, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    columns = set(ws.catalog.columns())
    wanted = ["item_id", "status", "sha256", "format", "url"] + [
        c for c in SUGGESTION_COLUMNS if c in columns
    ]
    frame = ws.items(wanted)
    frame = frame[frame["item_id"].isin(set(item_ids))]
    frame = frame.astype(object).where(pd.notna(frame), None)
    return {str(row["item_id"]): {str(k): v for k, v in row.items()} for row in frame.to_dict("records")}


def _payloads(
    ws: Workspace,
    planned: pd.DataFrame,
    items: Mapping[str, dict[str, Any]],
    options: PushOptions,
    config: LabelConfig,
) -> tuple[dict[str, dict[str, Any]], Counter[str]]:
    """Build the task of each planned item, in push order; gold items are spread at random positions."""
    skipped: Counter[str] = Counter()
    build = IMAGE_URLS[options.image_urls]
    ordinary = [str(i) for i in planned.loc[planned["is_gold"] == 0, "item_id"]]
    gold = [str(i) for i in planned.loc[planned["is_gold"] == 1, "item_id"]]
    order = list(ordinary)
    rng = random.Random(options.seed ^ zlib.crc32(b"gold-positions"))
    for item_id in gold:
        order.insert(rng.randint(0, len(order)), item_id)
    payloads: dict[str, dict[str, Any]] = {}
    for item_id in order:
        item = items.get(item_id)
        if item is None:
            skipped["not_in_catalog"] += 1
            continue
        if item.get("status") != "valid":
            skipped[f"status_{item.get('status')}"] += 1
            continue
        image = build(ws, item, options)
        if image is None:
            skipped["no_image_url"] += 1
            continue
        task: dict[str, Any] = {"data": {"image": image, "item_id": item_id}}
        prediction = _prediction(item, config) if options.predictions else None
        if prediction is not None:
            task["predictions"] = [prediction]
        payloads[item_id] = task
    return payloads, skipped


def _prediction(item: Mapping[str, Any], config: LabelConfig) -> dict[str, Any] | None:
    label = normalise_label(item.get("suggested_label"))
    if label is None:
        return None
    probs = _probs(item.get("suggestion_probs"))
    score = float(probs[EMOTIONS.index(label)]) if probs is not None else None
    prediction: dict[str, Any] = {
        "model_version": str(item.get("suggestion_version") or "emo8-suggest"),
        "result": config.choice_result(label),
    }
    if score is not None and math.isfinite(score):
        prediction["score"] = round(score, 6)
    return prediction


def _probs(value: Any) -> np.ndarray | None:
    import json

    if value is None:
        return None
    try:
        probs = np.asarray(json.loads(value) if isinstance(value, str) else value, dtype=float)
    except (TypeError, ValueError):
        return None
    return probs if probs.shape == (len(EMOTIONS),) else None


def _import_missing(
    store: AnnotationStore,
    client: Client,
    round_name: str,
    project_id: int,
    missing: list[str],
    payloads: Mapping[str, dict[str, Any]],
    batch_size: int,
) -> int:
    """Import ``missing`` tasks in batches; after a failed request, re-read the server before going on."""
    imported = 0
    remaining = list(missing)
    failures = 0
    while remaining:
        batch = remaining[:batch_size]
        try:
            ids = client.import_tasks(project_id, [payloads[i] for i in batch])
        except Exception as exc:
            from emo8.annotate.client import is_transient

            if not (is_transient(exc) or isinstance(exc, ServerUnavailable)) or failures >= 5:
                raise
            failures += 1
            client.call(client.whoami)  # waits (with retries) until the server answers again
            on_server = _server_tasks(client, project_id)
            recovered = {i: on_server[i] for i in batch if i in on_server}
            store.set_task_ids(round_name, recovered)
            imported += len(recovered)
            remaining = [i for i in remaining if i not in on_server]
            continue
        if len(ids) != len(batch):
            raise AnnotateError(
                f"the server created {len(ids)} tasks for {len(batch)} sent; re-run push to reconcile"
            )
        store.set_task_ids(round_name, dict(zip(batch, ids, strict=True)))
        imported += len(batch)
        remaining = remaining[batch_size:]
    return imported


# -- pull and import ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullOptions:
    """Settings of :func:`pull_round`: ``page_size`` tasks per request; ``on_page(pages, tasks)`` is called after
    each page (progress bars, tests); ``label_config`` overrides ``annotations/emo8.xml``."""

    page_size: int = 500
    on_page: Callable[[int, int], None] | None = None
    label_config: Path | None = None


@dataclass(frozen=True)
class PullSummary:
    """What a pull or import read (``tasks``, ``annotations``) and changed (see :class:`ReplaceSummary`)."""

    round: str
    source: str
    tasks: int
    annotations: int
    changes: ReplaceSummary
    skipped_tasks: int = 0
    unknown_values: int = 0
    seconds: float = 0.0


def pull_round(
    ws: Workspace, round_name: str, client: Client, options: PullOptions | None = None
) -> PullSummary:
    """Copy every annotation of the round's project into the catalog; idempotent, all or nothing.

    All pages are read first (each with retries, so a server restart mid-pull only delays it), then one transaction
    inserts new annotations, updates edited ones and marks deleted ones. If reading fails for good, the catalog
    is left exactly as it was.

    Parameters
    ----------
    ws
        The workspace.
    round_name
        A round pushed before (its project id is in ``annotation_rounds``).
    client
        The Label Studio the round lives on.
    options
        Page size, a progress callback, the label config (see :class:`PullOptions`).

    Returns
    -------
    A :class:`PullSummary` with the counts of new, updated, deleted and unchanged annotations.
    """
    options = options or PullOptions()
    started = time.monotonic()
    store = AnnotationStore(ws.catalog)
    record = store.round(round_name)
    if not record or not record.get("project_id"):
        raise RoundError(
            f"round {round_name!r} was never pushed; run `emo8 annotate push --round {round_name}`"
        )
    if record.get("server_url") and record["server_url"] != client.url:
        project = client.project(int(record["project_id"]))
        if project is None or project.title != project_title(ws, round_name):
            raise RoundError(f"round {round_name!r} lives on {record['server_url']}, not on {client.url}")
        store.save_round(round_name, server_url=client.url)  # the same server under another address
    config = LabelConfig.load(options.label_config)
    users = client.users()
    tasks: list[dict[str, Any]] = []
    for pages, page in enumerate(
        client.task_pages(int(record["project_id"]), page_size=options.page_size), start=1
    ):
        tasks.extend(page)
        if options.on_page is not None:
            options.on_page(pages, len(tasks))
    parsed = parse_tasks(tasks, config, users, _resolver(ws))
    changes = store.replace_round(
        round_name, parsed.records, parsed.task_ids, {"pulled_at": utc_now(), "pulled_from": client.url}
    )
    return _summary(round_name, client.url, parsed, changes, started)


def import_export(
    ws: Workspace, round_name: str, path: str | Path, label_config: Path | None = None
) -> PullSummary:
    """Store the annotations of a Label Studio JSON export (a full snapshot of the round) like :func:`pull_round`.

    Raises :class:`emo8.annotate.errors.ExportFormatError` when the file is not a usable export or references items
    this workspace does not hold; nothing is written then.
    """
    from emo8.annotate.errors import ExportFormatError

    started = time.monotonic()
    tasks = load_export(path)
    config = LabelConfig.load(label_config)
    parsed = parse_tasks(tasks, config, None, _resolver(ws))
    if parsed.skipped_tasks:
        shown = ", ".join(parsed.skipped_tasks[:5])
        raise ExportFormatError(
            f"{path}: {len(parsed.skipped_tasks)} of {parsed.tasks} tasks reference items that are not in this "
            f"workspace ({shown}); was the export made from another workspace's round?"
        )
    store = AnnotationStore(ws.catalog)
    changes = store.replace_round(
        round_name,
        parsed.records,
        parsed.task_ids,
        {"pulled_at": utc_now(), "pulled_from": f"file:{Path(path).name}"},
    )
    return _summary(round_name, str(path), parsed, changes, started)


def _resolver(ws: Workspace) -> Callable[[Mapping[str, Any]], str | None]:
    frame = ws.items(["item_id", "sha256"])
    known = set(frame["item_id"])
    by_sha = {sha: item for sha, item in zip(frame["sha256"], frame["item_id"], strict=True) if sha}

    def resolve(data: Mapping[str, Any]) -> str | None:
        item_id = data.get("item_id")
        if isinstance(item_id, str) and item_id in known:
            return item_id
        sha = data.get("sha256")
        return by_sha.get(sha) if isinstance(sha, str) else None

    return resolve


def _summary(
    round_name: str, source: str, parsed: ParsedTasks, changes: ReplaceSummary, started: float
) -> PullSummary:
    return PullSummary(
        round=round_name,
        source=source,
        tasks=parsed.tasks,
        annotations=len(parsed.records),
        changes=changes,
        skipped_tasks=len(parsed.skipped_tasks),
        unknown_values=parsed.unknown_values,
        seconds=time.monotonic() - started,
    )


# -- status ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundStatus:
    """Progress of one round as of its last pull.

    ``done`` counts tasks with at least ``overlap`` votes (non-skipped answers); ``eta_hours`` extrapolates the
    missing votes at the round's observed pace (None until two annotations exist).
    """

    round: str
    project_id: int | None
    overlap: int
    tasks: int
    gold: int
    done: int
    votes: int
    skipped: int
    missing_votes: int
    per_annotator: dict[str, dict[str, float]]
    per_class: dict[str, int]
    votes_per_hour: float | None
    eta_hours: float | None
    pulled_at: str | None


def round_status(ws: Workspace, rounds: Iterable[str] | None = None) -> list[RoundStatus]:
    """Return the :class:`RoundStatus` of the given rounds (default: every pushed or imported round)."""
    store = AnnotationStore(ws.catalog)
    wanted = list(rounds) if rounds is not None else [r["round"] for r in store.rounds()]
    out: list[RoundStatus] = []
    for name in wanted:
        record = store.round(name)
        if record is None:
            raise RoundError(
                f"no annotation round {name!r}; known: {', '.join(r['round'] for r in store.rounds())}"
            )
        tasks = store.tasks(name)
        tasks = tasks[tasks["task_id"].notna()]
        frame = store.annotations([name])
        votes = frame[~frame["was_cancelled"] & frame["choice"].notna()]
        overlap = int(record.get("overlap") or 1)
        per_task = votes.groupby("item_id").size()
        counts = np.asarray([int(per_task.get(i, 0)) for i in tasks["item_id"]], dtype=int)
        per_annotator: dict[str, dict[str, float]] = {}
        for who, group in frame.groupby("annotator"):
            answered = group[~group["was_cancelled"] & group["choice"].notna()]
            lead = answered["lead_time"].dropna()
            per_annotator[str(who)] = {
                "votes": float(len(answered)),
                "skipped": float(int(group["was_cancelled"].sum())),
                "median_lead_time_s": float(lead.median()) if len(lead) else float("nan"),
            }
        rate = _votes_per_hour(votes["created_at"])
        missing = int(np.clip(overlap - counts, 0, None).sum())
        out.append(
            RoundStatus(
                round=name,
                project_id=int(record["project_id"]) if record.get("project_id") else None,
                overlap=overlap,
                tasks=len(tasks),
                gold=int(tasks["is_gold"].sum()),
                done=int((counts >= overlap).sum()),
                votes=len(votes),
                skipped=int(frame["was_cancelled"].sum()),
                missing_votes=missing,
                per_annotator=per_annotator,
                per_class={str(c): int(n) for c, n in votes["choice"].value_counts().items()},
                votes_per_hour=rate,
                eta_hours=(missing / rate) if rate else (0.0 if missing == 0 else None),
                pulled_at=record.get("pulled_at"),
            )
        )
    return out


def _votes_per_hour(created: pd.Series) -> float | None:
    stamps = pd.to_datetime(created.dropna(), utc=True, errors="coerce").dropna()
    if len(stamps) < 2:
        return None
    hours = (stamps.max() - stamps.min()).total_seconds() / 3600.0
    return len(stamps) / hours if hours > 0 else None


# -- completeness (what ``emo8 build`` waits for) ----------------------------------------------------------------------


@dataclass(frozen=True)
class RoundCompletion:
    """How far a round's answers are, from the catalog alone (no server): ``complete`` of ``tasks`` have at least
    ``required`` answers (non-skipped votes); ``missing_answers`` are still needed. ``tasks`` are the round's
    selected items plus the tasks pushed or imported for it (gold items included)."""

    round: str
    tasks: int
    complete: int
    required: int
    answers: int
    missing_answers: int
    project_id: int | None
    server_url: str | None
    pulled_from: str | None
    pulled_at: str | None

    @property
    def done(self) -> bool:
        return self.tasks > 0 and self.complete == self.tasks

    @property
    def project_url(self) -> str | None:
        """The project's page on the server it was pushed to (None before a push)."""
        if self.project_id is None or not self.server_url:
            return None
        return f"{self.server_url}/projects/{self.project_id}/data"


def round_completion(
    ws: Workspace, round_name: str, required: int | None = None, overlap: int = 3
) -> RoundCompletion:
    """Count the tasks of ``round_name`` that have ``required`` answers (default: the overlap the round was pushed
    with, else ``overlap``). Raises :class:`RoundError` for a round that was neither selected nor pushed/imported."""
    store = AnnotationStore(ws.catalog)
    record = store.round(round_name)
    selection = ws.catalog.selection(round_name)
    if record is None and not selection:
        raise RoundError(
            f"no round {round_name!r}: choose its items with `emo8 select --budget N --round {round_name}` "
            f"(or import a Label Studio export with `emo8 annotate import EXPORT.json --round {round_name}`)"
        )
    need = int(required or (record or {}).get("overlap") or overlap)
    items = list(dict.fromkeys([*selection, *store.tasks(round_name)["item_id"].tolist()]))
    frame = store.annotations([round_name])
    votes = frame[~frame["was_cancelled"] & frame["choice"].notna()]
    per_item = votes.groupby("item_id").size()
    counts = np.asarray([int(per_item.get(i, 0)) for i in items], dtype=int)
    record = record or {}
    return RoundCompletion(
        round=round_name,
        tasks=len(items),
        complete=int((counts >= need).sum()),
        required=need,
        answers=int(counts.sum()),
        missing_answers=int(np.clip(need - counts, 0, None).sum()),
        project_id=int(record["project_id"]) if record.get("project_id") else None,
        server_url=record.get("server_url"),
        pulled_from=record.get("pulled_from"),
        pulled_at=record.get("pulled_at"),
    )
