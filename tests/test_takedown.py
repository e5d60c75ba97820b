"""Take-down: the image and every copy of it leave all later releases; the CHANGELOG names them by hash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from neardupfixtures import *  # noqa: F403  (the near-duplicate workspace)
from neardupfixtures import names
from releasefixtures import *  # noqa: F403  (the workspace fixtures)
from releasefixtures import variant_pairs
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.core.takedown import TakedownError, TakedownRequest, enforce, records, take_down
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source
from emo8.release.publish import ReleaseConfig, release


def _label_everything(ws: Workspace) -> None:
    """Give the variants (unlabelled in the fixture) settled labels, so that a release would ship them."""
    items = ws.items(["item_id"], where="status = 'valid' AND label IS NULL")
    n = len(items)
    ws.catalog.update_items(
        list(items["item_id"]),
        {"label": ["awe"] * n, "settled": [1] * n, "num_votes": [3] * n, "agreement": [1.0] * n},
    )


def _manifest(ws: Workspace, version: str) -> dict[str, dict[str, str]]:
    items: dict[str, dict[str, str]] = json.loads((ws.releases_dir / version / "manifest.json").read_text())[
        "items"
    ]
    return items


def test_takedown_by_hash_removes_every_copy_from_later_releases(variants_ws: Workspace) -> None:
    _label_everything(variants_ws)
    pairs = [p for p in variant_pairs(variants_ws)]
    base = pairs[0][1]
    copies = {v: t for v, b, t in pairs if b == base}
    assert set(copies.values()) == {"half", "q30", "flip"}
    # dedup found the half-size copy (a cluster); the JPEG-q30 copy (pHash) and the mirrored one (embedding
    # cosine) were not merged, as can happen with strict dedup thresholds
    half = next(v for v, t in copies.items() if t == "half")
    variants_ws.catalog.update_items([half], {"status": ["duplicate"], "dup_of": [base]})
    variants_ws.config["dedup"] = {"phash_max_distance": 8, "embed_min_similarity": 0.9}
    variants_ws.save_config()
    release(variants_ws, ReleaseConfig("1.0.0"))
    sha = dict(zip(*variants_ws.items(["item_id", "sha256"]).to_dict("list").values(), strict=True))
    before = _manifest(variants_ws, "1.0.0")
    assert sha[base] in before

    outcome = CliRunner().invoke(
        app, ["takedown", "-w", str(variants_ws.root), "--sha256", sha[base], "--reason", "DMCA notice #42"]
    )
    assert outcome.exit_code == 0, outcome.output
    assert "TD-0001" in outcome.output and "already in local release(s) 1.0.0" in outcome.output
    status = dict(zip(*variants_ws.items(["item_id", "status"]).to_dict("list").values(), strict=True))
    for item in [base, *copies]:
        assert status[item] == "removed", copies.get(item, "base")
    assert sum(s == "removed" for s in status.values()) == 4  # nothing else

    second = release(variants_ws, ReleaseConfig("1.1.0"))
    after = _manifest(variants_ws, "1.1.0")
    assert not {sha[i] for i in [base, *copies]} & set(after)
    log = (second.path / "CHANGELOG.md").read_text()
    for item in [base, *copies]:
        if sha[item] in before:
            assert f"- `{sha[item]}` (take-down TD-0001)" in log
    assert "DMCA" not in log  # listed by hash, the request's text stays in the catalog
    recorded = records(variants_ws)
    assert set(recorded["sha256"]) == {sha[i] for i in [base, *copies]}
    assert (variants_ws.object_path(sha[base], "jpeg")).exists()  # no --purge: bytes kept


def test_a_copy_ingested_after_the_takedown_never_ships(
    labelled_ws: Workspace, sample_rows: list[dict[str, str]], tmp_path: Path
) -> None:
    from releasefixtures import SAMPLES, make_variants

    made = make_variants(sample_rows, SAMPLES, tmp_path / "later")
    base_file = next(iter(made.values()))
    item = labelled_ws.items(["item_id", "sha256", "source_path"], where="status = 'valid'")
    row = item[item["source_path"].str.endswith("/" + base_file)].iloc[0]
    take_down(labelled_ws, TakedownRequest("rights holder", sha256=row["sha256"], purge=True))
    assert not labelled_ws.object_path(row["sha256"], "jpeg").exists()  # purged
    # the same bytes again, and re-encoded copies, arrive later
    for name in list(
        made
    ):  # keep the half-size and q30 copies of the base (a mirror needs embeddings: see above)
        if made[name] != base_file or name.endswith("-flip.jpg"):
            (tmp_path / "later" / name).unlink()
    shutil.copy(SAMPLES / "images" / base_file, tmp_path / "later" / base_file)
    summary = ingest(
        labelled_ws,
        create_source("folder", directory=str(tmp_path / "later")),
        IngestOptions(workers=1, progress=False),
    )
    # the ingest itself re-applies the take-down: the q30 and half-size copies (pHash) are removed at once, and
    # the identical bytes it stored again are purged again
    assert summary.taken_down == 2 and summary.merged == 1
    fresh = labelled_ws.items(["item_id", "status"], where="source_path LIKE '%/later/%'")
    assert not labelled_ws.object_path(row["sha256"], "jpeg").exists()
    _label_everything(labelled_ws)
    assert enforce(labelled_ws) == {}  # idempotent
    result = release(labelled_ws, ReleaseConfig("1.0.0"))
    shipped = _manifest(labelled_ws, "1.0.0")
    removed = labelled_ws.items(["item_id", "sha256", "status"], where="status = 'removed'")
    assert row["sha256"] not in shipped and not set(removed["sha256"]) & set(shipped)
    assert len(fresh) == 2  # the identical bytes merged onto the removed item
    assert sum(result.splits.values()) == len(shipped)


def test_takedown_by_url_and_by_author(labelled_ws: Workspace) -> None:
    items = labelled_ws.items(["item_id", "author", "sha256"], where="status = 'valid'")
    url_item = items["item_id"].iloc[3]
    labelled_ws.catalog.update_items(
        [url_item],
        {
            "url": ["https://example.org/img/42.jpg"],
            "meta": [json.dumps({"landing_url": "https://example.org/p/42"})],
        },
    )
    by_page = take_down(labelled_ws, TakedownRequest("owner", url="https://example.org/p/42/"))
    assert by_page.removed == [url_item] and by_page.matched == 1
    author = items["author"].value_counts().index[0]
    expected = set(items.loc[items["author"] == author, "item_id"]) - {url_item}  # already taken down
    assert len(expected) >= 5
    by_author = take_down(labelled_ws, TakedownRequest("owner", author=author.upper()))
    # exactly the author's items (the fixture holds no copies of them), and nothing else changed
    assert sorted(by_author.removed) == sorted(expected) and by_author.matched == len(expected)
    assert by_author.takedown_id == "TD-0002"
    after = labelled_ws.items(["item_id", "status"]).set_index("item_id")["status"]
    assert set(after[after == "removed"].index) == expected | {url_item}
    assert (after.drop([*expected, url_item]) == "valid").all()


def test_bad_requests(labelled_ws: Workspace) -> None:
    with pytest.raises(TakedownError, match="exactly one"):
        take_down(labelled_ws, TakedownRequest("x", sha256="a" * 64, author="b"))
    with pytest.raises(TakedownError, match="64 hex"):
        take_down(labelled_ws, TakedownRequest("x", sha256="abc"))
    with pytest.raises(TakedownError, match="no item matches"):
        take_down(labelled_ws, TakedownRequest("x", author="Nobody At All"))
    # a hash the catalog never saw is recorded, so the image is refused if it ever arrives
    unseen = take_down(labelled_ws, TakedownRequest("pre-emptive", sha256="f" * 64))
    assert unseen.removed == [] and unseen.hashes == ["f" * 64]
    outcome = CliRunner().invoke(app, ["takedown", "-w", str(labelled_ws.root), "--reason", "x"])
    assert outcome.exit_code == 2 and "exactly one" in outcome.output


def test_takedown_removes_the_verified_crop_of_the_image(neardup_ws: Workspace) -> None:
    """A crop that geometric verification paired with the image goes with it (dedup's pairs are read)."""
    ids = names(neardup_ws)
    items = neardup_ws.items(["item_id", "sha256"]).set_index("item_id")
    result = take_down(
        neardup_ws, TakedownRequest(reason="rights holder", sha256=items.loc[ids["ocl-0083.jpg"], "sha256"])
    )
    assert {ids["ocl-0083.jpg"], ids["crop4.jpg"]} <= set(result.removed)
    assert ids["balloon-red.png"] not in result.removed and ids["lom-0005.jpg"] not in result.removed
