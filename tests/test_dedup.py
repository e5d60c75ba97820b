"""Dedup: tiers on real images, the chaining guard, re-runs, contamination, reports, and the search primitives."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import datasets
import numpy as np
import pandas as pd
import pytest
from dedupfixtures import *  # noqa: F403  (the embedded workspaces)
from dedupfixtures import COPIED, DupSet, ingest_folder, make_copy
from neardupfixtures import *  # noqa: F403  (the near-duplicate workspace)
from neardupfixtures import EDITS, ND_CONFIG, balloon, names
from PIL import Image, ImageOps
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.core.curation import dedup_pairs
from emo8.core.similarity import (
    Edges,
    SearchConfig,
    cosine_pairs,
    cosine_topk,
    guarded_clusters,
    hamming_pairs,
    hex_to_codes,
    mih_plan,
    popcount,
    probe_lists,
    verified_clusters,
)
from emo8.dedup.tiers import (
    DEDUP_COLUMNS,
    EMBED_MIN_SIMILARITY,
    PHASH_MAX_DISTANCE,
    DedupConfig,
    canonical_order,
    dedup,
    licence_rank,
)
from emo8.dedup.verify import FeatureCache, VerifyConfig, correlation, grey, verify_pairs
from emo8.embed.run import EmbedConfig, embed, load_embeddings

SAMPLES = Path(__file__).resolve().parents[1] / "emo8" / "samples" / "images"
CONFIG = DedupConfig(workers=1, device="cpu")


def _frame(ws: Workspace) -> pd.DataFrame:
    items = ws.items(["item_id", "source_path", "status", "width", "height", "phash", *DEDUP_COLUMNS])
    items["name"] = [Path(p).name for p in items.source_path]
    return items


def _by_name(items: pd.DataFrame) -> dict[str, pd.Series]:
    return {row["name"]: row for _, row in items.iterrows()}


# -- tiers on the bundled real images -----------------------------------------------------------------------------


def test_tiers_find_the_transformed_copies_and_merge_no_distinct_images(
    dup_ws: Workspace, dup_template: DupSet
) -> None:
    result = dedup(dup_ws, CONFIG)
    items = _frame(dup_ws)
    rows = _by_name(items)
    name_of = dict(zip(items.item_id, items.name, strict=True))
    for copy_name, (original, transform) in dup_template.copies.items():
        row = rows[copy_name]
        assert row["status"] == "duplicate", (copy_name, row.to_dict())
        assert name_of[row["dup_of"]] == original, copy_name  # the original is canonical (larger or earlier)
        expected = {"half": ("perceptual",), "q30": ("perceptual",), "flip": ("verified", "semantic")}[
            transform
        ]
        assert row["dup_tier"] in expected, (copy_name, row["dup_tier"])
        if row["dup_tier"] == "verified":  # the mirrored copy: verified against the mirrored keypoints
            assert row["dup_inliers"] >= CONFIG.verification.min_inliers
    # identical pixels in two formats, a 90-degree rotation of skm-0006: the exact tier pairs them, and geometric
    # verification (rotation-invariant keypoints) puts them in skm-0006's cluster
    for name in ("zz-exact-a.bmp", "zz-exact-b.png"):
        assert name_of[rows[name]["dup_of"]] == "skm-0006.jpg" and rows[name]["dup_tier"] in (
            "verified",
            "exact",
        )
    pairs = dedup_pairs(dup_ws)
    assert pairs is not None
    exact = pairs.pairs[pairs.pairs.tier == "exact"]
    assert {name_of[exact.a.iat[0]], name_of[exact.b.iat[0]]} == {"zz-exact-a.bmp", "zz-exact-b.png"}
    # every bundled sample is a distinct image: none is marked a duplicate of another
    originals = items[~items.name.str.startswith("zz-")]
    assert (originals.status == "valid").all(), originals[originals.status != "valid"][["name", "dup_of"]]
    copies_of = {c: o for c, (o, _) in dup_template.copies.items()}
    for _, row in items[items.status == "duplicate"].iterrows():
        canonical = name_of[row["dup_of"]]
        assert canonical in (copies_of.get(row["name"]), "skm-0006.jpg"), (row["name"], canonical)
    report = result.report
    assert report["clusters"] == len(COPIED) + 1
    assert report["cluster_size_histogram"] == {"3": 1, "4": len(COPIED)}
    per_tier = report["duplicates_per_tier"]
    assert per_tier["perceptual"] == 2 * len(COPIED)
    assert (
        per_tier.get("verified", 0) + per_tier.get("semantic", 0) + per_tier.get("exact", 0)
        == len(COPIED) + 2
    )
    assert report["verification"]["pairs"] > 0 and report["verification"]["pairs_per_second"] > 0


def test_capped_matches_keep_the_clusters_when_the_canonical_ranks_first(dup_ws: Workspace) -> None:
    """Each copy keeps only its single best-ranked match per tier: that is its original (the larger or earlier
    image), so the clusters are those of the uncapped run, and the report says matches were dropped."""
    full = dedup(dup_ws, replace(CONFIG, dry_run=True, search=SearchConfig()))
    capped = dedup(dup_ws, replace(CONFIG, dry_run=True, search=SearchConfig(max_neighbours=1)))
    columns = ["item_id", "status", "dup_of", "dup_tier"]
    pd.testing.assert_frame_equal(full.frame[columns], capped.frame[columns])
    assert not any("matched more than" in note for note in full.report["notes"])
    assert any(note.startswith("perceptual:") and "matched more than 1 others" in note
               for note in capped.report["notes"])  # fmt: skip


def test_scores_are_direct_matches_to_the_canonical(dup_ws: Workspace) -> None:
    """The chaining guard's promise, checked on the real run: every member matches its canonical directly."""
    dedup(dup_ws, CONFIG)
    items = _frame(dup_ws).set_index("item_id")
    ids, matrix = load_embeddings(dup_ws, "efficientnet-lite0")
    row_of = {item_id: k for k, item_id in enumerate(ids)}
    for item_id, row in items[items.status == "duplicate"].iterrows():
        canon = items.loc[row["dup_of"]]
        assert canon["status"] == "valid" and pd.isna(canon["dup_of"])
        if row["dup_tier"] == "perceptual":
            dist = int(popcount(hex_to_codes([row["phash"]]) ^ hex_to_codes([canon["phash"]]))[0])
            assert dist <= PHASH_MAX_DISTANCE and abs(row["dup_score"] - (1 - dist / 64)) < 1e-3
        elif row["dup_tier"] == "semantic":
            a = np.asarray(matrix[row_of[str(item_id)]], np.float32)
            b = np.asarray(matrix[row_of[str(row["dup_of"])]], np.float32)
            assert float(a @ b) >= EMBED_MIN_SIMILARITY["efficientnet-lite0"] - 1e-3


