"""``emo8 build``: validation of pipeline files, skipping what is up to date, resuming, waiting, status, plans.

Small test stages (registered here, real workspace and catalog) exercise the engine; one test builds with the
real ingest-folder, embed and dedup stages over bundled sample images.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from emo8.cli import app
from emo8.core.stage import STAGES, Stage, StageSettings, Summary, path_digest, register_stage, setting
from emo8.core.workspace import Workspace
from emo8.pipeline.registry import load_stages
from emo8.pipeline.spec import PipelineError, load_pipeline

runner = CliRunner()
SAMPLES = Path(__file__).parents[1] / "emo8" / "samples" / "images"


# -- test stages: a folder -> files table, sizes x factor, a total, a gate waiting for people -------------------


class FilesSettings(StageSettings):
    directory: Path = setting(..., "Folder to list.")
    delay: float = setting(
        0.0, "Seconds to sleep after each file (to kill a build mid-step).", ge=0, fingerprint=False
    )


class FactorSettings(StageSettings):
    factor: int = setting(1, "Multiply sizes by this.", ge=1, le=100)
    note: str = setting("", "Free text.")


class GateSettings(StageSettings):
    approval: str = setting("approved", "File in the workspace that people create to let the build go on.")


class FailSettings(StageSettings):
    kind: str = setting("problem", "problem, usage or runtime.")


def _db(ws: Workspace) -> sqlite3.Connection:
    return ws.catalog.connect()


def run_files(ws: Workspace, settings: FilesSettings, progress: bool) -> int:
    db = _db(ws)
    db.execute("CREATE TABLE IF NOT EXISTS t_files (name TEXT PRIMARY KEY, size INTEGER)")
    db.execute("CREATE TABLE IF NOT EXISTS t_runs (stage TEXT)")
    db.execute("INSERT INTO t_runs VALUES ('t-files')")
    files = sorted(p for p in settings.directory.iterdir() if p.is_file())
    for path in files:  # one committed row at a time: resumable, idempotent
        db.execute("INSERT OR REPLACE INTO t_files VALUES (?, ?)", (path.name, path.stat().st_size))
        time.sleep(settings.delay)
    db.execute(
        f"DELETE FROM t_files WHERE name NOT IN ({','.join('?' * len(files))})", [p.name for p in files]
    )
    return len(files)


def run_sizes(ws: Workspace, settings: FactorSettings, progress: bool) -> int:
    db = _db(ws)
    db.execute("INSERT INTO t_runs VALUES ('t-sizes')")
    db.execute("CREATE TABLE IF NOT EXISTS t_sizes (name TEXT PRIMARY KEY, size INTEGER)")
    db.execute("DELETE FROM t_sizes")
    db.execute("INSERT INTO t_sizes SELECT name, size * ? FROM t_files", (settings.factor,))
    return int(db.execute("SELECT COUNT(*) FROM t_sizes").fetchone()[0])


def run_total(ws: Workspace, settings: FactorSettings, progress: bool) -> int:
    db = _db(ws)
    db.execute("INSERT INTO t_runs VALUES ('t-total')")
    total = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM t_sizes").fetchone()[0]) * settings.factor
    db.execute("CREATE TABLE IF NOT EXISTS t_total (total INTEGER)")
    db.execute("DELETE FROM t_total")
    db.execute("INSERT INTO t_total VALUES (?)", (total,))
    return total


def run_mark(ws: Workspace, settings: MarkSettings, progress: bool) -> int:
    """Marks rows of the table an earlier step wrote (as dedup marks items that ingest wrote), one at a time."""
    db = _db(ws)
    db.execute("INSERT INTO t_runs VALUES ('t-mark')")
    names = [row[0] for row in db.execute("SELECT name FROM t_files ORDER BY name")]
    for name in names:
        db.execute("UPDATE t_files SET size = -ABS(size) WHERE name = ?", (name,))
        time.sleep(settings.delay)
    return len(names)


class MarkSettings(StageSettings):
    delay: float = setting(0.0, "Seconds to sleep after each row.", ge=0, fingerprint=False)


def run_gate(ws: Workspace, settings: GateSettings, progress: bool) -> bool:
    _db(ws).execute("INSERT INTO t_runs VALUES ('t-gate')")
    return (ws.root / settings.approval).exists()


def run_fail(ws: Workspace, settings: FailSettings, progress: bool) -> str:
    if settings.kind == "usage":
        raise ValueError("the test stage was given a bad value")
    if settings.kind == "runtime":
        raise ConnectionError("the test server is down")
    return settings.kind


class FetchSettings(StageSettings):
    url: str = setting(..., "URL to fetch.")


def run_fetch(ws: Workspace, settings: FetchSettings, progress: bool) -> int:
    from urllib.request import urlopen

    with urlopen(settings.url, timeout=30) as response:  # a loopback `serve:` server
        body = response.read()
    db = _db(ws)
    db.execute("CREATE TABLE IF NOT EXISTS t_fetched (body BLOB)")
    db.execute("INSERT INTO t_fetched VALUES (?)", (body,))
    return len(body)


def _count(result: int, settings: Any) -> Summary:
    return Summary([f"counted {result}"])


TEST_STAGES = (
    Stage("t-files", FilesSettings, run_files, _count, (), "List a folder.", reads=("table:t_files",),
          writes=("table:t_files",), inputs=lambda s: path_digest(s.directory)),
    Stage("t-mark", MarkSettings, run_mark, _count, (), "Mark rows.", reads=("table:t_files",),
          writes=("table:t_files",)),
    Stage("t-sizes", FactorSettings, run_sizes, _count, (), "Sizes.", reads=("table:t_files",),
          writes=("table:t_sizes",)),
    Stage("t-total", FactorSettings, run_total, _count, (), "Total.", reads=("table:t_sizes",),
          writes=("table:t_total",)),
    Stage("t-gate", GateSettings, run_gate, lambda ok, s: Summary(["gate"], waiting=None if ok else
          f"people must approve: create {s.approval} in the workspace, then build again"), (), "Gate.",
          reads=("table:t_sizes",), writes=()),
    Stage("t-fetch", FetchSettings, run_fetch, _count, (), "Fetch.", reads=(), writes=("table:t_fetched",)),
    Stage("t-fail", FailSettings, run_fail, lambda r, s: Summary(problem="the test stage found a problem"), (),
          "Fails.", usage_errors=(ValueError,), runtime_errors=(ConnectionError,), reads=(), writes=()),
)  # fmt: skip


def register_test_stages() -> None:
    for stage in TEST_STAGES:
        register_stage(stage)


@pytest.fixture(autouse=True)
def test_stages() -> Iterator[None]:
    load_stages()
    register_test_stages()
    yield
    for stage in TEST_STAGES:
        STAGES.pop(stage.name, None)


# -- helpers --------------------------------------------------------------------------------------------------


def write_pipeline(folder: Path, body: str, name: str = "p.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def three_steps(tmp_path: Path, factor: int = 2, total_factor: int = 1, delay: float = 0.0) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    for i in range(3):
        if not (tmp_path / "in" / f"f{i}.txt").exists():
            (tmp_path / "in" / f"f{i}.txt").write_text("x" * (i + 1))
    return write_pipeline(
        tmp_path,
        f"""
        emo8: 1
        name: tiny
        workspace: ws
        steps:
          - stage: t-files
            settings: {{directory: in, delay: {delay}}}
          - stage: t-sizes
            settings: {{factor: {factor}}}
          - stage: t-total
            name: total
            settings: {{factor: {total_factor}}}
        """,
    )


def build(*args: str) -> Any:
    result = runner.invoke(app, ["build", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def statuses(ws_root: Path) -> dict[str, str]:
    record = json.loads((ws_root / "build" / "current.json").read_text())
    return {step["name"]: step["status"] for step in record["steps"]}


def shown(output: str) -> dict[str, str]:
    """The step -> status (or plan) column of the table ``--status`` / ``--dry-run`` print."""
    rows = [
        [c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")
    ]
    return {row[1]: row[3] for row in rows if len(row) == 5 and row[0].isdigit()}


def runs(ws_root: Path) -> list[str]:
    db = sqlite3.connect(ws_root / "catalog.sqlite")
    try:
        return [row[0] for row in db.execute("SELECT stage FROM t_runs")]
    finally:
        db.close()


def table(ws_root: Path, name: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(ws_root / "catalog.sqlite")
    try:
        return sorted(db.execute(f"SELECT * FROM {name}").fetchall())
    finally:
        db.close()


# -- running, skipping, re-running ----------------------------------------------------------------------------


def test_build_runs_every_step_then_a_second_build_does_nothing(tmp_path: Path) -> None:
    pipeline = three_steps(tmp_path)
    first = build(pipeline)
    assert first.exit_code == 0, first.output
    ws = tmp_path / "ws"
    assert (ws / "emo8.json").is_file()  # created as `emo8 init` would
    assert statuses(ws) == {"t-files": "done", "t-sizes": "done", "total": "done"}
    assert table(ws, "t_total") == [((1 + 2 + 3) * 2,)]
    assert "[1/3]" in first.output and "3 step(s) run" in first.output

    second = build(pipeline)
    assert second.exit_code == 0, second.output
    assert second.output.count("up to date, skipped") == 3
    assert "nothing to do" in second.output and "0 step(s) run" in second.output
    assert statuses(ws) == {"t-files": "skipped", "t-sizes": "skipped", "total": "skipped"}
    assert runs(ws) == ["t-files", "t-sizes", "t-total"]  # nothing ran a second time


def test_every_build_is_recorded_with_pipeline_text_hash_code_version_and_settings(tmp_path: Path) -> None:
    pipeline = three_steps(tmp_path)
    assert build(pipeline).exit_code == 0
    assert build(pipeline).exit_code == 0
    ws = tmp_path / "ws"
    records = sorted((ws / "build" / "runs").glob("*.json"))
    assert len(records) == 2
    record = json.loads(records[0].read_text())
    import hashlib

    text = pipeline.read_text()
    assert record["pipeline"]["text"] == text
    assert record["pipeline"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert record["code_version"] and record["status"] == "done"
    step = record["steps"][0]
    assert step["stage"] == "t-files" and step["settings"]["directory"] == str((tmp_path / "in").resolve())
    assert step["summary"] == ["counted 3"] and step["seconds"] is not None
    assert json.loads((ws / "build" / "current.json").read_text())["run_id"] == records[1].stem


def test_a_changed_setting_reruns_that_step_and_the_ones_after_it_only(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert build(three_steps(tmp_path, factor=2)).exit_code == 0
    result = build(three_steps(tmp_path, factor=3))
    assert result.exit_code == 0, result.output
    assert statuses(ws) == {"t-files": "skipped", "t-sizes": "done", "total": "done"}
    assert "settings changed" in result.output
    assert runs(ws) == ["t-files", "t-sizes", "t-total", "t-sizes", "t-total"]
    assert table(ws, "t_total") == [(18,)]
    # the last step alone
    build(three_steps(tmp_path, factor=3, total_factor=2))
    assert statuses(ws) == {"t-files": "skipped", "t-sizes": "skipped", "total": "done"}


def test_artifact_digests_see_rows_files_and_folders_change(tmp_path: Path) -> None:
    from emo8.pipeline.state import artifact_digest

    ws = Workspace.init(tmp_path / "ws")
    assert artifact_digest(ws, "table:t_nothing") == "-" and artifact_digest(ws, "dir:nothing") == "-"
    db = ws.catalog.connect()
    db.execute("CREATE TABLE t_x (a TEXT, b INTEGER)")
    db.executemany("INSERT INTO t_x VALUES (?, ?)", [(str(i), i) for i in range(5000)])  # several batches
    before = artifact_digest(ws, "table:t_x")
    assert artifact_digest(ws, "table:t_x") == before
    db.execute("UPDATE t_x SET b = -1 WHERE a = '4999'")
    assert artifact_digest(ws, "table:t_x") != before
    (ws.root / "embeddings" / "m" / "deep").mkdir(parents=True)
    listing = artifact_digest(ws, "dir:embeddings")
    (ws.root / "embeddings" / "m" / "deep" / "shard.npy").write_bytes(b"12")
    grown = artifact_digest(ws, "dir:embeddings")
    assert grown != listing
    (ws.root / "embeddings" / "m" / "deep" / "shard.npy").write_bytes(b"123")
    assert artifact_digest(ws, "dir:embeddings") != grown
    with pytest.raises(ValueError, match="table:NAME"):
        artifact_digest(ws, "rows:t_x")


def test_a_setting_outside_the_fingerprint_does_not_rerun(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert build(three_steps(tmp_path)).exit_code == 0
    assert build(three_steps(tmp_path, delay=0.001)).exit_code == 0
    assert set(statuses(ws).values()) == {"skipped"}


def test_a_new_file_in_the_ingested_folder_reruns_from_the_first_step(tmp_path: Path) -> None:
    pipeline = three_steps(tmp_path)
    ws = tmp_path / "ws"
    assert build(pipeline).exit_code == 0
    (tmp_path / "in" / "new.txt").write_text("yyyy")
    result = build(pipeline)
    assert "inputs outside the workspace changed" in result.output
    assert statuses(ws) == {"t-files": "done", "t-sizes": "done", "total": "done"}
    assert table(ws, "t_total") == [((1 + 2 + 3 + 4) * 2,)]


def test_a_row_changed_outside_the_build_reruns_from_the_first_step_reading_it(tmp_path: Path) -> None:
    pipeline = three_steps(tmp_path)
    ws = tmp_path / "ws"
    assert build(pipeline).exit_code == 0
    db = sqlite3.connect(ws / "catalog.sqlite")
    db.execute("UPDATE t_sizes SET size = 100 WHERE name = 'f0.txt'")  # as a CLI command editing a row would
    db.commit()
    db.close()
    result = build(pipeline)
    assert "changed outside the build: table:t_sizes" in result.output
    assert statuses(ws) == {"t-files": "skipped", "t-sizes": "skipped", "total": "done"}
    assert table(ws, "t_total") == [(100 + 4 + 6,)]
    db = sqlite3.connect(ws / "catalog.sqlite")
    db.execute("UPDATE t_files SET size = 5 WHERE name = 'f0.txt'")
    db.commit()
    db.close()
    build(pipeline)  # t-files reads the table it writes (as ingest reads the items table): it runs first
    assert statuses(ws) == {"t-files": "done", "t-sizes": "done", "total": "done"}
    assert table(ws, "t_files")[0] == ("f0.txt", 1)
    assert build(pipeline).output.count("up to date, skipped") == 3


def test_an_outside_change_is_still_seen_after_a_partial_build(tmp_path: Path) -> None:
    pipeline = three_steps(tmp_path)
    ws = tmp_path / "ws"
    assert build(pipeline).exit_code == 0
    db = sqlite3.connect(ws / "catalog.sqlite")
    db.execute("UPDATE t_sizes SET size = 50 WHERE name = 'f0.txt'")
    db.commit()
    db.close()
    assert build(pipeline, "--until", "t-sizes").exit_code == 0  # does not reach the step that reads it
    result = build(pipeline)
    assert "changed outside the build: table:t_sizes" in result.output
    assert statuses(ws) == {"t-files": "skipped", "t-sizes": "skipped", "total": "done"}
    assert table(ws, "t_total") == [(50 + 4 + 6,)]


def test_from_and_until_choose_the_steps(tmp_path: Path) -> None:
    pipeline = three_steps(tmp_path)
    ws = tmp_path / "ws"
    assert build(pipeline, "--until", "t-sizes").exit_code == 0
    assert statuses(ws) == {"t-files": "done", "t-sizes": "done", "total": "not run"}
    assert build(pipeline, "--from", "t-sizes").exit_code == 0
    assert statuses(ws) == {"t-files": "not run", "t-sizes": "done", "total": "done"}
    assert runs(ws) == ["t-files", "t-sizes", "t-sizes", "t-total"]


def test_a_waiting_step_stops_the_build_and_a_later_build_goes_on(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("abc")
    pipeline = write_pipeline(
        tmp_path,
        """
        emo8: 1
        name: gated
        workspace: ws
        steps:
          - {stage: t-files, settings: {directory: in}}
          - {stage: t-sizes}
          - {stage: t-gate, name: review}
          - {stage: t-total}
        """,
    )
    ws = tmp_path / "ws"
    first = build(pipeline)
    assert first.exit_code == 0, first.output
    assert "waiting" in first.output and "create approved in the workspace" in first.output
    assert statuses(ws) == {"t-files": "done", "t-sizes": "done", "review": "waiting", "t-total": "not run"}
    assert json.loads((ws / "build" / "current.json").read_text())["status"] == "waiting"
    status = build(pipeline, "--status")
    assert shown(status.output)["review"] == "waiting" and shown(status.output)["t-total"] == "pending"
    again = build(pipeline)  # still waiting: nothing after the gate runs
    assert statuses(ws)["t-total"] == "not run" and again.exit_code == 0
    (ws / "approved").write_text("yes")
    done = build(pipeline)
    assert done.exit_code == 0, done.output
    assert statuses(ws) == {"t-files": "skipped", "t-sizes": "skipped", "review": "done", "t-total": "done"}
    assert runs(ws).count("t-gate") == 3 and runs(ws).count("t-files") == 1


def test_a_problem_fails_the_build_with_exit_1_and_a_usage_error_with_exit_2(tmp_path: Path) -> None:
    for kind, code, text in (
        ("problem", 1, "found a problem"),
        ("runtime", 1, "server is down"),
        ("usage", 2, "bad value"),
    ):
        pipeline = write_pipeline(
            tmp_path,
            f"emo8: 1\nname: f\nworkspace: ws-{kind}\nsteps:\n  - {{stage: t-fail, settings: {{kind: {kind}}}}}\n",
        )
        result = build(pipeline)
        assert result.exit_code == code, result.output
        assert text in result.output
        assert statuses(tmp_path / f"ws-{kind}") == {"t-fail": "failed"}
        assert "failed last time" in build(pipeline, "--dry-run").output  # and the next build tries again


def test_dry_run_runs_nothing(tmp_path: Path) -> None:
    pipeline = three_steps(tmp_path)
    result = build(pipeline, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "never run" in result.output and "3 step(s) would run" in result.output
    assert set(shown(result.output).values()) == {"run"}
    assert not (tmp_path / "ws").exists()
    assert build(pipeline).exit_code == 0
    before = (tmp_path / "ws" / "build" / "state.json").read_text()
    result = build(three_steps(tmp_path, factor=5), "--dry-run")
    assert "settings changed" in result.output and "2 step(s) would run" in result.output
    assert shown(result.output) == {"t-files": "skip", "t-sizes": "run", "total": "run"}
    assert (tmp_path / "ws" / "build" / "state.json").read_text() == before
    assert runs(tmp_path / "ws") == ["t-files", "t-sizes", "t-total"]


def test_status_shows_done_stale_and_pending(tmp_path: Path) -> None:
    pipeline = three_steps(tmp_path)
    result = build(pipeline, "--status")
    assert result.exit_code == 0 and "not created yet" in result.output
    assert shown(result.output) == {"t-files": "pending", "t-sizes": "pending", "total": "pending"}
    build(pipeline, "--until", "t-sizes")
    result = build(pipeline, "--status")
    assert shown(result.output) == {"t-files": "done", "t-sizes": "done", "total": "pending"}
    build(pipeline)
    result = build(three_steps(tmp_path, factor=7), "--status")
    assert shown(result.output) == {"t-files": "done", "t-sizes": "stale", "total": "stale"}
    assert runs(tmp_path / "ws") == ["t-files", "t-sizes", "t-total"]


def kill_mid_step(pipeline: Path, ws: Path, started: str) -> None:
    """Run ``emo8 build pipeline`` in a subprocess and SIGKILL it once SQL ``started`` finds a row."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_pipeline as t; t.register_test_stages(); "
        "from emo8.cli import app; app(['build', sys.argv[2]])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(Path(__file__).parent), str(pipeline)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            db = sqlite3.connect(ws / "catalog.sqlite") if (ws / "catalog.sqlite").exists() else None
            try:
                if db is not None and db.execute(started).fetchone():
                    break
            except sqlite3.Error:
                pass
            finally:
                if db is not None:
                    db.close()
            time.sleep(0.1)
        assert process.poll() is None, "the build ended before it could be killed"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def test_a_build_killed_mid_step_resumes_and_ends_like_an_uninterrupted_one(tmp_path: Path) -> None:
    slow = tmp_path / "slow"
    slow.mkdir()
    ws = slow / "ws"
    kill_mid_step(three_steps(slow, delay=30.0), ws, "SELECT 1 FROM t_files")
    state = json.loads((ws / "build" / "state.json").read_text())
    assert state["steps"]["t-files"]["status"] == "running"
    assert 1 <= len(table(ws, "t_files")) < 3
    resumed = build(three_steps(slow, delay=0.0))
    assert resumed.exit_code == 0, resumed.output
    assert "interrupted" in resumed.output

    plain = tmp_path / "plain"
    plain.mkdir()
    assert build(three_steps(plain)).exit_code == 0
    for name in ("t_files", "t_sizes", "t_total"):
        assert table(ws, name) == table(plain / "ws", name)
    assert build(three_steps(slow)).output.count("up to date, skipped") == 3


