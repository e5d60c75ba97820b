"""The light pieces of the embed stage that other stages and the CLI name without loading torch.

The default model key, the errors of the encoder registry and the embedding store, and the model-key check that
settings models use (the registry itself, :mod:`emo8.embed.encoders`, is imported only when a key is checked).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

__all__ = [
    "DEFAULT_MODEL",
    "EmbeddingStoreError",
    "EncoderKeyError",
    "ModelKey",
    "WeightsError",
    "check_model_key",
]

#: The offline default encoder: EfficientNet-Lite0 with the ImageNet weights a pip package ships.
DEFAULT_MODEL = "efficientnet-lite0"


class WeightsError(RuntimeError):
    """An encoder's weights are missing or do not fit its architecture; the message says how to get them."""


class EncoderKeyError(ValueError):
    """A model key that no registered family understands."""


class EmbeddingStoreError(RuntimeError):
    """A store is missing, corrupted, or was computed by other weights than the ones given."""


def check_model_key(key: str) -> str:
    """``key`` if its family is registered (efficientnet-lite0, open_clip:..., timm:..., plugins); else a
    ValueError naming the known families, so a pipeline file reports it at its line before anything runs."""
    from emo8.embed.encoders import parse_key

    try:
        parse_key(key)
    except EncoderKeyError as exc:
        raise ValueError(str(exc)) from None
    return key


#: A model key setting, checked when the settings are validated (the weights are checked when the stage runs).
ModelKey = Annotated[str, AfterValidator(check_model_key)]
