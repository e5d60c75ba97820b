"""The frozen CLIP teacher (open_clip): image embeddings Omega and cached prompt embeddings Lambda."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: ``--teacher-pretrained random``: randomly initialised weights, for tests and throughput benchmarks only.
RANDOM = "random"


class TeacherLoadError(RuntimeError):
    """The teacher's weights could not be found or fetched; the message says how to get them."""


def _how_to_get(arch: str, pretrained: str) -> str:
    return (
        f"To use '{arch}' / '{pretrained}' offline, fetch it once on a machine with internet access:\n"
        f"  python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{pretrained}')\"\n"
        "(it is cached under ~/.cache/huggingface or $HF_HOME; copy that cache over), or download the "
        "open_clip checkpoint file and pass its path: --teacher-pretrained /path/to/open_clip_model.safetensors. "
        f"Known tags for '{arch}': {{tags}}. "
        "'--teacher-pretrained random' gives random weights (tests and benchmarks only)."
    )


def load_open_clip(arch: str, pretrained: str, device: torch.device) -> tuple[nn.Module, Callable[..., Any]]:
    """Create the open_clip model ``arch`` with weights ``pretrained`` (tag, local file, or ``random``).

    ``arch`` may also be a path to an open_clip model-config JSON (as in open_clip's ``model_configs/``).
    Never falls back to random weights: a missing file or failed download raises :class:`TeacherLoadError`.
    """
    import open_clip

    from emo8.core.weights import open_clip_hub_guard

    if arch.endswith(".json"):
        if not Path(arch).is_file():
            raise TeacherLoadError(f"teacher model config {arch} does not exist")
        open_clip.add_model_config(arch)
        arch = Path(arch).stem
    if arch not in open_clip.list_models():
        raise TeacherLoadError(f"unknown open_clip architecture {arch!r}")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    hint = _how_to_get(arch, pretrained).replace("{tags}", ", ".join(tags) or "none")
    if pretrained == RANDOM:
        log.warning("teacher %s has RANDOM weights (--teacher-pretrained random): for tests only", arch)
        weights: str | None = None
    elif Path(pretrained).expanduser().is_file():
        weights = str(Path(pretrained).expanduser())
    elif pretrained in tags:
        weights = pretrained
    else:
        raise TeacherLoadError(f"teacher weights {pretrained!r} are neither a file nor a known tag.\n{hint}")
    try:
        with open_clip_hub_guard(arch, weights):  # cached weights or a reachable Hub, else fail at once
            model = open_clip.create_model(
                arch, pretrained=weights, device=device, require_pretrained=weights is not None
            )
    except Exception as exc:  # network errors, HF offline mode, corrupt files: all end here
        raise TeacherLoadError(f"could not load teacher weights {arch}/{pretrained}: {exc}\n{hint}") from exc
    return model, open_clip.get_tokenizer(arch)


#: Teacher precisions: name -> parameter dtype.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def prompt_token_count(tokenizer: Callable[..., Any], text: str) -> int:
    """Tokens of ``text`` for an open_clip tokenizer, start and end tokens included, before any truncation."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):  # open_clip's SimpleTokenizer (the OpenAI CLIP BPE): SOT + tokens + EOT
        return len(encode(text)) + 2
    ids = tokenizer([text], context_length=4096)[0]  # other tokenizers: a context long enough not to cut
    return int((ids != 0).sum())


class ClipTeacher(nn.Module):
    """Frozen, eval-mode CLIP. Takes images in [0, 1] and applies CLIP's own normalisation constants.

    Forward passes run under ``torch.no_grad`` (not ``inference_mode``: its tensors could not enter the
    student's losses, which save their inputs for backward).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, tokenizer: Callable[..., Any], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model: Any = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.dtype = dtype
        visual: Any = getattr(model, "visual", None)
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.embed_dim = int(self.encode_texts(["a photo"]).shape[1])  # E, whatever the text tower is

    @classmethod
    def from_open_clip(
        cls, arch: str, pretrained: str, device: torch.device, precision: str = "fp32"
    ) -> ClipTeacher:
        """``precision``: a key of :data:`PRECISIONS`. fp32 is the default: on GPUs its matmuls run in TF32
        when the caller allows it (``torch.set_float32_matmul_precision("high")``, as pretraining does)."""
        if precision not in PRECISIONS:
            raise ValueError(
                f"unknown teacher precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        model, tokenizer = load_open_clip(arch, pretrained, device)
        dtype = PRECISIONS[precision]
        return cls(model.to(device=device, dtype=dtype), tokenizer, dtype).to(device)

    def prompt_fits(self, text: str) -> bool:
        """Whether ``text`` fits the text encoder's context (start and end tokens included) untruncated."""
        return prompt_token_count(self.tokenizer, text) <= int(getattr(self.tokenizer, "context_length", 77))

    def train(self, mode: bool = True) -> ClipTeacher:  # always frozen in eval mode
        return super().train(False)

    @property
    def logit_scale(self) -> float:
        """t = exp(CLIP's learned log logit scale), 100 for the OpenAI weights."""
        return float(self.model.logit_scale.exp())

    @torch.no_grad()
    def encode_images(self, imgs01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> L2-normalised Omega (B, E) in float32."""
        if imgs01.shape[-1] != self.image_size or imgs01.shape[-2] != self.image_size:
            imgs01 = F.interpolate(
                imgs01, size=(self.image_size, self.image_size), mode="bicubic", antialias=True
            )
        x = ((imgs01 - self.mean) / self.std).to(self.dtype)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Prompts -> L2-normalised Lambda (P, E) in float32."""
        device = next(self.model.parameters()).device
        out = [
            self.model.encode_text(self.tokenizer(list(prompts[i : i + batch_size])).to(device)).float()
            for i in range(0, len(prompts), batch_size)
        ]
        return F.normalize(torch.cat(out), dim=-1)


def prompt_embeddings(
    teacher: ClipTeacher, prompts: Sequence[str], fingerprint: str, cache_file: Path | None = None
) -> torch.Tensor:
    """Lambda for each DISTINCT prompt (P, E), computed once and cached in ``cache_file`` across runs.

    ``fingerprint`` names the teacher (arch + weights); the cache is reused only for the same teacher and
    the same prompts.
    """
    key = hashlib.sha256(json.dumps([fingerprint, list(prompts)]).encode()).hexdigest()
    if cache_file is not None and cache_file.is_file():
        blob = torch.load(cache_file, map_location="cpu", weights_only=True)
        if blob.get("key") == key:
            log.info("prompt embeddings: %d from cache %s", len(prompts), cache_file)
            return blob["embeddings"].to(teacher.mean.device)
    emb = teacher.encode_texts(prompts)
    if cache_file is not None:
        tmp = cache_file.with_suffix(".tmp")
        torch.save({"key": key, "embeddings": emb.cpu()}, tmp)
        tmp.replace(cache_file)
    return emb