def test_chaining_guard_splits_a_chain_that_union_find_would_merge() -> None:
    # a - b - c - d - e: neighbours match, nothing else does
    chain = Edges.build([(1, np.arange(4), np.arange(1, 5), np.full(4, 0.9, np.float32))])
    clusters = guarded_clusters(5, chain, np.arange(5))
    assert len(set(clusters.component.tolist())) == 1  # plain transitive closure: one cluster of 5
    assert clusters.canonical.tolist() == [0, 0, 2, 2, 4]  # guarded: a{b}, c{d}, e
    canonical, member = clusters.canonical, clusters.is_member
    matched = {(int(i), int(j)) for i, j in zip(chain.i, chain.j, strict=True)}
    for k in np.flatnonzero(member):
        assert (min(k, canonical[k]), max(k, canonical[k])) in matched
    # the best-ranked item leads, and a member joins the canonical of its strongest tier
    star = Edges.build([
        (2, np.array([0]), np.array([1]), np.array([0.95], np.float32)),
        (1, np.array([2]), np.array([1]), np.array([0.9], np.float32)),
    ])  # fmt: skip
    clusters = guarded_clusters(3, star, np.array([0, 2, 1]))
    assert clusters.canonical.tolist() == [0, 2, 2] and clusters.tier.tolist() == [-1, 1, -1]


def test_chain_of_real_crops_is_not_merged_into_one_cluster(tmp_path: Path) -> None:
    """Progressive crops of one photo: each matches the next, the ends do not match each other."""
    base = Image.open(SAMPLES / "lom-0005.jpg").convert("RGB")
    folder = tmp_path / "chain"
    folder.mkdir()
    w, h = base.size
    steps = 12
    for k in range(steps):
        left = int(w * 0.05 * k)  # a window sliding right, 5% of the width per step
        base.crop((left, 0, left + w // 2, h)).resize((w // 2, h)).save(
            folder / f"step-{k:02d}.jpg", quality=92
        )
    ws = Workspace.init(tmp_path / "ws")
    ingest_folder(ws, folder)
    embed(ws, EmbedConfig(device="cpu", workers=0, progress=False))
    result = dedup(ws, CONFIG)
    items = _frame(ws)
    assert result.report["matched_components"] == 1  # transitive closure would make one cluster of 12
    assert result.report["clusters"] >= 2
    groups = items.dup_of.fillna(items.item_id)
    assert groups.iloc[0] != groups.iloc[-1]  # the two ends of the chain are not merged
    members = items[items.status == "duplicate"]
    semantic = members[members.dup_tier == "semantic"]
    assert (semantic.dup_score >= EMBED_MIN_SIMILARITY["efficientnet-lite0"] - 1e-3).all()
    verified = members[members.dup_tier == "verified"]
    assert (verified.dup_inliers >= CONFIG.verification.min_inliers).all()


# -- canonical policy, re-runs --------------------------------------------------------------------------------------


def test_canonical_policy_pixels_then_licence_then_earliest() -> None:
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d", "e"],
            "width": [100, 200, 200, 200, 200],
            "height": [100, 100, 100, 100, 100],
            "license": ["CC0-1.0", "CC-BY-NC-4.0", "CC-BY-4.0", "CC-BY-4.0", None],
            "ingested_at": ["2024-01-01"] * 3 + ["2023-01-01", "2022-01-01"],
        }
    )
    order = canonical_order(items, np.zeros(5, bool), ())
    assert order[0] == 3  # no preference: largest, a known licence before none, then earliest: d
    from emo8.dedup.tiers import DEFAULT_LICENCE_PREFERENCE as PREF

    order = canonical_order(items, np.zeros(5, bool), PREF)
    assert items.item_id[order].tolist() == ["d", "c", "b", "e", "a"]
    assert canonical_order(items, np.array([True, False, False, False, False]), PREF)[0] == 0  # sticky first
    assert (
        licence_rank("CC0-1.0")
        < licence_rank("CC-BY-4.0")
        < licence_rank("CC-BY-SA-3.0")
        < licence_rank(None)
    )
    assert licence_rank("GPL-3.0-or-later") < licence_rank("CC-BY-NC-4.0") < licence_rank("")


