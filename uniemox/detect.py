"""Person boxes for images that have none, detected ONCE (OpenCV's HOG people detector) and cached.

The public UniEmoX code ran its detector on every batch on the GPU; here detection is a separate, one-off pass
(``uniemox detect-persons``) whose output ``pretrain --person-boxes`` reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from uniemox.data import ImageSource


def hog_detector(max_side: int = 640, nms: float = 0.4) -> Callable[[np.ndarray], list[list[float]]]:
    """RGB array (H, W, 3) -> [[x0, y0, x1, y1, score], ...] in its pixels, NMS at IoU ``nms``."""
    import cv2

    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32))

    def detect(rgb: np.ndarray) -> list[list[float]]:
        scale = min(1.0, max_side / max(rgb.shape[:2]))
        small = cv2.resize(rgb, None, fx=scale, fy=scale) if scale < 1 else rgb
        if min(small.shape[:2]) < 128:
            return []
        rects, weights = hog.detectMultiScale(small, winStride=(8, 8), padding=(8, 8), scale=1.05)
        if len(rects) == 0:
            return []
        scores = [float(w) for w in np.asarray(weights).reshape(-1)]
        keep = cv2.dnn.NMSBoxes([list(map(int, r)) for r in rects], scores, 0.0, nms)
        return [
            [x / scale, y / scale, (x + w) / scale, (y + h) / scale, scores[i]]
            for i in np.asarray(keep).reshape(-1)
            for x, y, w, h in [rects[i]]
        ]

    return detect


def detect_persons(
    source: ImageSource, out: Path, detector: Callable[[np.ndarray], list[list[float]]] | None = None
) -> dict[str, int]:
    """Detect people in every image of ``source`` that has no person box; write ``out``; return counts."""
    detect = detector or hog_detector()
    meta = source.metadata()
    boxes: dict[str, list[list[float]]] = {}
    for i, m in enumerate(meta):
        if m.box is None:
            found = detect(np.asarray(source.load_image(i).convert("RGB")))
            if found:
                boxes[str(i)] = found
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"detector": "opencv-hog", "count": len(meta), "boxes": boxes}))
    return {"images": len(meta), "had_boxes": sum(m.box is not None for m in meta), "detected": len(boxes)}
