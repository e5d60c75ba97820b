"""The workspace catalog: one SQLite database (WAL mode) holding every item and every origin it came from.

An *item* is one image: a distinct content (sha256 of its bytes) once fetched, or a not-yet-fetched / failed
origin before that. An *origin* is one place the item was found (a URL, a local file, a row of a Hugging Face
dataset). Two origins that turn out to carry the same bytes are merged onto one item, so the catalog never holds a
second copy. Every write is one transaction: a process killed at any moment leaves the catalog consistent, and a
re-run picks up the items that are still ``pending``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from emo8.core.errors import WorkspaceError

T = TypeVar("T")

#: Item statuses. ``pending`` items are picked up by the next run of the stage that registered them.
STATUSES = ("pending", "valid", "invalid", "failed", "skipped", "duplicate", "contaminated", "removed")

#: Metadata columns an origin may carry; the item takes them from its first origin that has them.
METADATA_COLUMNS = ("license", "author", "title", "keyword", "domain", "weak_label")

#: Signals the validation stage computes from one decode of the image.
SIGNAL_COLUMNS = (
    "width",
    "height",
    "format",
    "brightness",
    "colorfulness",
    "phash",
    "dhash",
    "pixel_hash",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id      TEXT PRIMARY KEY,
    source       TEXT NOT NULL,
    url          TEXT,
    source_path  TEXT,
    status       TEXT NOT NULL DEFAULT 'pending',
    reason       TEXT,
    error        TEXT,
    http_status  INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    sha256       TEXT UNIQUE,
    width        INTEGER,
    height       INTEGER,
    format       TEXT,
    license      TEXT,
    author       TEXT,
    title        TEXT,
    keyword      TEXT,
    domain       TEXT,
    weak_label   TEXT,
    brightness   REAL,
    colorfulness REAL,
    phash        TEXT,
    dhash        TEXT,
    pixel_hash   TEXT,
    meta         TEXT,
    ingested_at  TEXT,
    updated_at   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_status ON items(status);
CREATE INDEX IF NOT EXISTS items_source ON items(source, status);
CREATE TABLE IF NOT EXISTS origins (
    origin_key   TEXT PRIMARY KEY,
    item_id      TEXT NOT NULL REFERENCES items(item_id),
    source       TEXT NOT NULL,
    url          TEXT,
    source_path  TEXT,
    license      TEXT,
    author       TEXT,
    title        TEXT,
    keyword      TEXT,
    domain       TEXT,
    weak_label   TEXT,
    meta         TEXT,
    added_at     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS origins_item ON origins(item_id);
CREATE TABLE IF NOT EXISTS selections (
    round        TEXT NOT NULL,
    item_id      TEXT NOT NULL REFERENCES items(item_id),
    rank         INTEGER NOT NULL,
    strategy     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (round, item_id)
);
"""

SCHEMA_VERSION = 1

#: Split names of the ``split`` column, in the order of :attr:`emo8.release.split.SplitConfig.ratios` (Hugging Face's
#: names; ImageFolder exports use ``train``/``val``/``test``).
SPLITS = ("train", "validation", "test")