def test_rerun_extends_clusters_and_keeps_earlier_decisions(dup_ws: Workspace, tmp_path: Path) -> None:
    first = dedup(dup_ws, CONFIG)
    before = _frame(dup_ws).set_index("item_id")
    again = dedup(dup_ws, CONFIG)
    assert again.changed == 0  # idempotent
    # new copies of an image that already has a cluster: a smaller one and a larger one
    folder = tmp_path / "later"
    folder.mkdir()
    src = SAMPLES / COPIED[0]
    Image.open(src).convert("RGB").save(folder / "later-q30.jpg", quality=35)  # other bytes than zz-q30
    big = Image.open(src).convert("RGB")
    big.resize((big.width * 2, big.height * 2), Image.Resampling.LANCZOS).save(
        folder / "later-big.jpg", quality=95
    )
    ingest_folder(dup_ws, folder)
    assert embed(dup_ws, EmbedConfig(device="cpu", workers=0, progress=False)).new == 2
    third = dedup(dup_ws, CONFIG)
    after = _frame(dup_ws).set_index("item_id")
    for item_id, row in before.iterrows():  # nothing decided earlier changes
        assert after.loc[item_id, "status"] == row["status"]
        assert after.loc[item_id, "dup_of"] == row["dup_of"] or (
            pd.isna(row["dup_of"]) and pd.isna(after.loc[item_id, "dup_of"])
        )
    rows = _by_name(after.reset_index())
    canonical = rows[COPIED[0]]["item_id"]
    assert rows["later-q30.jpg"]["dup_of"] == canonical
    assert rows["later-big.jpg"]["dup_of"] == canonical  # the earlier canonical stays canonical (sticky)
    assert third.changed == 2 and third.report["clusters"] == first.report["clusters"]


def test_dry_run_leaves_the_catalog_alone(dup_ws: Workspace) -> None:
    result = dedup(dup_ws, DedupConfig(dry_run=True, workers=1, device="cpu"))
    assert result.changed == 0 and result.report["dry_run"] is True
    assert set(dup_ws.items(["status"]).status) == {"valid"}
    assert result.report["status"]["duplicate"] > 0


def test_thresholds_control_the_tiers(dup_ws: Workspace) -> None:
    strict = dedup(
        dup_ws, DedupConfig(phash_max_distance=0, embed_min_similarity=0.999, workers=1, device="cpu")
    )
    assert strict.report["thresholds"]["phash_max_distance"] == 0
    assert strict.report["duplicates_per_tier"].get("semantic", 0) == 0
    hashes_only = dedup(dup_ws, DedupConfig(tiers=("exact", "perceptual"), workers=1, device="cpu"))
    assert "semantic" not in hashes_only.report["duplicates_per_tier"]
    flipped = _by_name(_frame(dup_ws))[f"zz-flip-{Path(COPIED[0]).stem}.jpg"]
    assert flipped["status"] == "valid"  # only the semantic tier catches a mirror image


# -- contamination ------------------------------------------------------------------------------------------------


