"""`emo8 status` and the Python API's view of the catalog: consistent counts, no `nan`, stable item columns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from releasefixtures import *  # noqa: F403  (the workspace fixtures)
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.core.catalog import ITEM_COLUMNS
from emo8.core.workspace import WorkspaceError
from emo8.pipeline.status import workspace_status
from emo8.release.audit import AuditConfig, audit
from emo8.release.publish import ReleaseConfig, release

NAN = re.compile(r"\bnan(x)?\b", re.IGNORECASE)
runner = CliRunner()
DOCS = Path(__file__).resolve().parents[1] / "docs" / "catalog.md"


def documented_item_columns() -> list[str]:
    """Column names of the item tables of docs/catalog.md, in order: the `items` table, the tables of the sections
    on columns later stages add, and the table introduced as "Item columns" (not the annotation tables);
    ``width``/``height`` style rows name two columns."""
    names: list[str] = []
    heading = intro = ""
    for line in DOCS.read_text().splitlines():
        if line.startswith("## "):
            heading, intro = line, ""
        elif line.startswith("| `"):
            item_table = (
                heading == "## `items`"
                or intro.startswith("**Item columns")
                or ("Columns" in heading and not intro.startswith("**`"))
            )
            if item_table:
                names += re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])
        elif line.strip() and not line.startswith("|"):
            intro = line
    return list(dict.fromkeys(names))


def test_empty_workspace_status_has_zeros_and_no_nan(ws: Workspace) -> None:
    snapshot = workspace_status(ws)
    assert snapshot.items == 0 and snapshot.valid == 0 and snapshot.rounds == [] and snapshot.releases == []
    text = runner.invoke(app, ["status", "-w", str(ws.root)])
    as_json = runner.invoke(app, ["status", "-w", str(ws.root), "--json"])
    assert text.exit_code == 0 and as_json.exit_code == 0, text.output + as_json.output
    assert "0 items, 0 valid" in text.output and "releases" in text.output
    assert json.loads(as_json.output)["items"] == 0
    for output in (text.output, as_json.output):
        assert not NAN.search(output), output


def test_empty_workspace_reports_have_no_nan(ws: Workspace) -> None:
    result = audit(ws, AuditConfig(progress=False))
    for path in (result.html, result.json):
        found = NAN.search(path.read_text())
        assert found is None, (path.name, path.read_text()[max(0, found.start() - 80) : found.end() + 20])
    assert json.loads(result.json.read_text())["sections"]["distributions"]["data"]["imbalance_ratio"] is None


def test_status_counts_are_consistent_after_the_stages(labelled_ws: Workspace) -> None:
    ids = list(labelled_ws.items(["item_id"], where="status = 'valid'")["item_id"])
    labelled_ws.catalog.update_items(ids[:2], {"status": ["duplicate", "duplicate"]})
    labelled_ws.catalog.save_selection("r1", ids[2:7], strategy="random")
    done = release(labelled_ws, ReleaseConfig("1.0.0", progress=False))
    snapshot = workspace_status(labelled_ws)
    assert snapshot.items == sum(snapshot.status.values()) == len(labelled_ws.items(["item_id"]))
    assert snapshot.valid == snapshot.status["valid"] == len(ids) - 2
    assert sum(v["items"] for v in snapshot.sources.values()) == snapshot.items
    assert sum(v["valid"] for v in snapshot.sources.values()) == snapshot.valid
    assert sum(snapshot.domain.values()) == snapshot.valid  # valid items only, like the labels and splits
    labels = {k: v for k, v in snapshot.labels.items() if k != "with a suggestion"}
    assert sum(labels.values()) == snapshot.valid
    assert sum(snapshot.splits.values()) == snapshot.valid and set(snapshot.splits) >= {"train", "test"}
    assert [r.name for r in snapshot.rounds] == ["r1"] and snapshot.rounds[0].selected == 5
    assert [(r.version, r.images) for r in snapshot.releases] == [("1.0.0", sum(done.splits.values()))]
    assert list(snapshot.releases[0].splits) == [s for s in ("train", "validation", "test") if done.splits[s]]
    output = runner.invoke(app, ["status", "-w", str(labelled_ws.root)]).output
    for heading in (
        "items by status (all",
        "labels (valid items:",
        "splits (valid items)",
        "annotation rounds",
    ):
        assert heading in output, (heading, output)
    assert "1.0.0" in output and "r1" in output and not NAN.search(output)


def test_items_columns_are_stable_and_documented(ws: Workspace, labelled_ws: Workspace) -> None:
    assert documented_item_columns() == list(ITEM_COLUMNS)
    fresh = ws.items()
    assert list(fresh.columns) == list(ITEM_COLUMNS) and fresh.empty
    # after ingest and the stand-in stages: the same columns in the same order, whatever has run
    assert list(labelled_ws.items().columns) == list(ITEM_COLUMNS)
    only = ws.items(["item_id", "label", "person_boxes"])
    assert list(only.columns) == ["item_id", "label", "person_boxes"]
    with pytest.raises(WorkspaceError, match="unknown item column"):
        ws.items(["item_id", "no_such_column"])


def test_items_parses_json_list_columns(labelled_ws: Workspace) -> None:
    ids = list(labelled_ws.items(["item_id"], where="status = 'valid'")["item_id"])
    labelled_ws.catalog.update_items(ids[:1], {"status": ["duplicate"], "person_boxes": [None]})
    items = labelled_ws.items().set_index("item_id")
    boxes = items["person_boxes"]
    assert boxes[ids[0]] is None  # a duplicate without detection: None, never NaN
    assert all(b is None or isinstance(b, list) for b in boxes)
    assert any(isinstance(b, list) and b and len(b[0]) == 5 for b in boxes)
    distribution = items.loc[ids[1], "label_distribution"]
    assert isinstance(distribution, list) and len(distribution) == 8
    assert items["suggestion_probs"].map(lambda v: v is None).all()  # suggest never ran: None, not missing


def test_quiet_option_on_the_long_stages() -> None:
    for command in ("dedup", "audit", "split", "release", "suggest"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "--quiet" in result.output, (command, result.output)


def test_progress_bars_show_on_a_terminal_and_nest(
    labelled_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from rich.console import Console

    from emo8.core import progress

    screen = io.StringIO()
    monkeypatch.setattr(progress, "_CONSOLE", Console(file=screen, force_terminal=True, width=120))
    # audit's section bar and its sharpness bar run at the same time: one live display, two lines
    audit(labelled_ws, AuditConfig(progress=True))
    shown = screen.getvalue()
    assert "audit" in shown and "sharpness" in shown and "quality" in shown
    screen.seek(0)
    screen.truncate()
    release(labelled_ws, ReleaseConfig("1.0.0", progress=False))
    assert screen.getvalue() == ""  # --quiet: nothing drawn
    release(labelled_ws, ReleaseConfig("1.0.1", progress=True))
    assert "release" in screen.getvalue() and "writing 1.0.1" in screen.getvalue()
