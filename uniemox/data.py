"""Pretraining data: sources (HF datasets, ImageFolder, EmoSet JSON), the two-stream augmentation and a
deterministic global-batch sampler.

Every random choice for a sample (crops, flip, both masks) is drawn from a generator seeded by
(seed, epoch, sample index). So what a sample looks like never depends on the rank, the number of ranks
or data workers, or on where a run was resumed; resuming and DDP are exact by construction.

Workers decode JPEGs at a reduced DCT scale when the crops allow it (``Image.draft``) and send uint8 images;
the conversion to float happens on the training device (:func:`to_unit`).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from emo8.core.imaging import _orient, _orientation, _to_rgb
from emo8.core.taxonomy import normalise_label
from uniemox.prompts import EMO8_SCALES, EMOSET_SCALES, AttributeScales, ImageAttributes, build_prompt

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in original pixels
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def best_person_box(boxes: Sequence[Sequence[float]] | None) -> Box | None:
    """The most confident box of ``[[x0, y0, x1, y1, score], ...]`` (score 1 when absent), or None."""
    valid = [b for b in boxes or [] if b is not None and len(b) >= 4 and b[2] > b[0] and b[3] > b[1]]
    if not valid:
        return None
    best = max(valid, key=lambda b: float(b[4]) if len(b) > 4 else 1.0)
    return (float(best[0]), float(best[1]), float(best[2]), float(best[3]))


@dataclass(frozen=True)
class SampleMeta:
    attributes: ImageAttributes
    box: Box | None  # the person stream's crop; None -> the whole image


class ImageSource:
    """Random access to images plus per-sample metadata read once without decoding any image.

    ``scales`` declares the units of the numeric attributes (brightness, colorfulness) of this kind of source:
    Emo8's (Hasler & Suesstrunk colourfulness) unless the layout says otherwise (EmoSet: both in [0, 1]).
    """

    name = "source"
    scales: AttributeScales = EMO8_SCALES

    def __len__(self) -> int:
        raise NotImplementedError

    def load_image(self, index: int) -> Image.Image:
        """The image, opened lazily where possible (so that a JPEG can still be drafted before decoding)."""
        raise NotImplementedError

    def metadata(self) -> list[SampleMeta]:
        raise NotImplementedError


def _opt_float(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _meta_from_record(r: dict[str, Any], emotion: str | None) -> SampleMeta:
    boxes = r.get("person_boxes") or []
    objects = r.get("object", r.get("objects")) or ()
    return SampleMeta(
        ImageAttributes(
            emotion=emotion,
            domain=r.get("domain") or r.get("style") or None,
            scene=r.get("scene") or None,
            objects=tuple(str(o) for o in ([objects] if isinstance(objects, str) else objects)),
            title=r.get("title") or None,
            brightness=_opt_float(r.get("brightness")),
            colorfulness=_opt_float(r.get("colorfulness")),
            facial_expression=r.get("facial_expression") or None,
            human_action=r.get("human_action") or None,
            num_people=len(boxes),
        ),
        best_person_box(boxes),
    )


class HFSource(ImageSource):
    """A Hugging Face ``datasets.Dataset`` with an Image column and optional attribute columns."""

    name = "hf"
    META_COLUMNS = (
        "label", "emotion", "domain", "style", "scene", "object", "objects", "title", "brightness",
        "colorfulness", "facial_expression", "human_action", "person_boxes",
    )  # fmt: skip

    def __init__(self, ds: Any, image_col: str = "image", label_col: str = "label") -> None:
        if image_col not in ds.column_names:
            raise ValueError(f"dataset has no image column {image_col!r}; columns: {ds.column_names}")
        import datasets

        self.ds, self.image_col, self.label_col = ds, image_col, label_col
        self._images = ds.select_columns([image_col])
        # encoded bytes: opened lazily here, so that JPEGs can be drafted (datasets' decoder loads them fully)
        if isinstance(ds.features.get(image_col), datasets.Image):
            self._images = self._images.cast_column(image_col, datasets.Image(decode=False))

    def __len__(self) -> int:
        return len(self.ds)

    def load_image(self, index: int) -> Image.Image:
        img = self._images[index][self.image_col]
        if isinstance(img, Image.Image):
            return img
        return Image.open(io.BytesIO(img["bytes"])) if img.get("bytes") else Image.open(img["path"])

    def metadata(self) -> list[SampleMeta]:
        cols = [c for c in (*self.META_COLUMNS, self.label_col) if c in self.ds.column_names]
        table = self.ds.select_columns(list(dict.fromkeys(cols))).to_dict()
        feature = self.ds.features.get(self.label_col)
        names = getattr(feature, "names", None)
        out = []
        for i in range(len(self.ds)):
            r = {c: table[c][i] for c in table}
            label = r.get(self.label_col, r.get("emotion"))
            if names is not None and isinstance(label, int):
                label = names[label] if label >= 0 else None
            emotion = normalise_label(label) or (str(label) if label not in (None, "") else None)
            out.append(_meta_from_record(r, emotion))
        return out


class FileListSource(ImageSource):
    """Image files with per-file records (ImageFolder trees and EmoSet's JSON layout)."""

    def __init__(self, files: list[Path], records: list[dict[str, Any]], emotions: list[str | None]) -> None:
        self.files, self.records, self.emotions = files, records, emotions

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, index: int) -> Image.Image:
        return Image.open(self.files[index])

    def metadata(self) -> list[SampleMeta]:
        return [_meta_from_record(r, e) for r, e in zip(self.records, self.emotions, strict=True)]


