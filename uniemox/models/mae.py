"""Masked autoencoder ViT (He et al., 2022) with a size registry: tiny, small, base and large, patch 16.

Parameter names follow facebookresearch/mae ``models_mae.py`` so its checkpoints load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from uniemox.models.masking import random_masking
from uniemox.models.pos_embed import sincos_pos_embed_2d
from uniemox.models.vit import Block, PatchEmbed


@dataclass(frozen=True)
class MAEConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


#: The model registry: name -> architecture. Decoder width/depth default to MAE's 512-d, 8 layers.
MAE_CONFIGS: dict[str, MAEConfig] = {
    "mae_vit_tiny_patch16": MAEConfig(embed_dim=192, depth=12, num_heads=3),
    "mae_vit_small_patch16": MAEConfig(embed_dim=384, depth=12, num_heads=6),
    "mae_vit_base_patch16": MAEConfig(embed_dim=768, depth=12, num_heads=12),
    "mae_vit_large_patch16": MAEConfig(embed_dim=1024, depth=24, num_heads=16),
}


def mae_config(name: str, **overrides: Any) -> MAEConfig:
    """The registered architecture ``name`` with fields replaced by the non-None ``overrides``."""
    if name not in MAE_CONFIGS:
        raise KeyError(f"unknown model {name!r}; choose one of {', '.join(MAE_CONFIGS)}")
    return replace(MAE_CONFIGS[name], **{k: v for k, v in overrides.items() if v is not None})


class MaskedAutoencoderViT(nn.Module):
    pos_embed: torch.Tensor  # (1, 1 + L, D) buffer
    decoder_pos_embed: torch.Tensor  # (1, 1 + L, Dd) buffer

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, dd = cfg.embed_dim, cfg.decoder_embed_dim
        # --- encoder ---
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, d)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        # fixed sin-cos position embeddings: persistent buffers, so checkpoints carry them under MAE's names
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, self.patch_embed.grid_size)[None])
        self.blocks = nn.ModuleList([Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        # --- decoder ---
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(dd, self.patch_embed.grid_size)[None])
        self.decoder_blocks = nn.ModuleList(
            [Block(dd, cfg.decoder_num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, cfg.patch_size**2 * cfg.in_chans)
        assert self.pos_embed.shape == (1, 1 + num_patches, d)
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight  # initialised like a Linear, as in MAE
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # --- patches ---
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), patch pixels in (row, col, channel) order as in MAE."""
        p, c = self.cfg.patch_size, self.cfg.in_chans
        b, _, h, w = imgs.shape
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) -> (B, C, H, W)."""
        p, c, g = self.cfg.patch_size, self.cfg.in_chans, self.patch_embed.grid_size
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    # --- encoder / decoder ---
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs (B, C, H, W) normalised -> latent (B, 1+K, D) [CLS first], mask (B, L), ids_restore (B, L)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]  # (B, L, D)
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)  # (B, K, D): visible tokens only
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + K, D)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1+K, D) -> per-patch pixel predictions (B, L, p*p*C) from the decoder's PATCH tokens."""
        x = self.decoder_embed(latent)  # (B, 1 + K, Dd)
        b, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(b, length + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, L, Dd), shuffled order
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed  # (B, 1 + L, Dd)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))  # (B, 1 + L, p*p*C)
        return x[:, 1:]  # drop the CLS position: row l predicts patch l

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> latent (B, 1 + K, D), pred (B, L, p*p*C), mask (B, L)."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        return latent, self.forward_decoder(latent, ids_restore), mask


def create_mae(name: str, **overrides: Any) -> MaskedAutoencoderViT:
    """Factory: ``create_mae("mae_vit_base_patch16", img_size=224, decoder_depth=4)``."""
    return MaskedAutoencoderViT(mae_config(name, **overrides))


#: Encoder parameter prefixes (what a fine-tuning ViT needs); everything else is the decoder.
ENCODER_PREFIXES: tuple[str, ...] = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
