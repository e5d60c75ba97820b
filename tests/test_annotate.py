"""Annotation rounds against a real Label Studio server, and the agreement statistics against published examples.

The server is started once per session (``ls_server``) on a free loopback port with a temporary data directory;
Label Studio is installed into ``.venv-labelstudio`` first when missing (slow once). Annotators are real users who
sign up through the organisation's invite link and annotate through the API with their own tokens.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web
from httpfixtures import Handler
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.annotate.aggregate import (
    AggregateConfig,
    Votes,
    aggregate,
    category_alphas,
    category_kappas,
    dawid_skene,
    fleiss_kappa,
    krippendorff_alpha,
    majority,
)
from emo8.annotate.client import Client, ClientConfig
from emo8.annotate.errors import ExportFormatError, RoundError, ServerUnavailable
from emo8.annotate.export import check_export
from emo8.annotate.labelconfig import CATEGORIES, LabelConfig, guidelines_html
from emo8.annotate.rounds import PullOptions, PushOptions, import_export, pull_round, push_round, round_status
from emo8.annotate.server import (
    Connection,
    ManagedServer,
    ServerConfig,
    create_annotator,
    free_port,
    load_connection,
    save_connection,
    start_server,
    stop_server,
    token_path,
)
from emo8.annotate.store import AnnotationRecord, AnnotationStore
from emo8.cli import app
from emo8.core.taxonomy import EMOTIONS
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source

CONFIG = LabelConfig.load()
FAST = ClientConfig(timeout=60.0, deadline=120.0, backoff=0.2, max_backoff=2.0)


# -- the server, once per session ------------------------------------------------------------------------------------


@dataclass
class LiveServer:
    """The session's Label Studio: its config (fixed port), the running process, and restart helpers."""

    config: ServerConfig
    server: ManagedServer

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        stop_server(self.server.pid)

    def start(self) -> None:
        self.server = start_server(self.config, install=False)

    def client(self, config: ClientConfig = FAST) -> Client:
        return Client(self.url, self.server.api_key, config)


@pytest.fixture(scope="session")
def ls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("labelstudio"),
        port=free_port(),
        document_root=tmp_path_factory.getbasetemp(),
        startup_timeout=900.0,
    )
    live = LiveServer(config, start_server(config))
    yield live
    live.stop()


@pytest.fixture(scope="session")
def annotators(ls_server: LiveServer) -> dict[str, Client]:
    """Three real users, each with a client that authenticates as that user."""
    out = {}
    for name in ("ann0", "ann1", "ann2"):
        email = f"{name}@emo8.test"
        token = create_annotator(ls_server.url, ls_server.server.api_key, email, f"Pw-{name}-8c1b9e2f")
        out[email] = Client(ls_server.url, token, FAST)
    return out


def _workspace(root: Path, sample_paths: list[Path], n: int) -> Workspace:
    images = root / "images"
    images.mkdir(parents=True)
    for path in sample_paths[:n]:
        shutil.copy(path, images / path.name)
    ws = Workspace.init(root / "ws")
    ingest(ws, create_source("folder", directory=str(images)), IngestOptions(workers=1, progress=False))
    return ws


def _valid_ids(ws: Workspace) -> list[str]:
    return list(ws.items(["item_id"], where="status = 'valid'")["item_id"])


def _set_suggestions(ws: Workspace, item_ids: list[str], version: str = "test-suggest-v1") -> dict[str, str]:
    ws.catalog.ensure_columns(
        {
            "suggested_label": "TEXT",
            "suggestion_probs": "TEXT",
            "suggestion_entropy": "REAL",
            "suggestion_version": "TEXT",
        }
    )
    labels, probs = [], []
    for i, _ in enumerate(item_ids):
        p = np.full(8, 0.3 / 7)
        p[i % 8] = 0.7
        labels.append(EMOTIONS[i % 8])
        probs.append([float(x) for x in p])
    ws.catalog.update_items(
        item_ids,
        {
            "suggested_label": labels,
            "suggestion_probs": probs,
            "suggestion_entropy": [1.0] * len(item_ids),
            "suggestion_version": [version] * len(item_ids),
        },
    )
    return dict(zip(item_ids, labels, strict=True))


def _tasks_by_item(client: Client, project_id: int) -> dict[str, dict[str, Any]]:
    """The project's tasks as the SDK lists them (``fields="all"``: with predictions), by item id."""
    out = {}
    for task in client.sdk.tasks.list(project=project_id, fields="all", page_size=100):
        predictions = [
            p if isinstance(p, dict) else p.model_dump(mode="json") for p in task.predictions or []
        ]
        out[task.data["item_id"]] = {"id": task.id, "data": dict(task.data), "predictions": predictions}
    return out


def _annotate(
    client: Client, task_id: int, choice: str | None, flags: tuple[str, ...] = (), lead: float = 4.0
) -> int:
    """Submit an annotation as the client's user; ``choice=None`` skips the task."""
    if choice is None:
        created = client.sdk.annotations.create(id=task_id, result=[], was_cancelled=True, lead_time=lead)
        return int(created.id)  # type: ignore[arg-type]
    result = CONFIG.choice_result(choice)
    if flags:
        result.append(
            {"from_name": "flags", "to_name": "image", "type": "choices", "value": {"choices": list(flags)}}
        )
    created = client.sdk.annotations.create(id=task_id, result=result, lead_time=lead)
    return int(created.id)  # type: ignore[arg-type]