#: Every documented column of the ``items`` table (docs/catalog.md), in the order :meth:`Workspace.items` returns
#: them, with its kind: ``text``, ``integer``, ``real`` or ``list`` (a JSON list stored as text, returned parsed).
#: Later stages add their columns when they first run; the Python API returns all of them whatever has run.
ITEM_COLUMNS: dict[str, str] = {
    "item_id": "text", "source": "text", "url": "text", "source_path": "text", "status": "text", "reason": "text",
    "error": "text", "http_status": "integer", "attempts": "integer", "sha256": "text", "width": "integer",
    "height": "integer", "format": "text", "license": "text", "author": "text", "title": "text", "keyword": "text",
    "domain": "text", "weak_label": "text", "brightness": "real", "colorfulness": "real", "phash": "text",
    "dhash": "text", "pixel_hash": "text", "meta": "text", "ingested_at": "text", "updated_at": "text",
    # suggest, labels import, detect-people
    "suggested_label": "text", "suggestion_probs": "list", "suggestion_entropy": "real",
    "suggestion_version": "text", "imported_label": "text", "person_boxes": "list", "face_boxes": "list",
    "num_faces": "integer", "people_backend": "text",
    # annotate aggregate
    "label": "text", "label_distribution": "list", "num_votes": "integer", "agreement": "real",
    "settled": "integer", "unsettled_reason": "text", "label_method": "text",
    # split, audit, take-down
    "split": "text", "split_group": "text", "sharpness": "real", "takedown_id": "text",
    # dedup
    "dup_of": "text", "dup_tier": "text", "dup_score": "real", "dup_inliers": "integer", "dup_via": "text",
    "contaminated_by": "text",
    "contaminated_tier": "text", "contaminated_score": "real",
}  # fmt: skip

_META_NAMES = ", ".join(METADATA_COLUMNS)
_META_MARKS = ", ".join("?" * len(METADATA_COLUMNS))
_INSERT_ITEM = (
    f"INSERT OR IGNORE INTO items(item_id, source, url, source_path, status, reason, error, {_META_NAMES}, meta, "
    f"updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, {_META_MARKS}, ?, ?)"
)
_INSERT_ORIGIN = (
    f"INSERT INTO origins(origin_key, item_id, source, url, source_path, {_META_NAMES}, meta, added_at) "
    f"VALUES (?, ?, ?, ?, ?, {_META_MARKS}, ?, ?)"
)


def utc_now() -> str:
    """Return the current UTC time as an ISO-8601 string with seconds precision."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def item_id_for(origin_key: str) -> str:
    """Return the stable item id (16 hex chars) of the item first registered from ``origin_key``."""
    return hashlib.sha256(origin_key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class OriginRecord:
    """One place an image was found, as a source adapter yields it.

    ``origin_key`` identifies the origin across runs: the URL itself for web sources (so the same URL from two
    sources is recognised), ``file:<absolute path>`` for local files, ``hf:<dataset>/<split>/<row>`` for datasets.
    Exactly one of ``url`` and ``source_path`` locates the bytes.
    """

    origin_key: str
    source: str
    url: str | None = None
    source_path: str | None = None
    license: str | None = None
    author: str | None = None
    title: str | None = None
    keyword: str | None = None
    domain: str | None = None
    weak_label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: Set by sources that already know the row is unusable (e.g. a malformed URL-list row).
    status: str = "pending"
    reason: str | None = None
    error: str | None = None


@dataclass
class ItemOutcome:
    """The result of fetching and validating one pending item, applied by :meth:`Catalog.apply`."""

    item_id: str
    status: str
    reason: str | None = None
    error: str | None = None
    http_status: int | None = None
    attempts: int = 0
    sha256: str | None = None
    signals: Mapping[str, Any] = field(default_factory=dict)


def _json_or_none(value: Mapping[str, Any]) -> str | None:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False) if value else None


def _clean_text(value: Any) -> Any:
    """Replace lone surrogates (from undecodable input) so SQLite's UTF-8 encoding never fails."""
    if isinstance(value, str) and not value.isascii():  # ASCII text holds no surrogate
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


