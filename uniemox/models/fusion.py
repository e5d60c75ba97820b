"""Fusions of the scene embedding alpha and the person embedding beta into the student embedding gamma.

``paper`` is UniEmoX's: gamma = ELU(Linear(LN(alpha) + LN(beta))) with ONE LayerNorm shared by both streams.
The others are the ablations. Each declares which streams it reads, so unused streams are never computed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Fusion(nn.Module):
    uses_scene: bool = True
    uses_person: bool = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, alpha: torch.Tensor | None, beta: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


FUSIONS: dict[str, type[Fusion]] = {}


def register_fusion(name: str) -> Callable[[type[Fusion]], type[Fusion]]:
    def deco(cls: type[Fusion]) -> type[Fusion]:
        FUSIONS[name] = cls
        return cls

    return deco


def create_fusion(name: str, dim: int) -> Fusion:
    if name not in FUSIONS:
        raise KeyError(f"unknown fusion {name!r}; choose one of {', '.join(FUSIONS)}")
    return FUSIONS[name](dim)


def _need(x: torch.Tensor | None, what: str) -> torch.Tensor:
    if x is None:
        raise ValueError(f"this fusion needs the {what} embedding")
    return x


@register_fusion("paper")
class PaperFusion(Fusion):
    """(B, E), (B, E) -> ELU(fc(LN(alpha) + LN(beta))) (B, E); the LayerNorm is shared."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, alpha: torch.Tensor | None, beta: torch.Tensor | None) -> torch.Tensor:
        return F.elu(self.fc(self.norm(_need(alpha, "scene")) + self.norm(_need(beta, "person"))))


@register_fusion("scene")
class SceneOnly(Fusion):
    """gamma = alpha; the person stream is not run."""

    uses_person = False

    def forward(self, alpha: torch.Tensor | None, beta: torch.Tensor | None) -> torch.Tensor:
        return _need(alpha, "scene")


@register_fusion("person")
class PersonOnly(Fusion):
    """gamma = beta; the scene stream still runs for the reconstruction loss."""

    uses_scene = False

    def forward(self, alpha: torch.Tensor | None, beta: torch.Tensor | None) -> torch.Tensor:
        return _need(beta, "person")


@register_fusion("sum")
class SumFusion(Fusion):
    """gamma = alpha + beta."""

    def forward(self, alpha: torch.Tensor | None, beta: torch.Tensor | None) -> torch.Tensor:
        return _need(alpha, "scene") + _need(beta, "person")


@register_fusion("gated")
class GatedFusion(Fusion):
    """g = sigmoid(W [alpha; beta]) (B, E); gamma = g * alpha + (1 - g) * beta."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, alpha: torch.Tensor | None, beta: torch.Tensor | None) -> torch.Tensor:
        a, b = _need(alpha, "scene"), _need(beta, "person")
        g = torch.sigmoid(self.gate(torch.cat([a, b], dim=-1)))
        return g * a + (1 - g) * b