def marked(folder: Path, delay: float) -> Path:
    three_steps(folder)
    return write_pipeline(
        folder,
        f"""
        emo8: 1
        name: marked
        workspace: ws
        steps:
          - {{stage: t-files, settings: {{directory: in}}}}
          - {{stage: t-mark, settings: {{delay: {delay}}}}}
          - {{stage: t-sizes}}
        """,
        name="marked.yaml",
    )


def test_a_step_killed_mid_run_is_rerun_without_rerunning_the_steps_before_it(tmp_path: Path) -> None:
    """The killed step had half-rewritten a table an earlier step reads: that is not an outside change."""
    slow, plain = tmp_path / "slow", tmp_path / "plain"
    slow.mkdir()
    plain.mkdir()
    kill_mid_step(marked(slow, 30.0), slow / "ws", "SELECT 1 FROM t_files WHERE size < 0")
    assert (
        json.loads((slow / "ws" / "build" / "state.json").read_text())["steps"]["t-mark"]["status"]
        == "running"
    )
    resumed = build(marked(slow, 0.0))
    assert resumed.exit_code == 0, resumed.output
    assert statuses(slow / "ws") == {"t-files": "skipped", "t-mark": "done", "t-sizes": "done"}
    assert runs(slow / "ws") == ["t-files", "t-mark", "t-mark", "t-sizes"]
    assert build(marked(plain, 0.0)).exit_code == 0
    for name in ("t_files", "t_sizes"):
        assert table(slow / "ws", name) == table(plain / "ws", name)