def test_items_matching_a_benchmark_folder_become_contaminated(dup_ws: Workspace, tmp_path: Path) -> None:
    test_split = tmp_path / "benchmark" / "test" / "joy"
    test_split.mkdir(parents=True)
    make_copy(SAMPLES / "skm-0006.jpg", "half", test_split / "leaked-resized.jpg")
    make_copy(SAMPLES / "gcq-0086.jpg", "flip", test_split / "leaked-mirrored.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), np.uint8)).save(
        test_split / "noise.png"
    )
    result = dedup(dup_ws, DedupConfig(against=str(tmp_path / "benchmark"), workers=1, device="cpu"))
    items = _frame(dup_ws)
    bad = items[items.status == "contaminated"]
    names = set(bad.name)
    # skm-0006's rotated PNG/BMP copies in the workspace leak with it (its cluster)
    assert names == {"skm-0006.jpg", "gcq-0086.jpg", "zz-exact-a.bmp", "zz-exact-b.png"}
    by = dict(zip(bad.name, bad.contaminated_by, strict=True))
    assert by["skm-0006.jpg"].endswith("leaked-resized.jpg") and by["gcq-0086.jpg"].endswith(
        "leaked-mirrored.jpg"
    )
    tiers = dict(zip(bad.name, bad.contaminated_tier, strict=True))
    assert tiers["skm-0006.jpg"] == "perceptual" and tiers["gcq-0086.jpg"] in ("verified", "semantic")
    assert {tiers["zz-exact-a.bmp"], tiers["zz-exact-b.png"]} <= {"cluster", "verified"}
    assert result.report["contamination"]["reference_images"] == 3
    # a later run without --against keeps them contaminated
    dedup(dup_ws, CONFIG)
    assert set(_frame(dup_ws).query("status == 'contaminated'").name) == names


def test_contamination_spreads_to_the_cluster_and_reads_hf_datasets(
    dup_ws: Workspace, tmp_path: Path
) -> None:
    stem = Path(COPIED[1]).stem
    leaked = dup_ws.items(["source_path"])
    flip_path = next(p for p in leaked.source_path if Path(p).name == f"zz-flip-{stem}.jpg")
    ds = datasets.Dataset.from_dict({"image": [flip_path], "label": [0]}).cast_column(
        "image", datasets.Image()
    )
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "hf"))
    # match the test set by bytes only: just the mirrored copy matches directly
    config = DedupConfig(against=str(tmp_path / "hf"), against_tiers=("exact",), workers=1, device="cpu")
    result = dedup(dup_ws, config)
    items = _frame(dup_ws)
    bad = items[items.status == "contaminated"].set_index("name")
    family = {COPIED[1], f"zz-half-{stem}.jpg", f"zz-q30-{stem}.jpg", f"zz-flip-{stem}.jpg"}
    assert set(bad.index) == family  # the whole cluster: a copy of a leaked image leaks too
    assert bad.loc[f"zz-flip-{stem}.jpg", "contaminated_tier"] == "exact"
    assert bad.loc[f"zz-flip-{stem}.jpg", "contaminated_by"].startswith("hf://")
    others = bad.drop(index=f"zz-flip-{stem}.jpg")
    assert (others.contaminated_tier == "cluster").all()
    flip_id = items.set_index("name").loc[f"zz-flip-{stem}.jpg", "item_id"]
    assert (others.contaminated_by == f"cluster:{flip_id}").all()
    assert result.report["contamination"]["direct_matches"] == 1


# -- reports and CLI ------------------------------------------------------------------------------------------------


def test_reports_json_and_self_contained_gallery(dup_ws: Workspace) -> None:
    result = dedup(dup_ws, DedupConfig(semdedup_eps=(0.01, 0.5), workers=1, device="cpu"))
    report = json.loads((dup_ws.reports_dir / "dedup.json").read_text())
    assert report["thresholds"]["phash_max_distance"] == PHASH_MAX_DISTANCE
    assert set(report["pairs_per_tier"]) == {"exact", "perceptual", "verified", "semantic"}
    assert report["cluster_size_histogram"] and report["largest_cluster"] >= 2
    rates = report["semdedup"]["eps"]
    assert rates["0.01"]["rate"] <= rates["0.5"]["rate"] and rates["0.5"]["removed"] > 0
    html = (dup_ws.reports_dir / "dedup.html").read_text()
    assert html.count("data:image/jpeg;base64,") >= 2 * report["clusters"]
    assert not re.search(r'src="(?!data:)', html)  # no external resource
    sizes = [int(s) for s in re.findall(r"cluster of (\d+)", html)]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) == report["clusters"]
    assert "perceptual" in html and "semantic" in html
    assert result.html_path == dup_ws.reports_dir / "dedup.html"


def test_semdedup_apply_marks_the_thinned_items(dup_ws: Workspace) -> None:
    result = dedup(dup_ws, DedupConfig(semdedup_eps=(0.5,), semdedup_apply=True, workers=1, device="cpu"))
    thinned = _frame(dup_ws).query("dup_tier == 'semdedup'")
    assert len(thinned) == result.report["semdedup"]["eps"]["0.5"]["removed"] > 0
    assert result.report["semdedup"]["applied_eps"] == 0.5


