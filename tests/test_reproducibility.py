"""Results that must not depend on the process: releases built by separate processes (other hash seeds, a later
day) and stages killed with SIGKILL mid-run, then re-run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from releasefixtures import *  # noqa: F403  (the workspace fixtures)

from emo8 import Workspace

#: Runs the emo8 CLI with the clock moved ``EMO8_TEST_DAYS_LATER`` days ahead (``time.time`` and the
#: ``datetime``/``date`` "now" constructors), so that anything taken from today shows up as a difference.
LATER_CLI = """
import datetime as _dt, os, sys, time as _time
# compiled extensions check the datetime types' layout when they load: load them before the switch
import numpy, pandas, pyarrow, pyarrow.parquet, datasets, PIL.Image, yaml  # noqa
_shift = float(os.environ["EMO8_TEST_DAYS_LATER"]) * 86400.0
_real_time, _real_time_ns = _time.time, _time.time_ns
_time.time = lambda: _real_time() + _shift
_time.time_ns = lambda: _real_time_ns() + int(_shift * 1e9)

class _LaterDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls.fromtimestamp(_time.time(), tz)

    @classmethod
    def utcnow(cls):
        return cls.fromtimestamp(_time.time(), _dt.timezone.utc).replace(tzinfo=None)

    @classmethod
    def today(cls):
        return cls.now()

class _LaterDate(_dt.date):
    @classmethod
    def today(cls):
        return cls.fromtimestamp(_time.time())

