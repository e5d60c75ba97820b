"""Fixed 2-D sine-cosine position embeddings (as in MAE) and their resizing for checkpoints of another grid."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    # pos: (M,) -> (M, embed_dim); half sines, half cosines at geometric frequencies
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """(1 + grid_size**2, embed_dim) if cls_token else (grid_size**2, embed_dim); the CLS row is zeros."""
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    coords = np.arange(grid_size, dtype=np.float64)
    grid_w, grid_h = np.meshgrid(coords, coords)  # each (G, G); w varies along columns, as in MAE
    emb = np.concatenate(
        [_sincos_1d(embed_dim // 2, grid_w), _sincos_1d(embed_dim // 2, grid_h)], axis=1
    )  # (G*G, D)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return torch.from_numpy(emb).float()


def interpolate_pos_embed(
    pos_embed: torch.Tensor, num_patches: int, num_extra_tokens: int = 1
) -> torch.Tensor:
    """Resize (1, extra + G_old**2, D) position embeddings to (1, extra + num_patches, D), bicubic.

    The extra (CLS) tokens are kept as they are. Same behaviour as MAE's ``util/pos_embed.py``.
    """
    extra, grid = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    old, new = round(grid.shape[1] ** 0.5), round(num_patches**0.5)
    if old * old != grid.shape[1] or new * new != num_patches:
        raise ValueError("position embeddings must lie on a square grid")
    if old == new:
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()  # (1, D, G_old, G_old)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, dim).to(pos_embed.dtype)
    return torch.cat([extra, grid], dim=1)
