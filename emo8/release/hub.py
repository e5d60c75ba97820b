"""Push a release to the Hugging Face Hub, as one commit, then tag it ``vX.Y.Z``.

:func:`push_release` uploads ``releases/X.Y.Z/`` (``README.md``, ``CHANGELOG.md``, ``manifest.json`` and
``data/*.parquet``; never the ImageFolder export) to a dataset repository with :mod:`huggingface_hub`:

1. ``create_repo(..., repo_type="dataset", exist_ok=True)`` (private with ``private=True``);
2. the files are checked against the sha256 the release's manifest recorded (a release edited after it was
   written is refused);
3. if the tag ``vX.Y.Z`` already exists, the files at the tag are compared with the local release (sha256 for LFS
   files, git blob ids for the others): identical means the version is already published and the push is a
   no-op (no commit, no upload); different means someone published another ``X.Y.Z``, which is refused
   (releases are immutable: bump the version);
4. otherwise one commit on ``main`` adds every file and deletes the shards of the previous release that this one
   no longer has (other files in the repository are left alone); files the Hub already holds are not uploaded
   again;
5. ``create_tag("vX.Y.Z")`` on that commit, so ``load_dataset(repo, revision="vX.Y.Z")`` gets exactly this release.

The token comes from ``HF_TOKEN`` or the stored ``hf auth login``; it is never printed or logged, and any error
message that would contain it is scrubbed. ``endpoint`` points at another Hub (a mirror, an enterprise Hub, a
test server); the Xet storage protocol is used only on the official Hub unless asked for, since other endpoints
speak the git-LFS protocol.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emo8.core.workspace import Workspace

#: What a push uploads from a release directory (the ImageFolder export stays local).
RELEASE_FILES = ("README.md", "CHANGELOG.md", "manifest.json")
DATA_DIR = "data"
OFFICIAL_ENDPOINT = "https://huggingface.co"


class PushError(RuntimeError):
    """A push that cannot be done (no token, no such release, a tag with other content, the Hub failing...)."""


class PushInputError(PushError):
    """A push refused before or without the Hub failing: no token, no such release, a changed release, or a
    published tag with other content (the command must change; exit code 2)."""


@dataclass(frozen=True)
class PushConfig:
    """Where and how to push.

    Parameters
    ----------
    version
        The local release ``X.Y.Z`` (``releases/X.Y.Z``).
    repo_id
        ``ORG/NAME`` of the dataset repository (created when missing).
    private
        Create the repository private (an existing repository keeps its visibility).
    endpoint
        Hub URL; None = ``HF_ENDPOINT`` or the official Hub.
    token
        A token to use instead of ``HF_TOKEN`` / the stored login (programmatic use; never printed).
    xet
        Upload through Xet storage; None = only on the official Hub (other endpoints get git-LFS).
    release_dir
        The release directory; default ``<workspace>/releases/<version>``.
    """

    version: str
    repo_id: str
    private: bool = False
    endpoint: str | None = None
    token: str | None = None
    xet: bool | None = None
    release_dir: Path | None = None


@dataclass
class PushResult:
    """What :func:`push_release` did."""

    repo_id: str
    version: str
    tag: str
    noop: bool
    commit: str | None = None
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    url: str | None = None


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def release_files(release_dir: Path) -> dict[str, Path]:
    """``{path in repo: local path}`` of what a push uploads from ``release_dir``."""
    files = {name: release_dir / name for name in RELEASE_FILES if (release_dir / name).is_file()}
    for shard in sorted((release_dir / DATA_DIR).glob("*.parquet")):
        files[f"{DATA_DIR}/{shard.name}"] = shard
    return files


def verify_release(local: dict[str, Path], manifest: dict[str, Any]) -> list[str]:
    """Differences between the files of a release directory and the sha256/size its manifest recorded."""
    recorded: dict[str, Any] = manifest.get("files", {})
    problems = [
        f"{path} not in the manifest" for path in local if path != "manifest.json" and path not in recorded
    ]
    for path, info in recorded.items():
        file = local.get(path)
        if file is None:
            problems.append(f"{path} missing")
        elif file.stat().st_size != info.get("bytes") or _sha256(file) != info.get("sha256"):
            problems.append(f"{path} changed")
    return problems


def _managed(path: str) -> bool:
    return path in RELEASE_FILES or path.startswith(f"{DATA_DIR}/")


@contextmanager
def _transfer_protocol(xet: bool) -> Iterator[None]:
    """Switch huggingface_hub's Xet uploads off for the block when ``xet`` is False (git-LFS is used instead)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = saved or not xet
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = saved


def resolve_token(explicit: str | None = None) -> str:
    """The token to push with: ``explicit``, else ``HF_TOKEN``, else the stored login; raise :class:`PushError`
    (without ever showing a token) when there is none."""
    if explicit:
        return explicit
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PushInputError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)"
        )
    return token


