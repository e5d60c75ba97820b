"""What ``emo8 build`` remembers in a workspace: step fingerprints, artifact digests and build records.

``build/state.json`` holds, per step name, the fingerprint it last ran with and how that ended (``done``,
``running`` — killed mid-run —, ``waiting``, ``failed``, ``stale``), plus the digest of every workspace artifact
as the last step left it, so that a change made outside the build (a CLI command, an edited table) is found.
``build/runs/<time>-<hash>.json`` records each build; ``build/current.json`` is the latest (releases cite it).

A step's fingerprint is ``sha256(stage name, settings fingerprint, digest of its outside inputs, the previous
step's fingerprint, digests of the previous step's outputs that this step reads)``: changing a setting changes
that step's fingerprint and, through the chain, every later one, and nothing before it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from emo8.core.buildinfo import BUILD_DIR
from emo8.core.stage import path_digest, settings_fingerprint
from emo8.core.workspace import Workspace, atomic_write_json
from emo8.pipeline.spec import Step

__all__ = [
    "BuildState",
    "StepRecord",
    "artifact_digest",
    "step_fingerprint",
]

STATE_FILE = f"{BUILD_DIR}/state.json"
RUNS_DIR = f"{BUILD_DIR}/runs"
STATE_VERSION = 1
#: How artifacts are digested: a state written with another scheme has no comparable digests (re-baselined).
DIGEST_VERSION = 2
#: Rows hashed per fetch: a table digest streams, it never holds a whole table in memory.
ROW_BATCH = 2000


def artifact_digest(ws: Workspace, artifact: str) -> str:
    """Digest of a workspace artifact: ``table:NAME`` (its rows, streamed) or ``dir:PATH`` / ``file:PATH``
    (listing with sizes and mtimes, see :func:`emo8.core.stage.path_digest`). A missing one digests to ``"-"``."""
    kind, _, name = artifact.partition(":")
    if kind == "table":
        return _table_digest(ws, name)
    if kind in ("dir", "file"):
        path = ws.root / name
        return path_digest(path)
    raise ValueError(
        f"unknown workspace artifact {artifact!r}; artifacts are table:NAME, dir:PATH or file:PATH"
    )


def _table_digest(ws: Workspace, table: str) -> str:
    db = ws.catalog.connect()
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    if exists is None:
        return "-"
    h = hashlib.sha256()
    cursor = db.cursor()
    cursor.row_factory = None  # plain tuples: one repr per batch is the cheapest stable encoding
    cursor.execute(f'SELECT * FROM "{table}"')  # a table name a stage declared
    h.update(repr([d[0] for d in cursor.description]).encode())
    try:
        while rows := cursor.fetchmany(ROW_BATCH):
            h.update(repr(rows).encode())
    finally:
        cursor.close()
    return h.hexdigest()


def digests(ws: Workspace, artifacts: Iterable[str]) -> dict[str, str]:
    """``artifact -> digest`` for each of ``artifacts``."""
    return {artifact: artifact_digest(ws, artifact) for artifact in dict.fromkeys(artifacts)}


def inputs_digest(step: Step) -> str:
    """Digest of what the step reads from outside the workspace (``"-"`` when its stage reads nothing there)."""
    if step.stage.inputs is None:
        return "-"
    try:
        return step.stage.inputs(step.settings)
    except Exception as exc:  # unreadable now: the step runs and its stage says what is wrong
        return f"unreadable: {type(exc).__name__}"


def step_fingerprint(step: Step, inputs: str, previous: str, upstream: dict[str, str]) -> str:
    """The fingerprint of ``step`` (see the module docstring); ``upstream``: the previous step's outputs that
    this step reads, with their digests."""
    parts = [
        step.stage.name,
        settings_fingerprint(step.settings),
        inputs,
        previous,
        json.dumps(sorted(upstream.items())),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass
class StepRecord:
    """What the state file remembers of one step."""

    stage: str
    fingerprint: str
    status: str  # done, running, waiting, failed, stale
    settings_fingerprint: str = ""
    inputs: str = "-"
    previous: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)
    finished_at: str | None = None
    seconds: float | None = None
    message: str | None = None


@dataclass
class BuildState:
    """``build/state.json`` of a workspace."""

    path: Path
    steps: dict[str, StepRecord] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, ws: Workspace) -> BuildState:
        """The workspace's state (empty when it was never built or the file is unreadable)."""
        path = ws.root / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return cls(path)
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            return cls(path)
        known = set(StepRecord.__dataclass_fields__)
        steps = {
            name: StepRecord(**{k: v for k, v in record.items() if k in known})
            for name, record in raw.get("steps", {}).items()
        }
        same_digests = raw.get("digests") == DIGEST_VERSION
        return cls(path, steps, dict(raw.get("artifacts", {})) if same_digests else {})

    def save(self) -> None:
        """Write the state atomically."""
        atomic_write_json(
            self.path,
            {
                "version": STATE_VERSION,
                "digests": DIGEST_VERSION,
                "steps": {name: asdict(record) for name, record in self.steps.items()},
                "artifacts": self.artifacts,
            },
        )

    def changed_outside(self, ws: Workspace) -> set[str]:
        """Artifacts whose digest differs from what the last step that ran left them as (what a step killed
        mid-run writes is left out: that step runs again, and every step after it)."""
        cut_short = {a for record in self.steps.values() if record.status == "running" for a in record.writes}
        return {
            a
            for a, digest in self.artifacts.items()
            if a not in cut_short and artifact_digest(ws, a) != digest
        }
