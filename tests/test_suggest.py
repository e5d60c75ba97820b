"""Label suggestions: the sources, pooling and calibration on arrays, and the stage on real sample images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from suggestfixtures import *  # noqa: F403  (the embedded sample workspace fixtures)
from suggestfixtures import category_labels
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.core.taxonomy import EMOTIONS, prompts
from emo8.embed.encoders import EncoderSpec, load_encoder
from emo8.label.suggest import (
    KnnSource,
    SourceContext,
    SuggestConfig,
    SuggestError,
    ZeroShotSource,
    class_text_embeddings,
    collect_labels,
    expected_calibration_error,
    fit_pooling,
    fit_suggester,
    fit_temperature,
    import_labels,
    load_embeddings,
    softmax,
    suggest,
)

runner = CliRunner()


# -- the maths on arrays --------------------------------------------------------------------------------------


def test_expected_calibration_error_matches_a_hand_computed_example() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bin (0.867, 0.933]: acc 0.5, conf 0.9 -> 0.5 * 0.4; bin (0.533, 0.6]: acc 1.0, conf 0.6 -> 0.5 * 0.4
    assert expected_calibration_error(probs, y, bins=15) == pytest.approx(0.4)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)


def test_knn_vote_is_similarity_weighted_with_one_pseudo_vote() -> None:
    x = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    y = np.array([0, 1, 2])
    knn = KnnSource(n_classes=3, k=2, temperature=0.1).fit(x, y)
    probs = knn.predict(np.array([[1.0, 0.0]], dtype=np.float32))
    # neighbours: item 0 (s=1.0, w=1) and item 1 (s=0.8, w=exp(-2)); plus 1/3 pseudo-vote to each class
    votes = np.array([1.0, np.exp(-2.0), 0.0]) + 1.0 / 3
    np.testing.assert_allclose(probs[0], votes / votes.sum(), rtol=1e-5)


def test_fit_pooling_weights_the_informative_source_and_temperature_fixes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    n, c = 600, 4
    y = rng.integers(0, c, n)
    informative = np.full((n, c), 0.1)
    informative[np.arange(n), y] = 0.7
    wrong = rng.random(n) < 0.3  # 30% of the time it is confidently wrong
    informative[wrong] = np.roll(informative[wrong], 1, axis=1)
    noise = rng.dirichlet(np.ones(c), n)
    pooling = fit_pooling({"good": informative, "noise": noise}, y)
    assert pooling.weights[0] > 0.8 > pooling.weights[1]
    # a source that says 0.99 but is right 60% of the time needs T > 1
    sharp = np.full((n, c), 0.01 / 3)
    right = rng.random(n) < 0.6
    sharp[np.arange(n), np.where(right, y, (y + 1) % c)] = 0.99
    logits = np.log(sharp)
    t = fit_temperature(logits, y)
    assert t > 1.5
    assert expected_calibration_error(softmax(logits / t), y) < expected_calibration_error(sharp, y) - 0.2


def test_zero_shot_class_text_is_the_mean_of_the_towers_prompt_embeddings(tiny_clip: str) -> None:
    """The taxonomy's prompts reach the real text tower, and each class is the normalised mean of its normalised
    per-template embeddings (computed here from the tower, not by emo8)."""
    import open_clip

    encoder = load_encoder(EncoderSpec(tiny_clip, random_init=True, device="cpu"))
    clip: Any = encoder.model
    seen: list[torch.Tensor] = []
    hook = clip.token_embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    try:
        class_text = class_text_embeddings(encoder)
    finally:
        hook.remove()
    tokenizer = open_clip.get_tokenizer(tiny_clip.split(":", 1)[1])
    assert len(seen) == len(EMOTIONS)
    expected = []
    for emotion, tokens in zip(EMOTIONS, seen, strict=True):
        assert torch.equal(tokens, tokenizer(prompts(emotion)))  # exactly this class's prompts, in the tower
        assert {"a cartoon that evokes fear.", "an advertisement that evokes fear."} <= set(prompts("fear"))
        with torch.no_grad():
            per_template = torch.nn.functional.normalize(
                clip.encode_text(tokenizer(prompts(emotion))), dim=-1
            )
        mean = per_template.double().mean(dim=0)
        expected.append((mean / mean.norm()).numpy())
        # an ensemble, not one template: the mean sits measurably off every single template
        assert float((per_template.double() @ (mean / mean.norm())).max()) < 1 - 1e-4
    np.testing.assert_allclose(class_text, np.array(expected), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(class_text, axis=1), 1.0, atol=1e-5)
    # the source scores images by scaled cosine to these rows
    source = ZeroShotSource(class_text, logit_scale=100.0)
    probs = source.predict(class_text[[2, 5]])
    assert probs.argmax(axis=1).tolist() == [2, 5]
    np.testing.assert_allclose(probs, softmax(100.0 * class_text[[2, 5]] @ class_text.T), atol=1e-6)


def test_nothing_to_learn_from_is_a_clear_error() -> None:
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(SuggestError, match="labels import"):
        fit_suggester(x, np.array([0, 0, 0, 0]), SuggestConfig(), SourceContext(n_classes=8))


# -- real images, real offline weights ------------------------------------------------------------------------


def _label_csv(path: Path, labels: dict[str, str], by: str = "item_id", ws: Workspace | None = None) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([by, "label"])
        for item_id, label in labels.items():
            key = item_id
            if by == "sha256" and ws is not None:
                key = ws.items(["sha256"], where=f"item_id = '{item_id}'")["sha256"].iloc[0]
            writer.writerow([key, label.upper()])
    return path


def test_suggestions_beat_chance_on_real_images(
    lite0_ws: Workspace, sample_rows: list[dict[str, str]], tmp_path: Path
) -> None:
    labels = category_labels(lite0_ws, sample_rows)
    n_classes = len(set(labels.values()))
    assert len(labels) >= 40 and n_classes >= 5
    csv_path = _label_csv(tmp_path / "labels.csv", labels)
    ws_arg = ["-w", str(lite0_ws.root)]
    result = runner.invoke(app, ["labels", "import", str(csv_path), *ws_arg])
    assert result.exit_code == 0, result.output
    assert f"{len(labels)} updated" in result.output
    result = runner.invoke(app, ["suggest", "--model", "efficientnet-lite0", "-q", *ws_arg])
    assert result.exit_code == 0, result.output
    assert "zero-shot skipped" in result.output and "image-only" in result.output
    report = json.loads((lite0_ws.reports_dir / "suggest.json").read_text())
    assert report["sources"] == ["knn", "probe"]
    overall = report["metrics"]["overall"]
    majority = report["metrics"]["majority_baseline"]
    # margins sized for 51 labelled items (one item = 0.02) and CPU-to-CPU embedding noise: measured kNN 0.51,
    # probe 0.69, combined 0.73 against a majority baseline of 0.35
    for source, margin in (("knn", 0.06), ("probe", 0.15), ("combined", 0.15)):
        assert overall[source]["n"] == len(labels)
        assert overall[source]["accuracy"] > max(majority, 1 / n_classes) + margin, (
            source,
            overall,
            majority,
        )
        assert overall[source]["macro_f1"] > 2 / n_classes, (source, overall)
    assert set(report["metrics"]["per_domain"]) >= {"(none)"}
    # stored columns: 8 probabilities summing to 1, argmax = suggested label, entropy consistent
    items = lite0_ws.items(["item_id", "suggested_label", "suggestion_probs", "suggestion_entropy",
                            "suggestion_version"])  # fmt: skip
    assert items["suggestion_version"].eq(report["version"]).all() and len(items) == 81
    probs = np.array(list(items["suggestion_probs"]))  # Workspace.items parses JSON lists
    assert probs.shape == (81, 8)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert [EMOTIONS[i] for i in probs.argmax(axis=1)] == items["suggested_label"].tolist()
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(axis=1)
    np.testing.assert_allclose(items["suggestion_entropy"], entropy, atol=1e-3)
    # labelled items carry their out-of-fold suggestion: accuracy equals the cross-validated figure
    lab = items[items["item_id"].isin(labels)]
    agree = np.mean([labels[i] == s for i, s in zip(lab["item_id"], lab["suggested_label"], strict=True)])
    assert agree == pytest.approx(overall["combined"]["accuracy"], abs=0.08)


def test_calibration_lowers_ece_of_overconfident_sources_on_held_out_items() -> None:
    """Sharp kNN votes and a barely regularised probe are overconfident on overlapping classes; the fitted
    temperature must soften them and lower the held-out ECE. (Synthetic clusters with 240 held-out items: ECE on
    the 81 sample images is too noisy to test, and their embeddings shift slightly between CPUs.)"""
    from sklearn.model_selection import StratifiedShuffleSplit

    rng = np.random.default_rng(0)
    n_classes, dim, per_class = 8, 32, 60
    centres = rng.normal(size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), per_class)
    x = centres[y] * 0.35 + rng.normal(size=(len(y), dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    config = SuggestConfig(min_labels_per_class=2, folds=4, probe_c=1000.0, knn_temperature=0.01)
    train, test = next(StratifiedShuffleSplit(n_splits=1, test_size=0.5, random_state=0).split(x, y))
    suggester = fit_suggester(x[train], y[train], config, SourceContext(n_classes=n_classes))
    held = suggester.source_probs(x[test])
    before = expected_calibration_error(suggester.pooling.combine(held, calibrated=False), y[test])
    after = expected_calibration_error(suggester.pooling.combine(held, calibrated=True), y[test])
    assert suggester.pooling.temperature > 1.2, suggester.pooling.as_dict()
    assert after < before - 0.08, (before, after)


@pytest.mark.slow
def test_suggest_is_incremental(
    lite0_ws: Workspace, sample_rows: list[dict[str, str]], sample_paths: list[Path], tmp_path: Path
) -> None:
    from emo8.embed.run import EmbedConfig, embed
    from emo8.ingest.run import IngestOptions, ingest
    from emo8.ingest.sources import create_source

    labels = category_labels(lite0_ws, sample_rows)
    first = dict(list(labels.items())[::2])
    import_labels(lite0_ws, _label_csv(tmp_path / "a.csv", first))
    config = SuggestConfig(min_labels_per_class=2)
    done = suggest(lite0_ws, config, progress=False)
    assert done.suggested == 81 and done.up_to_date == 0
    again = suggest(lite0_ws, config, progress=False)
    assert again.suggested == 0 and again.up_to_date == 81 and again.version == done.version
    # a new image: only it is computed, with the same version
    extra = tmp_path / "extra"
    extra.mkdir()
    with Image.open(sample_paths[0]) as im:
        im.convert("RGB").rotate(90, expand=True).save(extra / "new.jpg", quality=90)
    ingest(lite0_ws, create_source("folder", directory=str(extra)), IngestOptions(workers=1, progress=False))
    embed(lite0_ws, EmbedConfig(model="efficientnet-lite0", device="cpu", workers=0, progress=False))
    more = suggest(lite0_ws, config, progress=False)
    assert more.suggested == 1 and more.version == done.version
    # new labels change the version: everything is recomputed
    import_labels(lite0_ws, _label_csv(tmp_path / "b.csv", labels))
    relabelled = suggest(lite0_ws, config, progress=False)
    assert relabelled.suggested == 82 and relabelled.version != done.version
    assert relabelled.labelled == len(labels)


def test_label_sources_and_precedence(lite0_ws: Workspace, tmp_path: Path) -> None:
    ids = lite0_ws.items(["item_id"])["item_id"].tolist()
    lite0_ws.catalog.ensure_columns({"label": "TEXT", "settled": "INTEGER"})
    lite0_ws.catalog.update_items(ids[:3], {"weak_label": ["awe", "awe", "awe"]})
    lite0_ws.catalog.update_items(ids[1:3], {"label": ["fear", "sadness"], "settled": [1, 0]})
    import_labels(lite0_ws, _label_csv(tmp_path / "l.csv", {ids[2]: "anger", ids[3]: "disgust"}))
    got = collect_labels(lite0_ws).set_index("item_id")
    assert got.loc[ids[0]].tolist() == ["awe", "weak"]
    assert got.loc[ids[1]].tolist() == ["fear", "annotation"]  # settled annotation beats the weak label
    assert got.loc[ids[2]].tolist() == ["anger", "imported"]  # unsettled annotation does not count
    assert got.loc[ids[3]].tolist() == ["disgust", "imported"]
    only_weak = collect_labels(lite0_ws, ("weak",)).set_index("item_id")
    assert only_weak["label"].to_dict() == {ids[0]: "awe", ids[1]: "awe", ids[2]: "awe"}
    with pytest.raises(SuggestError, match="unknown label source"):
        collect_labels(lite0_ws, ("gossip",))


def test_labels_import_by_sha256_counts_unknowns_and_is_idempotent(
    lite0_ws: Workspace, tmp_path: Path
) -> None:
    ids = lite0_ws.items(["item_id"])["item_id"].tolist()
    path = _label_csv(tmp_path / "s.csv", {ids[0]: "awe", ids[1]: "fear"}, by="sha256", ws=lite0_ws)
    with open(path, "a", newline="") as handle:
        csv.writer(handle).writerows([["0" * 64, "awe"], ["x", "joy"]])
    first = import_labels(lite0_ws, path)
    assert (first.rows, first.updated, first.unknown_item, first.unknown_label) == (4, 2, 1, 1)
    second = import_labels(lite0_ws, path)
    assert (second.updated, second.unchanged) == (0, 2)
    stored = lite0_ws.items(["item_id", "imported_label"], where="imported_label IS NOT NULL")
    assert dict(zip(stored["item_id"], stored["imported_label"], strict=True)) == {
        ids[0]: "awe",
        ids[1]: "fear",
    }
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\na,awe\n")
    result = runner.invoke(app, ["labels", "import", str(bad), "-w", str(lite0_ws.root)])
    assert result.exit_code == 2 and "item_id or sha256" in result.output


def test_missing_embeddings_is_a_clear_error(ws: Workspace) -> None:
    result = runner.invoke(app, ["suggest", "-w", str(ws.root), "--model", "efficientnet-lite0"])
    assert result.exit_code == 2 and "emo8 embed" in result.output


# -- zero-shot through the stage, with a real (tiny, random-init) open_clip model ---------------------------------

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 32, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A one-layer open_clip architecture registered with open_clip, so that the real loader builds it (random
    weights only when asked, like any open_clip key); returns its model key."""
    import open_clip

    configs = tmp_path_factory.mktemp("open_clip_configs")
    (configs / "Emo8-Tiny-CLIP.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(configs)
    return "open_clip:Emo8-Tiny-CLIP"


def _save_weights(key: str, seed: int, path: Path) -> Path:
    """Random weights of ``key`` (seeded) saved as a checkpoint file, as --weights takes them."""
    torch.manual_seed(seed)
    encoder = load_encoder(EncoderSpec(key, random_init=True, seed=seed, device="cpu"))
    torch.save(encoder.model.state_dict(), path)
    return path


def test_zero_shot_runs_through_the_stage_without_labels(
    ws: Workspace, sample_paths: list[Path], tmp_path: Path, tiny_clip: str
) -> None:
    from emo8.embed.run import EmbedConfig, embed
    from emo8.ingest.run import IngestOptions, ingest
    from emo8.ingest.sources import create_source

    incoming = tmp_path / "in"
    incoming.mkdir()
    for path in sample_paths[:6]:
        shutil.copy(path, incoming / path.name)
    ingest(ws, create_source("folder", directory=str(incoming)), IngestOptions(workers=1, progress=False))
    embed(ws, EmbedConfig(model=tiny_clip, random_init=True, device="cpu", workers=0, progress=False))
    notes: list[str] = []
    summary = suggest(ws, SuggestConfig(model=tiny_clip), progress=False, notes=notes)
    assert summary.sources == ["zero_shot"] and summary.suggested == 6 and summary.labelled == 0
    report: dict[str, Any] = json.loads((ws.reports_dir / "suggest.json").read_text())
    assert report["sources"] == ["zero_shot"] and "knn" in report["skipped_sources"]
    # every stored suggestion is softmax(logit_scale * cos(image, class text)), recomputed here
    encoder = load_encoder(EncoderSpec(tiny_clip, random_init=True, device="cpu"))
    scale = float(encoder.model.logit_scale.detach().exp())  # type: ignore[union-attr]
    assert scale == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip's initial temperature
    ids, matrix = load_embeddings(ws, tiny_clip)
    logits = (
        scale * np.asarray(matrix, dtype=np.float64) @ class_text_embeddings(encoder).T.astype(np.float64)
    )
    expected = dict(zip(ids, softmax(logits), strict=True))
    items = ws.items(["item_id", "suggestion_probs", "suggested_label"])
    assert len(items) == 6
    for item_id, probs, label in zip(items["item_id"], items["suggestion_probs"], items["suggested_label"],
                                     strict=True):  # fmt: skip
        stored = probs if isinstance(probs, list) else json.loads(probs)
        np.testing.assert_allclose(stored, expected[item_id], atol=1e-4)
        assert label == EMOTIONS[int(np.argmax(expected[item_id]))]
    # the same weights from a file are accepted only when they computed the embeddings: these did not
    other = _save_weights(tiny_clip, 1, tmp_path / "other.pt")
    with pytest.raises(SuggestError, match="not the ones"):
        suggest(ws, SuggestConfig(model=tiny_clip, weights=str(other), seed=1), progress=False)
    # --no-zero-shot and no labels: nothing to suggest from
    with pytest.raises(SuggestError, match="nothing to suggest from"):
        suggest(ws, SuggestConfig(model=tiny_clip, zero_shot=False), progress=False)


def test_text_tower_must_be_the_one_that_computed_the_embeddings(
    ws: Workspace, sample_paths: list[Path], tmp_path: Path, tiny_clip: str
) -> None:
    """Embeddings from a weights file: the same file is accepted, another file (other weights) and random weights
    are refused, and nothing is written by a refused run."""
    from emo8.embed.run import EmbedConfig, embed
    from emo8.ingest.run import IngestOptions, ingest
    from emo8.ingest.sources import create_source

    incoming = tmp_path / "in"
    incoming.mkdir()
    for path in sample_paths[:3]:
        shutil.copy(path, incoming / path.name)
    ingest(ws, create_source("folder", directory=str(incoming)), IngestOptions(workers=1, progress=False))
    mine = _save_weights(tiny_clip, 3, tmp_path / "mine.pt")
    theirs = _save_weights(tiny_clip, 4, tmp_path / "theirs.pt")
    embed(ws, EmbedConfig(model=tiny_clip, weights=str(mine), device="cpu", workers=0, progress=False))
    for refused in (
        SuggestConfig(model=tiny_clip, weights=str(theirs)),
        SuggestConfig(model=tiny_clip, random_init=True),
    ):
        with pytest.raises(SuggestError, match="not the ones"):
            suggest(ws, refused, progress=False)
    assert ws.items(["suggestion_version"])["suggestion_version"].isna().all()
    assert suggest(ws, SuggestConfig(model=tiny_clip), progress=False).suggested == 3  # the stored weights