_dt.datetime, _dt.date = _LaterDatetime, _LaterDate
sys.stderr.write(f"clock: {_dt.datetime.now(_dt.timezone.utc).isoformat()}\\n")
sys.argv = ["emo8", *sys.argv[1:]]
from emo8.cli import app
app()
"""


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "PYTHONHASHSEED")}
    env.update(extra)
    return env


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_release_is_byte_identical_across_processes_hash_seeds_and_days(
    labelled_ws: Workspace, copy_workspace: Callable[[Workspace, str], Workspace], tmp_path: Path
) -> None:
    args = ["release", "--version", "1.0.0", "--format", "both"]
    ws_a, ws_b = copy_workspace(labelled_ws, "ws-a"), copy_workspace(labelled_ws, "ws-b")
    today = subprocess.run(
        [sys.executable, "-m", "emo8", *args, "-w", str(ws_a.root), "--out", str(tmp_path / "a")],
        env=_env(PYTHONHASHSEED="1"),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert today.returncode == 0, today.stderr
    later = subprocess.run(
        [sys.executable, "-c", LATER_CLI, *args, "-w", str(ws_b.root), "--out", str(tmp_path / "b")],
        env=_env(PYTHONHASHSEED="2", EMO8_TEST_DAYS_LATER="400"),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert later.returncode == 0, later.stderr
    clock_line = next(line for line in later.stderr.splitlines() if line.startswith("clock: "))
    from datetime import datetime, timezone

    faked = datetime.fromisoformat(clock_line.removeprefix("clock: "))
    assert (faked - datetime.now(timezone.utc)).days >= 399  # the second process did live a year later
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert len(a) > 60 and {"README.md", "manifest.json"} <= {Path(p).name for p in a}
    different = sorted(p for p in set(a) | set(b) if a.get(p) != b.get(p))
    assert different == [], different


# -- stages killed with SIGKILL ------------------------------------------------------------------------------------

#: Small batches and shards (many commits, so that a kill lands between two), for both the killed and the
#: uninterrupted runs. The scripts take the workspace and these settings as JSON.
EMBED_SETTINGS = {"device": "cpu", "workers": 0, "batch_size": 2, "shard_size": 2, "progress": False}
EMBED_RUN = """
import json, sys
from emo8 import Workspace
from emo8.embed.run import EmbedConfig, embed
embed(Workspace.open(sys.argv[1]), EmbedConfig(**json.loads(sys.argv[2])))
"""
DETECT_SETTINGS = {"backend": "opencv-hog", "batch_size": 2, "max_side": 512, "workers": 1, "progress": False}

DETECT_RUN = """
import json, sys
from emo8 import Workspace
from emo8.label.people import DetectConfig, detect_people
summary = detect_people(Workspace.open(sys.argv[1]), DetectConfig(**json.loads(sys.argv[2])))
print(summary.processed, summary.already)
"""


def _ingested(root: Path, sample_paths: list[Path], count: int) -> Workspace:
    from emo8.ingest.run import IngestOptions, ingest
    from emo8.ingest.sources import create_source

    folder = root / "images"
    folder.mkdir(parents=True)
    for path in sample_paths[:count]:
        (folder / path.name).write_bytes(path.read_bytes())
    ws = Workspace.init(root / "ws")
    ingest(ws, create_source("folder", directory=str(folder)), IngestOptions(workers=1, progress=False))
    ws.catalog.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ws.catalog.close()
    return ws


def _kill_when(script_and_args: list[str], committed: Callable[[], int], at_least: int, log: Path) -> int:
    """Run ``python -c SCRIPT ARGS...`` in a new process, SIGKILL it once ``committed()`` reaches ``at_least``
    (polled), and return what was committed when it died. Fails if the process finished first."""
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", *script_and_args], stderr=err)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if committed() >= at_least:
                        break
                except (OSError, ValueError, sqlite3.Error):
                    pass  # mid-replace, or not created yet
                time.sleep(0.02)
            assert proc.poll() is None, f"the run ended before it could be killed: {log.read_text()}"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return committed()  # the process is gone: this is final


def _by_name(ws: Workspace, ids: list[str]) -> list[str]:
    items = ws.items(["item_id", "source_path"]).set_index("item_id")
    return [Path(str(items.loc[i, "source_path"])).name for i in ids]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_embed_killed_mid_run_then_rerun_equals_an_uninterrupted_run(
    tmp_path: Path, sample_paths: list[Path]
) -> None:
    from emo8.embed.run import MANIFEST, EmbedConfig, EmbeddingStore, embed, load_embeddings

    killed = _ingested(tmp_path / "killed", sample_paths, 16)
    straight = _ingested(tmp_path / "straight", sample_paths, 16)
    store = EmbeddingStore.for_key(killed, "efficientnet-lite0").root

    def committed_shards() -> int:
        return len(json.loads((store / MANIFEST).read_text()).get("shards", []))

    at_kill = _kill_when(
        [EMBED_RUN, str(killed.root), json.dumps(EMBED_SETTINGS)],
        committed_shards,
        2,
        tmp_path / "killed.log",
    )
    assert 2 <= at_kill < 8  # 16 items in shards of 2: killed part-way
    rerun = subprocess.run(
        [sys.executable, "-c", EMBED_RUN, str(killed.root), json.dumps(EMBED_SETTINGS)],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr
    embed(straight, EmbedConfig(**EMBED_SETTINGS))  # the uninterrupted run
    ids_k, mat_k = load_embeddings(killed, "efficientnet-lite0")
    ids_s, mat_s = load_embeddings(straight, "efficientnet-lite0")
    assert (
        _by_name(killed, ids_k) == _by_name(straight, ids_s) and len(ids_k) == 16
    )  # item ids: other folders
    assert np.array_equal(np.asarray(mat_k), np.asarray(mat_s))
    assert not list(store.glob("*.partial*")) and not list((killed.root / "tmp").glob("*.npy"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_detect_people_killed_mid_run_then_rerun_equals_an_uninterrupted_run(
    tmp_path: Path, sample_paths: list[Path]
) -> None:
    from emo8.label.people import DetectConfig, detect_people

    killed = _ingested(tmp_path / "killed", sample_paths, 24)
    straight = _ingested(tmp_path / "straight", sample_paths, 24)

    def committed_rows() -> int:
        with sqlite3.connect(killed.root / "catalog.sqlite", timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM people_detections").fetchone()[0])

    at_kill = _kill_when(
        [DETECT_RUN, str(killed.root), json.dumps(DETECT_SETTINGS)],
        committed_rows,
        4,
        tmp_path / "killed.log",
    )
    assert 4 <= at_kill < 24 and at_kill % 2 == 0  # whole batches of 2, nothing half-written
    rerun = subprocess.run(
        [sys.executable, "-c", DETECT_RUN, str(killed.root), json.dumps(DETECT_SETTINGS)],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr
    processed, already = map(int, rerun.stdout.split())
    assert processed == 24 - at_kill and already == at_kill  # only what the killed run had not committed
    assert detect_people(straight, DetectConfig(**DETECT_SETTINGS)).processed == 24  # the uninterrupted run

    def boxes(ws: Workspace) -> dict[str, object]:
        items = ws.items(["source_path", "person_boxes", "people_backend"])
        return {Path(str(r.source_path)).name: (r.person_boxes, r.people_backend) for r in items.itertuples()}

    got, want = boxes(killed), boxes(straight)
    assert got == want and len(got) == 24
    assert any(b for b, _ in got.values())  # HOG found somebody: the comparison is not of empty lists
    assert committed_rows() == 24  # one detection per item, none repeated
