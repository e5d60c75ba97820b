"""Pretraining end to end on the bundled images: learning, exact resume, DDP equivalence, MAE init, export."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from uniemox.checkpoint import export_encoder, load_checkpoint, load_mae_checkpoint
from uniemox.config import PretrainConfig
from uniemox.models import create_mae
from uniemox.testing import make_hf_dataset, tiny_config, tiny_teacher
from uniemox.train import WarmupCosine, build_student, param_groups, pretrain

LOSSES = ("loss", "l_sim", "l_con", "l_rec", "lr", "grad_norm", "person_fallback")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    return make_hf_dataset(root / "ds", n=16), tiny_teacher(root)


def test_thirty_steps_lower_the_reconstruction_loss(env: tuple[Path, Path], tmp_path: Path) -> None:
    data, teacher = env
    cfg = tiny_config(data, tmp_path / "run", teacher, max_steps=30, ckpt_every=0, **{"optim.base_lr": 0.5})
    history = pretrain(cfg).history
    rec = [h["l_rec"] for h in history]
    # 4 steps = one pass over the 16 images: compare the first epoch with the last complete one (steps 25-28)
    first, last = sum(rec[:4]) / 4, sum(rec[24:28]) / 4
    assert last < 0.8 * first, rec
    assert all(math.isfinite(h["loss"]) for h in history)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert len(rows) == 30 and {"l_sim", "l_con", "l_rec", "images_per_s", "person_fallback"} <= set(rows[0])
    assert float(rows[-1]["l_rec"]) == pytest.approx(rec[-1])
    # the half of the images without a person box went through the whole-image fallback, and it was counted
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["with_person_box"] == 8 and report["whole_image_person_stream"] == 8
    assert history[3]["person_fallback"] == 8  # after one epoch: each of the 8 box-less images once


def test_resume_reproduces_the_uninterrupted_run_exactly(env: tuple[Path, Path], tmp_path: Path) -> None:
    data, teacher = env
    full = pretrain(tiny_config(data, tmp_path / "full", teacher, max_steps=6, ckpt_every=3)).history
    ckpt = tmp_path / "full" / "checkpoint-00000003.pt"
    assert ckpt.is_file() and load_checkpoint(ckpt)["step"] == 3
    # as after a crash at step 3: only the step-3 checkpoint is there, RNGs are elsewhere; --resume auto
    (tmp_path / "resumed").mkdir()
    shutil.copy(ckpt, tmp_path / "resumed" / "last.pt")
    torch.manual_seed(999)
    cfg = tiny_config(data, tmp_path / "resumed", teacher, max_steps=6, ckpt_every=3)
    resumed = pretrain(cfg, resume="auto").history
    assert [h["step"] for h in resumed] == [4, 5, 6]
    assert [[h[k] for k in LOSSES] for h in resumed] == [[h[k] for k in LOSSES] for h in full[3:]]
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_gloo_ddp_matches_one_process(env: tuple[Path, Path], tmp_path: Path) -> None:
    data, teacher = env
    cfg = tiny_config(data, tmp_path / "single", teacher, max_steps=4, ckpt_every=0, **{"optim.base_lr": 0.5})
    single = pretrain(cfg).history  # batch 4 in one process; below 2 ranks x 2 (lr large enough to matter)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "uniemox",
        "pretrain", "--data", str(data), "--out", str(tmp_path / "ddp"), "--model", "mae_vit_tiny_patch16",
        "--teacher", str(teacher), "--teacher-pretrained", "random", "--img-size", "32", "--patch-size", "8",
        "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--decoder-dim", "32", "--decoder-depth", "1",
        "--decoder-heads", "2", "--batch-size", "2", "--base-lr", "0.5", "--warmup-steps", "2", "--max-steps", "4",
        "--ckpt-every", "0", "--num-workers", "0", "--device", "cpu", "--no-progress", "--log-every", "1",
    ]  # fmt: skip
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env_vars)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = list(csv.DictReader((tmp_path / "ddp" / "log.csv").open()))
    assert len(rows) == 4  # rank 0 alone wrote the log
    for h, row in zip(single, rows, strict=True):
        for k in LOSSES:
            assert float(row[k]) == pytest.approx(h[k], rel=2e-4, abs=1e-6), (k, h["step"])
    a = load_checkpoint(tmp_path / "single" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    for k in a:
        if k.endswith("attn.qkv.bias"):  # key biases get no gradient (softmax is shift-invariant), so Adam
            d = a[k].numel() // 3  # turns float noise into lr-sized steps there: compare q and v biases only
            a[k], b[k] = torch.cat([a[k][:d], a[k][2 * d :]]), torch.cat([b[k][:d], b[k][2 * d :]])
        assert torch.allclose(a[k], b[k], atol=2e-5), k
    assert load_checkpoint(tmp_path / "ddp" / "last.pt")["world_size"] == 2


def test_mae_format_checkpoint_loads_with_report_and_pos_interpolation(
    env: tuple[Path, Path], tmp_path: Path
) -> None:
    data, teacher = env
    tiny = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
            "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}  # fmt: skip
    torch.manual_seed(1)
    source = create_mae("mae_vit_tiny_patch16", img_size=64, **tiny)  # an 8x8 grid; the student has 4x4
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith("decoder")}  # a release checkpoint
    sd["head.weight"] = torch.zeros(3)
    assert "blocks.1.attn.qkv.weight" in sd and "patch_embed.proj.weight" in sd and "cls_token" in sd
    torch.save({"model": sd}, tmp_path / "mae_pretrain_vit_tiny.pth")

    target = create_mae("mae_vit_tiny_patch16", img_size=32, **tiny)
    report = load_mae_checkpoint(target, tmp_path / "mae_pretrain_vit_tiny.pth")
    assert report.unexpected == ["head.weight"]
    assert report.interpolated == ["pos_embed"] and not report.mismatched
    assert "decoder_embed.weight" in report.missing and "blocks.0.attn.qkv.weight" in report.loaded
    for key in ("blocks.1.attn.qkv.weight", "cls_token", "patch_embed.proj.weight"):
        assert torch.equal(target.state_dict()[key], source.state_dict()[key])

    cfg = tiny_config(data, tmp_path / "run", teacher, max_steps=1, **{"model.init_mae": str(report.path)})
    pretrain(cfg)
    saved = json.loads((tmp_path / "run" / "init_report.json").read_text())
    assert saved["unexpected"] == ["head.weight"] and saved["interpolated"] == ["pos_embed"]


def test_encoder_export_has_mae_vit_names(env: tuple[Path, Path], tmp_path: Path) -> None:
    data, teacher = env
    pretrain(tiny_config(data, tmp_path / "run", teacher, max_steps=1))
    path = export_encoder(tmp_path / "run" / "last.pt", tmp_path / "enc.pth")
    sd = torch.load(path, weights_only=True)["model"]
    assert "blocks.0.attn.qkv.weight" in sd and "pos_embed" in sd and "norm.weight" in sd
    assert not any(k.startswith(("decoder", "mask_token", "proj_", "fusion")) for k in sd)
    auto = torch.load(tmp_path / "run" / "encoder.pth", weights_only=True)["model"]
    assert sd.keys() == auto.keys() and all(torch.equal(sd[k], auto[k]) for k in sd)


def test_weight_decay_groups_and_schedule(env: tuple[Path, Path], tmp_path: Path) -> None:
    data, teacher = env
    model = build_student(tiny_config(data, tmp_path, teacher), teacher_dim=32)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no = {names[id(p)] for p in no_decay["params"]}
    yes = {names[id(p)] for p in decay["params"]}
    assert {"mae.cls_token", "mae.mask_token", "mae.norm.weight", "mae.blocks.0.attn.qkv.bias"} <= no
    assert {"mae.blocks.0.attn.qkv.weight", "mae.decoder_pred.weight", "fusion.fc.weight"} <= yes
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    f = WarmupCosine(warmup=4, total=12, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.1 + 0.9 * 0.5) and f(12) == pytest.approx(0.1)
    # lr = base_lr * effective batch / 256, per iteration
    cfg = tiny_config(data, tmp_path / "lr", teacher, max_steps=3, ckpt_every=0, **{"optim.accum_steps": 2})
    history = pretrain(cfg).history
    peak = 1e-3 * 4 * 2 / 256
    assert [h["lr"] for h in history[:2]] == pytest.approx([peak * 0.5, peak])


def test_no_silent_fallback_to_random_teacher_weights(env: tuple[Path, Path], tmp_path: Path) -> None:
    from uniemox.models import TeacherLoadError

    data, teacher = env
    cfg = tiny_config(data, tmp_path / "run", teacher, **{"teacher.pretrained": str(tmp_path / "missing.pt")})
    with pytest.raises(TeacherLoadError, match="--teacher-pretrained"):
        pretrain(cfg)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_cli_lists_models_and_exports(env: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from uniemox.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["models"])
    assert listed.exit_code == 0 and "mae_vit_large_patch16: embed 1024, depth 24" in listed.output
    assert "paper, scene, person, sum, gated" in listed.output
    data, teacher = env
    pretrain(tiny_config(data, tmp_path / "run", teacher, max_steps=1))
    result = runner.invoke(
        app, ["export-encoder", str(tmp_path / "run" / "last.pt"), str(tmp_path / "e.pth")]
    )
    assert result.exit_code == 0, result.output
    assert "cls_token" in torch.load(tmp_path / "e.pth", weights_only=True)["model"]


@pytest.fixture(scope="module")
def fixed_batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four images and batch 4: every step sees the same images (new crops and masks each time)."""
    return make_hf_dataset(tmp_path_factory.mktemp("fixed") / "ds", n=4)


