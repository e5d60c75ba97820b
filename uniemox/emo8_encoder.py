"""UniEmoX checkpoints as an ``emo8`` encoder (model key ``uniemox:PATH``), so that ``emo8 embed`` and
``emo8 suggest`` can use a fine-tuned classifier (``OUT/best.pt``), a pretraining checkpoint or an exported
encoder as their embedding model: kNN votes and the linear probe then run on UniEmoX features.

Features are the backbone's pooled features (a fine-tuned classifier: what its head reads; other checkpoints:
the CLS token after the final norm), computed with the checkpoint's evaluation preprocessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from emo8.embed.encoders import Encoder, EncoderSpec


def load_uniemox_encoder(name: str, spec: EncoderSpec, device: torch.device) -> Encoder:
    """The loader behind the ``uniemox`` family of :mod:`emo8.embed.encoders` (``name`` = the checkpoint path)."""
    from emo8.embed.encoders import Encoder, EncoderKeyError, WeightsError, file_fingerprint
    from uniemox.classifier import InitError
    from uniemox.evaluate import embedding_backbone

    if not name:
        raise EncoderKeyError("uniemox keys name a checkpoint: uniemox:PATH (e.g. uniemox:runs/ft/best.pt)")
    if spec.random_init:
        raise WeightsError("uniemox:PATH encoders are checkpoints; --random-init does not apply")
    path = Path(name).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"UniEmoX checkpoint {path} does not exist (a `uniemox finetune` best.pt, a pretraining last.pt or "
            "an encoder.pth)"
        )
    try:
        backbone = embedding_backbone(str(path)).eval()
    except (InitError, RuntimeError, KeyError) as exc:
        raise WeightsError(f"cannot use {path} as an encoder: {exc}") from exc
    return Encoder(
        key=spec.key,
        model=backbone,
        preprocess=backbone.preprocess.eval_transform(),
        dim=int(backbone.num_features),
        fingerprint=file_fingerprint(path),
        device=device,
        image_features=backbone,
    )