def served(tmp_path: Path, port: int, step: str) -> Path:
    """A pipeline serving ``tmp_path/site`` on ``port`` while its one ``step`` runs."""
    (tmp_path / "site").mkdir(exist_ok=True)
    return write_pipeline(
        tmp_path,
        f"""
        emo8: 1
        name: served
        workspace: ws
        serve:
          site: {{directory: site, port: {port}}}
        steps:
          - {step}
        """,
    )


def test_serve_runs_a_loopback_server_while_the_build_runs(tmp_path: Path) -> None:
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pipeline = served(
        tmp_path, port, f'{{stage: t-fetch, settings: {{url: "http://127.0.0.1:{port}/hello.txt"}}}}'
    )
    (tmp_path / "site" / "hello.txt").write_text("hello from the served folder")
    result = build(pipeline)
    assert result.exit_code == 0, result.output
    assert table(tmp_path / "ws", "t_fetched") == [(b"hello from the served folder",)]
    with pytest.raises(urllib.error.URLError):  # stopped with the build
        urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=5)


def test_a_busy_serve_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = build(served(tmp_path, port, "{stage: t-gate}"))
    assert result.exit_code == 1, result.output
    assert f"127.0.0.1:{port}" in result.output and "change `port:`" in result.output
    assert statuses(tmp_path / "ws") == {"t-gate": "not run"}
    assert json.loads((tmp_path / "ws" / "build" / "current.json").read_text())["status"] == "failed"


