"""What a release reads from earlier stages, verified rather than recomputed.

A release ships what earlier stages recorded: settled labels (annotate), the ``split`` column (``emo8 split``), the
take-down list (``emo8 takedown``, applied by ingest and split) and dedup's confirmed pairs. These checks only read:
they say which input is missing or out of date and which command settles it (:class:`StaleInput`), or warn.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from emo8.core import takedown
from emo8.core.buildinfo import current_build
from emo8.core.curation import dedup_pairs, frame
from emo8.core.workspace import Workspace
from emo8.release.split import SPLITS

__all__ = ["build_citation", "dedup_coverage_warning", "missing_splits", "unrecorded_takedown_copies"]

#: Item columns the take-down check needs (the copies' hashes and dedup clusters).
_TAKEDOWN_COLUMNS = ("status", "sha256", "pixel_hash", "phash", "dup_of", "cluster_id")


def missing_splits(rows: pd.DataFrame) -> int:
    """How many of the release's ``rows`` have no split (``emo8 split`` has not seen them)."""
    return int(rows["split"].map(lambda s: s not in SPLITS).sum())


def unrecorded_takedown_copies(ws: Workspace, rows: pd.DataFrame) -> dict[str, int]:
    """Releasable ``rows`` that are copies of a taken-down image although the catalog does not mark them removed
    (e.g. a copy that only the newest embeddings recognise): ``{takedown_id: copies}``, empty when none."""
    recorded = takedown.records(ws)
    if recorded.empty or rows.empty:
        return {}
    items = frame(ws, _TAKEDOWN_COLUMNS, where="status IN ('valid', 'duplicate', 'contaminated', 'removed')")
    items = items.reset_index(drop=True)
    release_ids = set(rows["item_id"].astype(str))
    found: dict[str, int] = {}
    for takedown_id, hashes in recorded.groupby("takedown_id", sort=True):
        hits = takedown.copies_of(ws, items, hashes) & release_ids
        if hits:
            found[str(takedown_id)] = len(hits)
    return found


def dedup_coverage_warning(ws: Workspace, rows: pd.DataFrame) -> str | None:
    """A warning when some released items arrived after the last ``emo8 dedup`` (their duplicates are unknown)."""
    pairs = dedup_pairs(ws)
    if pairs is None or not pairs.covered:
        return None
    unseen = len(set(rows["item_id"].astype(str)) - pairs.covered)
    if not unseen:
        return None
    return (
        f"{unseen} released item(s) arrived after the last `emo8 dedup`: their duplicates are unknown; run "
        "`emo8 embed`, `emo8 dedup` and `emo8 split` before a release you publish"
    )


#: What a release cites of a build step: how it was made (stage and settings), not when or how long it took, so
#: that the same pipeline and catalog still give byte-identical releases.
_STEP_KEYS = ("name", "stage", "settings", "settings_fingerprint")
#: What it cites of the pipeline file.
_PIPELINE_KEYS = ("name", "description", "path", "sha256", "text")


def build_citation(ws: Workspace) -> dict[str, Any] | None:
    """The workspace's build record (``emo8 build``) as a release cites it: the pipeline file (name, path, sha256,
    text), the code version, and each step's name, stage and settings (run times, statuses and summaries are left
    out: they say when, not how). None when the workspace was not built by ``emo8 build``."""
    record = current_build(ws)
    if not record:
        return None
    raw = record.get("steps") or []
    if isinstance(raw, dict):  # {step name: {...}}
        raw = [{"name": name, **step} for name, step in raw.items() if isinstance(step, dict)]
    steps = [
        {
            "name": step.get("name") or step.get("stage"),
            "settings": {},
            **{k: step[k] for k in _STEP_KEYS if k in step},
        }
        for step in raw
        if isinstance(step, dict)
    ]
    pipeline = record.get("pipeline")
    if not isinstance(pipeline, dict):  # a flat record: pipeline path and sha256 side by side
        pipeline = {"path": pipeline, "sha256": record.get("pipeline_sha256") or record.get("sha256")}
    cited = {k: pipeline.get(k) for k in _PIPELINE_KEYS if k in pipeline}
    cited.setdefault("path", None)
    cited.setdefault("sha256", None)
    return {"pipeline": cited, "code_version": record.get("code_version"), "steps": steps}
