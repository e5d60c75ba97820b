"""The label and annotation stages: registered once, the same through ``stage.run`` and the derived CLI commands,
and ``annotate-round``: waiting for people until the answers are in, then complete (offline, from an export)."""

from __future__ import annotations

import csv
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.annotate.labelconfig import LabelConfig
from emo8.annotate.stage import (
    AnnotateAggregateSettings,
    AnnotateImportSettings,
    AnnotatePullSettings,
    AnnotatePushSettings,
    AnnotateRoundSettings,
    LabelStudioDown,
)
from emo8.cli import app
from emo8.cli.stages import COMMON_PARAMS
from emo8.core.stage import get_stage, settings_fingerprint
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source
from emo8.label.stage import (
    DetectPeopleSettings,
    LabelsImportSettings,
    SelectSettings,
    SuggestSettings,
)

runner = CliRunner()

STAGES = (
    "suggest", "select", "detect-people", "labels-import", "annotate-push", "annotate-pull", "annotate-import",
    "annotate-round", "annotate-aggregate",
)  # fmt: skip


@pytest.fixture
def small(tmp_path: Path, sample_paths: list[Path]) -> Workspace:
    """A workspace with 6 ingested sample images."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sample_paths[:6]:
        shutil.copy(path, folder / path.name)
    ws = Workspace.init(tmp_path / "ws")
    ingest(ws, create_source("folder", directory=str(folder)), IngestOptions(workers=1, progress=False))
    return ws


def _cli(ws: Workspace, *args: str) -> Any:
    return runner.invoke(app, [*args, "-w", str(ws.root)], terminal_width=200)


def _command(path: tuple[str, ...]) -> Any:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _export(ws: Workspace, round_name: str, path: Path, answers: list[int], choice: str = "awe") -> Path:
    """A Label Studio JSON export of the round's selected items, ``answers[i]`` annotations on item ``i``."""
    config = LabelConfig.load(None)
    tasks, next_id = [], 1
    for t, (item_id, n) in enumerate(zip(ws.catalog.selection(round_name), answers, strict=False)):
        annotations = []
        for a in range(n):
            annotations.append({
                "id": next_id, "completed_by": {"id": a + 1, "email": f"a{a + 1}@test.invalid"},
                "result": config.choice_result(choice), "was_cancelled": False, "ground_truth": False,
                "lead_time": 2.0, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            })  # fmt: skip
            next_id += 1
        tasks.append({"id": t + 1, "data": {"item_id": item_id}, "annotations": annotations})
    path.write_text(json.dumps(tasks))
    return path


# -- registry and CLI agree ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STAGES)
def test_cli_params_equal_the_settings_fields(name: str) -> None:
    stage = get_stage(name)
    command = _command(stage.command)
    params = {p.name for p in command.params} - {*COMMON_PARAMS, "help"}
    assert params == set(stage.settings.model_fields), name
    assert {"workspace", "quiet"} <= {p.name for p in command.params}


def test_option_spellings_are_kept() -> None:
    """Renamed fields keep their old CLI spelling (``--round``, ``--json``, ``--k``, ``--threshold``)."""
    opts = {p.name: p.opts for p in _command(("annotate", "aggregate")).params}
    assert set(opts["rounds"]) == {"--round", "-r"} and opts["as_json"] == ["--json"]
    assert set({p.name: p.opts for p in _command(("annotate", "round")).params}["round"]) == {"--round", "-r"}
    assert {p.name: p.opts for p in _command(("suggest",)).params}["k"] == ["--k"]
    people = {p.name: p for p in _command(("detect-people",)).params}
    assert people["threshold"].opts == ["--threshold"] and people["workers"].default == 1
    labels_import = {p.name: p for p in _command(("labels", "import")).params}
    assert labels_import["file"].param_type_name == "argument"


