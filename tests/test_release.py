"""Releases: the Hub layout, a load_dataset round trip, reproducible bytes, the CHANGELOG, refusals."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from releasefixtures import *  # noqa: F403  (the workspace fixtures)
from releasefixtures import SAMPLES, one_hot
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.core.curation import LabelPolicy
from emo8.core.takedown import TakedownRequest, take_down
from emo8.core.taxonomy import EMOTIONS
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source
from emo8.release.publish import (
    FEATURE_DOCS,
    NothingToRelease,
    ReleaseConfig,
    ReleaseError,
    held_back_text,
    release,
)


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def montages(sample_rows: list[dict[str, str]], out: Path, count: int) -> None:
    """Write ``count`` new real-content images (two samples side by side), unlike any single sample."""
    out.mkdir(parents=True)
    for i in range(count):
        with (
            Image.open(SAMPLES / sample_rows[i]["file"]) as left,
            Image.open(SAMPLES / sample_rows[-1 - i]["file"]) as right,
        ):
            canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "white")
            canvas.paste(left.convert("RGB"), (0, 0))
            canvas.paste(right.convert("RGB"), (left.width, 0))
            canvas.save(out / f"montage-{i}.jpg", quality=90)


def test_load_dataset_round_trip_with_class_names(labelled_ws: Workspace, tmp_path: Path) -> None:
    import datasets

    result = release(
        labelled_ws, ReleaseConfig("1.0.0", formats=("hf", "imagefolder"), max_shard_bytes=600_000)
    )
    root = result.path
    assert root == labelled_ws.releases_dir / "1.0.0"
    shards = sorted(p.name for p in (root / "data").glob("*.parquet"))
    assert len([s for s in shards if s.startswith("train-")]) >= 2  # sharded by bytes
    for name in shards:
        split, index, _of, total = name.removesuffix(".parquet").rsplit("-", 3)
        assert split in ("train", "validation", "test") and len(index) == len(total) == 5

    ds = datasets.load_dataset(str(root), cache_dir=str(tmp_path / "hf-cache"))
    assert set(ds) == {"train", "validation", "test"}
    assert ds["train"].features["label"].names == list(EMOTIONS)
    assert list(ds["train"].features) == list(FEATURE_DOCS)
    manifest = json.loads((root / "manifest.json").read_text())
    assert {s: len(ds[s]) for s in ds} == manifest["splits"] == {k: v for k, v in result.splits.items() if v}

    catalog = labelled_ws.items(
        ["sha256", "label", "format", "person_boxes", "split"], where="status = 'valid'"
    )
    by_sha = catalog.set_index("sha256")
    for split in ds:
        rows = ds[split].select(range(min(5, len(ds[split]))))
        for row in rows:
            sha = row["sha256"]
            assert EMOTIONS[row["label"]] == by_sha.loc[sha, "label"] == manifest["items"][sha]["label"]
            assert by_sha.loc[sha, "split"] == split == manifest["items"][sha]["split"]
            stored = labelled_ws.object_path(sha, by_sha.loc[sha, "format"]).read_bytes()
            with Image.open(io.BytesIO(stored)) as original:
                assert row["image"].size == original.size
            assert row["label_distribution"] == pytest.approx(one_hot(EMOTIONS[row["label"]]))
            assert row["num_votes"] == 3 and row["agreement"] == 1.0 and row["label_source"] == "annotation"
            boxes = by_sha.loc[sha, "person_boxes"]  # parsed by Workspace.items
            assert len(row["person_boxes"]) == len(boxes)
            for got, want in zip(row["person_boxes"], boxes, strict=True):
                assert got == pytest.approx(want, rel=1e-6)  # float32
            assert row["cluster_id"] == sha
    # the bytes inside the parquet are the original bytes
    table = ds["train"].with_format("arrow")[:1]
    sha = table["sha256"][0].as_py()
    assert (
        table["image"][0]["bytes"].as_py()
        == labelled_ws.object_path(sha, by_sha.loc[sha, "format"]).read_bytes()
    )

    card = (root / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "other" and meta["task_categories"] == ["image-classification"]
    assert meta["size_categories"] == ["n<1K"] and meta["annotations_creators"] == ["crowdsourced"]
    names = meta["dataset_info"]["features"][1]["dtype"]["class_label"]["names"]
    assert [names[str(i)] for i in range(8)] == list(EMOTIONS)
    assert {c["split"] for c in meta["configs"][0]["data_files"]} == set(ds)
    for heading in ("Motivation", "Composition", "Collection process", "Preprocessing", "Annotation", "Uses",
                    "Distribution", "Maintenance"):  # fmt: skip
        assert f"## {heading}" in card
    total = sum(manifest["splits"].values())
    assert f"{total} images" in card and "0 cross-split near-duplicate pairs" in card

    tree = result.imagefolder
    assert tree == root / "imagefolder" / "emo8"
    files = sorted(tree.rglob("*.jpg"))
    assert len(files) == total
    for f in files:
        split_dir, label_dir = f.parent.parent.name, f.parent.name
        item = manifest["items"][f.stem]
        assert {"train": "train", "val": "validation", "test": "test"}[split_dir] == item["split"]
        assert label_dir == item["label"]
        assert f.read_bytes()[:3] == b"\xff\xd8\xff"


def test_two_runs_write_identical_bytes(labelled_ws: Workspace, tmp_path: Path) -> None:
    first = release(labelled_ws, ReleaseConfig("1.0.0", out=tmp_path / "a", formats=("hf", "imagefolder")))
    runner = CliRunner()
    outcome = runner.invoke(
        app,
        [
            "release",
            "-w",
            str(labelled_ws.root),
            "--version",
            "1.0.0",
            "--format",
            "both",
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    assert "release 1.0.0" in outcome.output
    a, b = _tree(first.path), _tree(tmp_path / "b")
    assert a == b and len(a) > 60
    # releases are immutable unless asked
    again = runner.invoke(
        app, ["release", "-w", str(labelled_ws.root), "--version", "1.0.0", "--out", str(tmp_path / "b")]
    )
    assert again.exit_code == 2 and "immutable" in again.output
    with pytest.raises(ReleaseError, match=r"X\.Y\.Z"):
        release(labelled_ws, ReleaseConfig("1.0"))


def test_second_release_changelog(
    labelled_ws: Workspace, sample_rows: list[dict[str, str]], tmp_path: Path
) -> None:
    first = release(labelled_ws, ReleaseConfig("1.0.0"))
    old = json.loads((first.path / "manifest.json").read_text())
    items = labelled_ws.items(
        ["item_id", "sha256", "label", "split", "split_group"], where="status = 'valid' AND settled = 1"
    )
    awe = items[items["label"] == "awe"]
    relabelled = list(awe["item_id"][:2])
    labelled_ws.catalog.update_items(relabelled, {"label": ["fear", "fear"]})
    alone = items["split_group"].map(labelled_ws.items(["split_group"])["split_group"].value_counts()) == 1
    moved = items[(items["split"] == "train") & alone].iloc[0]  # (a member of a group would be moved back)
    labelled_ws.catalog.update_items([moved["item_id"]], {"split": ["test"]})
    taken = items[(items["label"] == "amusement") & ~items["item_id"].isin(relabelled)].iloc[0]
    take_down(labelled_ws, TakedownRequest("rights holder request", sha256=taken["sha256"]))
    montages(sample_rows, tmp_path / "new", 3)
    ingest(
        labelled_ws,
        create_source("folder", directory=str(tmp_path / "new")),
        IngestOptions(workers=1, progress=False),
    )
    new = labelled_ws.items(
        ["item_id"], where="label IS NULL AND status = 'valid' AND source_path LIKE '%/new/%'"
    )
    labelled_ws.catalog.update_items(
        list(new["item_id"]),
        {"label": ["sadness"] * len(new), "settled": [1] * len(new), "num_votes": [3] * len(new),
         "agreement": [1.0] * len(new), "label_distribution": [json.dumps(one_hot("sadness"))] * len(new)},
    )  # fmt: skip

    second = release(labelled_ws, ReleaseConfig("1.1.0"))
    assert second.previous == "1.0.0"
    assert second.changes == {"added": 3, "removed": 1, "relabelled": 2, "moved": 1}
    log = (second.path / "CHANGELOG.md").read_text()
    assert log.startswith("# Changelog: Emo8\n\n## 1.1.0")
    assert "Compared with 1.0.0: 3 added, 1 removed, 2 relabelled, 1 moved." in log
    assert "### Removed by take-down (listed by hash)" in log
    assert f"- `{taken['sha256']}` (take-down TD-0001)" in log
    assert "## 1.0.0" in log and log.index("## 1.1.0") < log.index("## 1.0.0")  # history kept, newest first
    rows = {line.split("|")[1].strip(): line for line in log.splitlines() if line.startswith("| ")}
    awe_row = [c.strip() for c in rows["awe"].split("|")[1:-1]]
    assert awe_row[3] == "-2" and awe_row[7] == "2"  # change, relabelled out
    sadness_row = [c.strip() for c in rows["sadness"].split("|")[1:-1]]
    assert sadness_row[4] == "3"  # added
    for sha in awe["sha256"][:2]:
        assert f"`{sha}`: awe -> fear" in log
    new_manifest = json.loads((second.path / "manifest.json").read_text())
    assert taken["sha256"] in old["items"] and taken["sha256"] not in new_manifest["items"]
    assert new_manifest["previous"] == "1.0.0"


def test_no_labelled_items_gives_a_clear_message(plain_ws: Workspace) -> None:
    with pytest.raises(
        NothingToRelease, match=r"nothing to release: .* valid items, none with a settled label"
    ):
        release(plain_ws, ReleaseConfig("1.0.0"))
    assert not (plain_ws.releases_dir / "1.0.0").exists()
    assert not list(plain_ws.releases_dir.glob(".*partial*"))
    outcome = CliRunner().invoke(app, ["release", "-w", str(plain_ws.root), "--version", "1.0.0"])
    assert outcome.exit_code == 1 and "nothing to release" in outcome.output


def test_weak_labels_only_with_the_bootstrap_option(plain_ws: Workspace) -> None:
    items = plain_ws.items(["item_id"], where="status = 'valid'")
    ids = list(items["item_id"][:40])
    plain_ws.catalog.update_items(ids, {"weak_label": [EMOTIONS[i % 8] for i in range(len(ids))]})
    with pytest.raises(NothingToRelease, match="--allow-weak-labels"):
        release(plain_ws, ReleaseConfig("0.1.0"))
    outcome = CliRunner().invoke(
        app, ["release", "-w", str(plain_ws.root), "--version", "0.1.0", "--allow-weak-labels"]
    )
    assert outcome.exit_code == 0, outcome.output
    assert "BOOTSTRAP RELEASE" in outcome.output
    manifest = json.loads((plain_ws.releases_dir / "0.1.0" / "manifest.json").read_text())
    assert len(manifest["items"]) == 40
    assert {v["label_source"] for v in manifest["items"].values()} == {"weak"}
    card = (plain_ws.releases_dir / "0.1.0" / "README.md").read_text()
    assert "**Bootstrap release.**" in card and "- found" in card


def test_only_settled_canonical_clean_items_are_released(labelled_ws: Workspace) -> None:
    items = labelled_ws.items(["item_id", "sha256", "label"], where="status = 'valid' AND label IS NOT NULL")
    ids = list(items["item_id"])
    labelled_ws.catalog.update_items(
        ids[:2], {"status": ["duplicate", "contaminated"], "dup_of": [ids[5], None]}
    )
    labelled_ws.catalog.update_items(
        ids[2:4], {"settled": [0, 0], "unsettled_reason": ["tie", "too_few_votes"]}
    )
    labelled_ws.catalog.update_items(ids[4:5], {"agreement": [0.5]})
    result = release(labelled_ws, ReleaseConfig("2.0.0", labels=LabelPolicy(min_agreement=0.67)))
    manifest = json.loads((result.path / "manifest.json").read_text())
    for sha in items["sha256"][:5]:
        assert sha not in manifest["items"]
    assert sum(result.splits.values()) == len(items) - 5
    assert result.held_back == {"unsettled:tie": 1, "unsettled:too_few_votes": 1, "low_agreement": 1}


def test_cross_split_near_duplicates_are_refused(labelled_ws: Workspace) -> None:
    release(labelled_ws, ReleaseConfig("1.0.0"))  # assigns splits
    items = labelled_ws.items(["item_id", "phash", "split"], where="status = 'valid' AND settled = 1")
    a = items[items["split"] == "train"].iloc[0]
    b = items[items["split"] == "test"].iloc[0]
    labelled_ws.catalog.update_items([b["item_id"]], {"phash": [a["phash"]]})  # b is now a copy of a
    with pytest.raises(ReleaseError, match="cross split boundaries"):
        release(labelled_ws, ReleaseConfig("1.0.1"))
    assert not (labelled_ws.releases_dir / "1.0.1").exists()


def _section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_unknown_licences_are_counted_in_the_output_and_the_card(labelled_ws: Workspace) -> None:
    items = labelled_ws.items(["item_id"], where="status = 'valid' AND settled = 1")
    ids = list(items["item_id"][:3])
    labelled_ws.catalog.update_items(ids, {"license": [None, "unknown", ""]})
    outcome = CliRunner().invoke(app, ["release", "-w", str(labelled_ws.root), "--version", "1.0.0", "-q"])
    assert outcome.exit_code == 0, outcome.output
    total = len(items)
    assert f"3 of {total} released images have no known licence" in outcome.output
    card = (labelled_ws.releases_dir / "1.0.0" / "README.md").read_text()
    distribution = _section(card, "Distribution")
    assert f"**3 of {total} images have no known licence**" in distribution
    assert "| (unknown) | 3 |" in distribution


def test_no_unknown_licence_no_warning(labelled_ws: Workspace) -> None:
    result = release(labelled_ws, ReleaseConfig("1.0.0", progress=False))
    assert result.unknown_licences == 0 and not any("licence" in w for w in result.warnings)
    assert "no known licence" not in (result.path / "README.md").read_text()


def test_weak_labels_only_card_describes_no_annotation_round(plain_ws: Workspace) -> None:
    ids = list(plain_ws.items(["item_id"], where="status = 'valid'")["item_id"][:16])
    plain_ws.catalog.update_items(ids, {"weak_label": [EMOTIONS[i % 8] for i in range(len(ids))]})
    result = release(
        plain_ws, ReleaseConfig("0.1.0", labels=LabelPolicy(allow_weak_labels=True), progress=False)
    )
    card = (result.path / "README.md").read_text()
    annotation = _section(card, "Annotation")
    assert "weak labels 16" in annotation and "**Weak labels (16).**" in annotation
    assert "annotators perceived" not in card and "the sources implied" in _section(card, "Uses")
    for phrase in ("Label Studio", "gold", "annotator(s)", "rounds ("):
        assert phrase not in annotation, (phrase, annotation)


def test_card_names_each_label_method_with_counts(labelled_ws: Workspace) -> None:
    items = labelled_ws.items(["item_id"], where="status = 'valid' AND settled = 1")
    ids = list(items["item_id"])
    # four items lose their annotation and keep a curator's imported label instead
    labelled_ws.catalog.ensure_columns({"imported_label": "TEXT", "label_method": "TEXT"})
    labelled_ws.catalog.update_items(
        ids[:4], {"label": [None] * 4, "settled": [None] * 4, "imported_label": ["awe"] * 4}
    )
    labelled_ws.catalog.update_items(ids[4:], {"label_method": ["majority"] * len(ids[4:])})
    result = release(labelled_ws, ReleaseConfig("1.0.0", progress=False))
    annotation = _section((result.path / "README.md").read_text(), "Annotation")
    assert f"annotation rounds {len(ids) - 4}, imported labels 4" in annotation
    assert "**Imported labels (4).**" in annotation and "majority " + str(len(ids) - 4) in annotation
    assert "No gold items were used." in annotation and "Weak labels" not in annotation


def test_unsettled_items_without_a_label_are_held_back_by_reason(labelled_ws: Workspace) -> None:
    ids = list(labelled_ws.items(["item_id"], where="status = 'valid' AND settled = 1")["item_id"])
    # aggregation leaves no label on a tie or when "none / unclear" wins
    labelled_ws.catalog.update_items(
        ids[:5],
        {
            "label": [None] * 5,
            "settled": [0] * 5,
            "unsettled_reason": ["tie", "tie", "unclear", "too_few_votes", None],
            "num_votes": [4, 2, 3, 1, 3],
        },
    )
    result = release(labelled_ws, ReleaseConfig("1.0.0", progress=False))
    assert result.held_back == {
        "unsettled:tie": 2,
        "unsettled:unclear": 1,
        "unsettled:too_few_votes": 1,
        "unsettled": 1,
    }
    annotation = _section((result.path / "README.md").read_text(), "Annotation")
    assert (
        "Labelled items held back: unsettled 1, unsettled (tie) 2, unsettled (too few votes) 1, "
        in annotation
    )
    assert "unsettled (unclear) 1." in annotation and "held back: none" not in annotation
    assert held_back_text({}) == "none"
