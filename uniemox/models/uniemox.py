"""The UniEmoX student: a shared MAE encoder over two streams, projections alpha/beta, fusion, decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from uniemox.models.fusion import create_fusion
from uniemox.models.mae import MAEConfig, MaskedAutoencoderViT

#: MAE normalises its input (and its reconstruction target) with the ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class StudentOutput:
    gamma: torch.Tensor  # (B, E) fused embedding, not normalised
    pred: torch.Tensor  # (B, L, p*p*3) decoder predictions for the scene stream
    target: torch.Tensor  # (B, L, p*p*3) patchified normalised scene image
    mask: torch.Tensor  # (B, L) 1 = masked in the scene stream
    person_mask: torch.Tensor | None  # (B, L) the person stream's own mask


class UniEmoX(nn.Module):
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, mae_cfg: MAEConfig, teacher_dim: int, fusion: str = "paper", mask_ratio: float = 0.75):
        super().__init__()
        self.mask_ratio = mask_ratio
        self.mae = MaskedAutoencoderViT(mae_cfg)
        self.fusion = create_fusion(fusion, teacher_dim)
        d = mae_cfg.embed_dim
        # alpha (scene) and beta (person) projections of the encoder CLS; only those the fusion reads exist
        self.proj_scene = nn.Linear(d, teacher_dim) if self.fusion.uses_scene else None
        self.proj_person = nn.Linear(d, teacher_dim) if self.fusion.uses_person else None
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, imgs01: torch.Tensor) -> torch.Tensor:
        return (imgs01 - self.pixel_mean) / self.pixel_std

    def forward(
        self,
        scene: torch.Tensor,
        person: torch.Tensor,
        scene_noise: torch.Tensor | None = None,
        person_noise: torch.Tensor | None = None,
    ) -> StudentOutput:
        """scene, person: (B, 3, H, W) in [0, 1]; noises (B, L) select each stream's independent mask."""
        x_scene = self.normalise(scene)
        latent, mask, ids_restore = self.mae.forward_encoder(x_scene, self.mask_ratio, scene_noise)
        pred = self.mae.forward_decoder(latent, ids_restore)  # (B, L, p*p*3)
        alpha = self.proj_scene(latent[:, 0]) if self.proj_scene is not None else None  # (B, E)
        beta, person_mask = None, None
        if self.proj_person is not None:
            p_latent, person_mask, _ = self.mae.forward_encoder(
                self.normalise(person), self.mask_ratio, person_noise
            )
            beta = self.proj_person(p_latent[:, 0])  # (B, E)
        gamma = self.fusion(alpha, beta)
        return StudentOutput(gamma, pred, self.mae.patchify(x_scene), mask, person_mask)
