"""Person boxes for images whose rows carry none, from the detectors of ``emo8 detect-people``, cached as JSON.

An Emo8 release already carries the ``person_boxes`` that ``emo8 detect-people`` stored, and UniEmoX reads them from
the release. ``uniemox detect-persons`` is for the other layouts (ImageFolder trees, EmoSet, Hugging Face datasets)
and for release rows without boxes: it runs one backend of :data:`emo8.label.people.DETECTORS` (default
:data:`emo8.label.people.DEFAULT_BACKEND`) once over the images without a box and writes
``{"detector": KEY, "count": N, "boxes": {"INDEX": [[x0, y0, x1, y1, score], ...]}}`` (original pixels, best box
first, ``[]`` when nobody was found), which ``pretrain --person-boxes`` reads. The file is rewritten every
``save_every`` images, so a killed run resumes where it stopped; a file from another backend or another data set
is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emo8.label.people import DetectConfig, Detector, create_detector, scale_boxes
from uniemox.data import ImageSource, decode_for_crops, oriented_size

BoxFn = Callable[[np.ndarray], list[list[float]]]


def _as_function(detector: Detector | BoxFn) -> BoxFn:
    if isinstance(detector, Detector):
        return lambda rgb: detector.detect(rgb).person_boxes
    return detector


def _load_previous(out: Path, key: str, count: int) -> dict[str, list[list[float]]]:
    """Boxes of an earlier run of the same backend over the same data, or {} when ``out`` does not exist."""
    if not out.is_file():
        return {}
    try:
        blob: dict[str, Any] = json.loads(out.read_text())
        boxes = blob["boxes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{out} exists but is not a detect-persons file ({exc}); remove it or choose --out"
        ) from exc
    if blob.get("detector") != key or blob.get("count") != count:
        raise ValueError(
            f"{out} holds boxes of {blob.get('detector')!r} for {blob.get('count')} images, this run is {key!r} "
            f"for {count}; remove it or choose another --out"
        )
    return {str(k): v for k, v in boxes.items()}


def _write(out: Path, key: str, count: int, boxes: dict[str, list[list[float]]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"detector": key, "count": count, "boxes": boxes}))
    os.replace(tmp, out)


def detect_persons(
    source: ImageSource,
    out: Path,
    detector: Detector | BoxFn | None = None,
    config: DetectConfig | None = None,
    save_every: int = 256,
) -> dict[str, int]:
    """Detect people in every image of ``source`` without a person box; write (and resume) ``out``.

    Parameters
    ----------
    source
        The data (any UniEmoX layout).
    out
        The JSON to write; an existing file of the same backend and data is resumed.
    detector
        An :class:`emo8.label.people.Detector`, or a function RGB array -> boxes in its pixels; created from ``config``
        when None.
    config
        Backend and settings (``backend``, ``weights``, ``score_threshold``, ``max_side``, ``device``).
    save_every
        Images between two rewrites of ``out``.

    Returns
    -------
    ``{"images", "had_boxes", "detected"}``: images in the data, images whose rows carry a box, images given a box
    here (this run and resumed ones).

    Raises
    ------
    emo8.label.people.DetectorError
        Unknown backend, missing package or weights.
    ValueError
        ``out`` belongs to another backend or data set.
    """
    config = config or DetectConfig(progress=False)
    if detector is None:
        detector = create_detector(config)
    key = detector.key if isinstance(detector, Detector) else getattr(detector, "key", "custom")
    detect = _as_function(detector)
    meta = source.metadata()
    boxes = _load_previous(out, key, len(meta))
    pending = 0
    for i, m in enumerate(meta):
        if m.box is not None or str(i) in boxes:
            continue
        image = source.load_image(i)
        width, height = oriented_size(image)  # the pixels pretraining crops from
        small = decode_for_crops(image, max(width, height) / config.max_side)
        if max(small.size) > config.max_side:
            small.thumbnail((config.max_side, config.max_side), Image.Resampling.BILINEAR)
        found = detect(np.asarray(small))
        boxes[str(i)] = scale_boxes(found, width / small.width, height / small.height, width, height)
        pending += 1
        if pending >= save_every:
            _write(out, key, len(meta), boxes)
            pending = 0
    _write(out, key, len(meta), boxes)
    return {
        "images": len(meta),
        "had_boxes": sum(m.box is not None for m in meta),
        "detected": sum(1 for b in boxes.values() if b),
    }