def test_cli_dedup_prints_a_summary_and_refuses_unknown_models(dup_ws: Workspace) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["dedup", "-w", str(dup_ws.root), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (
        "dedup (dry run)" in result.output and "cluster(s)" in result.output and "dedup.html" in result.output
    )
    bad = runner.invoke(app, ["dedup", "-w", str(dup_ws.root), "--model", "timm:resnet18"])
    assert bad.exit_code == 2 and "emo8 embed" in bad.output
    capped = runner.invoke(app, ["dedup", "-w", str(dup_ws.root), "--dry-run", "--max-neighbours", "1"])
    assert (
        capped.exit_code == 0
        and "note: perceptual:" in capped.output
        and "matched more than 1" in capped.output
    )


# -- search primitives ----------------------------------------------------------------------------------------------


def _planted_codes(n: int, planted: int, max_flips: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    for k in range(planted):
        flips = rng.choice(64, int(rng.integers(0, max_flips + 1)), replace=False)
        mask = np.uint64(sum(1 << int(b) for b in flips))
        codes[planted + k] = codes[k] ^ mask
    return codes


@pytest.mark.parametrize("max_distance", [3, 8, 10])
def test_multi_index_hashing_is_exact(max_distance: int) -> None:
    codes = _planted_codes(20_000, 2_000, max_distance + 2)
    flat = hamming_pairs(codes, max_distance, config=SearchConfig(binary_flat_max_work=10**12))
    mih = hamming_pairs(codes, max_distance, config=SearchConfig(binary_flat_max_work=0))
    want = set(zip(flat.i.tolist(), flat.j.tolist(), strict=True))
    assert want == set(zip(mih.i.tolist(), mih.j.tolist(), strict=True))
    assert len(flat) >= 1000 and (flat.value <= max_distance).all() and (flat.i < flat.j).all()
    chunks, radius = mih_plan(max_distance, 1_000_000)
    assert sum(bits for _, bits in chunks) == 64 and len(chunks) * (radius + 1) > max_distance


def test_ivf_cosine_search_finds_what_flat_search_finds() -> None:
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((50, 48)).astype(np.float32)
    x = centres[rng.integers(0, 50, 8000)] + rng.standard_normal((8000, 48)).astype(np.float32) * 0.6
    x[4000:4500] = x[:500] + rng.standard_normal((500, 48)).astype(np.float32) * 0.08
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    flat = cosine_pairs(x.astype(np.float16), 0.9, config=SearchConfig(float_flat_max=10**9))
    ivf = cosine_pairs(x.astype(np.float16), 0.9, config=SearchConfig(float_flat_max=0, nprobe=4))
    want = set(zip(flat.i.tolist(), flat.j.tolist(), strict=True))
    got = set(zip(ivf.i.tolist(), ivf.j.tolist(), strict=True))
    assert len(want) >= 500 and got <= want and len(got & want) / len(want) >= 0.99
    cross = cosine_pairs(x[:100], 0.9, queries=x[4000:4100], config=SearchConfig(float_flat_max=0))
    assert {(i, j) for i, j in zip(cross.i.tolist(), cross.j.tolist(), strict=True) if i == j} == {
        (k, k) for k in range(100)
    }


@pytest.mark.parametrize("flat", [True, False])
def test_a_huge_group_of_look_alikes_gives_bounded_pairs_and_one_cluster(flat: bool) -> None:
    """3,000 items with one pHash (blank placeholders) among distinct ones: uncapped that is 4.5M pairs; capped
    at 16 each item keeps its 16 best-ranked matches, which include the group's best item, so the guard still
    makes one cluster with the best-ranked item as canonical, and the planted pairs elsewhere are all kept."""
    codes = _planted_codes(6_000, 500, 4)
    blob = np.arange(3_000, 6_000)
    codes[blob] = np.uint64(0x8000000000000000)
    rng = np.random.default_rng(3)
    rank = rng.permutation(len(codes))
    config = SearchConfig(max_neighbours=16, binary_flat_max_work=10**12 if flat else 0)
    capped = hamming_pairs(codes, 4, config=config, priority=rank)
    full = hamming_pairs(codes, 4, config=replace(config, max_neighbours=0))
    assert len(full) >= 3_000 * 2_999 // 2 and full.capped == 0
    assert len(capped) <= 3_000 * 16 + 2_000 and capped.capped >= 3_000
    pairs = set(zip(capped.i.tolist(), capped.j.tolist(), strict=True))
    assert (capped.i < capped.j).all() and len(pairs) == len(capped)
    planted = {(k, 500 + k) for k in range(500)}  # outside the blob nothing is capped
    assert planted <= {(i, j) for i, j in pairs if j < 3_000}
    edges = Edges.build([(1, capped.i, capped.j, 1.0 - capped.value / 64.0)])
    clusters = guarded_clusters(len(codes), edges, np.argsort(rank))
    best = blob[np.argmin(rank[blob])]
    assert (clusters.canonical[blob] == best).all()


@pytest.mark.parametrize("flat", [True, False])
def test_repeated_codes_are_searched_once_and_give_every_pair_when_nothing_is_capped(flat: bool) -> None:
    """With a cap that no item reaches, the grouped search over distinct codes returns exactly the pairs (and
    distances) of the plain search: identical codes pair with each other at 0 and with each other's matches."""
    rng = np.random.default_rng(5)
    codes = _planted_codes(12_000, 1_000, 4)
    for k in range(0, 1_500, 3):  # 500 codes repeated three times
        codes[8_000 + k : 8_000 + k + 3] = codes[k]
    base = SearchConfig(binary_flat_max_work=10**12 if flat else 0)
    plain = hamming_pairs(codes, 4, config=base)
    grouped = hamming_pairs(
        codes, 4, config=replace(base, max_neighbours=64), priority=rng.permutation(12_000)
    )
    assert grouped.capped == 0 and len(plain) > 2_000
    triples = set(zip(plain.i.tolist(), plain.j.tolist(), plain.value.tolist(), strict=True))
    assert triples == set(zip(grouped.i.tolist(), grouped.j.tolist(), grouped.value.tolist(), strict=True))


def test_capped_cosine_search_keeps_the_best_ranked_matches() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1_500, 32)).astype(np.float32)
    x[:600] = x[0] + rng.standard_normal((600, 32)).astype(np.float32) * 0.01  # 600 near-identical images
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rank = rng.permutation(len(x))
    best = int(np.argmin(rank[:600]))
    flat = cosine_pairs(x, 0.95, config=SearchConfig(max_neighbours=8, float_flat_max=10**9), priority=rank)
    assert flat.capped == 600 and len(flat) <= 600 * 8
    partners = set(flat.j[flat.i == best].tolist()) | set(flat.i[flat.j == best].tolist())
    assert partners == set(range(600)) - {best}  # everyone kept its match with the best-ranked item
    # IVF: the same bound, and only true pairs (its blob recall is IVF's own approximation, capped or not)
    ivf_config = SearchConfig(max_neighbours=8, float_flat_max=0, nprobe=4)
    ivf = cosine_pairs(x, 0.95, config=ivf_config, priority=rank)
    full = cosine_pairs(x, 0.95, config=SearchConfig(float_flat_max=10**9))
    assert ivf.capped > 0 and len(ivf) <= 600 * 8 * ivf_config.nprobe_max < len(full)  # 8 per probed list
    assert set(zip(ivf.i.tolist(), ivf.j.tolist(), strict=True)) <= set(
        zip(full.i.tolist(), full.j.tolist(), strict=True)
    )


