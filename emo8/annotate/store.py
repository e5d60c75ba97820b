"""The annotation stage's tables in the workspace catalog (documented in docs/catalog.md).

- ``annotation_rounds``: one row per round: the Label Studio project it lives in and the push settings.
- ``annotation_tasks``: one row per (round, item): the task id on the server and whether it is a gold item.
- ``annotations``: every annotation exactly as pulled or imported, one row per Label Studio annotation, keyed by
  ``(round, annotation_id)``. Re-pulling updates rows in place; an annotation that disappeared from the server
  keeps its row with ``deleted_at`` set.

All writes of one pull or import happen in one transaction (:meth:`AnnotationStore.replace_round`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import pandas as pd

from emo8.core.catalog import Catalog, utc_now

_SCHEMA = """
CREATE TABLE IF NOT EXISTS annotation_rounds (
    round         TEXT PRIMARY KEY,
    server_url    TEXT,
    project_id    INTEGER,
    overlap       INTEGER,
    gold_rate     REAL,
    image_urls    TEXT,
    created_at    TEXT NOT NULL,
    pushed_at     TEXT,
    pulled_at     TEXT,
    pulled_from   TEXT
);
CREATE TABLE IF NOT EXISTS annotation_tasks (
    round         TEXT NOT NULL,
    item_id       TEXT NOT NULL,
    task_id       INTEGER,
    is_gold       INTEGER NOT NULL DEFAULT 0,
    gold_label    TEXT,
    pushed_at     TEXT,
    PRIMARY KEY (round, item_id)
);
CREATE INDEX IF NOT EXISTS annotation_tasks_task ON annotation_tasks(round, task_id);
CREATE TABLE IF NOT EXISTS annotations (
    round          TEXT NOT NULL,
    annotation_id  INTEGER NOT NULL,
    task_id        INTEGER NOT NULL,
    item_id        TEXT NOT NULL,
    annotator      TEXT NOT NULL,
    annotator_id   INTEGER,
    choice         TEXT,
    flags          TEXT NOT NULL DEFAULT '[]',
    style          TEXT,
    lead_time      REAL,
    was_cancelled  INTEGER NOT NULL DEFAULT 0,
    ground_truth   INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT,
    updated_at     TEXT,
    result         TEXT NOT NULL,
    pulled_at      TEXT NOT NULL,
    deleted_at     TEXT,
    PRIMARY KEY (round, annotation_id)
);
CREATE INDEX IF NOT EXISTS annotations_item ON annotations(item_id);
"""


@dataclass(frozen=True)
class AnnotationRecord:
    """One Label Studio annotation reduced to what emo8 stores (see the ``annotations`` table)."""

    annotation_id: int
    task_id: int
    item_id: str
    annotator: str
    annotator_id: int | None
    choice: str | None
    flags: tuple[str, ...]
    style: str | None
    lead_time: float | None
    was_cancelled: bool
    ground_truth: bool
    created_at: str | None
    updated_at: str | None
    result: str

    def row(self) -> dict[str, Any]:
        values = asdict(self)
        values["flags"] = json.dumps(list(self.flags))
        values["was_cancelled"] = int(self.was_cancelled)
        values["ground_truth"] = int(self.ground_truth)
        return values


_RECORD_FIELDS = [f.name for f in fields(AnnotationRecord)]
_COMPARED = [f for f in _RECORD_FIELDS if f not in ("annotation_id",)]


@dataclass(frozen=True)
class ReplaceSummary:
    """What one pull or import changed: annotations ``new``, ``updated`` (edited on the server), ``deleted``
    (gone from the server), ``unchanged``, and ``restored`` (seen again after being marked deleted)."""

    new: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    restored: int = 0


class AnnotationStore:
    """The annotation tables of ``catalog`` (created on first use)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        with catalog.transaction() as db:
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    db.execute(statement)

    # -- rounds -------------------------------------------------------------------------------------------------------

    def round(self, name: str) -> dict[str, Any] | None:
        """Return the ``annotation_rounds`` row of ``name``, or None."""
        row = (
            self.catalog.connect()
            .execute("SELECT * FROM annotation_rounds WHERE round = ?", (name,))
            .fetchone()
        )
        return dict(row) if row is not None else None

    def rounds(self) -> list[dict[str, Any]]:
        """Return every round, oldest first."""
        rows = self.catalog.connect().execute("SELECT * FROM annotation_rounds ORDER BY created_at, round")
        return [dict(r) for r in rows]

    def save_round(self, name: str, **values: Any) -> None:
        """Create round ``name`` if needed and set ``values`` (columns of ``annotation_rounds``)."""
        with self.catalog.transaction() as db:
            self._save_round(db, name, values)

    @staticmethod
    def _save_round(db: sqlite3.Connection, name: str, values: Mapping[str, Any]) -> None:
        db.execute(
            "INSERT OR IGNORE INTO annotation_rounds(round, created_at) VALUES (?, ?)", (name, utc_now())
        )
        if values:
            sets = ", ".join(f"{k} = ?" for k in values)
            db.execute(f"UPDATE annotation_rounds SET {sets} WHERE round = ?", [*values.values(), name])

    # -- tasks --------------------------------------------------------------------------------------------------------

    def tasks(self, name: str) -> pd.DataFrame:
        """Return the ``annotation_tasks`` rows of round ``name``."""
        return pd.read_sql_query(
            "SELECT * FROM annotation_tasks WHERE round = ? ORDER BY rowid",
            self.catalog.connect(),
            params=[name],
        )

    def plan_tasks(self, name: str, rows: Iterable[tuple[str, bool, str | None]]) -> int:
        """Record ``(item_id, is_gold, gold_label)`` as tasks of round ``name`` (no task id yet); return how many were
        new. Existing rows are kept, so a gold item stays gold across re-pushes."""
        with self.catalog.transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO annotation_tasks(round, item_id, is_gold, gold_label) VALUES (?, ?, ?, ?)",
                [(name, item_id, int(gold), label) for item_id, gold, label in rows],
            )
            return db.total_changes - before

    def set_task_ids(self, name: str, task_ids: Mapping[str, int]) -> None:
        """Record the server's task id of each item of round ``name``."""
        now = utc_now()
        with self.catalog.transaction() as db:
            db.executemany(
                "UPDATE annotation_tasks SET task_id = ?, pushed_at = COALESCE(pushed_at, ?) "
                "WHERE round = ? AND item_id = ?",
                [(int(task_id), now, name, item_id) for item_id, task_id in task_ids.items()],
            )

    def gold(self) -> dict[str, str]:
        """Return ``{item_id: gold label}`` over every round (a later round's label wins)."""
        rows = self.catalog.connect().execute(
            "SELECT t.item_id, t.gold_label FROM annotation_tasks t JOIN annotation_rounds r USING (round) "
            "WHERE t.is_gold = 1 AND t.gold_label IS NOT NULL ORDER BY r.created_at, t.rowid"
        )
        return {row["item_id"]: row["gold_label"] for row in rows}

    # -- annotations -------------------------------------------------------------------------------------------------

    def annotations(self, rounds: Sequence[str] | None = None, include_deleted: bool = False) -> pd.DataFrame:
        """Return stored annotations (of ``rounds`` if given), without deleted ones unless ``include_deleted``.

        ``flags`` is decoded to a list; ``was_cancelled`` and ``ground_truth`` are booleans.
        """
        clauses: list[str] = []
        params: list[Any] = []
        if rounds:
            clauses.append(f"round IN ({', '.join('?' * len(rounds))})")
            params.extend(rounds)
        if not include_deleted:
            clauses.append("deleted_at IS NULL")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        frame = pd.read_sql_query(
            f"SELECT * FROM annotations{where} ORDER BY round, annotation_id",
            self.catalog.connect(),
            params=params,
        )
        frame["flags"] = [json.loads(v) for v in frame["flags"]]
        for column in ("was_cancelled", "ground_truth"):
            frame[column] = frame[column].astype(bool)
        return frame

    def replace_round(
        self,
        name: str,
        records: Sequence[AnnotationRecord],
        task_ids: Mapping[str, int] | None = None,
        round_values: Mapping[str, Any] | None = None,
    ) -> ReplaceSummary:
        """Make the stored annotations of round ``name`` equal to ``records`` (a full snapshot), in one transaction.

        New annotations are inserted, changed ones updated, ones absent from the snapshot marked deleted. The task ids
        in ``task_ids`` (``item_id -> task id``) and ``round_values`` are written in the same transaction.
        """
        now = utc_now()
        new = updated = unchanged = restored = 0
        with self.catalog.transaction() as db:
            self._save_round(db, name, round_values or {})
            if task_ids:
                db.executemany(
                    "INSERT INTO annotation_tasks(round, item_id, task_id, pushed_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(round, item_id) DO UPDATE SET task_id = excluded.task_id",
                    [(name, item_id, int(tid), now) for item_id, tid in task_ids.items()],
                )
            existing = {
                int(row["annotation_id"]): row
                for row in db.execute("SELECT * FROM annotations WHERE round = ?", (name,))
            }
            seen: set[int] = set()
            for record in records:
                seen.add(record.annotation_id)
                values = record.row()
                old = existing.get(record.annotation_id)
                if old is None:
                    cols = ["round", *values, "pulled_at"]
                    db.execute(
                        f"INSERT INTO annotations({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        [name, *values.values(), now],
                    )
                    new += 1
                    continue
                changed = any(old[c] != values[c] for c in _COMPARED)
                if old["deleted_at"] is not None:
                    restored += 1
                elif changed:
                    updated += 1
                else:
                    unchanged += 1
                    continue
                sets = ", ".join(f"{c} = ?" for c in _COMPARED)
                db.execute(
                    f"UPDATE annotations SET {sets}, pulled_at = ?, deleted_at = NULL "
                    "WHERE round = ? AND annotation_id = ?",
                    [*(values[c] for c in _COMPARED), now, name, record.annotation_id],
                )
            gone = [aid for aid, row in existing.items() if aid not in seen and row["deleted_at"] is None]
            db.executemany(
                "UPDATE annotations SET deleted_at = ? WHERE round = ? AND annotation_id = ?",
                [(now, name, aid) for aid in gone],
            )
        return ReplaceSummary(
            new=new, updated=updated, deleted=len(gone), unchanged=unchanged, restored=restored
        )
