"""Checks on the ``--data`` argument before a run starts: one dataset, never several Emo8 releases mixed.

An Emo8 workspace holds every release under ``releases/<version>/`` (each with a ``manifest.json``) next to
embeddings and reports; reading it as one parquet tree would train on every release at once (the same images
several times). :func:`check_data_path` refuses such a directory with a message that names the releases.
"""

from __future__ import annotations

from pathlib import Path

from emo8.core.weights import HubUnavailable, require_hub

#: The file that marks an Emo8 workspace, and the one that marks an Emo8 release directory.
WORKSPACE_FILE = "emo8.json"
RELEASE_FILE = "manifest.json"


class DataPathError(ValueError):
    """``--data`` names something that cannot be read as one dataset."""


def release_dirs(path: Path, depth: int = 2) -> list[Path]:
    """Emo8 release directories at most ``depth`` levels below ``path`` (not ``path`` itself), sorted."""
    found: list[Path] = []
    for level in range(1, depth + 1):
        found += [m.parent for m in path.glob("/".join(["*"] * level) + "/" + RELEASE_FILE)]
    return sorted(found, key=_version_key)


def check_data_path(data: str) -> None:
    """Raise :class:`DataPathError` when ``data`` does not exist as a directory and cannot be a Hub id, is an
    Emo8 workspace, or holds several Emo8 releases; return quietly otherwise (one release, a tree, a Hub id)."""
    path = Path(data).expanduser()
    if not path.exists():
        if "/" not in data or data.startswith((".", "/", "~")):
            raise DataPathError(
                f"--data {data}: no such directory, and not a Hugging Face Hub id (owner/name)"
            )
        try:
            require_hub(f"--data {data}")
        except HubUnavailable as exc:
            raise DataPathError(str(exc)) from exc
        return
    if not path.is_dir():
        raise DataPathError(
            f"--data {data} is a file; pass a release directory, an ImageFolder tree or a Hub id"
        )
    if (path / RELEASE_FILE).is_file():
        return
    releases = release_dirs(path)
    if (path / WORKSPACE_FILE).is_file():
        if not releases:
            raise DataPathError(
                f"--data {data} is an Emo8 workspace without a release; run `emo8 release -w {data} --version X.Y.Z` "
                "and pass the release directory it writes"
            )
        raise DataPathError(
            f"--data {data} is an Emo8 workspace, not a release: pass one release directory, e.g. --data "
            f"{releases[-1]} (releases found: {', '.join(r.name for r in releases)})"
        )
    if len(releases) > 1:
        raise DataPathError(
            f"--data {data} holds {len(releases)} Emo8 releases ({', '.join(str(r) for r in releases)}); "
            f"pass one of them, e.g. --data {releases[-1]}, so that no images are read twice"
        )


def _version_key(path: Path) -> tuple[tuple[int, ...], str]:
    parts = path.name.split(".")
    numbers = tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()
    return numbers, str(path)