def test_settings_models_reject_unknown_and_out_of_range_values() -> None:
    with pytest.raises(ValidationError, match="budgets"):
        SelectSettings.model_validate({"budget": 3, "budgets": 4})
    with pytest.raises(ValidationError, match="unknown strategy 'vibes'"):
        SelectSettings(budget=3, strategy="vibes")  # a pipeline step fails before anything runs
    with pytest.raises(ValidationError, match="answers"):
        AnnotateRoundSettings(round="r", answers=0)
    with pytest.raises(ValidationError, match="round"):
        AnnotatePullSettings.model_validate({})
    assert AnnotateRoundSettings(round="r").overlap == 3
    # settings that cannot change a result are out of the fingerprint, the others are in
    base = AnnotatePushSettings(round="r")
    assert settings_fingerprint(base) == settings_fingerprint(
        AnnotatePushSettings(round="r", url="http://x:1")
    )
    assert settings_fingerprint(base) != settings_fingerprint(AnnotatePushSettings(round="r", overlap=2))
    # a repeated option's values may be comma-separated; a pipeline may give one string
    expected = ("annotation", "imported", "weak")
    assert SuggestSettings(labels=("annotation,imported", " weak ")).labels == expected
    assert SuggestSettings.model_validate({"labels": "imported"}).labels == ("imported",)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["select", "--budget", "0"], "--budget"),
        (["suggest", "--k", "0"], "--k"),
        (["detect-people", "--max-side", "0"], "--max-side"),
        (["annotate", "push", "--round", "r", "--gold-rate", "1.5"], "--gold-rate"),
        (["annotate", "round", "--round", "r", "--answers", "0"], "--answers"),
        (["annotate", "aggregate", "--min-agreement", "2"], "--min-agreement"),
        (["annotate", "pull"], "--round"),
    ],
)
def test_bad_settings_exit_2_naming_the_option(small: Workspace, args: list[str], option: str) -> None:
    result = _cli(small, *args)
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output


# -- each stage through stage.run and through the CLI ------------------------------------------------------------


def test_select_and_labels_import(small: Workspace, tmp_path: Path) -> None:
    select = get_stage("select")
    result = select.run(small, SelectSettings(budget=2, strategy="random", round="r1"), False)
    assert (result.round, result.selected) == ("r1", 2)
    assert (
        "r1[/] (random): 2 new item(s) selected"
        in select.summarize(result, select.settings(budget=2)).lines[0]
    )
    cli = _cli(small, "select", "--budget", "4", "--strategy", "random", "--round", "r1")
    assert cli.exit_code == 0, cli.output
    assert "r1 (random): 2 new item(s) selected, 4 in the round" in cli.output
    assert len(small.catalog.selection("r1")) == 4
    bad = _cli(small, "select", "--budget", "2", "--strategy", "vibes")
    assert bad.exit_code == 2 and "vibes" in bad.output

    ids = small.items(["item_id"])["item_id"].tolist()
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "label"])
        writer.writerows([[ids[0], "awe"], [ids[1], "fear"], ["nope", "awe"], [ids[2], "happy-ish"]])
    stage = get_stage("labels-import")
    imported = stage.run(small, LabelsImportSettings(file=labels), False)
    assert (imported.updated, imported.unknown_item, imported.unknown_label) == (2, 1, 1)
    assert stage.inputs is not None and len(stage.inputs(LabelsImportSettings(file=labels))) == 64
    again = _cli(small, "labels", "import", str(labels))
    assert again.exit_code == 0, again.output
    assert "4 row(s): 0 updated, 2 unchanged, 1 unknown item(s), 1 unknown label(s)" in again.output
    missing = _cli(small, "labels", "import", str(tmp_path / "none.csv"))
    assert missing.exit_code == 2 and "none.csv" in missing.output


def test_detect_people(small: Workspace) -> None:
    stage = get_stage("detect-people")
    settings = DetectPeopleSettings(backend="opencv-haar-face")
    result = stage.run(small, settings, False)
    assert (result.processed, result.errors) == (6, 0)
    assert "detect-people opencv-haar-face[/]: 6 image(s)" in stage.summarize(result, settings).lines[0]
    again = _cli(small, "detect-people", "--backend", "opencv-haar-face", "-q")
    assert again.exit_code == 0, again.output
    assert "0 image(s)" in again.output and "6 already done" in again.output
    unknown = _cli(small, "detect-people", "--backend", "yolo")
    assert unknown.exit_code == 2 and "unknown backend" in unknown.output


