"""Where a workspace stands: items, labels, annotation rounds, splits, releases and reports, in one snapshot.

:func:`workspace_status` reads the catalog and the workspace folders (it writes nothing) and returns a
:class:`WorkspaceStatus`; ``emo8 status`` renders it. Every count says what it counts: the status and source tables
count *all* items, the label, domain and split tables count *valid* items only (the ones a release can ship).
Every number is an integer, so an empty workspace shows zeros, never ``nan``.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emo8.core.catalog import SPLITS
from emo8.core.workspace import Workspace


@dataclass
class RoundStatus:
    """One annotation round: what was selected, sent to annotators, answered and settled."""

    name: str
    selected: int = 0
    tasks: int = 0
    gold: int = 0
    annotated: int = 0
    votes: int = 0
    settled: int = 0
    unsettled: dict[str, int] = field(default_factory=dict)
    source: str = "selected only"


@dataclass
class ReleaseStatus:
    """One local release (from its manifest)."""

    version: str
    images: int
    splits: dict[str, int]
    label_sources: dict[str, int]
    date: str
    path: str


@dataclass
class WorkspaceStatus:
    """A snapshot of a workspace (see the module docstring for what each count covers)."""

    root: str
    items: int = 0
    status: dict[str, int] = field(default_factory=dict)
    reason: dict[str, int] = field(default_factory=dict)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    valid: int = 0
    domain: dict[str, int] = field(default_factory=dict)
    weak_label: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    rounds: list[RoundStatus] = field(default_factory=list)
    releases: list[ReleaseStatus] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def _tables(db: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _counts(db: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> dict[str, int]:
    return {("(none)" if k is None else str(k)): int(n) for k, n in db.execute(sql, params).fetchall()}


def _label_counts(db: sqlite3.Connection, columns: set[str]) -> dict[str, int]:
    """Valid items by the best label they have: settled annotation, unsettled annotation, imported, weak, none."""
    settled = "COALESCE(settled, 0) = 1 AND label IS NOT NULL" if {"settled", "label"} <= columns else "0"
    unsettled = (
        "settled = 0 AND (COALESCE(num_votes, 0) > 0 OR unsettled_reason IS NOT NULL OR label IS NOT NULL)"
        if {"settled", "num_votes", "unsettled_reason", "label"} <= columns
        else "0"
    )
    imported = "imported_label IS NOT NULL" if "imported_label" in columns else "0"
    suggested = "suggested_label IS NOT NULL" if "suggested_label" in columns else "0"
    row = db.execute(
        f"SELECT COUNT(*), "
        f"SUM(CASE WHEN {settled} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN NOT ({settled}) AND {unsettled} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN NOT ({settled}) AND NOT ({unsettled}) AND {imported} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN NOT ({settled}) AND NOT ({unsettled}) AND NOT ({imported}) AND weak_label IS NOT NULL "
        f"THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {suggested} THEN 1 ELSE 0 END) "
        "FROM items WHERE status = 'valid'"
    ).fetchone()
    total, done, open_, imp, weak, sugg = (int(v or 0) for v in row)
    return {
        "settled annotation": done,
        "unsettled annotation": open_,
        "imported label": imp,
        "weak label only": weak,
        "no label": total - done - open_ - imp - weak,
        "with a suggestion": sugg,
    }


def _rounds(db: sqlite3.Connection, tables: set[str], columns: set[str]) -> list[RoundStatus]:
    rounds: dict[str, RoundStatus] = {}
    for name, n in db.execute("SELECT round, COUNT(*) FROM selections GROUP BY round ORDER BY round"):
        rounds[str(name)] = RoundStatus(str(name), selected=int(n))
    if "annotation_rounds" in tables:
        for name, server, pulled_from in db.execute(
            "SELECT round, server_url, pulled_from FROM annotation_rounds ORDER BY round"
        ):
            status = rounds.setdefault(str(name), RoundStatus(str(name)))
            text = str(pulled_from or "")
            status.source = (
                f"export file {text[5:]}" if text.startswith("file:") else f"Label Studio {server or text}"
            )
    if "annotation_tasks" in tables:
        for name, tasks, gold in db.execute(
            "SELECT round, SUM(CASE WHEN is_gold = 1 THEN 0 ELSE 1 END), SUM(CASE WHEN is_gold = 1 THEN 1 ELSE 0 "
            "END) FROM annotation_tasks GROUP BY round"
        ):
            status = rounds.setdefault(str(name), RoundStatus(str(name)))
            status.tasks, status.gold = int(tasks or 0), int(gold or 0)
    if "annotations" in tables:
        for name, items, votes in db.execute(
            "SELECT round, COUNT(DISTINCT item_id), COUNT(*) FROM annotations WHERE deleted_at IS NULL "
            "AND was_cancelled = 0 GROUP BY round"
        ):
            status = rounds.setdefault(str(name), RoundStatus(str(name)))
            status.annotated, status.votes = int(items), int(votes)
        if {"settled", "unsettled_reason"} <= columns:
            for name, settled, reason, n in db.execute(
                "SELECT a.round, i.settled, i.unsettled_reason, COUNT(*) FROM "
                "(SELECT DISTINCT round, item_id FROM annotations WHERE deleted_at IS NULL) a "
                "JOIN items i ON i.item_id = a.item_id WHERE i.settled IS NOT NULL "
                "GROUP BY a.round, i.settled, i.unsettled_reason"
            ):
                status = rounds[str(name)]
                if int(settled) == 1:
                    status.settled += int(n)
                else:
                    key = str(reason) if reason is not None else "unsettled"
                    status.unsettled[key] = status.unsettled.get(key, 0) + int(n)
    return [rounds[k] for k in sorted(rounds)]


def _releases(ws: Workspace) -> list[ReleaseStatus]:
    from emo8.release.publish import version_key

    found = []
    for manifest_path in ws.releases_dir.glob("*/manifest.json"):
        try:
            key = version_key(manifest_path.parent.name)
            manifest = json.loads(manifest_path.read_text())
        except (ValueError, OSError):
            continue
        entries = manifest.get("items", {})
        raw = {str(k): int(v) for k, v in manifest.get("splits", {}).items()}
        splits = {s: raw[s] for s in SPLITS if s in raw} | {k: v for k, v in raw.items() if k not in SPLITS}
        found.append(
            (
                key,
                ReleaseStatus(
                    version=manifest_path.parent.name,
                    images=len(entries) or sum(splits.values()),
                    splits=splits,
                    label_sources=dict(Counter(str(v.get("label_source")) for v in entries.values())),
                    date=str(manifest.get("date", "")),
                    path=str(manifest_path.parent),
                ),
            )
        )
    return [r for _k, r in sorted(found, key=lambda kr: kr[0])]


def workspace_status(ws: Workspace) -> WorkspaceStatus:
    """Return the :class:`WorkspaceStatus` of ``ws`` (reads only)."""
    db = ws.catalog.connect()
    tables = _tables(db)
    columns = set(ws.catalog.columns())
    status = WorkspaceStatus(root=str(ws.root))
    status.status = _counts(
        db, "SELECT status, COUNT(*) AS n FROM items GROUP BY status ORDER BY n DESC, status"
    )
    status.items = sum(status.status.values())
    status.valid = status.status.get("valid", 0)
    status.reason = _counts(
        db,
        "SELECT reason, COUNT(*) AS n FROM items WHERE status != 'valid' AND reason IS NOT NULL "
        "GROUP BY reason ORDER BY n DESC, reason",
    )
    for source, n, valid in db.execute(
        "SELECT source, COUNT(*) AS n, SUM(CASE WHEN status = 'valid' THEN 1 ELSE 0 END) FROM items "
        "GROUP BY source ORDER BY n DESC, source"
    ):
        status.sources[str(source)] = {"items": int(n), "valid": int(valid or 0)}
    status.domain = _counts(
        db,
        "SELECT domain, COUNT(*) AS n FROM items WHERE status = 'valid' GROUP BY domain ORDER BY n DESC, domain",
    )
    status.weak_label = _counts(
        db,
        "SELECT weak_label, COUNT(*) AS n FROM items WHERE status = 'valid' AND weak_label IS NOT NULL "
        "GROUP BY weak_label ORDER BY n DESC, weak_label",
    )
    status.labels = _label_counts(db, columns) if status.valid else {}
    if "split" in columns and status.valid:
        by_split = _counts(db, "SELECT split, COUNT(*) FROM items WHERE status = 'valid' GROUP BY split")
        status.splits = {s: by_split.get(s, 0) for s in SPLITS}
        status.splits["unassigned"] = status.valid - sum(status.splits.values())
    status.rounds = _rounds(db, tables, columns)
    status.releases = _releases(ws)
    if ws.reports_dir.is_dir():
        status.reports = sorted(
            str(p) for p in ws.reports_dir.iterdir() if p.is_file() and p.suffix in (".html", ".json")
        )
    return status


def render_lines(status: WorkspaceStatus) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(heading, [(name, value), ...]), ...]``: the status as titled two-column tables, ready to print."""
    share = lambda n: f"{n} ({n / status.items:.0%})" if status.items else str(n)  # noqa: E731
    sections: list[tuple[str, list[tuple[str, str]]]] = [
        (
            f"items by status (all {status.items} items)",
            [(k, share(v)) for k, v in status.status.items()]
            or [("none", "add images with `emo8 ingest folder|urls|openverse|hf`")],
        ),
    ]
    if status.reason:
        sections.append(("why items are not valid", [(k, str(v)) for k, v in status.reason.items()]))
    if status.sources:
        sections.append(
            (
                "items by source (all / valid)",
                [(k, f"{v['items']} / {v['valid']}") for k, v in status.sources.items()],
            )
        )
    if status.valid:
        sections.append(
            (f"labels (valid items: {status.valid})", [(k, str(v)) for k, v in status.labels.items()])
        )
        sections.append(("domains (valid items)", [(k, str(v)) for k, v in status.domain.items()]))
        if status.weak_label:
            sections.append(
                ("weak labels (valid items)", [(k, str(v)) for k, v in status.weak_label.items()])
            )
        if status.splits:
            sections.append(("splits (valid items)", [(k, str(v)) for k, v in status.splits.items()]))
    sections.append(
        (
            "annotation rounds",
            [
                (
                    r.name,
                    f"{r.selected} selected, {r.tasks} tasks (+{r.gold} gold), {r.annotated} answered "
                    f"({r.votes} votes), {r.settled} settled"
                    + (
                        ", unsettled: " + ", ".join(f"{k} {v}" for k, v in sorted(r.unsettled.items()))
                        if r.unsettled
                        else ""
                    )
                    + f"; {r.source}",
                )
                for r in status.rounds
            ]
            or [("none", "run `emo8 select` to start one")],
        )
    )
    sections.append(
        (
            "releases",
            [
                (
                    r.version,
                    f"{r.images} images ("
                    + ", ".join(f"{k} {v}" for k, v in r.splits.items())
                    + "; labels: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(r.label_sources.items()))
                    + f") {r.date}",
                )
                for r in status.releases
            ]
            or [("none", "run `emo8 release --version X.Y.Z`")],
        )
    )
    if status.reports:
        sections.append(("reports", [(Path(p).name, p) for p in status.reports]))
    return sections