# -- a full round ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.labelstudio
def test_full_round(
    ls_server: LiveServer, annotators: dict[str, Client], sample_paths: list[Path], tmp_path: Path
) -> None:
    ws = _workspace(tmp_path, sample_paths, 16)
    ids = _valid_ids(ws)
    assert len(ids) == 16
    selected, gold_pool = ids[:12], ids[12:]
    ws.catalog.save_selection("r1", selected, "test")
    suggested = _set_suggestions(ws, selected)
    gold_file = tmp_path / "gold.csv"
    gold_truth = {item_id: EMOTIONS[(3 * k + 1) % 8] for k, item_id in enumerate(gold_pool)}
    gold_file.write_text("item_id,label\n" + "".join(f"{i},{label}\n" for i, label in gold_truth.items()))
    admin = ls_server.client()
    save_connection(
        ws, Connection(ls_server.url, ls_server.server.api_key, True, ls_server.config.document_root)
    )
    options = PushOptions(
        overlap=3, gold_rate=0.15, gold_file=gold_file, local_files_root=ls_server.config.document_root
    )

    # push: 12 selected + ceil(0.15 * 12) = 2 gold tasks, predictions from the suggestions
    summary = push_round(ws, "r1", admin, options)
    assert (summary.new_tasks, summary.existing_tasks, summary.gold, summary.with_predictions) == (
        14,
        0,
        2,
        12,
    )
    project = admin.sdk.projects.get(summary.project_id)
    assert project.maximum_annotations == 3
    assert "<h2>Awe</h2>" in (project.expert_instruction or "") and project.show_instruction
    tasks = _tasks_by_item(admin, summary.project_id)
    assert len(tasks) == 14
    gold_items = {i for i in tasks if i in gold_truth}
    assert len(gold_items) == 2
    for item_id, task in tasks.items():
        assert set(task["data"]) == {"image", "item_id"}  # nothing announces gold
        if item_id in suggested:
            (prediction,) = task["predictions"]
            assert prediction["model_version"] == "test-suggest-v1"
            assert prediction["score"] == pytest.approx(0.7)
            assert prediction["result"][0]["value"]["choices"] == [suggested[item_id]]
        else:
            assert not task["predictions"]
    # the server shows the workspace's own image bytes
    item = ws.items(["item_id", "sha256", "format"], where=f"item_id = '{selected[0]}'").iloc[0]
    image = _get_as(ls_server.url, ls_server.server.api_key, tasks[selected[0]]["data"]["image"])
    assert image.status_code == 200
    assert image.content == ws.read_object(item["sha256"], item["format"])

    # re-push adds nothing
    again = push_round(ws, "r1", admin, options)
    assert (again.new_tasks, again.existing_tasks, again.project_id) == (0, 14, summary.project_id)
    assert len(_tasks_by_item(admin, summary.project_id)) == 14

    # three annotators answer as themselves
    a0, a1, a2 = (annotators[f"ann{i}@emo8.test"] for i in range(3))
    mine = _tasks_by_item(a0, summary.project_id)
    t = {item_id: int(task["id"]) for item_id, task in mine.items()}
    plan: dict[str, tuple[Any, Any, Any]] = {}
    for k in range(6):
        plan[selected[k]] = (EMOTIONS[k],) * 3  # unanimous
    plan[selected[6]] = ("awe", "awe", "excitement")  # 2 of 3
    plan[selected[7]] = ("amusement", "anger", "awe")  # tie
    plan[selected[8]] = ("none", "none", "none")  # unclear
    plan[selected[9]] = ("fear", "fear", "fear")  # flagged broken by one annotator
    plan[selected[10]] = ("sadness", "sadness", None)  # one skip: too few votes
    plan[selected[11]] = ("contentment", "contentment", "none")
    for item_id in sorted(gold_items):
        wrong = EMOTIONS[(EMOTIONS.index(gold_truth[item_id]) + 1) % 8]
        plan[item_id] = (gold_truth[item_id], gold_truth[item_id], wrong)
    created: dict[tuple[str, int], int] = {}
    for item_id, answers in plan.items():
        for who, (client, choice) in enumerate(zip((a0, a1, a2), answers, strict=True)):
            flags = ("broken",) if item_id == selected[9] and who == 0 else ()
            created[(item_id, who)] = _annotate(client, t[item_id], choice, flags, lead=2.0 + who)

    # pull stores every annotation raw
    pulled = pull_round(ws, "r1", admin, PullOptions(page_size=5))
    assert (pulled.tasks, pulled.annotations) == (14, 42)
    assert (pulled.changes.new, pulled.changes.updated, pulled.changes.deleted) == (42, 0, 0)
    store = AnnotationStore(ws.catalog)
    raw = store.annotations(["r1"])
    assert len(raw) == 42 and raw["annotation_id"].is_unique
    row = raw[raw["annotation_id"] == created[(selected[6], 2)]].iloc[0]
    assert (row["annotator"], row["choice"], row["lead_time"], row["item_id"]) == (
        "ann2@emo8.test", "excitement", 4.0, selected[6]
    )  # fmt: skip
    assert row["created_at"] and row["updated_at"] and not row["ground_truth"]
    skipped = raw[raw["was_cancelled"]]
    assert list(skipped["item_id"]) == [selected[10]] and skipped["choice"].isna().all()
    assert raw[raw["item_id"] == selected[9]]["flags"].map(tuple).tolist().count(("broken",)) == 1

    # re-pull duplicates nothing
    again_pulled = pull_round(ws, "r1", admin)
    assert (again_pulled.changes.new, again_pulled.changes.unchanged) == (0, 42)
    assert len(store.annotations(["r1"], include_deleted=True)) == 42

    # an edited annotation is updated, a deleted one marked deleted
    a2.sdk.annotations.update(id=created[(selected[7], 2)], result=CONFIG.choice_result("amusement"))
    a1.sdk.annotations.delete(id=created[(selected[0], 1)])
    changed = pull_round(ws, "r1", admin)
    assert (changed.changes.new, changed.changes.updated, changed.changes.deleted) == (0, 1, 1)
    raw = store.annotations(["r1"])
    assert len(raw) == 41
    assert raw.loc[raw["annotation_id"] == created[(selected[7], 2)], "choice"].item() == "amusement"
    everything = store.annotations(["r1"], include_deleted=True)
    assert (
        everything.loc[everything["annotation_id"] == created[(selected[0], 1)], "deleted_at"].notna().item()
    )

    # status
    (status,) = round_status(ws, ["r1"])
    assert (status.tasks, status.gold, status.overlap, status.skipped) == (14, 2, 3, 1)
    assert status.done == 12  # selected[0] lost a vote, selected[10] has a skip
    assert status.votes == 40 and status.missing_votes == 2
    assert status.per_annotator["ann1@emo8.test"]["votes"] == 13
    assert status.per_class["none"] == 4

    # aggregate: labels, soft labels, settled logic, gold scoring
    report = aggregate(ws, AggregateConfig(min_gold_answers=2))
    labels = ws.items(
        ["item_id", "label", "label_distribution", "num_votes", "agreement", "settled", "unsettled_reason"]
    )
    labels = labels.set_index("item_id")
    assert labels.loc[selected[1], ["label", "num_votes", "agreement", "settled"]].tolist() == [
        EMOTIONS[1],
        3,
        1.0,
        1,
    ]
    assert labels.loc[selected[1], "label_distribution"][1] == 1.0  # Workspace.items parses JSON lists
    expect = {
        selected[0]: (EMOTIONS[0], 0, "too_few_votes"),
        selected[6]: ("awe", 1, None),
        selected[7]: ("amusement", 1, None),
        selected[8]: (None, 0, "unclear"),
        selected[9]: ("fear", 0, "flagged_broken"),
        selected[10]: ("sadness", 0, "too_few_votes"),
        selected[11]: ("contentment", 1, None),
    }
    for item_id, (label, settled, reason) in expect.items():
        got = labels.loc[item_id]
        assert (_none(got["label"]), got["settled"], _none(got["unsettled_reason"])) == (
            label,
            settled,
            reason,
        ), item_id
    distribution = labels.loc[selected[6], "label_distribution"]
    assert distribution[EMOTIONS.index("awe")] == pytest.approx(2 / 3)
    assert distribution[EMOTIONS.index("excitement")] == pytest.approx(1 / 3)
    assert labels.loc[selected[8], "label_distribution"] == [0.0] * 8
    for item_id in gold_items:  # gold items keep their known label
        assert labels.loc[item_id, "label"] == gold_truth[item_id] and labels.loc[item_id, "settled"] == 1
    for item_id in set(gold_pool) - gold_items:  # unused gold candidates were never annotated
        assert pd_isna(labels.loc[item_id, "label"])
    quality = {a.annotator: a for a in report.annotators}
    assert quality["ann0@emo8.test"].gold_answers == 2 and quality["ann0@emo8.test"].gold_accuracy == 1.0
    assert quality["ann2@emo8.test"].gold_accuracy == 0.0 and quality["ann2@emo8.test"].below_threshold
    assert not quality["ann1@emo8.test"].below_threshold and report.excluded == []
    assert 0.0 < report.agreement["all"].fleiss_kappa < 1.0
    assert report.agreement["round:r1"].krippendorff_alpha == pytest.approx(
        report.agreement["all"].krippendorff_alpha
    )
    saved = json.loads((ws.reports_dir / "annotate_aggregate.json").read_text())
    assert saved["annotators"][2]["annotator"] == "ann2@emo8.test"

    # excluding the annotator who failed the gold items changes the 2-of-3 item into a unanimous one
    excluded = aggregate(ws, AggregateConfig(min_gold_answers=2, exclude_low_quality=True))
    assert excluded.excluded == ["ann2@emo8.test"]
    got = ws.items(["item_id", "agreement", "num_votes"], where=f"item_id = '{selected[6]}'").iloc[0]
    assert (got["agreement"], got["num_votes"]) == (1.0, 2)

    # Dawid-Skene agrees on the clear items
    ds = aggregate(ws, AggregateConfig(method="dawid-skene", min_gold_answers=2))
    assert ds.labels.set_index("item_id").loc[selected[2], "label"] == EMOTIONS[2]
    assert set(ws.items(["label_method"], where="label_method IS NOT NULL")["label_method"]) == {
        "dawid-skene"
    }

    # a real JSON export of the project imports to the same annotations
    export = b"".join(
        admin.sdk.projects.exports.download_sync(
            summary.project_id, export_type="JSON", download_all_tasks=True
        )
    )
    export_file = tmp_path / "export.json"
    export_file.write_bytes(export)
    imported = import_export(ws, "r1-imported", export_file)
    assert (imported.annotations, imported.changes.new) == (41, 41)
    mirrored = store.annotations(["r1-imported"]).set_index("annotation_id")["choice"]
    assert mirrored.to_dict() == raw.set_index("annotation_id")["choice"].to_dict()