def test_distillation_terms_fall_on_a_fixed_batch(
    env: tuple[Path, Path], fixed_batch: Path, tmp_path: Path
) -> None:
    """L_sim and L_con must train the student: a detached gamma, or the teacher's omega passed as the student,
    would leave them flat (or at zero) while L_rec still fell."""
    _, teacher = env
    cfg = tiny_config(
        fixed_batch, tmp_path / "run", teacher, max_steps=12, ckpt_every=0, **{"optim.base_lr": 0.5}
    )
    history = pretrain(cfg).history
    sim, con = [h["l_sim"] for h in history], [h["l_con"] for h in history]
    assert sum(sim[-4:]) / 4 < 0.5 * sim[0], sim
    assert sum(con[-4:]) / 4 < 0.5 * con[0], con
    assert max(con[-4:]) < con[0] and sim[0] > 0.5  # it starts far from the teacher: there is room to fall


def test_log_rows_hold_the_means_of_their_steps(env: tuple[Path, Path], tmp_path: Path) -> None:
    data, teacher = env
    every = pretrain(tiny_config(data, tmp_path / "every", teacher, ckpt_every=0)).history  # 6 rows
    grouped = pretrain(tiny_config(data, tmp_path / "grouped", teacher, ckpt_every=0, log_every=4)).history
    assert [h["step"] for h in every] == [1, 2, 3, 4, 5, 6] and [h["step"] for h in grouped] == [4, 6]
    for row, steps in zip(grouped, (every[:4], every[4:]), strict=True):
        for k in ("loss", "l_sim", "l_con", "l_rec", "grad_norm"):
            assert row[k] == pytest.approx(sum(s[k] for s in steps) / len(steps), rel=1e-9), k
        assert row["lr"] == steps[-1]["lr"] and row["person_fallback"] == steps[-1]["person_fallback"]
        assert row["images_per_s"] > 0 and row["step_s"] > 0
    rows = list(csv.DictReader((tmp_path / "grouped" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [4, 6]
    assert float(rows[0]["l_con"]) == pytest.approx(grouped[0]["l_con"])


def test_resume_extends_a_run_and_refuses_settings_that_change_the_math(
    env: tuple[Path, Path], tmp_path: Path
) -> None:
    from uniemox.train import ResumeError, resume_config

    data, teacher = env
    pretrain(tiny_config(data, tmp_path / "run", teacher, max_steps=3, ckpt_every=3))
    # extended to 5 steps, with another log interval, checkpoint interval and worker count: allowed
    longer = tiny_config(data, tmp_path / "run", teacher, max_steps=5, ckpt_every=5, log_every=2)
    longer.data.num_workers = 1
    resumed = pretrain(longer, resume="auto").history
    assert [h["step"] for h in resumed] == [4, 5]
    peak = 1e-3 * 4 / 256
    assert resumed[0]["lr"] == pytest.approx(
        peak * WarmupCosine(2, 5, 0.0)(3)
    )  # the cosine over the new total
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["step"] == 5 and saved["config"]["max_steps"] == 5 and saved["config"]["log_every"] == 2
    # a changed batch size or mask ratio would change the math: refused, naming the setting and its option
    other = tiny_config(data, tmp_path / "run", teacher, max_steps=8, **{"optim.batch_size": 2})
    with pytest.raises(ResumeError, match=r"optim\.batch_size \(--batch-size\) is 4 in the checkpoint but 2"):
        pretrain(other, resume="auto")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 5  # nothing was touched
    # only the settings a user gave count (the CLI's case): the others come from the checkpoint
    ckpt_cfg = PretrainConfig.from_dict(saved["config"])
    given = PretrainConfig(out=str(tmp_path / "run"), max_steps=9, device="cpu")  # defaults: a large model
    merged = resume_config(ckpt_cfg, given, explicit={"max_steps", "device", "out"})
    assert merged.max_steps == 9 and merged.model == ckpt_cfg.model and merged.optim == ckpt_cfg.optim
    with pytest.raises(ResumeError, match=r"model\.mask_ratio \(--mask-ratio\)"):
        resume_config(ckpt_cfg, replace(ckpt_cfg, model=replace(ckpt_cfg.model, mask_ratio=0.5)))


def test_cli_resume_takes_new_max_steps_and_rejects_a_new_mask_ratio(
    env: tuple[Path, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from uniemox.cli import app

    data, teacher = env
    pretrain(tiny_config(data, tmp_path / "run", teacher, max_steps=2, ckpt_every=2))
    runner = CliRunner()
    base = ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--resume", "auto", "--quiet"]
    refused = runner.invoke(app, [*base, "--mask-ratio", "0.5"])
    assert refused.exit_code == 2, refused.output
    assert "model.mask_ratio" in refused.output and "--mask-ratio" in refused.output
    # no model flags given: the checkpoint's tiny model and tiny teacher are used, only the new length applies
    result = runner.invoke(app, [*base, "--max-steps", "3", "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3