def _scrub(message: str, token: str) -> str:
    return message.replace(token, "***") if token else message


def _mismatches(local: dict[str, Path], remote: dict[str, Any]) -> list[str]:
    """Managed paths whose content differs between the local release and the remote files at a tag."""
    problems = []
    for path, local_path in local.items():
        entry = remote.get(path)
        if entry is None:
            problems.append(f"{path} missing")
            continue
        lfs = getattr(entry, "lfs", None)
        if lfs is not None:
            same = lfs.sha256 == _sha256(local_path)
        else:
            same = entry.blob_id == _git_blob_id(local_path.read_bytes())
        if not same:
            problems.append(f"{path} differs")
    problems += [
        f"{path} not in the local release" for path in remote if _managed(path) and path not in local
    ]
    return problems


def _remote_files(api: Any, repo_id: str, revision: str) -> dict[str, Any]:
    from huggingface_hub.hf_api import RepoFile

    return {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True)
        if isinstance(entry, RepoFile)
    }


def push_release(ws: Workspace, config: PushConfig) -> PushResult:
    """Push local release ``config.version`` to ``config.repo_id`` and tag it; see the module docstring.

    Parameters
    ----------
    ws
        The workspace holding the release.
    config
        :class:`PushConfig`.

    Returns
    -------
    :class:`PushResult`; ``noop`` is True when the tag already held exactly this release.

    Raises
    ------
    PushError
        No release, no token, or the tag exists with different content; Hub errors are re-raised as
        :class:`PushError` with any token scrubbed from the message.
    """
    release_dir = config.release_dir or ws.releases_dir / config.version
    manifest_path = release_dir / "manifest.json"
    if not manifest_path.is_file():
        raise PushInputError(
            f"no release {config.version} at {release_dir}; run `emo8 release --version {config.version}`"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("version") != config.version:
        raise PushInputError(f"{manifest_path} is not release {config.version}")
    local = release_files(release_dir)
    tampered = verify_release(local, manifest)
    if tampered:
        raise PushInputError(
            f"release {config.version} at {release_dir} does not match its manifest ({'; '.join(tampered[:5])}): "
            "it was changed after `emo8 release` wrote it; write it again (--overwrite) or restore it"
        )
    token = resolve_token(config.token)
    endpoint = (config.endpoint or "").rstrip("/") or None
    xet = config.xet if config.xet is not None else endpoint in (None, OFFICIAL_ENDPOINT)
    try:
        with _transfer_protocol(xet):
            return _push(config, endpoint, token, local)
    except PushError:
        raise
    except Exception as exc:
        raise PushError(_scrub(f"push to {config.repo_id} failed: {exc}", token)) from exc


def _push(config: PushConfig, endpoint: str | None, token: str, local: dict[str, Path]) -> PushResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(endpoint=endpoint, token=token)
    repo_id, tag = config.repo_id, f"v{config.version}"
    repo_url = api.create_repo(repo_id, repo_type="dataset", private=config.private, exist_ok=True)
    result = PushResult(repo_id=repo_id, version=config.version, tag=tag, noop=False, url=str(repo_url))
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    existing = {ref.name: ref.target_commit for ref in refs.tags}
    if tag in existing:
        problems = _mismatches(local, _remote_files(api, repo_id, tag))
        if problems:
            raise PushInputError(
                f"{repo_id} already has {tag} with different content ({'; '.join(problems[:5])}); "
                "a published version is immutable: release and push a new version"
            )
        result.noop, result.commit, result.unchanged = True, existing[tag], sorted(local)
        return result
    remote = _remote_files(api, repo_id, "main")
    deletions = [
        CommitOperationDelete(path) for path in sorted(remote) if _managed(path) and path not in local
    ]
    additions = [CommitOperationAdd(path, str(local_path)) for path, local_path in sorted(local.items())]
    info = api.create_commit(
        repo_id,
        operations=[*deletions, *additions],
        commit_message=f"Release {config.version}",
        commit_description=f"Emo8 release {config.version} (emo8 push).",
        repo_type="dataset",
    )
    for op in additions:  # the client fills in what the Hub already had (used here for the report only)
        remote_oid = getattr(op, "_remote_oid", None)
        if remote_oid is not None and remote_oid == getattr(op, "_local_oid", None):
            result.unchanged.append(op.path_in_repo)
        else:
            result.uploaded.append(op.path_in_repo)
    result.deleted = [op.path_in_repo for op in deletions]
    result.commit = info.oid
    api.create_tag(
        repo_id, tag=tag, tag_message=f"Emo8 {config.version}", revision=info.oid, repo_type="dataset"
    )
    return result