def _splits(split: str) -> list[str]:
    return [s for s in split.replace(",", "+").split("+") if s]


def _hf_splits(dsd: Any, split: str) -> Any:
    import datasets

    if isinstance(dsd, datasets.Dataset):
        return dsd
    wanted = [s for s in _splits(split) if s in dsd]
    if not wanted:
        raise ValueError(f"none of the splits {split!r} exist; available: {list(dsd)}")
    return datasets.concatenate_datasets([dsd[s] for s in wanted])


def _load_hf_disk(path: Path, split: str, image_col: str, label_col: str) -> ImageSource:
    import datasets

    return HFSource(_hf_splits(datasets.load_from_disk(str(path)), split), image_col, label_col)


def _load_parquet(path: Path, split: str, image_col: str, label_col: str) -> ImageSource:
    import datasets

    files = sorted(str(p) for p in path.rglob("*.parquet"))
    by_split = {s: [f for f in files if Path(f).name.startswith(s) or f"/{s}/" in f] for s in _splits(split)}
    chosen = [f for fs in by_split.values() for f in fs] or files  # no split naming: every file is "train"
    return HFSource(datasets.load_dataset("parquet", data_files=chosen, split="train"), image_col, label_col)


def _load_imagefolder(path: Path, split: str, image_col: str, label_col: str) -> ImageSource:
    roots = [path / s for s in _splits(split) if (path / s).is_dir()] or [path]
    files, emotions = [], []
    for root in roots:
        for f in sorted(root.rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                cls = f.parent.name if f.parent != root else None
                files.append(f)
                emotions.append(normalise_label(cls) or cls)
    if not files:
        raise ValueError(f"no images under {path}")
    return FileListSource(files, [{} for _ in files], emotions)


def _load_emoset(path: Path, split: str, image_col: str, label_col: str) -> ImageSource:
    """EmoSet: ``{split}.json`` = [[emotion, image path, annotation path], ...], relative to the root."""
    files: list[Path] = []
    records: list[dict[str, Any]] = []
    emotions: list[str | None] = []
    for s in _splits(split):
        for entry in json.loads((path / f"{s}.json").read_text()):
            emotion, image, annotation = (
                (entry["emotion"], entry["image"], entry.get("annotation"))
                if isinstance(entry, dict)
                else (entry[0], entry[1], entry[2] if len(entry) > 2 else None)
            )
            ann = json.loads((path / annotation).read_text()) if annotation else {}
            files.append(path / image)
            records.append(ann)
            emotions.append(normalise_label(emotion) or emotion)
    source = FileListSource(files, records, emotions)
    source.scales = EMOSET_SCALES  # EmoSet's brightness and colorfulness are both in [0, 1]
    return source


Loader = Callable[[Path, str, str, str], ImageSource]
#: Directory layouts, tried in order: (name, does this directory look like it?, loader).
LAYOUTS: list[tuple[str, Callable[[Path], bool], Loader]] = [
    ("emoset", lambda p: (p / "info.json").is_file() and (p / "train.json").is_file(), _load_emoset),
    (
        "hf-disk",
        lambda p: any((p / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")),
        _load_hf_disk,
    ),
    ("parquet", lambda p: next(p.rglob("*.parquet"), None) is not None, _load_parquet),
    ("imagefolder", lambda p: True, _load_imagefolder),
]


def open_source(
    data: str,
    split: str = "train",
    image_col: str = "image",
    label_col: str = "label",
    scales: AttributeScales | None = None,
) -> ImageSource:
    """A release directory, an ImageFolder tree, EmoSet's JSON layout, or a Hugging Face Hub id.

    ``scales`` overrides the units the layout implies for brightness/colorfulness (e.g. EmoSet converted to a
    Hugging Face dataset: ``AttributeScales("unit", "unit")``).
    """
    path = Path(data).expanduser()
    if not path.exists():
        import datasets

        if "/" not in data or data.startswith((".", "/", "~")):
            raise FileNotFoundError(f"{data} is neither a directory nor a Hugging Face Hub id (owner/name)")
        ds = datasets.concatenate_datasets([datasets.load_dataset(data, split=s) for s in _splits(split)])
        source: ImageSource = HFSource(ds, image_col, label_col)
    else:
        name, _, loader = next(layout for layout in LAYOUTS if layout[1](path))
        source = loader(path, split, image_col, label_col)
        source.name = name
    if scales is not None:
        source.scales = scales
    log.info(
        "data %s: %s layout, %d images, attribute scales %s", data, source.name, len(source), source.scales
    )
    return source


# --- augmentation -------------------------------------------------------------------------------------------

#: The largest person-box jitter that still keeps >= 90 % of the box in view in both directions (1 - 1.5 j).
MAX_PERSON_JITTER = 1 / 15
#: Padding of the person stream's square: the ImageNet mean colour, i.e. zero after the student's normalisation.
PAD_RGB = (124, 116, 104)


@dataclass(frozen=True)
class AugmentConfig:
    img_size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)  # random-resized-crop area range for the scene stream
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    person_jitter: float = 0.05  # the person box's size and centre move by up to this share of its sides
    hflip: float = 0.5
    draft: bool = True  # decode JPEGs at a reduced DCT scale when the crops keep >= img_size pixels

    def __post_init__(self) -> None:
        if not 0.0 <= self.person_jitter <= MAX_PERSON_JITTER:
            raise ValueError(
                f"person_jitter must be in [0, {MAX_PERSON_JITTER:.4f}] so that the person crop keeps at least "
                f"90 % of the box in both directions; got {self.person_jitter}"
            )


def rrc_params(
    width: float,
    height: float,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop.get_params, drawing from ``rng``: -> (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if 0 < w <= width and 0 < h <= height:
            return rng.uniform(0, width - w), rng.uniform(0, height - h), w, h
    in_ratio = width / height  # fallback: central crop
    w, h = (
        (width, width / ratio[0])
        if in_ratio < ratio[0]
        else (height * ratio[1], height)
        if in_ratio > ratio[1]
        else (width, height)
    )
    w, h = min(w, width), min(h, height)
    return (width - w) / 2, (height - h) / 2, w, h


def person_square(box: Box, jitter: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """The person stream's square (left, top, side) around ``box``: the WHOLE box, its aspect kept.

    The box's size is scaled by U(1 - jitter, 1 + 2 jitter) and its centre moved by up to ``jitter`` times its
    width and height; the square's side is the longer of the jittered sides, so the shorter one gets padding
    (image context where the image has it, :data:`PAD_RGB` beyond its edges). At least ``1 - 1.5 jitter`` of
    the box stays inside the square in each direction.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    s = rng.uniform(1 - jitter, 1 + 2 * jitter)
    cx = (x0 + x1) / 2 + rng.uniform(-jitter, jitter) * w
    cy = (y0 + y1) / 2 + rng.uniform(-jitter, jitter) * h
    side = max(w, h) * s
    return cx - side / 2, cy - side / 2, side


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header without decoding."""
    w, h = img.size
    return (h, w) if _orientation(img) in (5, 6, 7, 8) else (w, h)


def decode_for_crops(img: Image.Image, reduction: float, allow_draft: bool = True) -> Image.Image:
    """Decode ``img`` as RGB with EXIF orientation applied; a JPEG is decoded at a DCT scale (1/2 to 1/8) that
    shrinks it by at most ``reduction`` (the crops' smallest side over the output size), so no crop ends
    up with fewer pixels than it is resized to. Coordinates scale by the returned size over the full size."""
    if allow_draft and reduction >= 2 and img.format in ("JPEG", "MPO"):
        w, h = img.size
        img.draft(None, (math.ceil(w / reduction), math.ceil(h / reduction)))
    orientation = _orientation(img)
    img.load()
    return _orient(_to_rgb(img), orientation)


def to_uint8_chw(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


def to_unit(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W) images -> float32 in [0, 1], moved to ``device`` first (so the 4x larger float
    tensor is only ever made there). Float input is returned (moved) as it is."""
    images = images.to(device, non_blocking=True) if device is not None else images
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def _render_region(img: Image.Image, region: tuple[float, float, float, float], size: int) -> Image.Image:
    """``region`` (x0, y0, x1, y1) of ``img`` resized to size x size; what lies outside ``img`` is PAD_RGB."""
    x0, y0, x1, y1 = region
    box = (max(0.0, x0), max(0.0, y0), min(float(img.width), x1), min(float(img.height), y1))
    if box == region:
        return img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    out = Image.new("RGB", (size, size), PAD_RGB)
    kx, ky = size / (x1 - x0), size / (y1 - y0)
    ox0, oy0 = round((box[0] - x0) * kx), round((box[1] - y0) * ky)
    ox1, oy1 = round((box[2] - x0) * kx), round((box[3] - y0) * ky)
    if ox1 > ox0 and oy1 > oy0:
        out.paste(img.resize((ox1 - ox0, oy1 - oy0), Image.Resampling.BICUBIC, box=box), (ox0, oy0))
    return out


class TwoStreamTransform:
    """(image, person box, rng) -> scene (3, S, S), person (3, S, S) as uint8, and whether the box was used.

    Scene = random-resized-crop of the whole image; person = the whole person box (or, without one, the whole
    image), aspect kept, padded to a square, with mild size/position jitter (:func:`person_square`). One flip
    decision per sample is shared by both streams (the teacher sees the scene tensor itself). Box coordinates
    are in pixels of the image after EXIF orientation, as ``emo8 detect-people`` writes them.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(
        self, img: Image.Image, box: Box | None, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        size = self.cfg.img_size
        width, height = oriented_size(img)
        flip = bool(rng.random() < self.cfg.hflip)
        left, top, w, h = rrc_params(width, height, self.cfg.scale, self.cfg.ratio, rng)
        region = None
        if box is not None:
            x0, y0 = max(0.0, box[0]), max(0.0, box[1])
            x1, y1 = min(float(width), box[2]), min(float(height), box[3])
            region = (x0, y0, x1, y1) if x1 - x0 >= 2 and y1 - y0 >= 2 else None
        p_left, p_top, side = person_square(region or (0, 0, width, height), self.cfg.person_jitter, rng)
        decoded = decode_for_crops(img, min(w, h, side) / size, self.cfg.draft)
        fx, fy = decoded.width / width, decoded.height / height
        scene = decoded.resize(
            (size, size), Image.Resampling.BICUBIC, box=(left * fx, top * fy, (left + w) * fx, (top + h) * fy)
        )
        square = (p_left * fx, p_top * fy, (p_left + side) * fx, (p_top + side) * fy)
        person = _render_region(decoded, square, size)
        if flip:
            scene, person = (x.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for x in (scene, person))
        return to_uint8_chw(scene), to_uint8_chw(person), region is not None


class PretrainDataset(Dataset[dict[str, torch.Tensor]]):
    """Indexed by (epoch, index); returns both streams (uint8), both masks' noise and the prompt id."""

    def __init__(
        self,
        source: ImageSource,
        meta: list[SampleMeta],
        prompt_ids: Sequence[int],
        augment: AugmentConfig,
        num_patches: int,
        seed: int,
    ) -> None:
        self.source, self.meta, self.prompt_ids = source, meta, list(prompt_ids)
        self.transform = TwoStreamTransform(augment)
        self.num_patches, self.seed = num_patches, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        scene, person, used_box = self.transform(self.source.load_image(index), self.meta[index].box, rng)
        return {
            "scene": scene,
            "person": person,
            "scene_noise": torch.from_numpy(rng.random(self.num_patches, dtype=np.float32)),
            "person_noise": torch.from_numpy(rng.random(self.num_patches, dtype=np.float32)),
            "prompt_id": torch.tensor(self.prompt_ids[index]),
            "index": torch.tensor(index),
            "used_box": torch.tensor(used_box),
        }


def build_prompts(
    meta: Sequence[SampleMeta],
    scales: AttributeScales = EMO8_SCALES,
    fits: Callable[[str], bool] | None = None,
) -> tuple[list[str], list[int]]:
    """-> (distinct prompts, prompt id of each sample). ``scales``: the source's attribute units; ``fits``:
    the teacher's untruncated-length check (``ClipTeacher.prompt_fits``), see :func:`build_prompt`."""
    ids: dict[str, int] = {}
    memo: dict[ImageAttributes, str] = {}  # many samples share attributes: tokenise each combination once
    per_sample = []
    for m in meta:
        if m.attributes not in memo:
            memo[m.attributes] = build_prompt(m.attributes, scales, fits)
        per_sample.append(ids.setdefault(memo[m.attributes], len(ids)))
    return list(ids), per_sample


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's share of each global micro-batch, as (epoch, index) keys.

    The global micro-batch k of epoch e is ``perm_e[k*G:(k+1)*G]`` with G = micro_batch * world_size and
    ``perm_e`` a permutation seeded by (seed, e); rank r takes its r-th slice. Incomplete global batches are
    dropped. ``start`` skips micro-steps already done (resume) without touching any image.
    """

    def __init__(
        self, n: int, micro_batch: int, world_size: int, rank: int, seed: int, total: int, start: int = 0
    ) -> None:
        self.n, self.b, self.world, self.rank, self.seed = n, micro_batch, world_size, rank, seed
        self.total, self.start = total, start
        self.per_epoch = n // (micro_batch * world_size)
        if self.per_epoch == 0:
            raise ValueError(f"{n} images are fewer than one global batch of {micro_batch * world_size}")

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g, perm_epoch = self.b * self.world, -1
        perm: np.ndarray[Any, np.dtype[np.int64]] = np.empty(0, dtype=np.int64)
        for step in range(self.start, self.total):
            epoch, k = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = np.random.default_rng([self.seed, epoch]).permutation(self.n), epoch
            chunk = perm[k * g : (k + 1) * g][self.rank * self.b : (self.rank + 1) * self.b]
            yield [(epoch, int(i)) for i in chunk]
