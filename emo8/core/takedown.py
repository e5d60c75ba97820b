"""Take-down: remove a rights-holder's image, and every copy of it, from all later releases.

:func:`take_down` finds the items a request names (by the sha256 of the bytes, by URL - the image URL, an origin's
URL or the page it was published on - or by author), widens the set to every copy the workspace holds (the items'
dedup clusters, the pairs dedup confirmed - geometrically verified crops, pads and other edits included -,
identical bytes or pixels, pHash within the dedup radius, and embedding cosine above the dedup similarity when
embeddings exist), and marks them ``status = removed``, ``reason = takedown``. Nothing is deleted
unless ``purge`` is set, which deletes the stored bytes (and any HTML report that shows a thumbnail of them).

The request is kept in the catalog (tables ``takedowns`` and ``takedown_hashes``) as hashes only: sha256, pixel
hash and pHash of each removed item. :func:`enforce` re-applies every recorded take-down to the current catalog,
so a copy ingested *after* the take-down is removed as well; ingest calls it when it ends, the split and release
stages before they read the catalog. The release CHANGELOG lists removed items by hash with the take-down id.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from emo8.core.catalog import utc_now
from emo8.core.curation import (
    cluster_ids,
    cosine_search,
    dedup_pairs,
    dedup_thresholds,
    frame,
    hamming_search,
    hash_codes,
    present,
    workspace_embeddings,
)
from emo8.core.workspace import Workspace

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS takedowns (
        takedown_id TEXT PRIMARY KEY,
        selector    TEXT NOT NULL,
        reason      TEXT NOT NULL,
        purged      INTEGER NOT NULL DEFAULT 0,
        created_at  TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS takedown_hashes (
        takedown_id TEXT NOT NULL REFERENCES takedowns(takedown_id),
        item_id     TEXT NOT NULL,
        sha256      TEXT,
        pixel_hash  TEXT,
        phash       TEXT,
        PRIMARY KEY (takedown_id, item_id)
    )""",
    "CREATE INDEX IF NOT EXISTS takedown_hashes_sha ON takedown_hashes(sha256)",
)

_COLUMNS = (
    "status",
    "url",
    "author",
    "meta",
    "sha256",
    "pixel_hash",
    "phash",
    "format",
    "dup_of",
    "cluster_id",
)

#: Statuses a take-down leaves alone (nothing to remove: no stored bytes were ever accepted).
_IGNORED = ("pending", "failed", "skipped")


class TakedownError(ValueError):
    """A take-down request that cannot be carried out (no selector, nothing matched...)."""


@dataclass(frozen=True)
class TakedownRequest:
    """What to take down: exactly one of ``sha256``, ``url``, ``author``; ``reason`` is recorded verbatim."""

    reason: str
    sha256: str | None = None
    url: str | None = None
    author: str | None = None
    purge: bool = False

    def selector(self) -> tuple[str, str]:
        """``(kind, value)`` of the one selector given; raise :class:`TakedownError` otherwise."""
        given = [
            (k, v) for k, v in (("sha256", self.sha256), ("url", self.url), ("author", self.author)) if v
        ]
        if len(given) != 1:
            raise TakedownError("give exactly one of --sha256, --url, --author")
        if not self.reason.strip():
            raise TakedownError("a take-down needs a --reason")
        kind, value = given[0]
        if kind == "sha256":
            value = value.strip().lower()
            if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
                raise TakedownError(f"--sha256 must be 64 hex characters, got {value!r}")
        return kind, value.strip()


@dataclass
class TakedownResult:
    """What :func:`take_down` did."""

    takedown_id: str
    selector: str
    matched: int
    removed: list[str]
    hashes: list[str]
    purged_objects: int = 0
    purged_reports: list[str] = field(default_factory=list)
    in_local_releases: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "takedown_id": self.takedown_id,
            "selector": self.selector,
            "matched": self.matched,
            "removed": len(self.removed),
            "hashes": self.hashes,
            "purged_objects": self.purged_objects,
            "purged_reports": self.purged_reports,
            "in_local_releases": self.in_local_releases,
        }


def ensure_tables(ws: Workspace) -> None:
    """Create the take-down tables (idempotent)."""
    with ws.catalog.transaction() as db:
        for statement in _SCHEMA:
            db.execute(statement)


# -- selectors ------------------------------------------------------------------------------------------------------