def test_suggest(small: Workspace, tmp_path: Path) -> None:
    from emo8.embed.run import EmbedConfig, embed

    embed(small, EmbedConfig(model="efficientnet-lite0", device="cpu", workers=0, progress=False))
    ids = small.items(["item_id"])["item_id"].tolist()
    small.catalog.update_items(ids, {"weak_label": ["awe", "awe", "awe", "fear", "fear", "fear"]})
    stage = get_stage("suggest")
    settings = SuggestSettings(k=2, labels=("annotation,imported", "weak"), folds=2)
    result = stage.run(small, settings, False)
    assert result.summary.suggested == 6 and result.summary.labels_by_source == {"weak": 6}
    lines = stage.summarize(result, settings).lines
    assert any("6 item(s) suggested" in line for line in lines)
    assert any(line.startswith("  report: ") for line in lines)
    cli = _cli(
        small,
        "suggest",
        "--k",
        "2",
        "--folds",
        "2",
        "--labels",
        "annotation,imported",
        "--labels",
        "weak",
        "-q",
    )
    assert cli.exit_code == 0, cli.output
    assert (
        "0 item(s) suggested, 6 up to date" in cli.output
    )  # the same settings (commas or not): nothing to redo
    no_labels = _cli(small, "suggest", "--labels", "imported", "-q")
    assert no_labels.exit_code == 2, no_labels.output


# -- annotation stages -------------------------------------------------------------------------------------------


def test_push_and_pull_without_a_server(small: Workspace) -> None:
    from emo8.annotate.server import Connection, save_connection

    get_stage("select").run(small, SelectSettings(budget=2, strategy="random", round="r1"), False)
    nowhere = _cli(small, "annotate", "push", "--round", "r1")
    assert nowhere.exit_code == 2 and "no Label Studio server" in nowhere.output  # set-up: the user's to fix
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    save_connection(small, Connection(f"http://127.0.0.1:{port}", "secret", managed=True))
    with pytest.raises(LabelStudioDown, match="not running"):
        get_stage("annotate-pull").run(small, AnnotatePullSettings(round="r1"), False)
    down = _cli(small, "annotate", "pull", "--round", "r1")
    assert down.exit_code == 1 and "emo8 annotate serve" in down.output  # the world's: exit 1


def test_import_and_aggregate(small: Workspace, tmp_path: Path) -> None:
    get_stage("select").run(small, SelectSettings(budget=3, strategy="random", round="r1"), False)
    export = _export(small, "r1", tmp_path / "export.json", [3, 3, 2])
    stage = get_stage("annotate-import")
    settings = AnnotateImportSettings(export_file=export, round="r1")
    result = stage.run(small, settings, False)
    assert (result.tasks, result.annotations, result.changes.new) == (3, 8, 8)
    assert stage.inputs is not None and stage.inputs(settings) != stage.inputs(settings.model_copy(
        update={"export_file": tmp_path / "other.json"}))  # fmt: skip
    again = _cli(small, "annotate", "import", str(export), "--round", "r1")
    assert again.exit_code == 0, again.output
    assert "round r1: 3 tasks, 8 annotations" in again.output and "0 new" in again.output
    assert "8 unchanged" in again.output
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1}]')
    rejected = _cli(small, "annotate", "import", str(bad), "--round", "r1")
    assert rejected.exit_code == 2 and "bad.json" in rejected.output

    aggregate = get_stage("annotate-aggregate")
    run = aggregate.run(small, AnnotateAggregateSettings(), False)
    assert run.report.counts["settled"] == 2 and run.path.is_file()
    lines = aggregate.summarize(run, AnnotateAggregateSettings()).lines
    assert lines[0] == "majority: 3 items, 2 settled; unsettled: too_few_votes=1"
    assert any("a1@test.invalid" in line for line in lines) and lines[-1].startswith("report: ")
    cli = _cli(small, "annotate", "aggregate", "--min-votes", "2", "--round", "r1,r1", "--json")
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output)["counts"] == {"items": 3, "settled": 3}
    excluded = _cli(
        small, "annotate", "aggregate", "--exclude-annotator", "a1@test.invalid,a2@test.invalid", "--json"
    )
    assert sorted(json.loads(excluded.output)["excluded_annotators"]) == [
        "a1@test.invalid",
        "a2@test.invalid",
    ]
    unknown = _cli(small, "annotate", "aggregate", "--method", "vibes")
    assert unknown.exit_code == 2 and "vibes" in unknown.output


