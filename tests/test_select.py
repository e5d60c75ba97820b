"""Active selection: exclusions, strategies, reproducibility, incremental rounds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from suggestfixtures import *  # noqa: F403  (the embedded sample workspace fixtures)
from suggestfixtures import copy_workspace
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.core.taxonomy import EMOTIONS
from emo8.label.selection import (
    SelectConfig,
    SelectError,
    candidate_pool,
    k_center_greedy,
    select,
    uncertainty,
)

runner = CliRunner()


def _fake_suggestions(ws: Workspace, seed: int = 0) -> dict[str, np.ndarray]:
    """Random (seeded) suggestion vectors on every item; returns ``{item_id: probs}``."""
    rng = np.random.default_rng(seed)
    ids = ws.items(["item_id"])["item_id"].tolist()
    probs = rng.dirichlet(np.full(len(EMOTIONS), 0.5), len(ids))
    ws.catalog.ensure_columns({"suggested_label": "TEXT", "suggestion_probs": "TEXT"})
    ws.catalog.update_items(
        ids,
        {
            "suggested_label": [EMOTIONS[i] for i in probs.argmax(axis=1)],
            "suggestion_probs": [json.dumps(p.round(6).tolist()) for p in probs],
        },
    )
    return dict(zip(ids, probs, strict=True))


@pytest.fixture
def suggested_ws(lite0_template: Path, tmp_path: Path) -> tuple[Workspace, dict[str, np.ndarray]]:
    """The embedded samples with (random) suggestions, some duplicates, some contaminated, some settled."""
    ws = copy_workspace(lite0_template, tmp_path / "sel")
    probs = _fake_suggestions(ws)
    ids = sorted(probs)
    ws.catalog.ensure_columns({"settled": "INTEGER", "label": "TEXT", "unsettled_reason": "TEXT"})
    ws.catalog.update_items(ids[:4], {"status": ["duplicate"] * 4})
    ws.catalog.update_items(ids[4:6], {"status": ["contaminated", "removed"]})
    ws.catalog.update_items(ids[6:10], {"settled": [1] * 4, "label": ["awe"] * 4})
    return ws, probs


EXCLUDED = slice(0, 10)


@pytest.mark.parametrize("strategy", ["uncertainty", "balanced", "diverse", "random"])
def test_selection_never_picks_excluded_items_and_is_reproducible(
    suggested_ws: tuple[Workspace, dict[str, np.ndarray]], strategy: str
) -> None:
    ws, probs = suggested_ws
    forbidden = set(sorted(probs)[EXCLUDED])
    first = select(ws, SelectConfig(budget=20, strategy=strategy, round="a", seed=7))
    assert first.selected == 20 and not forbidden & set(first.item_ids)
    assert first.excluded == {"duplicate": 4, "contaminated": 1, "removed": 1, "settled": 4}
    # the same seed on the same state gives the same ranking (round "b" sees round "a" as open: clear it first)
    ws.catalog.connect().execute("DELETE FROM selections")
    again = select(ws, SelectConfig(budget=20, strategy=strategy, round="b", seed=7))
    assert again.item_ids == first.item_ids
    assert ws.catalog.selection("b") == first.item_ids


def test_uncertainty_measures_on_hand_computed_rows() -> None:
    rows = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(uncertainty(rows), [1 - 0.2, 1 - 0.0, 1 - 1.0])
    h = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    np.testing.assert_allclose(
        uncertainty(rows, "entropy"), [h, -(0.8 * math.log(0.4) + 0.2 * math.log(0.2)), 0.0], atol=1e-9
    )
    with pytest.raises(SelectError, match="unknown uncertainty measure"):
        uncertainty(rows, "variance")


def test_uncertainty_takes_the_smallest_margins_and_balanced_spreads_classes(
    suggested_ws: tuple[Workspace, dict[str, np.ndarray]],
) -> None:
    ws, probs = suggested_ws
    pool = sorted(probs)[10:]
    # computed here, not by emo8.label.selection: margin = best minus second-best probability, entropy in nats
    margins = {}
    for i in pool:
        best, second = sorted(probs[i].tolist(), reverse=True)[:2]
        margins[i] = best - second
    chosen = select(ws, SelectConfig(budget=10, strategy="uncertainty", round="u")).item_ids
    assert chosen == sorted(pool, key=lambda i: (margins[i], i))[:10]
    by_entropy = select(
        ws, SelectConfig(budget=5, strategy="uncertainty", round="e", measure="entropy")
    ).item_ids
    ent = {i: -sum(p * math.log(p) for p in probs[i].tolist() if p > 0) for i in pool if i not in chosen}
    assert by_entropy == sorted(ent, key=lambda i: (-ent[i], i))[:5]
    # the two measures disagree on these items, so each order above is the measure's own
    assert sorted(ent, key=lambda i: (-ent[i], i))[:5] != sorted(ent, key=lambda i: (margins[i], i))[:5]
    balanced = select(ws, SelectConfig(budget=16, strategy="balanced", round="bal"))
    taken = set(chosen) | set(by_entropy)
    left = [i for i in pool if i not in taken]
    label = {i: EMOTIONS[int(np.argmax(probs[i]))] for i in left}
    size = {e: sum(v == e for v in label.values()) for e in EMOTIONS}
    assert sum(n >= 2 for n in size.values()) >= 6  # the random suggestions cover the classes
    expected = {e: 2 for e, n in size.items() if n >= 2}
    assert {e: n for e, n in balanced.per_class.items() if size[e] >= 2} == expected
    for emotion in expected:  # within a class, the most uncertain first
        mine = [i for i in balanced.item_ids if label[i] == emotion]
        theirs = sorted((i for i in left if label[i] == emotion), key=lambda i: (margins[i], i))[:2]
        assert mine == theirs


def test_open_rounds_are_excluded_until_aggregated(
    suggested_ws: tuple[Workspace, dict[str, np.ndarray]],
) -> None:
    ws, _ = suggested_ws
    r1 = select(ws, SelectConfig(budget=10, strategy="random", round="r1", seed=1))
    r2 = select(ws, SelectConfig(budget=10, strategy="random", round="r2", seed=1))
    assert not set(r1.item_ids) & set(r2.item_ids) and r2.excluded["open_round"] == 10
    # pulled and aggregated: half settled (never again), half not (back in the pool) unless flagged or unclear
    from emo8.annotate.store import AnnotationStore
    from emo8.core.catalog import utc_now

    ids = r1.item_ids
    reasons = [None] * 5 + ["tie", "too_few_votes", "low_agreement", "unclear", "flagged_broken"]
    ws.catalog.update_items(ids, {"settled": [1] * 5 + [0] * 5, "unsettled_reason": reasons})
    assert not set(ids) & set(candidate_pool(ws).items["item_id"])  # r1 not pulled yet: still open
    AnnotationStore(ws.catalog).save_round("r1", pulled_at=utc_now())
    pool = set(candidate_pool(ws).items["item_id"])
    assert set(ids[5:8]) <= pool and not set(ids[:5]) & pool and not set(ids[8:]) & pool
    assert not set(r2.item_ids) & pool  # r2 is still open
    ws.catalog.save_selection("r3", ids[5:6], "manual")  # selected again for a new open round: out again
    assert ids[5] not in set(candidate_pool(ws).items["item_id"])


def test_rounds_top_up_incrementally_through_the_cli(
    suggested_ws: tuple[Workspace, dict[str, np.ndarray]],
) -> None:
    ws, _ = suggested_ws
    args = ["select", "-w", str(ws.root), "--round", "round-x", "--strategy", "uncertainty"]
    first = runner.invoke(app, [*args, "--budget", "8"])
    assert first.exit_code == 0, first.output
    assert "8 new item(s) selected, 8 in the round" in first.output
    again = runner.invoke(app, [*args, "--budget", "8"])
    assert "0 new item(s) selected, 8 in the round" in again.output
    more = runner.invoke(app, [*args, "--budget", "12"])
    assert "4 new item(s) selected, 12 in the round" in more.output
    selection = ws.catalog.selection("round-x")
    assert len(selection) == len(set(selection)) == 12
    default = runner.invoke(app, ["select", "-w", str(ws.root), "--budget", "3", "--strategy", "random"])
    assert default.exit_code == 0 and "round-2" in default.output
    bad = runner.invoke(app, ["select", "-w", str(ws.root), "--budget", "3", "--strategy", "vibes"])
    assert bad.exit_code == 2 and "unknown strategy" in bad.output


def test_strategies_that_need_suggestions_say_so(lite0_ws: Workspace) -> None:
    with pytest.raises(SelectError, match="emo8 suggest"):
        select(lite0_ws, SelectConfig(budget=5, strategy="uncertainty"))
    assert select(lite0_ws, SelectConfig(budget=5, strategy="random", round="r")).selected == 5


def test_k_center_greedy_covers_every_cluster_before_repeating_one() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(6)[:5]
    points = np.concatenate([c + 0.02 * rng.standard_normal((40, 6)) for c in centres])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    picks = k_center_greedy(points, 5)
    assert sorted({p // 40 for p in picks}) == [0, 1, 2, 3, 4]
    # clusters already covered by anchors are not picked again while others remain
    anchors = centres[:3]
    picks = k_center_greedy(points, 2, anchors)
    assert sorted({p // 40 for p in picks}) == [3, 4]


def test_diverse_selection_is_spread_out_in_embedding_space(
    suggested_ws: tuple[Workspace, dict[str, np.ndarray]],
) -> None:
    from emo8.label.suggest import load_embeddings

    ws, _ = suggested_ws
    ids, matrix = load_embeddings(ws, "efficientnet-lite0")
    row = {item_id: i for i, item_id in enumerate(ids)}

    def min_pairwise_distance(chosen: list[str]) -> float:
        x = np.asarray(matrix[[row[i] for i in chosen]], dtype=np.float64)
        d = 1 - x @ x.T
        return float(d[np.triu_indices(len(chosen), 1)].min())

    diverse = select(ws, SelectConfig(budget=8, strategy="diverse", round="d", pool_factor=10)).item_ids
    ws.catalog.connect().execute("DELETE FROM selections")
    plain = select(ws, SelectConfig(budget=8, strategy="uncertainty", round="u")).item_ids
    assert min_pairwise_distance(diverse) > min_pairwise_distance(plain)