def _get_as(url: str, api_key: str, path: str) -> httpx.Response:
    access = httpx.post(f"{url}/api/token/refresh/", json={"refresh": api_key}).json()["access"]
    return httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {access}"})


def _none(value: Any) -> Any:
    return None if pd_isna(value) else value


def pd_isna(value: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


@pytest.mark.slow
@pytest.mark.labelstudio
def test_pull_survives_a_server_restart_and_a_failed_pull_writes_nothing(
    ls_server: LiveServer, annotators: dict[str, Client], sample_paths: list[Path], tmp_path: Path
) -> None:
    ws = _workspace(tmp_path, sample_paths, 6)
    ids = _valid_ids(ws)
    ws.catalog.save_selection("restart", ids, "test")
    admin = ls_server.client()
    options = PushOptions(overlap=1, gold_rate=0.0, local_files_root=ls_server.config.document_root)
    summary = push_round(ws, "restart", admin, options)
    annotator = annotators["ann0@emo8.test"]
    for task in _tasks_by_item(annotator, summary.project_id).values():
        _annotate(annotator, int(task["id"]), "awe")
    store = AnnotationStore(ws.catalog)

    # the server goes away after the first page and does not come back in time: nothing is written
    impatient = ls_server.client(replace(FAST, deadline=2.0))

    def stop_after_first_page(pages: int, tasks: int) -> None:
        if pages == 1:
            ls_server.stop()

    with pytest.raises(ServerUnavailable, match="nothing was written"):
        pull_round(ws, "restart", impatient, PullOptions(page_size=2, on_page=stop_after_first_page))
    assert len(store.annotations(["restart"], include_deleted=True)) == 0
    assert store.round("restart")["pulled_at"] is None  # type: ignore[index]

    # the server restarts mid-pull: the pull waits for it and completes
    ls_server.start()
    restarter: list[threading.Thread] = []

    def restart_after_first_page(pages: int, tasks: int) -> None:
        if pages == 1:
            ls_server.stop()
            restarter.append(threading.Thread(target=ls_server.start))
            restarter[0].start()

    retries: list[int] = []
    patient = Client(ls_server.url, ls_server.server.api_key, FAST, on_retry=lambda n, exc: retries.append(n))
    pulled = pull_round(ws, "restart", patient, PullOptions(page_size=2, on_page=restart_after_first_page))
    restarter[0].join()
    assert retries, "the pull should have waited for the restarted server"
    assert (pulled.tasks, pulled.annotations, pulled.changes.new) == (6, 6, 6)
    assert len(store.annotations(["restart"])) == 6


@pytest.mark.labelstudio
def test_cli_push_status_aggregate_with_env_connection(
    ls_server: LiveServer, annotators: dict[str, Client], sample_paths: list[Path], tmp_path: Path
) -> None:
    ws = _workspace(tmp_path, sample_paths, 3)
    ws.catalog.save_selection("cli", _valid_ids(ws), "test")
    env = {"LABEL_STUDIO_URL": ls_server.url, "LABEL_STUDIO_API_KEY": ls_server.server.api_key}
    runner = CliRunner()
    root = str(ls_server.config.document_root)
    args = [
        "annotate",
        "push",
        "-w",
        str(ws.root),
        "--round",
        "cli",
        "--gold-rate",
        "0",
        "--local-files-root",
        root,
    ]
    first = runner.invoke(app, args, env=env)
    assert first.exit_code == 0, first.output
    assert "3 tasks imported, 0 already there" in first.output
    second = runner.invoke(app, args, env=env)
    assert "0 tasks imported, 3 already there" in second.output
    assert ls_server.server.api_key not in first.output + second.output
    status = runner.invoke(
        app, ["annotate", "status", "-w", str(ws.root), "--round", "cli", "--pull", "--json"], env=env
    )
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)[0]["tasks"] == 3
    result = runner.invoke(app, ["annotate", "aggregate", "-w", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"] == {"items": 3, "settled": 0, "unsettled:too_few_votes": 3}


@pytest.mark.labelstudio
def test_round_stage_pushes_waits_with_the_project_link_then_pulls_to_complete(
    ls_server: LiveServer, annotators: dict[str, Client], sample_paths: list[Path], tmp_path: Path
) -> None:
    """``annotate-round`` (what ``emo8 build`` runs) against a live server: push once, wait, pull, complete."""
    from emo8.annotate.stage import AnnotateRoundSettings
    from emo8.core.stage import get_stage

    ws = _workspace(tmp_path, sample_paths, 2)
    ws.catalog.save_selection("live", _valid_ids(ws), "test")
    save_connection(
        ws, Connection(ls_server.url, ls_server.server.api_key, True, ls_server.config.document_root)
    )
    stage = get_stage("annotate-round")
    settings = AnnotateRoundSettings(round="live", overlap=2, gold_rate=0)
    first = stage.run(ws, settings, False)
    assert first.push is not None and first.push.new_tasks == 2 and first.pull is not None
    project_url = first.completion.project_url
    waiting = stage.summarize(first, settings).waiting
    assert waiting and project_url and project_url in waiting and "annotate serve" not in waiting
    assert first.completion.project_id is not None
    tasks = _tasks_by_item(ls_server.client(), first.completion.project_id)
    for client in list(annotators.values())[:2]:
        for task in tasks.values():
            _annotate(client, task["id"], "awe")
    second = stage.run(ws, settings, False)
    assert second.push is None and second.pull is not None and second.pull.changes.new == 4
    assert second.completion.done and stage.summarize(second, settings).waiting is None


@pytest.mark.labelstudio
def test_connection_token_is_private_and_never_in_config_or_logs(
    ls_server: LiveServer, ws: Workspace
) -> None:
    key = ls_server.server.api_key
    save_connection(ws, Connection(ls_server.url, key, True, ls_server.config.document_root))
    assert token_path(ws).stat().st_mode & 0o777 == 0o600
    assert key not in (ws.root / "emo8.json").read_text()
    assert key not in repr(load_connection(ws))
    assert load_connection(Workspace.open(ws.root)).api_key == key
    log = ls_server.server.log_path.read_text(errors="replace")
    assert key not in log and ls_server.server.admin_password not in log
    admin_file = ls_server.config.data_dir / "emo8-admin.json"
    assert admin_file.stat().st_mode & 0o777 == 0o600


# -- without a server ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "is not JSON (line 1"),
        (json.dumps({"tasks": []}), "expected a list of tasks, got dict"),
        (json.dumps([{"id": 1, "data": {"image": "x"}, "annotations": []}]), "'data' has no 'item_id'"),
        (json.dumps([{"id": "7", "data": {}}]), "task #0 has no integer 'id'"),
        (
            json.dumps([{"id": 7, "data": {"item_id": "a"}, "annotations": [{"id": 1, "completed_by": 2}]}]),
            "task #0 (id 7) annotation #0 has no 'result' list",
        ),
        (
            json.dumps(
                [
                    {
                        "id": 7,
                        "data": {"item_id": "a"},
                        "annotations": [{"id": 1, "completed_by": 2, "result": [], "lead_time": "x"}],
                    }
                ]
            ),
            "'lead_time' is not a number",
        ),
        (json.dumps([3, 4]), "task #0 is a int, not an object"),
    ],
)
def test_malformed_export_is_rejected_with_a_clear_message(
    ws: Workspace, tmp_path: Path, payload: str, message: str
) -> None:
    path = tmp_path / "export.json"
    path.write_text(payload)
    with pytest.raises(ExportFormatError) as info:
        import_export(ws, "r", path)
    assert message in str(info.value)
    assert len(AnnotationStore(ws.catalog).annotations()) == 0
    result = CliRunner().invoke(app, ["annotate", "import", str(path), "--round", "r", "-w", str(ws.root)])
    assert result.exit_code == 2 and message.split(" (")[0] in result.output


