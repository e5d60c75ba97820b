"""The three UniEmoX losses on hand-built tensors: aligned -> 0, known values otherwise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from uniemox.losses import LossWeights, con_loss, pretraining_losses, rec_loss, sim_loss

S2 = 1 / math.sqrt(2)


def test_sim_loss_known_values() -> None:
    omega = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert sim_loss(omega, omega).item() == pytest.approx(0.0, abs=1e-7)
    assert sim_loss(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), omega).item() == pytest.approx(1.0)
    assert sim_loss(-omega, omega).item() == pytest.approx(2.0)
    s = torch.tensor([[0.5, math.sqrt(3) / 2], [0.0, 1.0]])  # 60 degrees off, then aligned
    assert sim_loss(s, omega).item() == pytest.approx((0.5 + 0.0) / 2)


def test_con_loss_aligned_is_zero_for_any_prompts() -> None:
    g = torch.Generator().manual_seed(0)
    omega = F.normalize(torch.randn(5, 16, generator=g), dim=-1)
    lam = F.normalize(torch.randn(5, 16, generator=g), dim=-1)
    assert con_loss(omega, omega, lam, 100.0).item() == pytest.approx(0.0, abs=1e-6)


def test_con_loss_known_values() -> None:
    lam = torch.eye(2)  # two prompts along the axes
    # student profile (1, 0) vs teacher profile (0, 1): orthogonal -> 1
    assert con_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), lam, 1.0).item() == pytest.approx(
        1.0
    )
    # teacher at 45 degrees: profiles (1, 0) and (1, 1)/sqrt2 -> 1 - 1/sqrt2
    value = con_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[S2, S2]]), lam, 1.0).item()
    assert value == pytest.approx(1 - S2)
    # a 2-image batch with 3 prompts: compares whole rows over all prompts (paired and unpaired)
    lam3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [S2, S2]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    omega = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    row0 = F.normalize(torch.tensor([1.0, 0.0, S2]), dim=0) @ F.normalize(torch.tensor([0.0, 1.0, S2]), dim=0)
    assert con_loss(s, omega, lam3, 1.0).item() == pytest.approx((1 - row0.item() + 0.0) / 2, abs=1e-6)


def test_con_loss_logit_scale_cancels_under_row_normalisation() -> None:
    g = torch.Generator().manual_seed(1)
    s, omega, lam = (torch.randn(4, 8, generator=g) for _ in range(3))
    assert con_loss(s, omega, lam, 1.0).item() == pytest.approx(
        con_loss(s, omega, lam, 100.0).item(), rel=1e-5
    )


def test_rec_loss_counts_only_masked_patches() -> None:
    target = torch.zeros(1, 4, 3)
    pred = torch.tensor([[[1.0] * 3, [2.0] * 3, [100.0] * 3, [-100.0] * 3]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # the huge errors sit on visible patches
    assert rec_loss(pred, target, mask).item() == pytest.approx((1 + 4) / 2)
    changed = pred.clone()
    changed[0, 2:] = 0.0
    assert rec_loss(changed, target, mask).item() == rec_loss(pred, target, mask).item()
    pred.requires_grad_(True)
    rec_loss(pred, target, mask).backward()
    assert pred.grad is not None and torch.all(pred.grad[0, 2:] == 0) and torch.all(pred.grad[0, :2] != 0)


def test_rec_loss_norm_pix_normalises_each_target_patch() -> None:
    target = torch.tensor([[[1.0, 3.0], [10.0, 30.0]]])
    mask = torch.ones(1, 2)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert rec_loss(normed, target, mask, norm_pix=True).item() == pytest.approx(0.0, abs=1e-6)
    # MAE uses the unbiased variance: a 2-pixel patch normalises to +-1/sqrt(2), so zeros score 1/2
    assert rec_loss(torch.zeros(1, 2, 2), target, mask, norm_pix=True).item() == pytest.approx(0.5, rel=1e-5)


def test_total_is_the_weighted_sum_and_terms_are_reported() -> None:
    gamma = torch.tensor([[2.0, 0.0]])  # normalised inside
    omega, lam = torch.tensor([[0.0, 1.0]]), torch.eye(2)
    pred, target, mask = torch.ones(1, 2, 1), torch.zeros(1, 2, 1), torch.tensor([[1.0, 0.0]])
    terms = pretraining_losses(gamma, omega, lam, 100.0, pred, target, mask, LossWeights(0.5, 2.0, 3.0))
    assert terms["l_sim"].item() == pytest.approx(1.0)
    assert terms["l_con"].item() == pytest.approx(1.0)
    assert terms["l_rec"].item() == pytest.approx(1.0)
    assert terms["loss"].item() == pytest.approx(0.5 + 2.0 + 3.0)
    default = pretraining_losses(gamma, omega, lam, 100.0, pred, target, mask)
    assert default["loss"].item() == pytest.approx(3.0)