def test_no_workspace_needed_for_a_copy(tmp_path: Path, dup_template: DupSet) -> None:
    """The fixture template itself stays untouched by the tests (each works on its own copy)."""
    shutil.copytree(dup_template.root, tmp_path / "copy")
    ws = Workspace.open(tmp_path / "copy")
    assert set(ws.items(["status"]).status) == {"valid"}


# -- whole-image embeddings, geometric verification, clusters that stay whole -------------------------------------


def test_a_small_crop_of_a_tall_clipart_is_found(neardup_ws: Workspace) -> None:
    """A 4 %-per-side crop of a 362 x 512 clip-art: the case that leaked into a release."""
    ids = names(neardup_ws)
    items = _frame(neardup_ws).set_index("item_id")
    crop = items.loc[ids["crop4.jpg"]]
    assert crop["status"] == "duplicate" and crop["dup_of"] == ids["ocl-0083.jpg"]
    assert crop["dup_tier"] in ("perceptual", "verified", "semantic")
    pairs = dedup_pairs(neardup_ws)
    assert pairs is not None and ids["ocl-0083.jpg"] in pairs.partners({ids["crop4.jpg"]})


def test_look_alikes_at_high_cosine_are_not_merged(neardup_ws: Workspace) -> None:
    """Two different balloon drawings (cosine > 0.8) and one card template around two different photos: geometric
    verification rejects them, so neither pair is a duplicate (cosine alone at the old threshold 0.79 merged them)."""
    ids = names(neardup_ws)
    stored, matrix = load_embeddings(neardup_ws, "efficientnet-lite0")
    row = {item_id: k for k, item_id in enumerate(stored)}
    vec = {n: np.asarray(matrix[row[ids[n]]], np.float32) for n in ("balloon-red.png", "balloon-green.png")}
    assert float(vec["balloon-red.png"] @ vec["balloon-green.png"]) > 0.8
    items = _frame(neardup_ws).set_index("item_id")
    pairs = dedup_pairs(neardup_ws)
    assert pairs is not None
    for a, b in (("balloon-red.png", "balloon-green.png"), ("card-a.jpg", "card-b.jpg")):
        assert items.loc[ids[a], "status"] == items.loc[ids[b], "status"] == "valid", (a, b)
        assert ids[b] not in pairs.partners({ids[a]})
    # the same pair under the old notion (cosine >= 0.79, no verification) was a duplicate
    old = dedup(neardup_ws, replace(ND_CONFIG, tiers=("exact", "perceptual", "semantic"), embed_min_similarity=0.79,
                                    dry_run=True))  # fmt: skip
    frame = old.frame.set_index("item_id")
    assert {ids["balloon-red.png"], ids["balloon-green.png"]} & set(frame.dup_of.dropna())