class Catalog:
    """Thin, transactional access to the catalog database at ``path`` (created when missing).

    One connection per thread; every public write method is a single transaction.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self.connect().executescript(
            f"BEGIN IMMEDIATE; {_SCHEMA} INSERT OR IGNORE INTO meta(key, value) "
            f"VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;"
        )

    # -- connections and transactions -------------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        """Return this thread's connection (autocommit mode; use :meth:`transaction` for writes)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=60.0, check_same_thread=True)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one ``BEGIN IMMEDIATE`` transaction: all of it is committed, or none of it."""
        db = self.connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                raise WorkspaceError(
                    f"disk full while writing the catalog {self.path}; free space and re-run (nothing was lost)"
                ) from exc
            raise

    # -- schema extension for later stages ---------------------------------------------------------------

    def columns(self, table: str = "items") -> list[str]:
        """Return the column names of ``table``."""
        return [row["name"] for row in self.connect().execute(f"PRAGMA table_info({table})")]

    def ensure_columns(self, columns: Mapping[str, str], table: str = "items") -> None:
        """Add each missing column ``name -> SQL type`` to ``table`` (idempotent)."""
        existing = set(self.columns(table))
        missing = {name: kind for name, kind in columns.items() if name not in existing}
        if not missing:
            return
        with self.transaction() as db:
            existing = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
            for name, kind in missing.items():
                if name not in existing:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    # -- registering origins -------------------------------------------------------------------------------

    def register(self, records: Iterable[OriginRecord]) -> tuple[int, int]:
        """Insert origins not seen before, each with a new ``pending`` item, in one transaction.

        Returns ``(new, known)``: how many origins were new and how many were already in the catalog (their
        items, whatever their status, are left alone; this is what makes re-ingesting idempotent).
        """
        now = utc_now()
        new = known = 0
        with self.transaction() as db:
            # per chunk: one look-up of the keys already registered, one executemany per table
            for chunk in batched(records, 500):
                keys = [rec.origin_key for rec in chunk]
                marks = ", ".join("?" * len(keys))
                rows = db.execute(f"SELECT origin_key FROM origins WHERE origin_key IN ({marks})", keys)
                seen = {row[0] for row in rows}
                items: list[list[Any]] = []
                origins: list[list[Any]] = []
                for rec in chunk:
                    if rec.origin_key in seen:  # registered before, or earlier in this list
                        known += 1
                        continue
                    seen.add(rec.origin_key)
                    item_id = item_id_for(rec.origin_key)
                    values = [_clean_text(getattr(rec, c)) for c in METADATA_COLUMNS]
                    meta = _clean_text(_json_or_none(rec.meta))
                    head = [item_id, rec.source, rec.url, rec.source_path, rec.status, rec.reason, rec.error]
                    items.append([*head, *values, meta, now])
                    key = _clean_text(rec.origin_key)
                    origins.append([key, item_id, rec.source, rec.url, rec.source_path, *values, meta, now])
                db.executemany(_INSERT_ITEM, items)
                db.executemany(_INSERT_ORIGIN, origins)
                new += len(origins)
        return new, known

    def pending(self, source: str | None = None, statuses: Sequence[str] = ("pending",)) -> pd.DataFrame:
        """Return ``item_id, source, url, source_path, meta`` of the items in ``statuses`` (optionally one source)."""
        marks = ", ".join("?" * len(statuses))
        sql = f"SELECT item_id, source, url, source_path, meta FROM items WHERE status IN ({marks})"
        params: list[Any] = list(statuses)
        if source is not None:
            sql += " AND source = ?"
            params.append(source)
        return pd.read_sql_query(sql + " ORDER BY rowid", self.connect(), params=params)

    def reset(self, item_ids: Iterable[str]) -> int:
        """Put the given items back to ``pending`` (e.g. to retry failed downloads). Returns how many changed."""
        ids = list(item_ids)
        with self.transaction() as db:
            for chunk in batched(ids, 500):
                db.execute(
                    f"UPDATE items SET status = 'pending', reason = NULL, error = NULL, updated_at = ? "
                    f"WHERE item_id IN ({', '.join('?' * len(chunk))})",
                    [utc_now(), *chunk],
                )
        return len(ids)

    # -- applying outcomes -----------------------------------------------------------------------------------

    def apply(self, outcomes: Iterable[ItemOutcome]) -> dict[str, str]:
        """Write fetch/validation outcomes in one transaction; return ``{item_id: merged_into}`` for merges.

        When an outcome's ``sha256`` is already held by another item, this item's origins move to that item
        (filling its empty metadata) and this item row is deleted: the bytes are stored once, both origins are
        recorded.
        """
        merged: dict[str, str] = {}
        now = utc_now()
        outcomes = list(outcomes)
        # two queries per batch instead of two per outcome: which items still exist, who holds each sha256
        existing: set[str] = set()
        # sha256 -> the items holding it, kept current while the batch is applied
        holders: dict[str, list[str]] = {}
        sha_of: dict[str, str] = {}
        gone: set[str] = set()  # merged away in this batch
        # (signal columns, ingested) -> rows: one executemany each
        updates: dict[tuple[tuple[str, ...], bool], list[list[Any]]] = {}
        with self.transaction() as db:
            plain = db.cursor()
            plain.row_factory = None  # plain tuples: no Row object per row looked up
            for chunk in batched([o.item_id for o in outcomes], 500):
                marks = ", ".join("?" * len(chunk))
                rows = plain.execute(f"SELECT item_id FROM items WHERE item_id IN ({marks})", chunk)
                existing.update(itertools.chain.from_iterable(rows))
            for chunk in batched(sorted({o.sha256 for o in outcomes if o.sha256 is not None}), 500):
                marks = ", ".join("?" * len(chunk))
                rows = plain.execute(f"SELECT sha256, item_id FROM items WHERE sha256 IN ({marks})", chunk)
                for sha256, item_id in rows:
                    holders.setdefault(sha256, []).append(item_id)
                    sha_of[item_id] = sha256
            for out in outcomes:
                item_id, sha256 = out.item_id, out.sha256
                if item_id not in existing:  # already merged away by an earlier run
                    continue
                if sha256 is not None and (held := holders.get(sha256)):
                    other = next((h for h in held if h != item_id and h not in gone), None)
                    if other is not None:
                        self._merge_into(db, item_id, other, now)
                        merged[item_id] = other
                        existing.discard(item_id)
                        gone.add(item_id)
                        continue
                old = sha_of.pop(item_id, None)
                if old is not None:
                    holders[old] = [h for h in holders[old] if h != item_id]
                if sha256 is not None:
                    holders.setdefault(sha256, []).append(item_id)
                    sha_of[item_id] = sha256
                # one row per outcome for the executemany of its set of columns (see _update_sql)
                signals = out.signals
                names = tuple(k for k in signals if k in _SIGNALS)
                ingested = out.status in ("valid", "invalid")
                row = [
                    out.status,
                    out.reason,
                    _clean_text(out.error),
                    out.http_status,
                    out.attempts,
                    sha256,
                    now,
                ]
                row.extend([signals[k] for k in names])
                if ingested:
                    row.append(now)
                row.append(item_id)
                updates.setdefault((names, ingested), []).append(row)
            for (names, ingested), values in updates.items():
                db.executemany(_update_sql(names, ingested), values)
        return merged

    @staticmethod
    def _merge_into(db: sqlite3.Connection, item_id: str, target: str, now: str) -> None:
        db.execute("UPDATE origins SET item_id = ? WHERE item_id = ?", (target, item_id))
        for column in METADATA_COLUMNS:
            db.execute(
                f"UPDATE items SET {column} = (SELECT {column} FROM items WHERE item_id = ?) "
                f"WHERE item_id = ? AND {column} IS NULL",
                (item_id, target),
            )
        db.execute("UPDATE items SET updated_at = ? WHERE item_id = ?", (now, target))
        db.execute("DELETE FROM items WHERE item_id = ?", (item_id,))

    def update_items(self, item_ids: Sequence[str], values: Mapping[str, Sequence[Any]]) -> None:
        """Set ``values[column][i]`` on item ``item_ids[i]`` for each column, in one transaction.

        Columns must exist (see :meth:`ensure_columns`); lists and dicts are stored as JSON text.
        """
        columns = list(values)
        for column in columns:
            if len(values[column]) != len(item_ids):
                raise ValueError(
                    f"column {column!r} has {len(values[column])} values for {len(item_ids)} items"
                )
        sql = f"UPDATE items SET {', '.join(f'{c} = ?' for c in columns)}, updated_at = ? WHERE item_id = ?"
        now = utc_now()
        with self.transaction() as db:
            db.executemany(
                sql,
                (
                    [*(_to_sql(values[c][i]) for c in columns), now, item_id]
                    for i, item_id in enumerate(item_ids)
                ),
            )

    # -- annotation rounds -----------------------------------------------------------------------------------

    def save_selection(self, round_name: str, item_ids: Sequence[str], strategy: str) -> int:
        """Add ``item_ids`` (in rank order) to the selection of round ``round_name``; return how many were new.

        Items already selected for the round keep their rank, so re-running a selection never duplicates.
        """
        now = utc_now()
        with self.transaction() as db:
            start = db.execute(
                "SELECT COALESCE(MAX(rank) + 1, 0) FROM selections WHERE round = ?", (round_name,)
            ).fetchone()[0]
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO selections(round, item_id, rank, strategy, created_at) VALUES (?, ?, ?, ?, ?)",
                [(round_name, item_id, start + i, strategy, now) for i, item_id in enumerate(item_ids)],
            )
            return db.total_changes - before

    def selection(self, round_name: str) -> list[str]:
        """Return the item ids selected for ``round_name``, in rank order (empty if there is no such round)."""
        rows = (
            self.connect()
            .execute("SELECT item_id FROM selections WHERE round = ? ORDER BY rank", (round_name,))
            .fetchall()
        )
        return [row["item_id"] for row in rows]

    def rounds(self) -> dict[str, int]:
        """Return ``{round: number of selected items}``."""
        rows = self.connect().execute(
            "SELECT round, COUNT(*) AS n FROM selections GROUP BY round ORDER BY round"
        )
        return {row["round"]: int(row["n"]) for row in rows}

    # -- reading -----------------------------------------------------------------------------------------------

    def items(self, columns: Sequence[str] | None = None, where: str | None = None) -> pd.DataFrame:
        """Return items as a DataFrame (all columns unless ``columns``), optionally filtered by SQL ``where``."""
        cols = ", ".join(columns) if columns else "*"
        sql = f"SELECT {cols} FROM items" + (f" WHERE {where}" if where else "") + " ORDER BY rowid"
        return pd.read_sql_query(sql, self.connect())

    def origins(self, item_id: str | None = None) -> pd.DataFrame:
        """Return all origins, or those of one item."""
        if item_id is None:
            return pd.read_sql_query("SELECT * FROM origins ORDER BY rowid", self.connect())
        return pd.read_sql_query(
            "SELECT * FROM origins WHERE item_id = ? ORDER BY rowid", self.connect(), params=[item_id]
        )

    def counts(self, column: str, where: str | None = None) -> dict[str, int]:
        """Return ``{value: count}`` of items grouped by ``column`` (``None`` values as ``"(none)"``)."""
        sql = f"SELECT {column} AS k, COUNT(*) AS n FROM items" + (f" WHERE {where}" if where else "")
        rows = self.connect().execute(sql + f" GROUP BY {column} ORDER BY n DESC, k").fetchall()
        return {("(none)" if r["k"] is None else str(r["k"])): int(r["n"]) for r in rows}


_SIGNALS = frozenset(SIGNAL_COLUMNS)
_OUTCOME_COLUMNS = ("status", "reason", "error", "http_status", "attempts", "sha256", "updated_at")


@functools.lru_cache(maxsize=64)
def _update_sql(signals: tuple[str, ...], ingested: bool) -> str:
    """The UPDATE of one outcome: its status columns, these signal columns and ``ingested_at`` when ``ingested``."""
    columns = (*_OUTCOME_COLUMNS, *signals, *(("ingested_at",) if ingested else ()))
    return f"UPDATE items SET {', '.join(f'{k} = ?' for k in columns)} WHERE item_id = ?"


def _to_sql(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()  # numpy scalar
    return value


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), read lazily: Python 3.12's ``itertools.batched``."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