Selector = Callable[[Workspace, pd.DataFrame, str], set[str]]
#: Selector kind -> function returning the item ids it names directly.
SELECTORS: dict[str, Selector] = {}


def selector(kind: str) -> Callable[[Selector], Selector]:
    """Decorator: register a take-down selector under ``kind``."""

    def register(fn: Selector) -> Selector:
        SELECTORS[kind] = fn
        return fn

    return register


@selector("sha256")
def _by_sha256(ws: Workspace, items: pd.DataFrame, value: str) -> set[str]:
    return set(items.loc[items["sha256"] == value, "item_id"].astype(str))


def _matching(
    ws: Workspace, items: pd.DataFrame, column: str, normalise: Callable[[str], str], target: str
) -> set[str]:
    """Ids of the items whose ``column``, on the item or on any of its origins, normalises to ``target``."""
    origins = ws.origins()
    return {
        str(item_id)
        for frame in (items, origins)
        for item_id, value in zip(frame["item_id"], frame[column], strict=True)
        if present(value) and normalise(str(value)) == target
    }


def _normalise_url(url: str) -> str:
    return url.strip().rstrip("/")


@selector("url")
def _by_url(ws: Workspace, items: pd.DataFrame, value: str) -> set[str]:
    target = _normalise_url(value)
    found = _matching(ws, items, "url", _normalise_url, target)
    for item_id, meta in zip(items["item_id"], items["meta"], strict=True):
        decoded = _json(meta)
        pages = (decoded.get(k) for k in ("landing_url", "foreign_landing_url", "page_url", "source_page"))
        if any(present(p) and _normalise_url(str(p)) == target for p in pages):
            found.add(str(item_id))
    return found


def _normalise_name(name: str) -> str:
    return " ".join(name.lower().split())


@selector("author")
def _by_author(ws: Workspace, items: pd.DataFrame, value: str) -> set[str]:
    return _matching(ws, items, "author", _normalise_name, _normalise_name(value))


def _json(value: Any) -> dict[str, Any]:
    if not present(value):
        return {}
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


# -- widening to every copy -----------------------------------------------------------------------------------------


def copies_of(ws: Workspace, items: pd.DataFrame, hashes: pd.DataFrame) -> set[str]:
    """Item ids of ``items`` that are copies of the images described by ``hashes`` (columns ``item_id``,
    ``sha256``, ``pixel_hash``, ``phash``): the same dedup cluster, a pair dedup confirmed (geometrically verified
    crops and edits included), identical bytes or pixels, pHash within the dedup radius, or embedding cosine above
    the dedup similarity."""
    if hashes.empty or items.empty:
        return set()
    embeddings = workspace_embeddings(ws)
    radius, similarity = dedup_thresholds(ws, embeddings[0] if embeddings else None)
    found: set[str] = set()
    clusters = cluster_ids(items)
    seed_ids = set(hashes["item_id"].astype(str))
    seed_clusters = set(clusters[items["item_id"].astype(str).isin(seed_ids)])
    found |= set(items.loc[clusters.isin(seed_clusters), "item_id"].astype(str))
    confirmed = dedup_pairs(ws)
    if confirmed is not None:
        partners = confirmed.partners(seed_ids)
        found |= partners & set(items["item_id"].astype(str))
        found |= set(
            items.loc[
                clusters.isin(set(clusters[items["item_id"].astype(str).isin(partners)])), "item_id"
            ].astype(str)
        )
    for column in ("sha256", "pixel_hash"):
        values = {v for v in hashes[column] if present(v)}
        found |= set(items.loc[items[column].isin(values), "item_id"].astype(str))
    base, base_ok = hash_codes(items["phash"])
    query, query_ok = hash_codes(hashes["phash"])
    base_rows, query_rows = np.flatnonzero(base_ok), np.flatnonzero(query_ok)
    matches = hamming_search(base[base_rows], query[query_rows], radius)
    found |= {str(items["item_id"].iat[int(base_rows[b])]) for _q, b in matches}
    if embeddings is not None:
        _key, ids, matrix = embeddings
        position = {item_id: i for i, item_id in enumerate(ids)}
        seeds = [position[i] for i in seed_ids if i in position]
        if seeds:
            hits = cosine_search(matrix, matrix[np.asarray(seeds)], similarity)
            known = set(items["item_id"].astype(str))
            found |= {ids[int(b)] for _q, b in hits if ids[int(b)] in known}
    return found


# -- the request ----------------------------------------------------------------------------------------------------