def test_a_group_of_everyday_edits_stays_one_cluster_with_evidence(neardup_ws: Workspace) -> None:
    ids = names(neardup_ws)
    items = _frame(neardup_ws).set_index("item_id")
    group = [ids["lom-0005.jpg"]] + [ids[f"edit-{e}.jpg"] for e in EDITS]
    heads = {items.loc[i, "dup_of"] if isinstance(items.loc[i, "dup_of"], str) else i for i in group}
    assert len(heads) == 1, items.loc[group, ["dup_of", "dup_tier", "dup_score", "dup_inliers"]]
    canonical = heads.pop()
    members = items.loc[[i for i in group if i != canonical]]
    assert (members.status == "duplicate").all()
    verified = members[members.dup_tier == "verified"]
    assert len(verified) >= 3  # crops, pads, captions, rotations are found by verification, not by cosine
    assert (verified.dup_inliers >= ND_CONFIG.verification.min_inliers).all()
    assert members.dup_score.notna().all()
    html = (neardup_ws.reports_dir / "dedup.html").read_text()
    assert "inliers" in html and "verified" in html
    # nothing else joined the group
    assert set(items.index[items.dup_of == canonical]) | {canonical} == set(group)


def test_verification_is_bounded_to_k_candidates_per_item(neardup_ws: Workspace) -> None:
    n = len(_frame(neardup_ws))
    counts = {}
    for k in (1, 4):
        config = replace(ND_CONFIG, dry_run=True, verification=replace(ND_CONFIG.verification, k=k))
        report = dedup(neardup_ws, config).report["verification"]
        counts[k] = report["grey_zone_pairs"]
        assert report["grey_zone"]["k"] == k
        assert counts[k] <= 2 * k * n  # k nearest embeddings + at most k hash candidates per item
        assert report["pairs"] >= counts[k] and report["pairs_per_second"] > 0
    assert counts[1] < counts[4]
    # the candidate search itself: at most k per query
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs = cosine_topk(x, 3, -1.0, queries=x[:50])
    assert np.bincount(pairs.i).max() == 3 and len(pairs) == 150


def test_chained_members_join_through_enough_links_but_a_single_false_match_does_not_merge() -> None:
    # two groups {0,1,2,3} and {4,5,6}; 3 matches 1 and 2 but not the canonical 0; one false match 2-4
    i = np.array([0, 0, 1, 2, 2, 4, 4, 5])
    j = np.array([1, 2, 3, 3, 4, 5, 6, 6])
    edges = Edges.build([(2, i, j, np.full(len(i), 0.9, np.float32))])
    clusters = verified_clusters(7, edges, np.arange(7), None, min_links=2)
    assert clusters.canonical.tolist() == [0, 0, 0, 0, 4, 4, 4]
    assert clusters.via[3] in (1, 2) and clusters.links[3] == 2
    assert (clusters.via[[1, 2, 5, 6]] == -1).all()  # direct matches with the canonical

    # verification rejecting 3 against the canonical does not matter: it matches two members that match it
    def reject_all(members: np.ndarray, canon: np.ndarray) -> tuple[np.ndarray, ...]:
        m = len(members)
        return (np.zeros(m, bool), np.ones(m, bool), np.full(m, 2, np.int8), np.zeros(m, np.float32),
                np.zeros(m, np.int32))  # fmt: skip

    clusters = verified_clusters(7, edges, np.arange(7), reject_all, min_links=2)
    assert clusters.canonical.tolist() == [0, 0, 0, 0, 4, 4, 4]
    # a chain 0-1-2-3, each image matching only its neighbours: 2 and 3 do not join 0 through 1
    chain = Edges.build([(2, np.array([0, 1, 2]), np.array([1, 2, 3]), np.full(3, 0.9, np.float32))])
    clusters = verified_clusters(4, chain, np.arange(4), reject_all, min_links=2)
    assert clusters.canonical.tolist() == [0, 0, 2, 2]


# -- low-texture images, verification cost, IVF probing ---------------------------------------------------------


def _sparse_crop(tmp_path: Path) -> tuple[str, str]:
    """A 62 % window of the plain clip-art tux-0170 (39 SIFT keypoints, 110 x 350): too few keypoints to verify
    by keypoint rules alone."""
    original = SAMPLES / "tux-0170.jpg"
    im = Image.open(original).convert("RGB")
    w, h = im.size
    left, top = int(w * 0.3), int(h * 0.05)
    crop = tmp_path / "tux-crop.jpg"
    im.crop((left, top, left + int(w * 0.62), top + int(h * 0.62))).save(crop, quality=90)
    return str(crop), str(original)