def test_a_second_build_in_the_same_workspace_at_the_same_time_is_refused(tmp_path: Path) -> None:
    import fcntl

    pipeline = three_steps(tmp_path)
    assert build(pipeline).exit_code == 0
    with open(tmp_path / "ws" / "build" / "lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running build holds it
        result = build(pipeline)
    assert result.exit_code == 1 and "another emo8 build is running" in result.output
    assert build(pipeline).exit_code == 0  # free again


# -- mistakes in the file: each names file:line, the field and what is allowed ----------------------------------

GOOD = """\
emo8: 1
name: p
workspace: ws
steps:
  - stage: t-files
    settings: {directory: in}
  - stage: t-sizes
    settings:
      factor: 2
"""

MISTAKES = {
    "unknown top-level key": (GOOD + "stepz: []\n", 10, ["stepz", "unknown key", "defaults, steps"]),
    "unknown stage": (GOOD.replace("stage: t-sizes", "stage: t-sizez"), 7, ["t-sizez", "t-sizes, t-total, t-gate"]),
    "unknown setting": (GOOD.replace("factor: 2", "factr: 2"), 9, ["factr", "unknown setting", "factor, note"]),
    "wrong type": (GOOD.replace("factor: 2", "factor: lots"), 9, ["steps[1].settings.factor", "integer"]),
    "out of bounds": (GOOD.replace("factor: 2", "factor: 1000"), 9, ["factor", "less than or equal to 100"]),
    "missing required setting": (GOOD.replace("settings: {directory: in}", "name: x"), 5, ["'directory'", "needs"]),
    "duplicate step name": (GOOD + "  - stage: t-sizes\n    name: t-files\n", 11, ["duplicate step name", "line 5"]),
    "unknown step key": (
        GOOD.replace("  - stage: t-sizes", "  - stage: t-sizes\n    setings: {}"),
        8,
        ["setings", "stage, name, settings"],
    ),
    "yaml syntax": (GOOD.replace("factor: 2", "factor: [2"), 10, ["YAML syntax error"]),
    "duplicate key": (GOOD.replace("name: p\n", "name: p\nname: q\n"), 3, ["given twice", "line 2"]),
    "schema version": (GOOD.replace("emo8: 1", "emo8: 2"), 1, ["schema version 2", "reads 1"]),
    "unknown default": (GOOD + "defaults: {colour: red}\n", 10, ["defaults.colour", "no step's stage"]),
    "bad default value": (
        GOOD.replace("factor: 2\n", "note: x\n") + "defaults: {factor: 0}\n",
        10,
        ["defaults.factor", "greater than or equal to 1"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(MISTAKES))
def test_a_mistake_in_the_file_names_its_line_field_and_what_is_allowed(tmp_path: Path, kind: str) -> None:
    text, line, needles = MISTAKES[kind]
    (tmp_path / "in").mkdir()
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(text)
    result = build(pipeline)
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert f"{pipeline}:{line}:" in flat.replace(" ", "") or f"{pipeline}:{line}:" in result.output.replace(
        "\n", ""
    )
    for needle in needles:
        assert needle in flat, (needle, result.output)
    assert not (tmp_path / "ws").exists()  # nothing ran


def test_all_mistakes_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    text = GOOD.replace("factor: 2", "factor: 0").replace("stage: t-files", "stage: nope") + "extra: 1\n"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(text)
    with pytest.raises(PipelineError) as caught:
        load_pipeline(pipeline)
    assert [p.split(":")[1] for p in caught.value.problems] == ["5", "9", "10"]
    assert "3 problem(s)" in str(caught.value)


def test_bad_from_or_until_names_the_steps(tmp_path: Path) -> None:
    pipeline = three_steps(tmp_path)
    result = build(pipeline, "--from", "nope")
    assert result.exit_code == 2
    assert "--from 'nope' is not a step" in result.output and "t-files, t-sizes, total" in result.output
    result = build(pipeline, "--from", "total", "--until", "t-files")
    assert result.exit_code == 2 and "comes after" in result.output
    result = build(tmp_path / "missing.yaml")
    assert result.exit_code == 2 and "cannot read the pipeline file" in result.output


def test_paths_resolve_against_the_pipeline_folder_and_defaults_fill_settings(tmp_path: Path) -> None:
    sub = tmp_path / "recipes"
    sub.mkdir()
    (tmp_path / "in").mkdir()
    pipeline = write_pipeline(
        sub,
        """
        emo8: 1
        name: p
        workspace: ../ws
        defaults: {factor: 4}
        steps:
          - {stage: t-files, settings: {directory: ../in}}
          - {stage: t-sizes}
          - {stage: t-total, settings: {factor: 1}}
          - {stage: t-sizes}
        """,
    )
    spec = load_pipeline(pipeline)
    assert spec.workspace == (tmp_path / "ws").resolve()
    assert spec.steps[0].settings.directory == (tmp_path / "in").resolve()  # type: ignore[attr-defined]
    assert [s.settings.factor for s in spec.steps[1:]] == [4, 1, 4]  # type: ignore[attr-defined]
    assert spec.step_names() == ["t-files", "t-sizes", "t-total", "t-sizes-2"]
    assert load_pipeline(pipeline, workspace=tmp_path / "other").workspace == tmp_path / "other"


def test_path_like_text_settings_resolve_only_when_next_to_the_file(tmp_path: Path) -> None:
    """``dedup.against`` is a folder or a Hub id: a folder beside the pipeline resolves, a Hub id stays as it is."""
    load_stages()
    (tmp_path / "refs").mkdir()
    text = """
        emo8: 1
        name: p
        workspace: ws
        steps:
          - {stage: dedup, name: local, settings: {against: refs}}
          - {stage: dedup, name: hub, settings: {against: someone/benchmark-test}}
        """
    spec = load_pipeline(write_pipeline(tmp_path, text))
    assert spec.step("local").settings.against == str((tmp_path / "refs").resolve())  # type: ignore[attr-defined]
    assert spec.step("hub").settings.against == "someone/benchmark-test"  # type: ignore[attr-defined]


def test_an_unknown_model_key_is_a_file_mistake_with_its_line(tmp_path: Path) -> None:
    load_stages()
    text = """
        emo8: 1
        name: p
        workspace: ws
        steps:
          - stage: embed
            settings: {model: clip-large}
        """
    pipeline = write_pipeline(tmp_path, text)
    with pytest.raises(PipelineError) as caught:
        load_pipeline(pipeline)
    (problem,) = caught.value.problems
    assert f"{pipeline}:6:" in problem and "unknown model key 'clip-large'" in problem
    assert "open_clip" in problem and "Value error" not in problem


# -- the CLI and the pipeline accept exactly the same settings --------------------------------------------------


def _command(group: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        group = group.commands[part]  # a KeyError names a stage whose command is missing
    return group


def test_every_stage_command_takes_exactly_the_stage_settings() -> None:
    from emo8.cli.stages import COMMON_PARAMS

    root = typer.main.get_command(app)
    checked = []
    uniemox_root = None
    for stage in load_stages().values():
        if not stage.command:
            continue
        if stage.settings.__module__.split(".")[0] == "uniemox":  # a `uniemox` command
            if uniemox_root is None:
                from uniemox.cli import app as uniemox_app

                uniemox_root = typer.main.get_command(uniemox_app)
            command = _command(uniemox_root, stage.command)
        else:
            command = _command(root, stage.command)
        params = {p.name for p in command.params} - set(COMMON_PARAMS)
        assert params == set(stage.settings.model_fields), stage.name
        checked.append(stage.name)
    assert "dedup" in checked and len(checked) == len([s for s in STAGES.values() if s.command])


# -- the real stages: ingest a folder of bundled images, embed, dedup -------------------------------------------


def sample_folder(tmp_path: Path, count: int, *stages: str) -> Path:
    """``tmp_path/images`` with ``count`` bundled sample images (the stages named must be registered)."""
    missing = [name for name in stages if name not in STAGES]
    assert not missing, f"stage(s) not registered: {', '.join(missing)}"
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted(SAMPLES.glob("*.jpg"))[:count]:
        (folder / image.name).write_bytes(image.read_bytes())
    return folder


@pytest.mark.slow
def test_a_real_pipeline_over_bundled_images_builds_then_skips(tmp_path: Path) -> None:
    folder = sample_folder(tmp_path, 6, "ingest-folder", "embed", "dedup")
    pipeline = write_pipeline(
        tmp_path,
        """
        emo8: 1
        name: real
        workspace: ws
        defaults: {workers: 1}
        steps:
          - {stage: ingest-folder, settings: {directory: images}}
          - {stage: embed}
          - {stage: dedup}
        """,
    )
    first = build(pipeline)
    assert first.exit_code == 0, first.output
    ws = Workspace.open(tmp_path / "ws")
    assert len(ws.items()) == 6
    assert build(pipeline).output.count("up to date, skipped") == 3
    sha = ws.items(["sha256"])["sha256"].iloc[0]
    takedown = runner.invoke(
        app, ["takedown", "--sha256", sha, "--reason", "test", "-w", str(tmp_path / "ws")]
    )
    assert takedown.exit_code == 0, takedown.output
    changed = build(pipeline)  # a CLI command changed the items table: embed reads it first
    assert changed.exit_code == 0, changed.output
    assert statuses(tmp_path / "ws") == {"ingest-folder": "skipped", "embed": "done", "dedup": "done"}
    assert "changed outside the build: table:items" in changed.output
    (folder / "copy.jpg").write_bytes((folder / sorted(p.name for p in folder.iterdir())[0]).read_bytes())
    again = build(pipeline)  # a new image in the ingested folder: everything runs again
    assert again.exit_code == 0, again.output
    assert statuses(tmp_path / "ws") == {"ingest-folder": "done", "embed": "done", "dedup": "done"}


@pytest.mark.slow
def test_a_real_build_waits_at_an_annotation_round_and_goes_on_after_annotate_import(tmp_path: Path) -> None:
    sample_folder(tmp_path, 8, "ingest-folder", "embed", "select", "annotate-round", "annotate-aggregate")
    pipeline = write_pipeline(
        tmp_path,
        """
        emo8: 1
        name: rounds
        workspace: ws
        steps:
          - {stage: ingest-folder, settings: {directory: images, workers: 1}}
          - {stage: embed, settings: {workers: 1}}
          - {stage: select, settings: {budget: 4, round: r1, strategy: random}}
          - {stage: annotate-round, settings: {round: r1, overlap: 3, gold_rate: 0.0}}
          - {stage: annotate-aggregate, settings: {min_votes: 3}}
        """,
    )
    first = build(pipeline)
    assert first.exit_code == 0, first.output
    ws_root = tmp_path / "ws"
    assert (
        statuses(ws_root)["annotate-round"] == "waiting"
        and statuses(ws_root)["annotate-aggregate"] == "not run"
    )
    assert "waiting" in first.output and "import" in first.output  # what to do next
    export = tmp_path / "export.json"
    stage = STAGES["demo-annotators"]
    stage.run(Workspace.open(ws_root), stage.settings(round="r1", out=export), False)
    imported = runner.invoke(app, ["annotate", "import", str(export), "--round", "r1", "-w", str(ws_root)])
    assert imported.exit_code == 0, imported.output
    second = build(pipeline)
    assert second.exit_code == 0, second.output
    assert statuses(ws_root)["annotate-round"] == "done" and statuses(ws_root)["annotate-aggregate"] == "done"
    assert statuses(ws_root)["ingest-folder"] == "skipped"
