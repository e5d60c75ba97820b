"""How a workspace was built: the record ``emo8 build`` writes and every later reader (a release card) cites.

``emo8 build`` writes ``build/current.json`` in the workspace after every step (see :mod:`emo8.pipeline`):
the pipeline file's path, text and sha256, the code version, and each step's stage, settings and outcome.
A release reads it here, so that its card and manifest say how it was made, without importing the pipeline.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from emo8.core.workspace import Workspace, atomic_write_json

__all__ = ["BUILD_DIR", "CURRENT_FILE", "code_version", "current_build", "write_current_build"]

BUILD_DIR = "build"
CURRENT_FILE = "build/current.json"


def code_version() -> str:
    """emo8's version, plus the git commit (and ``-dirty``) when it runs from a checkout."""
    from emo8 import __version__

    checkout = Path(__file__).resolve().parents[2]
    if (checkout / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(checkout), "describe", "--always", "--dirty", "--abbrev=12"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout.strip()  # fmt: skip
            return f"{__version__}+g{commit}" if commit else __version__
        except (OSError, subprocess.SubprocessError):
            pass
    return __version__


def current_build(ws: Workspace) -> dict[str, Any] | None:
    """The latest build record of ``ws`` (None when it was never built by ``emo8 build``)."""
    path = ws.root / CURRENT_FILE
    if not path.exists():
        return None
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record


def write_current_build(ws: Workspace, record: dict[str, Any]) -> Path:
    """Write ``record`` as the workspace's current build record, atomically; return its path."""
    path = ws.root / CURRENT_FILE
    atomic_write_json(path, record)
    return path