def test_annotate_round_waits_for_answers_then_completes_after_import(
    small: Workspace, tmp_path: Path
) -> None:
    from emo8.annotate.server import Connection, save_connection

    stage = get_stage("annotate-round")
    unknown = _cli(small, "annotate", "round", "--round", "r1")
    assert unknown.exit_code == 2 and "no round 'r1'" in unknown.output
    get_stage("select").run(small, SelectSettings(budget=3, strategy="random", round="r1"), False)
    # a workspace server that is down: the round works offline
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    save_connection(small, Connection(f"http://127.0.0.1:{port}", "secret", managed=True))

    settings = AnnotateRoundSettings(round="r1")
    waiting = stage.run(small, settings, False)
    assert (waiting.completion.tasks, waiting.completion.complete, waiting.push, waiting.pull) == (
        3,
        0,
        None,
        None,
    )
    summary = stage.summarize(waiting, settings)
    assert summary.problem is None and summary.waiting is not None
    ws = str(small.root)
    for step in (
        f"emo8 annotate serve -w {ws}", f"emo8 annotate push --round r1 -w {ws}",
        f"emo8 annotate pull --round r1 -w {ws}", f"emo8 annotate import EXPORT.json --round r1 -w {ws}",
        "emo8 build PIPELINE", "3 of 3 tasks still need answers (9 answers missing, 3 per task)",
        f"127.0.0.1:{port} does not answer",
    ):  # fmt: skip
        assert step in summary.waiting, (step, summary.waiting)
    cli = _cli(small, "annotate", "round", "--round", "r1")
    assert cli.exit_code == 0, cli.output
    assert "waiting for answers: 0/3 tasks complete" in cli.output and "waiting:" in cli.output

    # some answers: still waiting, with the counts
    _cli(
        small,
        "annotate",
        "import",
        str(_export(small, "r1", tmp_path / "part.json", [3, 3, 1])),
        "--round",
        "r1",
    )
    partial = stage.run(small, settings, False)
    assert (partial.completion.complete, partial.completion.missing_answers) == (2, 2)
    assert "1 of 3 tasks still need answers (2 answers missing" in str(
        stage.summarize(partial, settings).waiting
    )

    # every answer: complete, no server needed
    full = _export(small, "r1", tmp_path / "full.json", [3, 3, 3])
    assert _cli(small, "annotate", "import", str(full), "--round", "r1").exit_code == 0
    done = stage.run(small, settings, False)
    summary = stage.summarize(done, settings)
    assert done.completion.done and summary.waiting is None and summary.problem is None
    assert (
        "complete: 3/3 tasks complete (3 answers each, 9 answers); answers from file:full.json"
        in (summary.lines[-1])
    )
    cli = _cli(small, "annotate", "round", "--round", "r1")
    assert cli.exit_code == 0 and "waiting" not in cli.output and "3/3 tasks complete" in cli.output
    # a stricter requirement reopens the wait
    stricter = _cli(small, "annotate", "round", "--round", "r1", "--answers", "4")
    assert "0/3 tasks complete" in stricter.output and "3 of 3 tasks still need answers" in stricter.output
