"""Per-sample random masking (MAE): every sample keeps its own random subset of patches."""

from __future__ import annotations

import torch


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """How many of ``num_patches`` tokens the encoder sees at ``mask_ratio`` (MAE's rounding: floor)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(num_patches * (1 - mask_ratio))


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``num_visible`` patches with the smallest noise, per sample.

    x: (B, L, D) patch tokens; noise: (B, L) in [0, 1) (drawn from the global RNG when None; the training data
    pipeline passes per-sample noise so that masks do not depend on rank, worker or resume point).
    Returns x_visible (B, K, D), mask (B, L) with 1 = masked / 0 = visible in the original order, and
    ids_restore (B, L) that undoes the shuffle.
    """
    b, length, d = x.shape
    keep = num_visible(length, mask_ratio)
    if noise is None:
        noise = torch.rand(b, length, device=x.device)
    if noise.shape != (b, length):
        raise ValueError(f"noise must have shape {(b, length)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the first `keep` are visible
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(b, length, device=x.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_visible, mask, ids_restore
