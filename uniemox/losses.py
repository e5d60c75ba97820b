"""The three UniEmoX pretraining losses, exactly as in the paper (all means over the batch).

s = normalize(gamma) is the student embedding, Omega the teacher's normalised image embeddings of the same
augmented scene images, Lambda the teacher's normalised prompt embeddings, t the CLIP logit scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sim_loss(s: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """L_sim = mean_i 1 - cos(s_i, Omega_i). s, omega: (B, E)."""
    return (1 - F.cosine_similarity(s, omega, dim=-1)).mean()


def con_loss(s: torch.Tensor, omega: torch.Tensor, lam: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """L_con = mean_i 1 - cos(row_i(normalize(t s Lambda^T)), row_i(normalize(t Omega Lambda^T))).

    s, omega: (B, E) this rank's rows; lam: (P, E) the prompts of the whole (all-gathered) batch, P >= B.
    The student's similarity profile over all prompts (1 paired, P-1 unpaired) must match the teacher's.
    Note that t > 0 cancels under the row L2-normalisation; it is kept to follow the paper's definition.
    """
    s, omega, lam = F.normalize(s, dim=-1), F.normalize(omega, dim=-1), F.normalize(lam, dim=-1)
    student = F.normalize(logit_scale * s @ lam.T, dim=-1)  # (B, P)
    teacher = F.normalize(logit_scale * omega @ lam.T, dim=-1)  # (B, P)
    return (1 - (student * teacher).sum(dim=-1)).mean()


def rec_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False
) -> torch.Tensor:
    """MAE's L_rec: per-patch MSE averaged over the MASKED patches only (visible ones contribute nothing).

    pred, target: (B, L, p*p*C); mask: (B, L) with 1 = masked. ``norm_pix`` normalises each target patch
    by its own mean and variance (MAE's --norm_pix_loss).
    """
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


@dataclass(frozen=True)
class LossWeights:
    sim: float = 1.0
    con: float = 1.0
    rec: float = 1.0


def pretraining_losses(
    gamma: torch.Tensor,
    omega: torch.Tensor,
    lam: torch.Tensor,
    logit_scale: float,
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    weights: LossWeights = LossWeights(),
    norm_pix: bool = False,
) -> dict[str, torch.Tensor]:
    """All three terms and their weighted sum ``loss``; each term is logged separately."""
    s = F.normalize(gamma.float(), dim=-1)
    terms = {
        "l_sim": sim_loss(s, omega),
        "l_con": con_loss(s, omega, lam, logit_scale),
        "l_rec": rec_loss(pred, target, mask, norm_pix),
    }
    terms["loss"] = weights.sim * terms["l_sim"] + weights.con * terms["l_con"] + weights.rec * terms["l_rec"]
    return terms
