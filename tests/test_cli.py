"""The command lines as a new user meets them: exit codes, one-paragraph errors, summaries that count everything."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import huggingface_hub.constants  # noqa: F401  (before a test sets HF_HUB_OFFLINE: it is read once, at import)
import pytest
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.cli.common import EXIT_CODES
from uniemox.cli import app as uniemox_app

runner = CliRunner()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def small_ws(tmp_path: Path, sample_paths: list[Path]) -> Workspace:
    """A workspace with 6 ingested sample images."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sample_paths[:6]:
        (folder / path.name).write_bytes(path.read_bytes())
    ws_path = tmp_path / "ws"
    assert runner.invoke(app, ["init", str(ws_path)]).exit_code == 0
    result = runner.invoke(app, ["ingest", "folder", str(folder), "-w", str(ws_path), "-q", "--workers", "1"])
    assert result.exit_code == 0, result.output
    return Workspace.open(ws_path)


def test_exit_code_table_is_documented() -> None:
    assert set(EXIT_CODES) == {0, 1, 2}
    for doc in ("README.md", "docs/cli.md"):
        text = (Path(__file__).resolve().parents[1] / doc).read_text()
        assert "| 1 |" in text and "| 2 |" in text, doc


# -- init, select, annotate status ---------------------------------------------------------------------------------


def test_init_refuses_a_folder_that_holds_files(tmp_path: Path, sample_paths: list[Path]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(sample_paths[0].read_bytes())
    result = runner.invoke(app, ["init", str(photos)])
    assert result.exit_code == 2 and "--force" in result.output and "not empty" in result.output
    assert "Traceback" not in result.output
    assert not (photos / "emo8.json").exists() and sorted(p.name for p in photos.iterdir()) == ["a.jpg"]
    assert runner.invoke(app, ["init", str(photos), "--force"]).exit_code == 0
    assert (photos / "emo8.json").is_file()
    assert runner.invoke(app, ["init", str(photos)]).exit_code == 0  # an existing workspace: idempotent
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["init", str(empty)]).exit_code == 0


