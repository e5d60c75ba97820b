"""Downstream UniEmoX: benchmark adapters, splits, fine-tuning, linear probing, evaluation, prediction, init."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from finetunefixtures import (
    make_emo8_release,
    make_emoset,
    make_hf_disk,
    make_imagefolder,
    make_separable,
)
from typer.testing import CliRunner

from emo8.core.taxonomy import EMOTIONS
from uniemox.benchmarks import (
    BENCHMARKS,
    POLARITY_CLASSES,
    BenchmarkError,
    class_mapping,
    open_benchmark,
    split_counts,
    split_dataset,
)
from uniemox.classifier import (
    BackboneRequest,
    Classifier,
    InitError,
    ViTBackbone,
    build_backbone,
    load_classifier,
)
from uniemox.evaluate import EvalRequest, compute_metrics, embed, evaluate, predict
from uniemox.finetune import (
    FinetuneConfig,
    finetune,
    layer_scales,
    param_groups_lrd,
    soft_cross_entropy,
    training_targets,
)
from uniemox.models.mae import MaskedAutoencoderViT, mae_config
from uniemox.report import collect, write_report

TINY = {"model": "mae_vit_tiny_patch16", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
        "num_heads": 2}  # fmt: skip
QUIET = {"randaug": "", "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0, "drop_path": 0.0, "smoothing": 0.0,
         "num_workers": 0, "device": "cpu"}  # fmt: skip


def tiny_cfg(out: Path, data: Path, **kw: Any) -> FinetuneConfig:
    base: dict[str, Any] = {**QUIET, "epochs": 2, "batch_size": 8, "base_lr": 0.2, "warmup_epochs": 1.0,
                            "layer_decay": 1.0}  # fmt: skip
    if "init" not in kw:
        base.update(TINY, random_init=True)
    base.update(kw)
    return FinetuneConfig(out=str(out), data=str(data), **base)


# --- adapters -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, upper",
    [("fi", False), ("emotion6", False), ("unbiasedemo", False), ("caer-s", True), ("heco", False)],
)
def test_imagefolder_adapters_read_their_layout(tmp_path: Path, name: str, upper: bool) -> None:
    spec = BENCHMARKS[name]
    root = make_imagefolder(tmp_path / name, spec.classes, n=6 * len(spec.classes), upper=upper)
    train = open_benchmark(name, root, "train")
    assert train.classes == spec.classes
    assert sorted(set(train.labels.tolist())) == list(range(len(spec.classes)))  # every class, in spec order
    folder = spec.classes[1].capitalize() if upper else spec.classes[1]
    assert {int(train.labels[i]) for i, x in enumerate(train.ids) if f"/{folder}/" in x} == {1}
    assert train.load_image(0).mode == "RGB"
    assert len(open_benchmark(name, root, "val")) == len(spec.classes)
    # the public code's tree: <root>/<name>/{train,val,test}/<class>/
    assert len(open_benchmark(name, tmp_path, "test")) == len(spec.classes)


def test_imagefolder_rejects_unknown_class_and_missing_split(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "fi", EMOTIONS, n=16)
    (root / "train" / "boredom").mkdir()
    with pytest.raises(BenchmarkError, match="boredom"):
        open_benchmark("fi", root, "train")
    with pytest.raises(BenchmarkError, match="uniemox data split"):
        open_benchmark("fi", tmp_path / "fi" / "train", "val")
    with pytest.raises(BenchmarkError, match="unknown dataset"):
        open_benchmark("affectnet", root, "train")


def test_emoset_adapter(tmp_path: Path) -> None:
    root = make_emoset(tmp_path / "emoset")
    train, test = open_benchmark("emoset", root, "train"), open_benchmark("emoset", root, "test")
    assert train.classes == EMOTIONS and len(train) == 32 and len(test) == 8
    assert all(train.ids[i].startswith(f"image/{EMOTIONS[train.labels[i]]}/") for i in range(len(train)))
    (root / "val.json").write_text(json.dumps([["amusement", "image/amusement/missing.jpg", None]]))
    with pytest.raises(BenchmarkError, match="do not exist"):
        open_benchmark("emoset", root, "val")


def test_emo8_release_adapter_reads_votes_and_domains(tmp_path: Path) -> None:
    root = make_emo8_release(tmp_path / "release")
    train = open_benchmark("emo8", root, "train")
    val = open_benchmark("emo8", root, "val")  # the release calls it "validation"
    assert len(train) == 32 and len(val) == 8 and train.classes == EMOTIONS
    assert train.soft is not None and train.domains is not None
    np.testing.assert_allclose(train.soft.sum(1), 1, atol=1e-6)
    assert (train.soft.argmax(1) == train.labels).all()
    i = train.ids.index(f"{6:064x}")  # no votes -> its hard label
    assert train.soft[i].tolist() == np.eye(8)[train.labels[i]].tolist()
    assert set(train.domains) <= {"cartoon", "clipart", "cutout", "painting", "photo"}


def test_hf_adapter_any_classlabel(tmp_path: Path) -> None:
    root = make_hf_disk(tmp_path / "hf")
    train = open_benchmark("hf", root, "train")
    assert train.classes == ("calm", "tense", "playful") and len(train) == 15
    assert train.load_image(3).size[0] > 0
    with pytest.raises(BenchmarkError, match="is not one of"):
        open_benchmark("emo8", root, "train")  # its classes are not the Mikels 8


def test_polarity_mode_and_class_mapping(tmp_path: Path) -> None:
    release = open_benchmark("emo8", make_emo8_release(tmp_path / "r"), "train", polarity=True)
    assert release.classes == POLARITY_CLASSES
    full = open_benchmark("emo8", tmp_path / "r", "train")
    expected = [
        0 if EMOTIONS[i] in ("amusement", "awe", "contentment", "excitement") else 1 for i in full.labels
    ]
    assert release.labels.tolist() == expected
    assert release.soft is not None and release.soft.shape == (len(release), 2)
    heco = make_imagefolder(tmp_path / "heco", BENCHMARKS["heco"].classes, n=48)
    two = open_benchmark("heco", heco, "train", polarity=True)
    assert len(two) == len(open_benchmark("heco", heco, "train")) - 4  # surprise has no polarity: left out
    with pytest.raises(BenchmarkError, match="no 2-class"):
        open_benchmark("emotion6", make_imagefolder(tmp_path / "e6", BENCHMARKS["emotion6"].classes), "train",
                       polarity=True)  # fmt: skip
    assert (class_mapping(EMOTIONS, EMOTIONS) == np.eye(8)).all()  # Emo8 <-> FI <-> EmoSet: one to one
    m = class_mapping(EMOTIONS, POLARITY_CLASSES)
    assert m.sum() == 8 and m[0, EMOTIONS.index("awe")] == 1 and m[1, EMOTIONS.index("fear")] == 1
    with pytest.raises(BenchmarkError, match="do not cover"):
        class_mapping(EMOTIONS, BENCHMARKS["emotion6"].classes)


def test_split_is_deterministic_by_content(tmp_path: Path) -> None:
    src = tmp_path / "raw"
    for i, f in enumerate(
        sorted((Path(__file__).parents[1] / "emo8" / "samples" / "images").glob("*.jpg"))[:40]
    ):
        d = src / EMOTIONS[i % 2]
        d.mkdir(parents=True, exist_ok=True)
        (d / f.name).write_bytes(f.read_bytes())
    renamed = tmp_path / "renamed"  # the same files under other names
    for f in src.rglob("*.jpg"):
        (renamed / f.parent.name).mkdir(parents=True, exist_ok=True)
        (renamed / f.parent.name / f"x{f.stem[::-1]}.jpg").write_bytes(f.read_bytes())
    a = split_dataset("fi", src, tmp_path / "a")
    b = split_dataset("fi", renamed, tmp_path / "b")
    assert a.counts == b.counts == {"train": {"amusement": 16, "anger": 16}, "val": {"amusement": 1, "anger": 1},
                                    "test": {"amusement": 3, "anger": 3}}  # fmt: skip

    def contents(root: Path, split: str) -> set[bytes]:
        return {f.read_bytes()[:4096] for f in (root / split).rglob("*.jpg")}

    for split in ("train", "val", "test"):
        assert contents(tmp_path / "a", split) == contents(tmp_path / "b", split)
    assert split_dataset("fi", src, tmp_path / "a").counts == a.counts  # idempotent
    other = split_dataset("fi", src, tmp_path / "c", seed=1)
    assert contents(tmp_path / "c", "test") != contents(tmp_path / "a", "test")
    assert other.counts == a.counts
    assert len(open_benchmark("fi", tmp_path / "a", "val")) == 2
    assert split_counts(10, (0.7, 0.1, 0.2)) == [7, 1, 2] and split_counts(1, (0.7, 0.1, 0.2)) == [1, 0, 0]


# --- metrics --------------------------------------------------------------------------------------------------


def test_metrics_equal_hand_computed_values() -> None:
    probs = np.array([
        [0.7, 0.2, 0.1, 0.0],  # true 0, pred 0
        [0.1, 0.6, 0.3, 0.0],  # true 1, pred 1
        [0.5, 0.1, 0.4, 0.0],  # true 2, pred 0 (2 in top-3)
        [0.1, 0.2, 0.3, 0.4],  # true 0, pred 3 (0 not in top-3)
        [0.2, 0.5, 0.3, 0.0],  # true 2, pred 1
        [0.1, 0.1, 0.8, 0.0],  # true 2, pred 2
    ])  # fmt: skip
    labels = np.array([0, 1, 2, 0, 2, 2])
    soft = np.eye(4)[[0, 1, 0, 3, 1, 2]] * 0.5 + np.eye(4)[labels] * 0.5
    m = compute_metrics(probs, labels, ("a", "b", "c", "d"), ["x", "x", "y", "y", "y", "x"], soft)
    assert m["top1"] == pytest.approx(3 / 6)
    assert m["top3"] == pytest.approx(5 / 6)
    # F1: a: p=1/2 r=1/2 -> 1/2; b: p=1/2 r=1 -> 2/3; c: p=1 r=1/3 -> 1/2; d: p=0 -> 0; mean over 4 present
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2 + 0) / 4)
    assert m["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": pytest.approx(1 / 3), "d": None}
    assert m["confusion_matrix"] == [[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert m["per_domain_accuracy"] == {"x": 1.0, "y": 0.0}
    # votes: share agreeing with the prediction: 1, 1, .5, .5, .5, 1
    assert m["vote_agreement"] == pytest.approx((1 + 1 + 0.5 + 0.5 + 0.5 + 1) / 6)


# --- optimisation pieces --------------------------------------------------------------------------------------


def test_layer_decay_gives_each_layer_its_documented_lr() -> None:
    arch = mae_config("mae_vit_tiny_patch16", img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
    model = Classifier(ViTBackbone(arch), 5)
    groups = param_groups_lrd(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of = {n: g["lr"] for g in groups for n in g["names"]}
    depth = 3
    assert lr_of["head.weight"] == 1.0 and lr_of["backbone.fc_norm.weight"] == 1.0
    for i in range(depth):  # block i is layer i + 1: lr x 0.5 ** (depth + 1 - (i + 1))
        assert lr_of[f"backbone.blocks.{i}.attn.qkv.weight"] == pytest.approx(0.5 ** (depth - i))
    for name in ("backbone.patch_embed.proj.weight", "backbone.cls_token", "backbone.pos_embed"):
        assert lr_of[name] == pytest.approx(0.5 ** (depth + 1))
    assert layer_scales(depth + 1, 0.5)[0] == pytest.approx(0.5 ** (depth + 1))
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert wd["backbone.blocks.0.attn.qkv.weight"] == 0.05 and wd["backbone.blocks.0.attn.qkv.bias"] == 0.0
    assert wd["backbone.cls_token"] == 0.0
    # applied: after a scheduler step the ratios stay (the optimiser really uses per-layer lrs)
    from uniemox.finetune import make_optimizer
    from uniemox.train import WarmupCosine

    opt = make_optimizer("adamw", groups, 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(2, 10, 0.0))
    opt.step()
    sched.step()
    lrs = {g["layer_id"]: g["lr"] for g in opt.param_groups}
    assert lrs[0] / lrs[depth + 1] == pytest.approx(0.5 ** (depth + 1))


def test_soft_labels_give_a_different_gradient_than_hard_labels(tmp_path: Path) -> None:
    source = open_benchmark("emo8", make_emo8_release(tmp_path / "r", with_missing_votes=False), "train")
    hard, soft = training_targets(source, False), training_targets(source, True)
    assert (hard.argmax(1) == soft.argmax(1)).all() and not np.allclose(hard, soft)
    logits = torch.zeros(len(source), 8, requires_grad=True)
    g_hard = torch.autograd.grad(soft_cross_entropy(logits, torch.from_numpy(hard)), logits)[0]
    g_soft = torch.autograd.grad(soft_cross_entropy(logits, torch.from_numpy(soft)), logits)[0]
    assert not torch.allclose(g_hard, g_soft)
    assert torch.allclose(g_soft, (torch.softmax(logits, -1) - torch.from_numpy(soft)) / len(source))
    with pytest.raises(BenchmarkError, match="label_distribution"):
        training_targets(open_benchmark("fi", make_imagefolder(tmp_path / "fi", EMOTIONS), "train"), True)


# --- initialisation -------------------------------------------------------------------------------------------


def _tiny_mae() -> MaskedAutoencoderViT:
    torch.manual_seed(1)
    arch = mae_config("mae_vit_tiny_patch16", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                      decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)  # fmt: skip
    return MaskedAutoencoderViT(arch)


def _flavours(tmp_path: Path) -> tuple[MaskedAutoencoderViT, dict[str, Path]]:
    from uniemox.testing import TINY_CLIP, tiny_config

    mae = _tiny_mae()
    sd = mae.state_dict()
    paths = {}
    paths["mae"] = tmp_path / "mae.pth"
    torch.save({"model": sd}, paths["mae"])
    paths["uniemox-public"] = tmp_path / "public.pth"  # the public code: MAE fork plus alpha/beta heads
    torch.save({"model": {**sd, "alpha.weight": torch.zeros(4, 32), "beta.weight": torch.zeros(4, 32),
                          "alpha.bias": torch.zeros(4)}}, paths["uniemox-public"])  # fmt: skip
    cfg = tiny_config(tmp_path, tmp_path, tmp_path / "t.json")
    paths["uniemox-pretrain"] = tmp_path / "last.pt"
    student = {f"mae.{k}": v for k, v in sd.items()} | {"proj_scene.weight": torch.zeros(32, 32)}
    torch.save({"model": student, "optimizer": {}, "scheduler": {}, "step": 3, "config": cfg.to_dict()},
               paths["uniemox-pretrain"])  # fmt: skip
    paths["uniemox-encoder"] = tmp_path / "encoder.pth"
    from uniemox.models.mae import ENCODER_PREFIXES

    torch.save({"model": {k: v for k, v in sd.items() if k.startswith(ENCODER_PREFIXES)},
                "config": cfg.to_dict()["model"]}, paths["uniemox-encoder"])  # fmt: skip
    assert TINY_CLIP
    return mae, paths


def test_init_from_every_checkpoint_flavour(tmp_path: Path) -> None:
    mae, paths = _flavours(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = mae.norm(mae.forward_encoder(x, 0.0)[0])[:, 0]  # the encoder's normalised CLS, no masking
    for flavour, path in paths.items():
        backbone, report = build_backbone(BackboneRequest(init=str(path), pool="cls", num_heads=2))
        assert report.flavour == flavour, path
        with torch.no_grad():
            torch.testing.assert_close(backbone.eval()(x), reference, msg=flavour)
        if flavour == "uniemox-public":
            assert {"alpha.weight", "beta.weight"} <= set(report.dropped)
        if flavour == "mae":
            assert any(k.startswith("decoder") for k in report.dropped)


def test_timm_vit_checkpoint_loads_with_identical_features(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                            num_classes=0, global_pool="avg")  # fmt: skip
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    backbone, report = build_backbone(
        BackboneRequest(init=str(tmp_path / "timm.pth"), pool="avg", num_heads=2)
    )
    assert report.missing == []  # fc_norm came from the checkpoint
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), ref.eval()(x), rtol=1e-4, atol=1e-5)


def test_missing_weights_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InitError, match="--random-init"):
        build_backbone(BackboneRequest())
    with pytest.raises(InitError, match="does not exist"):
        build_backbone(BackboneRequest(init=str(tmp_path / "nope.pth")))
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "resnet.pth")
    with pytest.raises(InitError, match="no ViT encoder"):
        build_backbone(BackboneRequest(init=str(tmp_path / "resnet.pth")))
    with pytest.raises(InitError, match="needs weights"):
        build_backbone(BackboneRequest(init="timm:test_resnet"))
    from uniemox.cli import app

    result = CliRunner().invoke(app, ["finetune", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--dataset", "imagefolder", "--init", str(tmp_path / "nope.pth")])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "does not exist" in result.output and "Traceback" not in result.output


# --- training runs --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def separable_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ft")
    data = make_separable(root / "sep")
    finetune(tiny_cfg(root / "run", data, epochs=6, dataset="imagefolder"))
    return data, root / "run"


def test_tiny_finetune_beats_chance(separable_run: tuple[Path, Path]) -> None:
    _, run = separable_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == 14 and metrics["top1"] >= 0.7, metrics  # chance is 0.5
    assert (run / "best.pt").is_file() and (run / "eval-imagefolder-test" / "confusion.png").is_file()
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) == 7 and "val_top1" in log[0]


def test_predict_and_evaluate_agree(separable_run: tuple[Path, Path], tmp_path: Path) -> None:
    import pandas as pd

    data, run = separable_run
    metrics = evaluate(
        EvalRequest(str(run / "best.pt"), str(data), "imagefolder", "test", out=str(tmp_path / "ev"))
    )
    assert json.loads((tmp_path / "ev" / "confusion.json").read_text())["classes"] == ["bright", "dark"]
    evaluated = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    predicted = predict(str(run / "best.pt"), [data / "test"], tmp_path / "p.csv", batch_size=3)
    predicted["id"] = [str(Path(p).relative_to(data)) for p in predicted["path"]]
    merged = evaluated.merge(predicted, on="id", suffixes=("_eval", "_pred"))
    assert len(merged) == 14
    assert (merged["pred"] == merged["label_pred"]).all()
    np.testing.assert_allclose(merged["p_bright_eval"], merged["p_bright_pred"], atol=1e-5)
    assert metrics["top1"] == pytest.approx((merged["label_eval"] == merged["pred"]).mean())
    with pytest.raises(FileNotFoundError):
        predict(str(run / "best.pt"), [tmp_path / "missing.jpg"])


def test_report_and_embed(separable_run: tuple[Path, Path], tmp_path: Path) -> None:
    import pandas as pd

    data, run = separable_run
    rows = collect([run])
    assert len(rows) == 1 and rows[0]["dataset"] == "imagefolder"
    text = write_report(rows, tmp_path / "table")
    top1 = json.loads((run / "metrics.json").read_text())["top1"]
    assert f"{100 * top1:.2f}" in text and "| imagefolder |" in text.splitlines()[0] + " |"
    assert (tmp_path / "table.csv").read_text().startswith("method,run,dataset")
    info = embed(str(run / "best.pt"), str(data), "imagefolder", tmp_path / "emb", split="val")
    feats = np.load(tmp_path / "emb" / "features.npy")
    ids = pd.read_parquet(tmp_path / "emb" / "ids.parquet")
    assert feats.shape == (6, 32) == (info["n"], info["dim"]) and len(ids) == 6
    with pytest.raises(ValueError, match="no metrics"):
        collect([tmp_path / "emb"])


def test_linear_probe_leaves_the_encoder_untouched(tmp_path: Path) -> None:
    _, paths = _flavours(tmp_path)
    data = make_separable(tmp_path / "sep")
    before, _ = build_backbone(BackboneRequest(init=str(paths["uniemox-encoder"]), pool="cls"))
    finetune(tiny_cfg(tmp_path / "lp", data, init=str(paths["uniemox-encoder"]), dataset="imagefolder",
                      linear_probe=True, optimizer="adamw", base_lr=1.0, epochs=2))  # fmt: skip
    clf = load_classifier(tmp_path / "lp" / "best.pt")
    assert clf.meta["linear_probe"] and isinstance(clf.model.head, torch.nn.Sequential)
    bn = clf.model.head[0]
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and int(bn.num_batches_tracked) > 0
    after = clf.model.backbone.state_dict()
    for k, v in before.state_dict().items():
        assert torch.equal(v, after[k]), k
    assert float(clf.model.head[1].weight.detach().abs().sum()) > 0
    # cached features give the same kind of run, from features computed once
    finetune(tiny_cfg(tmp_path / "lpc", data, init=str(paths["uniemox-encoder"]), dataset="imagefolder",
                      linear_probe=True, cache_features=True, epochs=2))  # fmt: skip
    assert len(list((tmp_path / "lpc" / "features").glob("*.pt"))) == 2
    cached = load_classifier(tmp_path / "lpc" / "best.pt").model.backbone.state_dict()
    for k, v in before.state_dict().items():
        assert torch.equal(v, cached[k]), k


def test_fraction_and_soft_labels_on_emo8(tmp_path: Path) -> None:
    data = make_emo8_release(tmp_path / "r")
    cfg = tiny_cfg(
        tmp_path / "run", data, dataset="emo8", soft_labels=True, fraction=0.5, batch_size=4, epochs=1
    )
    result = finetune(cfg)
    assert result.steps == 4  # 16 of the 32 training images (2 per class), batch 4
    m = result.test_metrics
    assert m is not None and {"per_domain_accuracy", "vote_agreement", "vote_js_divergence"} <= set(m)
    ev = evaluate(EvalRequest(str(tmp_path / "run"), str(data), "emo8", "test", polarity=True))
    assert ev["classes"] == list(POLARITY_CLASSES) and ev["n"] == 8


def test_resume_is_exact(tmp_path: Path) -> None:
    data = make_separable(tmp_path / "sep")
    aug = {"randaug": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0, "drop_path": 0.1,
           "smoothing": 0.1}  # fmt: skip
    finetune(tiny_cfg(tmp_path / "straight", data, dataset="imagefolder", epochs=2, **aug))
    finetune(tiny_cfg(tmp_path / "split", data, dataset="imagefolder", epochs=2, stop_at=2, **aug))
    finetune(tiny_cfg(tmp_path / "split", data, dataset="imagefolder", epochs=2, **aug), resume="auto")
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["classifier"]["model"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["classifier"]["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(tmp_path: Path) -> None:
    data = make_separable(tmp_path / "sep")
    args = ["finetune", "--data", str(data), "--dataset", "imagefolder", "--random-init", "--model",
            "mae_vit_tiny_patch16", "--img-size", "32", "--epochs", "1", "--randaug", "", "--reprob", "0",
            "--mixup", "0", "--cutmix", "0", "--drop-path", "0", "--smoothing", "0", "--num-workers", "0",
            "--device", "cpu", "--base-lr", "0.2", "--no-verbose"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "uniemox", *args, "--out", str(tmp_path / "one"), "--batch-size",
                          "8"], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29571", "-m", "uniemox", *args, "--out", str(tmp_path / "two"), "--batch-size", "4"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["classifier"]["model"]
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["classifier"]["model"]
    assert not torch.equal(a["head.weight"], torch.zeros_like(a["head.weight"]))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_uniemox_checkpoint_is_an_emo8_encoder(separable_run: tuple[Path, Path], tmp_path: Path) -> None:
    from PIL import Image

    from emo8.embed.encoders import EncoderSpec, WeightsError, load_encoder

    data, run = separable_run
    enc = load_encoder(EncoderSpec(f"uniemox:{run / 'best.pt'}", device="cpu"))
    files = sorted((data / "val").rglob("*.jpg"))
    x = torch.stack([enc.preprocess(Image.open(f).convert("RGB")) for f in files])
    feats = enc.encode_images(x).numpy()
    embed(str(run / "best.pt"), str(data), "imagefolder", tmp_path / "emb", split="val")
    np.testing.assert_allclose(feats, np.load(tmp_path / "emb" / "features_normalised.npy"), atol=1e-5)
    with pytest.raises(WeightsError, match="does not exist"):
        load_encoder(EncoderSpec(f"uniemox:{tmp_path / 'nope.pt'}", device="cpu"))


def test_timm_backbone_needs_explicit_random_init_and_round_trips(tmp_path: Path) -> None:
    data = make_separable(tmp_path / "sep")
    with pytest.raises(InitError, match="needs weights"):
        finetune(
            tiny_cfg(tmp_path / "r", data, dataset="imagefolder", init="timm:test_resnet", linear_probe=True)
        )
    cfg = tiny_cfg(tmp_path / "r", data, dataset="imagefolder", init="timm:test_resnet", random_init=True,
                   linear_probe=True, cache_features=True, epochs=1, eval_batch_size=16)  # fmt: skip
    result = finetune(cfg)
    assert result.test_metrics is not None and result.test_metrics["n"] == 14
    clf = load_classifier(tmp_path / "r" / "best.pt")
    assert (
        clf.meta["backbone"] == {"kind": "encoder", "key": "timm:test_resnet"}
        and clf.preprocess.img_size == 160
    )
    again = evaluate(EvalRequest(str(tmp_path / "r" / "best.pt"), str(data), "imagefolder", "test"))
    assert again["top1"] == pytest.approx(result.test_metrics["top1"])


def test_cli_split_evaluate_predict_report(separable_run: tuple[Path, Path], tmp_path: Path) -> None:
    from uniemox.cli import app

    data, run = separable_run
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--ckpt", str(run / "best.pt"), "--data", str(data), "--dataset",
                              "imagefolder", "--split", "val", "--out", str(tmp_path / "ev")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["n"] == 6
    res = runner.invoke(app, ["predict", "--ckpt", str(run / "best.pt"), str(data / "val" / "dark")])
    assert res.exit_code == 0 and res.output.splitlines()[0].startswith(
        "path,label,confidence,p_bright,p_dark"
    )
    assert len(res.output.strip().splitlines()) == 4
    res = runner.invoke(app, ["report", str(run), str(tmp_path / "ev"), "--metric", "macro_f1"])
    assert res.exit_code == 0 and "| imagefolder | imagefolder (val) |" in res.output
    res = runner.invoke(
        app, ["evaluate", "--ckpt", str(run / "best.pt"), "--data", str(data), "--dataset", "fi"]
    )
    assert res.exit_code == 2 and "bright" in res.output  # ImageFolder classes that are not FI's
    raw = tmp_path / "raw"
    for f in sorted((data / "train").rglob("*.jpg")):
        (raw / f.parent.name).mkdir(parents=True, exist_ok=True)
        (raw / f.parent.name / f.name).write_bytes(f.read_bytes())
    res = runner.invoke(
        app, ["data", "split", "imagefolder", "--src", str(raw), "--out", str(tmp_path / "s")]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["counts"] == {"train": 20, "val": 2, "test": 6}
    res = runner.invoke(app, ["data", "split", "fi", "--src", str(raw), "--out", str(tmp_path / "s2")])
    assert res.exit_code == 2 and "not one of fi's classes" in res.output


def test_randaugment_posterize_at_top_magnitude_works() -> None:
    from PIL import Image

    from uniemox.classifier import Preprocess
    from uniemox.finetune import train_transform
    from uniemox.testing import SAMPLES

    transform: Any = train_transform(FinetuneConfig().resolved(), Preprocess(32))
    ops = [op for t in transform.transforms for op in getattr(t, "ops", []) if "Posterize" in op.name]
    assert ops
    img = Image.open(next((SAMPLES / "images").glob("*.jpg"))).convert("RGB")
    for op in ops:  # magnitude 10 with "inc1" asks for 0 bits, which Pillow refuses
        op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
        out = op(img)
        assert out.size == img.size and len(set(np.asarray(out).reshape(-1).tolist())) <= 2


def test_emo8_adapter_refuses_several_releases(tmp_path: Path) -> None:
    for version in ("1.0.0", "1.1.0"):
        make_emo8_release(tmp_path / "releases" / version, n=16)
        (tmp_path / "releases" / version / "manifest.json").write_text("{}")
    assert len(open_benchmark("emo8", tmp_path / "releases" / "1.1.0", "train")) == 16
    with pytest.raises(ValueError, match="2 Emo8 releases"):
        open_benchmark("emo8", tmp_path, "train")


def test_open_clip_visual_tower_linear_probe(tmp_path: Path) -> None:
    import open_clip

    from uniemox.testing import tiny_teacher

    open_clip.add_model_config(tiny_teacher(tmp_path))  # registers the architecture "uniemox-tiny-clip"
    data = make_separable(tmp_path / "sep")
    key = "open_clip:uniemox-tiny-clip"
    with pytest.raises(InitError, match="needs weights"):
        build_backbone(BackboneRequest(init=key))
    backbone, _ = build_backbone(BackboneRequest(init=key, random_init=True))
    assert backbone.num_features == 32 and backbone.preprocess.img_size == 32
    assert backbone.preprocess.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    cfg = tiny_cfg(tmp_path / "clip", data, dataset="imagefolder", init=key, random_init=True, linear_probe=True,
                   cache_features=True, epochs=2)  # fmt: skip
    result = finetune(cfg)
    clf = load_classifier(tmp_path / "clip" / "best.pt")
    again = evaluate(EvalRequest(str(tmp_path / "clip" / "best.pt"), str(data), "imagefolder", "test"))
    assert result.test_metrics is not None and again["top1"] == pytest.approx(result.test_metrics["top1"])
    assert clf.meta["backbone"]["key"] == key


def test_runs_without_validation_split_and_rejects_bad_fraction(tmp_path: Path) -> None:
    import shutil

    data = make_separable(tmp_path / "sep")
    shutil.rmtree(data / "val")
    result = finetune(tiny_cfg(tmp_path / "run", data, dataset="imagefolder", epochs=2))
    assert result.best_val_top1 is None and result.test_metrics is not None
    assert (
        torch.load(tmp_path / "run" / "best.pt", weights_only=True)["step"] == result.steps
    )  # the last model
    with pytest.raises(ValueError, match="fraction"):
        finetune(tiny_cfg(tmp_path / "bad", data, dataset="imagefolder", fraction=1.5))