def _next_id(ws: Workspace) -> str:
    row = ws.catalog.connect().execute("SELECT COUNT(*) FROM takedowns").fetchone()
    return f"TD-{int(row[0]) + 1:04d}"


def take_down(ws: Workspace, request: TakedownRequest) -> TakedownResult:
    """Carry out ``request``: mark the named items and all their copies ``removed`` and record their hashes.

    Parameters
    ----------
    ws
        The workspace.
    request
        :class:`TakedownRequest`; exactly one selector. A sha256 that the catalog does not hold is still recorded,
        so that the image is refused if it is ingested later.

    Returns
    -------
    :class:`TakedownResult`: the take-down id, how many items matched directly, every removed item, the hashes
    recorded, what ``purge`` deleted, and the local releases that already contain one of the images (releases are
    immutable: withdraw those by hand, and from the Hub, if they were published).

    Raises
    ------
    TakedownError
        If the request names nothing (an unknown URL or author).
    """
    kind, value = request.selector()
    ensure_tables(ws)
    ws.catalog.ensure_columns({"takedown_id": "TEXT"})
    items = frame(ws, _COLUMNS)
    items = items[~items["status"].isin(_IGNORED)].reset_index(drop=True)
    direct = SELECTORS[kind](ws, items, value)
    if not direct and kind != "sha256":
        raise TakedownError(f"no item matches {kind} {value!r}; nothing was taken down")
    seeds = items[items["item_id"].astype(str).isin(direct)][["item_id", "sha256", "pixel_hash", "phash"]]
    if kind == "sha256" and seeds.empty:
        seeds = pd.DataFrame(
            [{"item_id": f"sha256:{value}", "sha256": value, "pixel_hash": None, "phash": None}]
        )
    removed_ids = sorted(direct | copies_of(ws, items, seeds))
    removed = items[items["item_id"].astype(str).isin(removed_ids)]
    takedown_id = _next_id(ws)
    now = utc_now()
    hashes = seeds if removed.empty else removed[["item_id", "sha256", "pixel_hash", "phash"]]
    with ws.catalog.transaction() as db:
        db.execute(
            "INSERT INTO takedowns(takedown_id, selector, reason, purged, created_at) VALUES (?, ?, ?, ?, ?)",
            (takedown_id, f"{kind}:{value}", request.reason.strip(), int(request.purge), now),
        )
        db.executemany(
            "INSERT OR IGNORE INTO takedown_hashes(takedown_id, item_id, sha256, pixel_hash, phash) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (takedown_id, str(r.item_id), _nn(r.sha256), _nn(r.pixel_hash), _nn(r.phash))
                for r in hashes.itertuples(index=False)
            ],
        )
        if kind == "sha256" and value not in set(hashes["sha256"]):
            db.execute(
                "INSERT OR IGNORE INTO takedown_hashes(takedown_id, item_id, sha256) VALUES (?, ?, ?)",
                (takedown_id, f"sha256:{value}", value),
            )
        _mark_removed(db, removed["item_id"].astype(str).tolist(), takedown_id, now)
    result = TakedownResult(
        takedown_id=takedown_id,
        selector=f"{kind}:{value}",
        matched=len(direct),
        removed=removed["item_id"].astype(str).tolist(),
        hashes=sorted(
            {str(h) for h in hashes["sha256"] if present(h)} | ({value} if kind == "sha256" else set())
        ),
    )
    result.in_local_releases = releases_containing(ws, set(result.hashes))
    if request.purge:
        purge(ws, takedown_id, result)
    return result


def _nn(value: Any) -> Any:
    return value if present(value) else None


def _mark_removed(db: Any, item_ids: Sequence[str], takedown_id: str, now: str) -> None:
    db.executemany(
        "UPDATE items SET status = 'removed', reason = 'takedown', error = ?, takedown_id = ?, updated_at = ? "
        "WHERE item_id = ? AND status != 'removed'",
        [(f"take-down {takedown_id}", takedown_id, now, item_id) for item_id in item_ids],
    )


