"""Splits: group-aware, stratified, deterministic, stable, and verified free of cross-split near-duplicates."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from neardupfixtures import *  # noqa: F403  (the near-duplicate workspace)
from neardupfixtures import names
from releasefixtures import *  # noqa: F403  (the workspace fixtures)
from releasefixtures import SAMPLES, make_variants, variant_pairs
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.core.curation import dedup_pairs
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source
from emo8.release.split import (
    SPLITS,
    SplitConfig,
    SplitError,
    assign_splits,
    find_leaks,
    load_candidates,
    parse_ratios,
)


def _splits(ws: Workspace) -> dict[str, str]:
    items = ws.items(["item_id", "split"])
    return dict(zip(items["item_id"], items["split"], strict=True))


def test_near_duplicates_share_a_split_and_the_split_is_leak_free(variants_ws: Workspace) -> None:
    result, items = assign_splits(variants_ws, SplitConfig(embed_min_similarity=0.9))
    splits = _splits(variants_ws)
    pairs = variant_pairs(variants_ws)
    assert len(pairs) == 12
    for variant, base, transform in pairs:
        # half/q30 are found by pHash; the mirrored copy only by the embeddings (pHash distance ~30)
        assert splits[variant] == splits[base], transform
    assert result.leaks.clean and result.leaks.embed_model == "efficientnet-lite0"
    assert result.leaks.phash_pairs >= 8 and result.leaks.embed_pairs >= 4
    assert result.counts["train"] > result.counts["test"] > result.counts["validation"] > 0
    assert sum(result.counts.values()) == len(items) == int((items["status"] == "valid").sum())
    report = json.loads((variants_ws.reports_dir / "split.json").read_text())
    assert report["leaks"]["clean"] is True and report["counts"] == result.counts


def test_the_leak_check_finds_a_near_duplicate_pair_across_splits(variants_ws: Workspace) -> None:
    _result, items = assign_splits(variants_ws, SplitConfig(embed_min_similarity=0.9))
    variant, base, _t = next(p for p in variant_pairs(variants_ws) if p[2] == "q30")
    valid = items[items["status"] == "valid"].copy()
    other = next(s for s in SPLITS if s != valid.loc[valid["item_id"] == base, "split"].item())
    valid.loc[valid["item_id"] == variant, "split"] = other
    report = find_leaks(valid, phash_max_distance=8)
    assert not report.clean and report.leaks[0]["check"] == "phash"
    assert {report.leaks[0]["a"], report.leaks[0]["b"]} == set(
        valid.loc[valid["item_id"].isin([variant, base]), "sha256"]
    )
    # without the near-duplicate rule, copies land in different splits, and the verification says so
    pairs = variant_pairs(variants_ws)
    for seed in range(10):
        config = SplitConfig(group_by=("cluster",), reassign=True, seed=seed, embed_min_similarity=0.9)
        result, out = assign_splits(variants_ws, config, write=False)
        split_of = dict(zip(out["item_id"], out["split"], strict=True))
        sha_of = dict(zip(out["item_id"], out["sha256"], strict=True))
        crossing = [(v, b) for v, b, _t in pairs if split_of[v] != split_of[b]]
        if crossing:
            break
    assert crossing and not result.leaks.clean
    reported = {frozenset((leak["a"], leak["b"])) for leak in result.leaks.leaks}
    for v, b in crossing:
        assert frozenset((sha_of[v], sha_of[b])) in reported


def test_existing_items_keep_their_split_when_items_are_added(
    labelled_ws: Workspace, sample_rows: list[dict[str, str]], tmp_path: Path
) -> None:
    first, _ = assign_splits(labelled_ws)
    before = _splits(labelled_ws)
    made = make_variants(sample_rows, SAMPLES, tmp_path / "more")
    ingest(
        labelled_ws,
        create_source("folder", directory=str(tmp_path / "more")),
        IngestOptions(workers=1, progress=False),
    )
    second, _ = assign_splits(labelled_ws)
    after = _splits(labelled_ws)
    assert all(after[i] == s for i, s in before.items()), "an existing item changed split"
    assert second.kept == len(before) and second.moved == 0 and second.new == len(made)
    for variant, base, transform in variant_pairs(labelled_ws):
        if transform != "flip":  # no embeddings here: pHash links half and q30 copies to their base
            assert after[variant] == after[base]
    # re-running on the unchanged catalog writes nothing
    stamp = labelled_ws.items(["item_id", "updated_at"])
    third, _ = assign_splits(labelled_ws)
    assert third.new == 0 and third.moved == 0
    assert labelled_ws.items(["item_id", "updated_at"]).equals(stamp)
    assert first.leaks.clean and second.leaks.clean


def test_same_seed_same_splits_other_seed_other_splits(
    labelled_ws: Workspace, copy_workspace: Callable[[Workspace, str], Workspace]
) -> None:
    twin = copy_workspace(labelled_ws, "twin")
    assign_splits(labelled_ws, SplitConfig(seed=7, reassign=True))
    assign_splits(twin, SplitConfig(seed=7, reassign=True))
    assert _splits(labelled_ws) == _splits(twin)
    # The seed orders groups of equal size and breaks ties. The samples form 25 groups, 16 of them singletons, so
    # two given seeds coincide now and then (2 pairs among 12 seeds, measured); six other seeds all coinciding
    # with seed 7 would mean the seed is ignored.
    others = []
    for seed in range(8, 14):
        other = copy_workspace(labelled_ws, f"seed-{seed}")
        assign_splits(other, SplitConfig(seed=seed, reassign=True))
        others.append(_splits(other))
    assert any(splits != _splits(labelled_ws) for splits in others)


def test_groups_clusters_and_authors_stay_together(labelled_ws: Workspace) -> None:
    items = labelled_ws.items(["item_id", "author"], where="status = 'valid'")
    ids = list(items["item_id"])
    # a dedup cluster: ids[1] and ids[2] are duplicates of ids[0]; an author with 6 images
    labelled_ws.catalog.update_items(
        ids[:3], {"status": ["valid", "duplicate", "duplicate"], "dup_of": [None, ids[0], ids[0]]}
    )
    labelled_ws.catalog.update_items(ids[10:16], {"author": ["Jane Roe"] * 6})
    result, out = assign_splits(labelled_ws, SplitConfig(seed=1))
    splits = dict(zip(out["item_id"], out["split"], strict=True))
    assert len({splits[i] for i in ids[:3]}) == 1
    assert len({splits[i] for i in ids[10:16]}) == 1
    assert result.leaks.clean


def test_stratified_by_label_and_domain(labelled_ws: Workspace) -> None:
    result, items = assign_splits(labelled_ws, SplitConfig(group_by=("cluster", "near_duplicate")))
    # without author groups, every stratum with >= 7 items reaches test, and train keeps the majority of each
    valid = items[items["status"] == "valid"]
    for (label, domain), group in valid.groupby([valid["label"].fillna("?"), valid["domain"].fillna("?")]):
        counts = Counter(group["split"])
        if len(group) >= 7:
            assert counts["test"] >= 1, (label, domain, counts)
            assert counts["train"] >= len(group) / 2, (label, domain, counts)
    total = sum(result.counts.values())
    assert abs(result.counts["train"] / total - 0.8) < 0.06
    assert abs(result.counts["test"] / total - 0.15) < 0.06


def test_a_new_link_across_splits_moves_items_to_keep_them_together(labelled_ws: Workspace) -> None:
    _, items = assign_splits(labelled_ws, SplitConfig(seed=2))
    valid = items[items["status"] == "valid"]
    a = valid[valid["split"] == "train"].iloc[0]
    b = valid[valid["split"] == "test"].iloc[0]
    # b turns out to be a re-encoded copy of a (same pHash): they can no longer sit in different splits
    labelled_ws.catalog.update_items([b["item_id"]], {"phash": [a["phash"]]})
    result, out = assign_splits(labelled_ws, SplitConfig(seed=2))
    splits = dict(zip(out["item_id"], out["split"], strict=True))
    assert splits[a["item_id"]] == splits[b["item_id"]]
    assert result.moved >= 1 and result.leaks.clean


def test_invalid_ratios_are_refused(plain_ws: Workspace) -> None:
    with pytest.raises(SplitError, match="sum to 1"):
        assign_splits(plain_ws, SplitConfig(ratios=(0.8, 0.1, 0.2)))
    assert parse_ratios("80,5,15") == (0.8, 0.05, 0.15)
    with pytest.raises(SplitError):
        parse_ratios("0.8,0.2")
    result = CliRunner().invoke(app, ["split", "-w", str(plain_ws.root), "--ratios", "0.5,0.5,0.5"])
    assert result.exit_code == 2 and "sum to 1" in result.output


def test_split_command(labelled_ws: Workspace) -> None:
    result = CliRunner().invoke(
        app, ["split", "-w", str(labelled_ws.root), "--ratios", "0.7,0.1,0.2", "--seed", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "0 cross-split near-duplicate pairs" in result.output
    saved = Workspace.open(labelled_ws.root).config["split"]
    assert saved["ratios"] == [0.7, 0.1, 0.2] and saved["seed"] == 4
    assert set(load_candidates(labelled_ws)["split"]) == set(SPLITS)


def test_a_verified_crop_can_never_sit_on_the_other_side_of_a_split(neardup_ws: Workspace) -> None:
    """The 4 %-per-side crop of a tall clip-art and its original share a split, and the leak check reads dedup's
    verified pairs: moving the crop to another split is reported as a leak ("dedup" check)."""
    ids = names(neardup_ws)
    result, items = assign_splits(neardup_ws, SplitConfig(progress=False))
    splits = dict(zip(items["item_id"], items["split"], strict=True))
    assert splits[ids["crop4.jpg"]] == splits[ids["ocl-0083.jpg"]]
    assert result.leaks.clean and result.leaks.dedup_pairs == 0  # the crop is a duplicate: not released
    assert "dedup-confirmed pairs" in result.leaks.summary()
    # a crop the catalog still called valid, placed in another split: the verified pair catches it
    rows = items.copy()
    crop = rows["item_id"] == ids["crop4.jpg"]
    rows.loc[crop, "status"] = "valid"
    rows.loc[crop, "split"] = next(s for s in SPLITS if s != splits[ids["ocl-0083.jpg"]])
    valid = rows[rows["status"] == "valid"]
    report = find_leaks(valid, phash_max_distance=0, pairs=dedup_pairs(neardup_ws))
    assert not report.clean and {leak["check"] for leak in report.leaks} == {"dedup"}
    assert report.not_deduplicated == 0
    # without dedup's pairs (pHash at distance 0) the same crop goes unnoticed, and the report says why
    blind = find_leaks(valid, phash_max_distance=0)
    assert blind.clean and blind.not_deduplicated == len(valid)


def test_the_split_groups_dedup_pairs_even_for_valid_items(neardup_ws: Workspace) -> None:
    """The near_duplicate rule links every dedup-confirmed pair, so even items that stayed valid (e.g. after a
    stricter re-run) keep their verified partner's split."""
    ids = names(neardup_ws)
    pairs = dedup_pairs(neardup_ws)
    assert pairs is not None
    rows = pairs.rows([ids["crop4.jpg"], ids["ocl-0083.jpg"], ids["balloon-red.png"]])
    assert rows.tolist() == [[1, 0]] or rows.tolist() == [[0, 1]]
