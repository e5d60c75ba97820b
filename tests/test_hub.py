"""Push: the real huggingface_hub client against a fake Hub (real HTTP on loopback), one commit, a tag, no-ops."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakehub import FakeHub
from releasefixtures import *  # noqa: F403  (the workspace fixtures)
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.release.hub import PushConfig, PushError, push_release, release_files
from emo8.release.publish import ReleaseConfig, release

TOKEN = "hf_fake_0123456789abcdefSECRET"
REPO = "emo8-org/emo8"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub(TOKEN)
    server = fake.serve()
    try:
        yield fake
    finally:
        server.stop()


@pytest.fixture
def released(labelled_ws: Workspace) -> Workspace:
    release(labelled_ws, ReleaseConfig("1.0.0", formats=("hf", "imagefolder")))
    return labelled_ws


def _push(ws: Workspace, hub: FakeHub, version: str = "1.0.0", **kw: object) -> object:
    return push_release(ws, PushConfig(version, REPO, endpoint=hub.url, token=TOKEN, **kw))  # type: ignore[arg-type]


def test_push_uploads_one_commit_and_tags_it(
    released: Workspace, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    outcome = CliRunner().invoke(
        app,
        [
            "push",
            "-w",
            str(released.root),
            "--version",
            "1.0.0",
            "--repo",
            REPO,
            "--endpoint",
            hub.url,
            "--private",
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    assert "pushed 1.0.0" in outcome.output and "tag v1.0.0" in outcome.output
    assert TOKEN not in outcome.output
    repo = hub.repos[REPO]
    assert repo.private and set(repo.tags) == {"v1.0.0"} and repo.tags["v1.0.0"] == repo.branches["main"]
    local = release_files(released.releases_dir / "1.0.0")
    remote = hub.files_at(REPO, "v1.0.0")
    assert set(remote) == {*local, ".gitattributes"}  # the ImageFolder export stays local
    for path, file in local.items():
        assert remote[path] == file.read_bytes(), path
    assert hub.commit_requests == 1
    parquet = [p for p in local if p.endswith(".parquet")]
    assert hub.lfs_uploads == len(parquet)  # parquet went through git-LFS, not inline, and not Xet
    writes = [r for r in hub.server.requests if r.method in ("POST", "PUT")]  # type: ignore[union-attr]
    assert writes and all(
        r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in writes if "lfs/upload" not in r.path
    )


def test_repush_of_the_same_version_is_a_noop(released: Workspace, hub: FakeHub) -> None:
    first = _push(released, hub)
    assert not first.noop  # type: ignore[attr-defined]
    commits, uploads = hub.commit_requests, hub.lfs_uploads
    hub.server.reset_stats()  # type: ignore[union-attr]
    again = _push(released, hub)
    assert again.noop and again.commit == first.commit  # type: ignore[attr-defined]
    assert hub.commit_requests == commits and hub.lfs_uploads == uploads
    assert not [r for r in hub.server.requests if r.method in ("PUT",) or "/commit/" in r.path]  # type: ignore[union-attr]


def test_next_version_replaces_shards_and_keeps_the_old_tag(labelled_ws: Workspace, hub: FakeHub) -> None:
    release(labelled_ws, ReleaseConfig("1.0.0", max_shard_bytes=600_000))
    _push(labelled_ws, hub)
    v1 = hub.files_at(REPO, "v1.0.0")
    assert sum(p.startswith("data/train-") for p in v1) >= 2
    release(labelled_ws, ReleaseConfig("1.1.0"))  # one train shard now
    result = _push(labelled_ws, hub, "1.1.0")
    assert set(result.deleted) == {p for p in v1 if p.startswith("data/train-")} - {  # type: ignore[attr-defined]
        "data/train-00000-of-00001.parquet"
    }
    v2 = hub.files_at(REPO, "v1.1.0")
    assert [p for p in v2 if p.startswith("data/train-")] == ["data/train-00000-of-00001.parquet"]
    assert hub.files_at(REPO, "v1.0.0") == v1  # the old tag still serves the old release
    assert "data/test-00000-of-00001.parquet" in result.unchanged  # type: ignore[attr-defined]


def test_a_tag_with_other_content_is_refused(released: Workspace, hub: FakeHub) -> None:
    _push(released, hub)
    # the labels change, and someone rewrites 1.0.0 instead of releasing 1.0.1, then tries to publish it
    item = released.items(["item_id"], where="status = 'valid' AND settled = 1")["item_id"].iloc[0]
    released.catalog.update_items([item], {"label": ["disgust"]})
    release(released, ReleaseConfig("1.0.0", overwrite=True))
    with pytest.raises(PushError, match=r"already has v1\.0\.0 with different content") as caught:
        _push(released, hub)
    assert "manifest.json differs" in str(caught.value)
    assert hub.commit_requests == 1


def test_a_release_edited_after_it_was_written_is_refused(released: Workspace, hub: FakeHub) -> None:
    card = released.releases_dir / "1.0.0" / "README.md"
    card.write_text(card.read_text() + "\nedited by hand\n")
    with pytest.raises(PushError, match="does not match its manifest") as caught:
        _push(released, hub)
    assert "README.md changed" in str(caught.value)
    assert not hub.server.requests  # type: ignore[union-attr]


def test_no_token_and_no_release_are_clear_errors(
    released: Workspace, hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    with pytest.raises(PushError, match="no Hugging Face token"):
        push_release(released, PushConfig("1.0.0", REPO, endpoint=hub.url))
    assert not hub.server.requests  # type: ignore[union-attr]
    with pytest.raises(PushError, match=r"no release 9\.9\.9"):
        _push(released, hub, "9.9.9")
    bad = FakeHub("another-token")
    server = bad.serve()
    try:
        with pytest.raises(PushError) as caught:
            push_release(released, PushConfig("1.0.0", REPO, endpoint=bad.url, token=TOKEN))
        assert TOKEN not in str(caught.value)
    finally:
        server.stop()


def test_load_dataset_from_the_hub_at_the_tag(released: Workspace, hub: FakeHub, tmp_path: Path) -> None:
    _push(released, hub)
    code = (
        "import datasets, json\n"
        f"ds = datasets.load_dataset({REPO!r}, revision='v1.0.0', cache_dir={str(tmp_path / 'cache')!r})\n"
        "print(json.dumps({'splits': {k: len(v) for k, v in ds.items()}, "
        "'names': ds['train'].features['label'].names}))\n"
    )
    env = dict(
        os.environ,
        HF_ENDPOINT=hub.url,
        HF_TOKEN=TOKEN,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    manifest = json.loads((released.releases_dir / "1.0.0" / "manifest.json").read_text())
    assert loaded["splits"] == manifest["splits"]
    assert loaded["names"] == manifest["classes"]