def test_select_budget_zero_is_refused(small_ws: Workspace) -> None:
    args = ["select", "-w", str(small_ws.root), "--strategy", "random", "--round", "r0", "--budget", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--budget" in result.output
    assert small_ws.catalog.rounds() == {}


def test_annotate_status_shows_a_selected_round_not_pushed_yet(small_ws: Workspace) -> None:
    ws_arg = ["-w", str(small_ws.root)]
    empty = runner.invoke(app, ["annotate", "status", *ws_arg])
    assert empty.exit_code == 0 and "no annotation rounds yet" in empty.output
    selected = runner.invoke(
        app, ["select", *ws_arg, "--strategy", "random", "--round", "r1", "--budget", "3"]
    )
    assert selected.exit_code == 0, selected.output
    for args in (["annotate", "status", *ws_arg], ["annotate", "status", "--round", "r1", *ws_arg]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "no annotation rounds yet" not in result.output
        assert (
            "r1" in result.output
            and "3 item(s) selected" in result.output
            and "push --round r1" in result.output
        )


def test_annotate_pull_with_the_server_down_exits_1(small_ws: Workspace) -> None:
    from emo8.annotate.server import Connection, save_connection

    save_connection(small_ws, Connection(f"http://127.0.0.1:{closed_port()}", "secret", managed=True))
    result = runner.invoke(app, ["annotate", "pull", "--round", "r1", "-w", str(small_ws.root)])
    assert result.exit_code == 1, result.output
    assert "not running" in result.output and "Traceback" not in result.output
    unknown = runner.invoke(
        app, ["annotate", "import", "nowhere.json", "--round", "r1", "-w", str(small_ws.root)]
    )
    assert unknown.exit_code == 2  # bad input stays 2


# -- ingest summaries -------------------------------------------------------------------------------------------------


def test_url_list_summary_counts_and_names_malformed_rows(tmp_path: Path) -> None:
    ws_path = tmp_path / "ws"
    Workspace.init(ws_path)
    url_list = tmp_path / "urls.csv"
    with open(url_list, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "caption"])
        writer.writerow(["not a url", "one"])
        writer.writerow(["ftp://example.org/a.jpg", "two"])
        writer.writerow(["", "three"])
        writer.writerow([f"http://127.0.0.1:{closed_port()}/x.jpg", "private, so skipped"])
    result = runner.invoke(app, ["ingest", "urls", str(url_list), "-w", str(ws_path), "-q", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "4 new" in result.output
    assert "failed=3" in result.output and "skipped=1" in result.output
    assert "malformed_row=3" in result.output and "private_address=1" in result.output
    assert "3 failed or invalid" in result.output and "urls.csv#row" in result.output
    again = runner.invoke(app, ["ingest", "urls", str(url_list), "-w", str(ws_path), "-q", "--workers", "1"])
    assert "4 already known" in again.output and "failed=" not in again.output  # counted once, when new


def test_folder_ingest_says_that_subfolders_were_not_read(tmp_path: Path, sample_paths: list[Path]) -> None:
    root = tmp_path / "by-emotion"
    for label, path in zip(("awe", "fear"), sample_paths[:2], strict=True):
        (root / label).mkdir(parents=True)
        (root / label / path.name).write_bytes(path.read_bytes())
    ws_path = tmp_path / "ws"
    Workspace.init(ws_path)
    args = ["ingest", "folder", str(root), "--label-from-dir", "-w", str(ws_path), "-q", "--workers", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "0 new" in result.output and "2 subfolder(s)" in result.output and "--recursive" in result.output
    result = runner.invoke(app, [*args, "--recursive"])
    assert "2 new" in result.output and "subfolder" not in result.output


# -- uniemox: one-paragraph errors, nothing written into --out, one release at a time -------------------------------


def _one_paragraph_error(output: str) -> None:
    assert "Traceback" not in output and "╭" not in output
    assert output.lstrip().startswith("error:")


def test_uniemox_missing_data(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        uniemox_app, ["pretrain", "--data", str(tmp_path / "nonexistent"), "--out", str(out)]
    )
    assert result.exit_code == 2
    _one_paragraph_error(result.output)
    assert "nonexistent" in result.output and not out.exists()


def test_uniemox_refuses_a_workspace_with_several_releases(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    for version in ("0.1.0", "0.2.0", "0.10.0"):
        (ws.root / "releases" / version).mkdir(parents=True)
        (ws.root / "releases" / version / "manifest.json").write_text(json.dumps({"version": version}))
    out = tmp_path / "run"
    result = runner.invoke(uniemox_app, ["pretrain", "--data", str(ws.root), "--out", str(out)])
    assert result.exit_code == 2
    _one_paragraph_error(result.output)
    assert (
        "0.1.0, 0.2.0, 0.10.0" in result.output and "releases/0.10.0" in result.output
    )  # the latest as example
    assert not out.exists()
    copied = tmp_path / "copies"  # several releases outside a workspace
    for version in ("0.1.0", "0.2.0"):
        (copied / version).mkdir(parents=True)
        (copied / version / "manifest.json").write_text("{}")
    result = runner.invoke(uniemox_app, ["pretrain", "--data", str(copied), "--out", str(out)])
    assert result.exit_code == 2 and "2 Emo8 releases" in result.output


def test_uniemox_default_teacher_offline(tmp_path: Path, sample_paths: list[Path]) -> None:
    data = tmp_path / "data" / "awe"
    data.mkdir(parents=True)
    for path in sample_paths[:4]:
        (data / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(data.parent), "--out", str(out), "--model", "mae_vit_tiny_patch16",
            "--device", "cpu", "--batch-size", "2", "--max-steps", "1", "--workers", "0", "--quiet"]  # fmt: skip
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    result = runner.invoke(uniemox_app, args, env=env)
    assert result.exit_code == 2
    _one_paragraph_error(result.output)
    assert "HF_HUB_OFFLINE" in result.output and "--teacher-pretrained" in result.output
    assert not out.exists()  # no config.json left behind


def test_error_messages_are_printed_literally(small_ws: Workspace) -> None:
    """An error text with brackets (``open_clip:ARCH[/PRETRAINED]``) is not read as rich markup (it crashed)."""
    result = runner.invoke(app, ["embed", "-w", str(small_ws.root), "--model", "open_clip:", "-q"])
    assert result.exit_code == 2, result.output
    assert "open_clip:ARCH[/PRETRAINED]" in result.output and "Traceback" not in result.output


def test_aggregate_summary_with_one_annotator_reads_cleanly(small_ws: Workspace, tmp_path: Path) -> None:
    from emo8.annotate.labelconfig import LabelConfig

    ws_arg = ["-w", str(small_ws.root)]
    assert (
        runner.invoke(
            app, ["select", *ws_arg, "--strategy", "random", "--round", "r1", "--budget", "3"]
        ).exit_code
        == 0
    )
    config = LabelConfig.load(None)
    tasks = [
        {"id": t + 1, "data": {"item_id": item_id}, "annotations": [{
            "id": t + 1, "completed_by": {"id": 1, "email": "solo@example.org"}, "result": config.choice_result("awe"),
            "was_cancelled": False, "ground_truth": False, "lead_time": 3.0,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}]}
        for t, item_id in enumerate(small_ws.catalog.selection("r1"))
    ]  # fmt: skip
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    assert runner.invoke(app, ["annotate", "import", str(export), "--round", "r1", *ws_arg]).exit_code == 0
    result = runner.invoke(app, ["annotate", "aggregate", "--min-votes", "1", *ws_arg], terminal_width=200)
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first == "majority: 3 items, 3 settled"  # no dangling "; " when nothing is unsettled
    assert "no item has votes from 2 or more annotators" in result.output


def test_push_of_a_missing_release_is_bad_input(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    result = runner.invoke(app, ["push", "--version", "9.9.9", "--repo", "me/emo8", "-w", str(ws.root)])
    assert result.exit_code == 2 and "no release 9.9.9" in result.output  # was 1, like a Hub failure


def test_uniemox_unknown_model_writes_nothing(tmp_path: Path, sample_paths: list[Path]) -> None:
    from uniemox.testing import tiny_teacher

    data = tmp_path / "data" / "awe"
    data.mkdir(parents=True)
    for path in sample_paths[:4]:
        (data / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "run"
    teacher = tiny_teacher(tmp_path)
    args = ["pretrain", "--data", str(data.parent), "--out", str(out), "--model", "mae_vit_nope", "--device", "cpu",
            "--teacher", str(teacher), "--teacher-pretrained", "random", "--quiet"]  # fmt: skip
    result = runner.invoke(uniemox_app, args)
    assert result.exit_code == 2
    assert "unknown model 'mae_vit_nope'" in result.output and "Traceback" not in result.output
    assert not out.exists()  # neither config.json nor the prompt embeddings