def purge(ws: Workspace, takedown_id: str, result: TakedownResult | None = None) -> tuple[int, list[str]]:
    """Delete the stored bytes of every item removed by ``takedown_id``, and the HTML reports that show any of
    them; return ``(objects deleted, reports deleted)``."""
    items = frame(ws, ["sha256", "format", "takedown_id"])
    gone = items[items["takedown_id"] == takedown_id]
    deleted = 0
    for sha256, fmt in zip(gone["sha256"], gone["format"], strict=True):
        if not present(sha256):
            continue
        if ws.objects.delete(str(sha256), fmt if present(fmt) else None):  # at a URL too, and its cached copy
            deleted += 1
    hashes = {str(h) for h in gone["sha256"] if present(h)}
    reports = []
    for report in sorted(ws.reports_dir.glob("*.html")):
        text = report.read_text(errors="replace")
        if any(h in text for h in hashes):
            report.unlink()
            reports.append(report.name)
    with ws.catalog.transaction() as db:
        db.execute("UPDATE takedowns SET purged = 1 WHERE takedown_id = ?", (takedown_id,))
    if result is not None:
        result.purged_objects, result.purged_reports = deleted, reports
    return deleted, reports


def releases_containing(ws: Workspace, hashes: set[str]) -> list[str]:
    """Versions of the local releases whose manifest lists any of ``hashes``."""
    found = []
    for manifest in sorted(ws.releases_dir.glob("*/manifest.json")):
        try:
            listed = json.loads(manifest.read_text()).get("items", {})
        except (OSError, ValueError):
            continue
        if hashes & set(listed):
            found.append(manifest.parent.name)
    return found


def records(ws: Workspace) -> pd.DataFrame:
    """Every recorded hash with its take-down: ``takedown_id, selector, reason, created_at, item_id, sha256,
    pixel_hash, phash`` (empty when there was none)."""
    ensure_tables(ws)
    return pd.read_sql_query(
        "SELECT t.takedown_id, t.selector, t.reason, t.created_at, h.item_id, h.sha256, h.pixel_hash, h.phash "
        "FROM takedowns t JOIN takedown_hashes h USING (takedown_id) ORDER BY t.takedown_id, h.item_id",
        ws.catalog.connect(),
    )


def enforce(ws: Workspace) -> dict[str, int]:
    """Re-apply every recorded take-down to the catalog: items ingested since that are copies of a taken-down
    image (same cluster, bytes, pixels, pHash within the radius, or embedding) become ``removed`` too, and the
    bytes of purged take-downs that an ingest stored again are deleted again.

    Returns ``{takedown_id: newly removed}`` (empty when there was nothing to do; writes nothing then).
    """
    recorded = records(ws)
    if recorded.empty:
        return {}
    _repurge(ws)
    items = frame(ws, _COLUMNS)
    items = items[~items["status"].isin(_IGNORED)].reset_index(drop=True)
    live = items[items["status"].isin(("valid", "duplicate", "contaminated"))].reset_index(drop=True)
    newly: dict[str, int] = {}
    now = utc_now()
    for takedown_id, hashes in recorded.groupby("takedown_id", sort=True):
        live_ids = set(live["item_id"].astype(str))
        hits = sorted(copies_of(ws, items, hashes) & live_ids)
        if not hits:
            continue
        ws.catalog.ensure_columns({"takedown_id": "TEXT"})
        rows = live[live["item_id"].astype(str).isin(hits)][["item_id", "sha256", "pixel_hash", "phash"]]
        with ws.catalog.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO takedown_hashes(takedown_id, item_id, sha256, pixel_hash, phash) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (str(takedown_id), str(r.item_id), _nn(r.sha256), _nn(r.pixel_hash), _nn(r.phash))
                    for r in rows.itertuples(index=False)
                ],
            )
            _mark_removed(db, hits, str(takedown_id), now)
        newly[str(takedown_id)] = len(hits)
        live = live[~live["item_id"].astype(str).isin(hits)]
    return newly


def _repurge(ws: Workspace) -> None:
    purged = ws.catalog.connect().execute("SELECT takedown_id FROM takedowns WHERE purged = 1").fetchall()
    if not purged:
        return
    items = frame(ws, ["sha256", "format", "takedown_id"])
    ids = {row[0] for row in purged}
    for sha256, fmt, takedown_id in zip(items["sha256"], items["format"], items["takedown_id"], strict=True):
        if takedown_id in ids and present(sha256):
            ws.objects.delete(str(sha256), fmt if present(fmt) else None)


def removal_reasons(ws: Workspace) -> dict[str, str]:
    """``{sha256: takedown_id}`` of every hash a take-down recorded (for the release CHANGELOG)."""
    recorded = records(ws)
    return {
        str(s): str(t) for s, t in zip(recorded["sha256"], recorded["takedown_id"], strict=True) if present(s)
    }