def test_a_large_crop_of_plain_clipart_is_verified_photometrically(tmp_path: Path) -> None:
    crop, original = _sparse_crop(tmp_path)
    on, off = VerifyConfig(), VerifyConfig(dense_fallback=False)
    assert len(FeatureCache(on).features(original) or ()) < on.decisive_keypoints  # a low-texture image
    assert not FeatureCache(off).match(crop, original).verified  # keypoints alone: not verified
    found = FeatureCache(on).match(crop, original)
    assert found.verified and found.inliers >= on.dense_min_inliers and not found.undecided
    assert found.overlap_ratio >= on.min_correlation  # the score of a photometric decision is the correlation
    # mirrored: the mirrored dense features are tried too
    mirror = tmp_path / "tux-crop-mirror.jpg"
    ImageOps.mirror(Image.open(crop)).save(mirror, quality=90)
    flipped = FeatureCache(on).match(str(mirror), original)
    assert flipped.verified and flipped.mirrored
    # per pair, the caller can skip the check (where a high cosine accepts an undecided pair anyway)
    both = verify_pairs([(crop, original), (crop, original)], on, dense_fallback=[False, True])
    assert both.verified.tolist() == [False, True] and both.undecided.tolist() == [True, False]
    with pytest.raises(ValueError, match="flags"):
        verify_pairs([(crop, original)], on, dense_fallback=[True, False])


def test_the_photometric_fallback_merges_no_distinct_drawings(tmp_path: Path) -> None:
    """Distinct low-texture drawings (the two balloons, the bundled plain clip-art, a crop of one against the
    others) stay apart: a transform fitted to a few chance matches does not make the pixels agree."""
    crop, _ = _sparse_crop(tmp_path)
    for red in (True, False):
        balloon(red).save(tmp_path / f"balloon-{red}.png")
    paths = [crop, str(tmp_path / "balloon-True.png"), str(tmp_path / "balloon-False.png")]
    paths += [str(SAMPLES / n) for n in ("ocl-0083.jpg", "ocl-0471.jpg", "ocl-0466.jpg")]
    cache = FeatureCache(VerifyConfig())
    for a, b in itertools.combinations(paths, 2):
        assert not cache.match(a, b).verified, (a, b)
        assert not cache.match(b, a).verified, (b, a)


def test_correlation_agrees_under_the_true_transform_only() -> None:
    image = grey(str(SAMPLES / "lom-0005.jpg"), 320)
    h, w = image.shape
    shift = np.array([[1.0, 0.0, -40.0], [0.0, 1.0, -30.0]], np.float32)  # a crop's transform
    crop = cv2.warpAffine(image, shift, (w - 40, h - 30))
    coverage, ncc = correlation(image, crop, shift)
    assert ncc > 0.95 and coverage > 0.95
    wrong = shift.copy()
    wrong[:, 2] += (35.0, -25.0)
    assert correlation(image, crop, wrong)[1] < 0.8
    flat = np.full((100, 100), 200, np.uint8)
    assert np.isnan(correlation(flat, flat, np.eye(2, 3, dtype=np.float32))[1])  # flat: no decision


def test_candidates_joined_by_accepted_pairs_are_not_verified_again(dup_ws: Workspace) -> None:
    """Transformed copies joined by strict hashes or a high cosine: the grey-zone candidates between them need no
    check of their own, and skipping them leaves the clusters as they were."""
    reports, heads = {}, {}
    for skip in (False, True):
        config = replace(CONFIG, dry_run=True, verification=replace(CONFIG.verification, skip_connected=skip))
        result = dedup(dup_ws, config)
        reports[skip] = result.report["verification"]
        heads[skip] = result.frame.dup_of.fillna(result.frame.item_id).tolist()
    skipped = reports[True]["skipped_connected"]
    assert skipped > 0 and "skipped_connected" not in reports[False]
    assert reports[True]["grey_zone_pairs"] == reports[False]["grey_zone_pairs"] - skipped
    assert heads[True] == heads[False]


def test_ivf_probing_reaches_every_list_that_can_hold_a_match() -> None:
    """The triangle-inequality bound on angles: with as many probes as it asks for, the IVF range search finds
    exactly the flat search's pairs; with a fixed small nprobe it misses pairs across list boundaries."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6000, 24)).astype(np.float32)
    x[3000:3600] = x[:600] + rng.standard_normal((600, 24)).astype(np.float32) * 0.25
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    flat = cosine_pairs(x, 0.9, config=SearchConfig(float_flat_max=10**9))
    want = set(zip(flat.i.tolist(), flat.j.tolist(), strict=True))
    fixed = cosine_pairs(x, 0.9, config=SearchConfig(float_flat_max=0, nlist=64, nprobe=1, nprobe_max=0))
    bound = cosine_pairs(x, 0.9, config=SearchConfig(float_flat_max=0, nlist=64, nprobe=1, nprobe_max=64))
    assert len(want) >= 300
    assert len(set(zip(fixed.i.tolist(), fixed.j.tolist(), strict=True))) < len(want)
    assert set(zip(bound.i.tolist(), bound.j.tolist(), strict=True)) == want
    rows, lists = probe_lists(
        x[:50], np.eye(64, 24, dtype=np.float32), 0.9, SearchConfig(nprobe=2, nprobe_max=8)
    )
    counts = np.bincount(rows, minlength=50)
    assert counts.min() >= 2 and counts.max() <= 8 and len(np.unique(np.c_[rows, lists], axis=0)) == len(rows)