def test_export_of_another_workspace_is_rejected(ws: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    task = {
        "id": 5,
        "data": {"item_id": "0123456789abcdef"},
        "annotations": [{"id": 1, "completed_by": 1, "result": []}],
    }
    path.write_text(json.dumps([task]))
    with pytest.raises(
        ExportFormatError, match="1 of 1 tasks reference items that are not in this workspace"
    ):
        import_export(ws, "r", path)


def test_check_export_accepts_the_real_shape() -> None:
    """Label Studio's JSON export nests the user as an object; it passes the check and parses to the user and the
    choice, while the same task without a user id is refused."""
    from emo8.annotate.export import parse_tasks

    user = {"id": 3, "email": "ann@emo8.test", "first_name": "", "last_name": ""}
    annotation = {"id": 2, "completed_by": user, "result": CONFIG.choice_result("awe"), "lead_time": 2.5}
    export = [{"id": 1, "data": {"item_id": "a"}, "annotations": [annotation]}]
    check_export(export)  # raises on anything unusable
    (record,) = parse_tasks(export, CONFIG).records
    assert (record.annotation_id, record.task_id, record.item_id) == (2, 1, "a")
    assert (record.annotator, record.annotator_id, record.choice, record.lead_time) == (
        "ann@emo8.test",
        3,
        "awe",
        2.5,
    )
    nameless = [{**export[0], "annotations": [{**annotation, "completed_by": {"email": "ann@emo8.test"}}]}]
    with pytest.raises(ExportFormatError, match="has no 'completed_by' user"):
        check_export(nameless)


def test_push_needs_a_selection(ws: Workspace) -> None:
    with pytest.raises(RoundError, match="has no selected items"):
        push_round(ws, "nothing", Client("http://127.0.0.1:9", "key"), PushOptions())


def test_label_config_and_guidelines() -> None:
    assert CONFIG.parse_result(CONFIG.choice_result("awe")).choice == "awe"
    answer = CONFIG.parse_result(
        [
            {"from_name": "emotion", "value": {"choices": ["Fear"]}},  # the display value is understood too
            {"from_name": "flags", "value": {"choices": ["text_only", "broken"]}},
            {"from_name": "style", "value": {"choices": ["scifi"]}},
        ]
    )
    assert (answer.choice, answer.flags, answer.style) == ("fear", ("broken", "text_only"), "scifi")
    html = guidelines_html()
    for emotion in EMOTIONS:
        assert f"<h2>{emotion.capitalize()}</h2>" in html
    assert html.count("Borderline cases") == 8


# -- agreement statistics against published worked examples -----------------------------------------------------

# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories; kappa = 0.210
FLEISS_EXAMPLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C: nominal data, 4 observers,
# 12 units, missing values ("."); alpha = 0.743
KRIPPENDORFF_EXAMPLE = [
    "1 2 3 3 2 1 4 1 2 . . .",
    "1 2 3 3 2 2 4 1 2 5 . 3",
    ". 3 3 3 2 3 4 2 2 5 1 .",
    "1 2 3 3 2 4 4 1 2 5 1 .",
]


def _krippendorff_counts() -> np.ndarray:
    counts = np.zeros((12, 5))
    for observer in KRIPPENDORFF_EXAMPLE:
        for unit, value in enumerate(observer.split()):
            if value != ".":
                counts[unit, int(value) - 1] += 1
    return counts


def test_fleiss_kappa_matches_the_worked_example() -> None:
    assert round(fleiss_kappa(FLEISS_EXAMPLE), 3) == 0.210
    assert fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(0.20993, abs=1e-5)


def test_krippendorff_alpha_matches_the_worked_example() -> None:
    assert round(krippendorff_alpha(_krippendorff_counts()), 3) == 0.743


def test_statistics_on_perfect_chance_and_binary_data() -> None:
    perfect = [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    assert fleiss_kappa(perfect) == 1.0 and krippendorff_alpha(perfect) == 1.0
    assert fleiss_kappa([[1, 1], [1, 1]]) < 0  # systematic disagreement
    binary = np.array([[4, 1], [2, 3], [5, 0], [0, 5], [3, 2]])
    kappas = category_kappas(binary)
    assert kappas[0] == pytest.approx(kappas[1]) == pytest.approx(fleiss_kappa(binary))
    alphas = category_alphas(binary)
    assert alphas[0] == pytest.approx(alphas[1]) == pytest.approx(krippendorff_alpha(binary))
    # alpha corrects for sample size: (n - 1) / n times the observed-vs-expected ratio of kappa's formula
    assert krippendorff_alpha(binary) > fleiss_kappa(binary)
    assert np.isnan(fleiss_kappa([[1, 0], [0, 1]]))  # no item with two votes


def _votes(rows: list[tuple[str, str, str]]) -> Votes:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["item_id", "annotator", "choice"]).assign(round="r")
    return Votes.from_frame(frame)


def test_dawid_skene_discounts_a_spammer_that_majority_follows() -> None:
    rng = np.random.default_rng(0)
    truth = [EMOTIONS[int(k)] for k in rng.integers(0, 8, size=60)]
    rows = []
    for i, label in enumerate(truth):
        rows.append((f"i{i}", "expert1", label))
        rows.append((f"i{i}", "expert2", label if rng.random() < 0.9 else EMOTIONS[int(rng.integers(0, 8))]))
        for spammer in ("s1", "s2", "s3"):
            rows.append((f"i{i}", spammer, "amusement"))  # always the same answer, whatever the image
    votes = _votes(rows)
    config = AggregateConfig()
    by_item = {item: k for k, item in enumerate(votes.items)}
    truth_idx = np.array([CATEGORIES.index(truth[int(item[1:])]) for item in votes.items])
    majority_acc = (majority(votes, {}, config).probs.argmax(axis=1) == truth_idx).mean()
    ds = dawid_skene(votes, {}, config)
    ds_acc = (ds.probs.argmax(axis=1) == truth_idx).mean()
    assert majority_acc < 0.3 and ds_acc > 0.9
    spam = votes.annotators.index("s1")
    assert (
        ds.confusion is not None
        and ds.confusion[spam, CATEGORIES.index("fear"), CATEGORIES.index("amusement")] > 0.9
    )
    # gold items are clamped to their label
    clamped = dawid_skene(votes, {by_item["i0"]: CATEGORIES.index("sadness")}, config)
    assert clamped.probs[by_item["i0"]].argmax() == CATEGORIES.index("sadness")


def _records(rows: list[tuple[str, str, str | None, tuple[str, ...]]]) -> list[AnnotationRecord]:
    return [
        AnnotationRecord(
            annotation_id=k,
            task_id=k,
            item_id=item,
            annotator=who,
            annotator_id=None,
            choice=choice,
            flags=flags,
            style=None,
            lead_time=1.0,
            was_cancelled=choice is None,
            ground_truth=False,
            created_at=None,
            updated_at=None,
            result="[]",
        )
        for k, (item, who, choice, flags) in enumerate(rows)
    ]


def test_settled_logic_on_stored_votes(sample_paths: list[Path], tmp_path: Path) -> None:
    ws = _workspace(tmp_path, sample_paths, 6)
    a, b, c, d, e, f = _valid_ids(ws)
    rows = [
        (a, "x", "awe", ()), (a, "y", "awe", ()), (a, "z", "awe", ()),
        (b, "x", "awe", ()), (b, "y", "fear", ()), (b, "z", "anger", ()),  # 1/3 agreement, 3-way tie
        (c, "x", "awe", ()), (c, "y", "awe", ()), (c, "z", "fear", ()), (c, "w", "fear", ()),  # 2-2 tie
        (d, "x", "sadness", ()), (d, "y", "sadness", ("inappropriate",)), (d, "z", "sadness", ()),
        (e, "x", "anger", ()), (e, "y", None, ()),  # one vote and one skip
    ]  # fmt: skip
    AnnotationStore(ws.catalog).replace_round("s", _records(rows))
    AnnotationStore(ws.catalog).plan_tasks("s", [(f, False, None)])
    report = aggregate(ws, AggregateConfig(min_votes=3, min_agreement=0.6))
    got = ws.items(["item_id", "label", "settled", "unsettled_reason", "num_votes"]).set_index("item_id")
    assert got.loc[a, ["label", "settled"]].tolist() == ["awe", 1]
    assert got.loc[b, "unsettled_reason"] == "tie" and pd_isna(got.loc[b, "label"])
    assert got.loc[c, "unsettled_reason"] == "tie"
    assert got.loc[d, "unsettled_reason"] == "flagged_inappropriate"
    assert got.loc[e, ["unsettled_reason", "num_votes"]].tolist() == ["too_few_votes", 1]
    assert got.loc[f, ["unsettled_reason", "num_votes"]].tolist() == ["too_few_votes", 0]
    assert report.counts["settled"] == 1
    loose = aggregate(ws, AggregateConfig(min_votes=1, min_agreement=0.9))
    assert loose.labels.set_index("item_id").loc[e, "settled"] == 1
    assert (
        aggregate(ws, AggregateConfig(min_agreement=0.5, min_votes=3))
        .labels.set_index("item_id")
        .loc[a, "settled"]
        == 1
    )


def test_a_write_that_fails_half_way_leaves_nothing(ws: Workspace) -> None:
    store = AnnotationStore(ws.catalog)
    first = _records([("a", "x", "awe", ()), ("b", "x", "fear", ())])
    assert store.replace_round("w", first).new == 2
    broken = [*first, replace(first[0], annotation_id=7, annotator=None)]  # type: ignore[arg-type]
    broken[1] = replace(first[1], choice="anger")  # an edit that must not land either
    with pytest.raises(Exception, match="NOT NULL"):
        store.replace_round("w", broken, round_values={"pulled_at": "later"})
    after = store.annotations(["w"], include_deleted=True)
    assert sorted(after["choice"]) == ["awe", "fear"] and len(after) == 2
    assert store.round("w")["pulled_at"] is None  # type: ignore[index]


# -- the client's failure handling, against the real server behind a fault-injecting proxy -------------------------


def _forward(
    upstream: str,
    *,
    edit_request: Callable[[web.Request, dict[str, str], dict[str, str]], None] | None = None,
    edit_json: Callable[[Any], Any] | None = None,
    status: int | None = None,
) -> Handler:
    """Pass the request on to the real server and its answer back; ``edit_request(request, query, headers)`` may
    change what is sent, ``edit_json`` what comes back, and ``status`` replaces the status the client sees (the
    request has reached the server all the same)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        import aiohttp

        query = dict(request.query)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        if edit_request is not None:
            edit_request(request, query, headers)
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                upstream + request.path,
                params=query,
                headers=headers,
                data=await request.read(),
                allow_redirects=False,
            ) as answer,
        ):
            body = await answer.read()
            ctype = answer.headers.get("Content-Type", "application/json")
            code = answer.status
        if edit_json is not None and code == 200:
            body = json.dumps(edit_json(json.loads(body))).encode()
        return web.Response(status=status or code, body=body, headers={"Content-Type": ctype})

    return handler


def _project_with_tasks(
    ls_server: LiveServer, annotator: Client, title: str, n: int
) -> tuple[int, list[int]]:
    """A real project with ``n`` tasks, each annotated 'awe' by ``annotator``; returns its id and the task ids."""
    admin = ls_server.client()
    project_id = int(admin.create_project(title=title, label_config=CONFIG.xml).id)
    task_ids = admin.import_tasks(
        project_id, [{"data": {"image": "x", "item_id": f"i{k}"}} for k in range(n)]
    )
    for task_id in task_ids:
        _annotate(annotator, task_id, "awe")
    return project_id, task_ids


@pytest.mark.labelstudio
def test_client_retries_reads_not_creations_and_reads_full_annotations_from_servers_without_expand(
    ls_server: LiveServer, annotators: dict[str, Client]
) -> None:
    from httpfixtures import LoopbackServer, respond, sequence, stall
    from label_studio_sdk.core.api_error import ApiError

    annotator = annotators["ann0@emo8.test"]
    project_id, (task_id,) = _project_with_tasks(ls_server, annotator, "client-retries", 1)

    def stubs(body: Any) -> Any:  # an older server ignores expand: annotations come back as id-only stubs
        for task in body.get("tasks", []):
            task["annotations"] = [{"id": a["id"]} for a in task.get("annotations", [])]
        return body

    def drop_expand(request: web.Request, query: dict[str, str], headers: dict[str, str]) -> None:
        query.pop("expand", None)

    async def tasks(request: web.Request) -> web.StreamResponse:
        stub = "expand" in request.query
        return await _forward(ls_server.url, edit_request=drop_expand, edit_json=stubs if stub else None)(
            request
        )

    routes = {
        "/api/token/refresh/": _forward(ls_server.url),
        "/api/tasks/": sequence(respond(b"busy", status=503), tasks),
        # the import reaches the server and lands, but the client sees a 500: it must not send it again
        f"/api/projects/{project_id}/import": _forward(ls_server.url, status=500),
        f"/api/projects/{project_id}/": stall(30.0),
    }
    with LoopbackServer(routes) as proxy:
        client = Client(proxy.base_url, ls_server.server.api_key, replace(FAST, backoff=0.01, deadline=20.0))
        (page,) = list(client.task_pages(project_id, page_size=10))
        assert [t["id"] for t in page] == [task_id]
        (annotation,) = page[0]["annotations"]  # the full annotation, read again with fields=all
        assert CONFIG.parse_result(annotation["result"]).choice == "awe"
        assert proxy.hits("/api/tasks/") == 3  # 503, stubs, full
        with pytest.raises(ApiError):
            client.import_tasks(project_id, [{"data": {"image": "x", "item_id": "late"}}])
        assert proxy.hits(f"/api/projects/{project_id}/import") == 1  # a creation that may have landed: once
        landed = [
            t["data"]["item_id"]
            for p in ls_server.client().task_pages(project_id, annotations=False)
            for t in p
        ]
        assert sorted(landed) == ["i0", "late"]  # it did land, exactly once
        slow = Client(
            proxy.base_url, ls_server.server.api_key, ClientConfig(timeout=0.3, deadline=1.0, backoff=0.1)
        )
        with pytest.raises(ServerUnavailable, match="did not answer"):
            slow.project(project_id)
        assert proxy.hits(f"/api/projects/{project_id}/") >= 2


@pytest.mark.labelstudio
def test_task_pages_exchange_a_personal_access_token_and_again_when_the_access_token_expires(
    ls_server: LiveServer, annotators: dict[str, Client]
) -> None:
    """Label Studio's JWT flow: the annotator's personal access token (a refresh token) is exchanged for an access
    token at the real server; when the server refuses the access token (here: one the proxy corrupts, as if it had
    expired), the client exchanges the refresh token again and repeats the read, once."""
    from httpfixtures import LoopbackServer
    from label_studio_sdk.core.api_error import ApiError

    annotator = annotators["ann1@emo8.test"]
    token = annotator.rest.api_key
    assert token.count(".") == 2  # a JWT: Label Studio >= 1.23 hands out personal access tokens
    project_id, task_ids = _project_with_tasks(ls_server, annotator, "client-jwt", 2)
    issued: list[str] = []
    statuses: list[int] = []

    def record(body: Any) -> Any:
        issued.append(body["access"])
        return body

    def expire_once(request: web.Request, query: dict[str, str], headers: dict[str, str]) -> None:
        if query.get("page") == "2" and not statuses:
            headers["Authorization"] += "x"  # the server refuses it like an expired one
            statuses.append(401)

    with LoopbackServer() as proxy:
        proxy.routes["/api/token/refresh/"] = _forward(ls_server.url, edit_json=record)
        proxy.routes["/api/tasks/"] = _forward(ls_server.url, edit_request=expire_once)
        client = Client(proxy.base_url, token, FAST)
        pages = list(client.task_pages(project_id, page_size=1, annotations=False))
        assert [page[0]["id"] for page in pages] == sorted(task_ids)
        assert len(issued) == 2 and statuses == [401]  # exchanged, refused once, exchanged again
        assert proxy.hits("/api/tasks/") == 3  # page 1, page 2 refused, page 2 again
        bad = Client(proxy.base_url, "header.wrong.signature", FAST)
        with pytest.raises(ApiError) as refused:
            list(bad.task_pages(project_id, annotations=False))
        assert refused.value.status_code == 401  # the real server refuses a forged refresh token
        assert len(issued) == 2
