"""Person and face detection: the boxes UniEmoX's person stream crops, and a face count for annotators and audits.

``emo8 detect-people [--backend KEY] [--weights PATH]`` runs one detector of the registry :data:`DETECTORS` over
every valid item that has no result for that backend yet, in batches (each batch one transaction), so a killed
run resumes where it stopped. Backends:

=========================  ===================================================================================
key                        what it finds
=========================  ===================================================================================
``opencv-hog``             whole people (Dalal-Triggs HOG + linear SVM, OpenCV's default people detector):
                           standing/walking people at least ~64 x 128 px; misses portraits and sitting people.
                           No faces (``num_faces`` null). Offline.
``opencv-haar-face``       frontal faces (Viola-Jones Haar cascade ``haarcascade_frontalface_alt2``). Offline.
``mtcnn``                  faces (MTCNN, facenet-pytorch; its weights ship inside the package). Offline.
``torchvision:NAME``       COCO ``person`` boxes from a torchvision detection model (e.g.
                           ``torchvision:fasterrcnn_resnet50_fpn``) with ``--weights PATH`` to its COCO weights
                           (the paper's setting: confidence 0.8, NMS 0.4). No faces.
``mtcnn+hog`` (default)    MTCNN faces (with their head-and-shoulders boxes) *or* HOG people scoring at least
                           the strict margin :data:`STRICT_HOG_THRESHOLD`: the best offline backend on the
                           labelled check set ``benchmarks/data/people_labels.csv`` (see docs/suggest.md).
                           ``--threshold`` sets the HOG margin. Offline.
``hog+face``               HOG people confirmed by an MTCNN face in the head region of the box (few false
                           positives, but misses every person HOG misses). ``--threshold`` sets the HOG margin.
=========================  ===================================================================================

Face backends also give a *person* box per face: the face box widened to 3 face widths and extended from half a
face height above the face to three face heights below it (head and shoulders, clipped to the image), scored like
the face. That
is a heuristic for the person stream, not a detection; ``face_boxes`` keeps the faces themselves.

Stored per item (the latest backend run for it): ``person_boxes`` (JSON list of ``[x0, y0, x1, y1, score]`` in
*original* pixel coordinates, after EXIF orientation, highest score first), ``face_boxes`` (same format, null when
the backend does not detect faces), ``num_faces`` (null likewise) and ``people_backend``. Every backend's result
is also kept in the table ``people_detections`` (one row per item and backend), which is what makes each backend
incremental on its own. Images are downscaled to ``max_side`` for detection (JPEG draft decoding) and boxes are
mapped back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emo8.core.catalog import batched, utc_now
from emo8.core.executor import ExecutorConfig, StageExecutors
from emo8.core.imaging import load_rgb
from emo8.core.workspace import ObjectStore, Workspace

#: Item columns this stage writes.
PEOPLE_COLUMNS: dict[str, str] = {
    "person_boxes": "TEXT",
    "face_boxes": "TEXT",
    "num_faces": "INTEGER",
    "people_backend": "TEXT",
}

_TABLE = """
CREATE TABLE IF NOT EXISTS people_detections (
    item_id      TEXT NOT NULL REFERENCES items(item_id),
    backend      TEXT NOT NULL,
    person_boxes TEXT,
    face_boxes   TEXT,
    num_faces    INTEGER,
    error        TEXT,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (item_id, backend)
)
"""

Box = list[float]  # [x0, y0, x1, y1, score]

#: The backend ``emo8 detect-people`` uses unless told otherwise: the best offline backend (highest F1 of "has a
#: person" on the tuning half of ``benchmarks/data/people_labels.csv``; ``benchmarks/people_check.py``).
DEFAULT_BACKEND = "mtcnn+hog"
#: HOG SVM margin above which ``mtcnn+hog`` trusts a HOG box without a face (0.5, HOG's own default, also fires
#: on strawberries, pistols and cartoon heads).
STRICT_HOG_THRESHOLD = 2.0


class DetectorError(ValueError):
    """A detector cannot be created (unknown key, missing package or weights): bad input, exit code 2 in both CLIs;
    the message says what to do."""


@dataclass(frozen=True)
class DetectConfig:
    """Settings of ``emo8 detect-people``.

    Parameters
    ----------
    backend
        A detector key (see the module docstring).
    weights
        Weights file (``torchvision:NAME`` only).
    random_init
        ``torchvision:NAME`` with random weights (tests and smoke runs only; never a silent fallback).
    score_threshold
        Keep boxes scoring at least this; None = the backend's default (HOG 0.5 SVM margin, MTCNN 0.9,
        torchvision 0.8; Haar cascades have no calibrated score and keep every detection). For ``mtcnn+hog`` and
        ``hog+face`` it is the HOG margin (defaults :data:`STRICT_HOG_THRESHOLD` and 0.0); their faces keep 0.9.
    nms_threshold
        IoU above which the lower-scoring of two overlapping person boxes is dropped.
    max_side
        Images are downscaled so their longer side is at most this before detection.
    batch_size
        Images per batch (one catalog transaction each).
    workers
        Threads that decode and detect in parallel (OpenCV and torch release the GIL).
    device
        ``cpu``/``cuda``/``auto`` for the torch backends.
    redo
        Recompute items that already have a result for this backend.
    progress
        Show a progress bar.
    """

    backend: str = DEFAULT_BACKEND
    weights: str | None = None
    random_init: bool = False
    score_threshold: float | None = None
    nms_threshold: float = 0.4
    max_side: int = 640
    batch_size: int = 32
    workers: int = 1
    device: str = "cpu"
    redo: bool = False
    progress: bool = True
    #: where images are decoded and detected (:mod:`emo8.core.executor`); the catalog is always written here
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


@dataclass
class Detection:
    """One image's result, in the coordinates of the image the detector saw."""

    person_boxes: list[Box] = field(default_factory=list)
    face_boxes: list[Box] | None = None

    @property
    def num_faces(self) -> int | None:
        return None if self.face_boxes is None else len(self.face_boxes)


class Detector:
    """A person/face detector: :meth:`detect` takes one RGB ``uint8`` array ``(H, W, 3)``; :meth:`detect_batch`
    several (the default calls :meth:`detect` for each)."""

    key: str = "detector"

    def detect(self, image: np.ndarray) -> Detection:
        raise NotImplementedError

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detection]:
        return [self.detect(image) for image in images]


# -- geometry -------------------------------------------------------------------------------------------------


def nms(boxes: Sequence[Box], iou_threshold: float) -> list[Box]:
    """Greedy non-maximum suppression of ``[x0, y0, x1, y1, score]`` boxes; returns the kept boxes by score."""
    ordered = sorted(boxes, key=lambda b: -b[4])
    kept: list[Box] = []
    for box in ordered:
        if all(iou(box, other) <= iou_threshold for other in kept):
            kept.append(box)
    return kept


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1, ...]`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def person_from_face(face: Sequence[float], width: int, height: int) -> Box:
    """Head-and-shoulders box around a face box (see the module docstring), clipped to the image."""
    x0, y0, x1, y1, score = face[:5]
    w, h = x1 - x0, y1 - y0
    return [max(0.0, x0 - w), max(0.0, y0 - 0.5 * h), min(float(width), x1 + w), min(float(height), y1 + 3.0 * h),
            float(score)]  # fmt: skip


def scale_boxes(boxes: Sequence[Box], sx: float, sy: float, width: int, height: int) -> list[Box]:
    """Map boxes from the detection image to the original (``x * sx``, ``y * sy``), clipped, rounded to 0.1 px."""
    out = []
    for x0, y0, x1, y1, score in boxes:
        out.append([
            round(min(max(x0 * sx, 0.0), width), 1),
            round(min(max(y0 * sy, 0.0), height), 1),
            round(min(max(x1 * sx, 0.0), width), 1),
            round(min(max(y1 * sy, 0.0), height), 1),
            round(float(score), 4),
        ])  # fmt: skip
    return out


def _faces_to_detection(faces: list[Box], width: int, height: int, nms_threshold: float) -> Detection:
    faces = sorted(faces, key=lambda b: -b[4])
    persons = nms([person_from_face(f, width, height) for f in faces], nms_threshold)
    return Detection(person_boxes=persons, face_boxes=faces)


# -- backends ---------------------------------------------------------------------------------------------------


class HogDetector(Detector):
    """OpenCV's HOG people detector (64 x 128 window, scale step 1.05, stride 8)."""

    key = "opencv-hog"

    def __init__(self, config: DetectConfig) -> None:
        import cv2

        self.cv2 = cv2
        self.threshold = 0.5 if config.score_threshold is None else config.score_threshold
        self.nms_threshold = config.nms_threshold
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())  # type: ignore[attr-defined]

    def detect(self, image: np.ndarray) -> Detection:
        h, w = image.shape[:2]
        if h < 128 or w < 64:
            return Detection()
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        rects, weights = self.hog.detectMultiScale(bgr, winStride=(8, 8), padding=(8, 8), scale=1.05)
        boxes = [
            [float(x), float(y), float(x + bw), float(y + bh), float(s)]
            for (x, y, bw, bh), s in zip(rects, np.ravel(weights), strict=True)
            if s >= self.threshold
        ]
        return Detection(person_boxes=nms(boxes, self.nms_threshold))


class HaarFaceDetector(Detector):
    """OpenCV's Viola-Jones frontal-face cascade (``alt2``; scale step 1.1, 5 neighbours, faces >= 24 px)."""

    key = "opencv-haar-face"
    cascade_name = "haarcascade_frontalface_alt2.xml"

    def __init__(self, config: DetectConfig) -> None:
        import cv2

        self.cv2 = cv2
        self.path = Path(cv2.data.haarcascades) / self.cascade_name  # type: ignore[attr-defined]
        self._local = threading.local()  # a cascade is not thread-safe: one per worker thread
        self._cascade()
        self.threshold = config.score_threshold
        self.nms_threshold = config.nms_threshold

    def _cascade(self) -> Any:
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = self._local.cascade = self.cv2.CascadeClassifier(str(self.path))
            if cascade.empty():
                raise DetectorError(
                    f"cannot load {self.path}; install opencv-python-headless<5 (OpenCV 5 dropped the Haar cascades)"
                )
        return cascade

    def detect(self, image: np.ndarray) -> Detection:
        cv2 = self.cv2
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        rects, _levels, weights = self._cascade().detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24), outputRejectLevels=True
        )
        faces = [
            [float(x), float(y), float(x + bw), float(y + bh), float(s)]
            for (x, y, bw, bh), s in zip(rects, np.ravel(weights), strict=True)
            if self.threshold is None or s >= self.threshold
        ]
        return _faces_to_detection(faces, image.shape[1], image.shape[0], self.nms_threshold)


FACENET_PIP = "pip install --no-deps facenet-pytorch"


class MtcnnDetector(Detector):
    """MTCNN face detector from facenet-pytorch (bundled weights; faces >= 20 px; probability >= 0.9)."""

    key = "mtcnn"

    def __init__(self, config: DetectConfig) -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise DetectorError(
                "the mtcnn backend needs facenet-pytorch: `"
                + FACENET_PIP
                + "` (--no-deps: its metadata pins an old torch; at run time it needs only torch, torchvision, "
                "numpy, pillow, requests and tqdm)"
            ) from exc
        if config.weights:
            raise DetectorError("mtcnn uses the weights bundled with facenet-pytorch; drop --weights")
        from emo8.embed.encoders import resolve_device

        self.mtcnn = MTCNN(keep_all=True, device=resolve_device(config.device), min_face_size=20)
        self.threshold = 0.9 if config.score_threshold is None else config.score_threshold
        self.nms_threshold = config.nms_threshold

    def detect(self, image: np.ndarray) -> Detection:
        import torch

        with torch.no_grad():
            boxes, probs = self.mtcnn.detect(Image.fromarray(image))
        faces: list[Box] = []
        if boxes is not None:
            for box, prob in zip(np.asarray(boxes, dtype=np.float64), np.ravel(probs), strict=True):
                if prob is not None and float(prob) >= self.threshold:
                    faces.append([*(float(v) for v in box[:4]), float(prob)])
        return _faces_to_detection(faces, image.shape[1], image.shape[0], self.nms_threshold)


def face_in_head_region(face: Sequence[float], person: Sequence[float]) -> bool:
    """Whether a face box fits the head of a whole-person box: its centre inside the box (10 % slack) and in the
    upper 60 % of it, its width 8-80 % of the box's."""
    x0, y0, x1, y1 = person[:4]
    w, h = x1 - x0, y1 - y0
    cx, cy, fw = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2, face[2] - face[0]
    return (
        x0 - 0.1 * w <= cx <= x1 + 0.1 * w
        and y0 - 0.1 * h <= cy <= y0 + 0.6 * h
        and 0.08 * w <= fw <= 0.8 * w
    )


class FacesOrHogDetector(Detector):
    """``mtcnn+hog``: every MTCNN face (as a head-and-shoulders person box) plus every HOG person scoring at least
    a strict margin, highest score first (so at the default margin, 2, HOG boxes outrank face probabilities <= 1);
    a face already in a HOG box's head adds no box of its own."""

    key = "mtcnn+hog"
    default_hog_threshold = STRICT_HOG_THRESHOLD

    def __init__(self, config: DetectConfig) -> None:
        hog_threshold = (
            self.default_hog_threshold if config.score_threshold is None else config.score_threshold
        )
        self.hog = HogDetector(replace(config, score_threshold=hog_threshold))
        self.faces = MtcnnDetector(replace(config, score_threshold=None))
        self.nms_threshold = config.nms_threshold

    def detect(self, image: np.ndarray) -> Detection:
        faces = self.faces.detect(image).face_boxes or []
        bodies = self.hog.detect(image).person_boxes
        height, width = image.shape[:2]
        lone = [f for f in faces if not any(face_in_head_region(f, b) for b in bodies)]
        extra = nms([person_from_face(f, width, height) for f in lone], self.nms_threshold)
        return Detection(person_boxes=sorted(bodies + extra, key=lambda b: -b[4]), face_boxes=faces)


class HogConfirmedByFaceDetector(FacesOrHogDetector):
    """``hog+face``: HOG people kept only when an MTCNN face sits in the head region of the box."""

    key = "hog+face"
    default_hog_threshold = 0.0

    def detect(self, image: np.ndarray) -> Detection:
        faces = self.faces.detect(image).face_boxes or []
        bodies = self.hog.detect(image).person_boxes
        return Detection(
            person_boxes=[b for b in bodies if any(face_in_head_region(f, b) for f in faces)],
            face_boxes=faces,
        )


COCO_PERSON = 1


class TorchvisionDetector(Detector):
    """A torchvision COCO detection model (``torchvision:NAME``); keeps ``person`` boxes (COCO label 1)."""

    def __init__(self, name: str, config: DetectConfig) -> None:
        import torch
        import torchvision

        from emo8.embed.encoders import resolve_device

        self.key = f"torchvision:{name}"
        models = torchvision.models.list_models(module=torchvision.models.detection)
        if name not in models:
            raise DetectorError(
                f"unknown torchvision detection model {name!r}; choose from {', '.join(models)}"
            )
        if config.random_init and config.weights:
            raise DetectorError("pass either --weights or --random-init, not both")
        if not config.random_init:
            url = ""
            try:
                url = torchvision.models.get_model_weights(name).DEFAULT.url
            except (ValueError, AttributeError):
                pass
            how = (
                f"pass --weights PATH to its COCO checkpoint (download {url} on a machine with internet access)"
                if url
                else "pass --weights PATH to its COCO checkpoint"
            )
            if not config.weights:
                raise DetectorError(f"{self.key} needs weights: {how}")
            if not Path(config.weights).expanduser().is_file():
                raise DetectorError(f"weights file {config.weights} does not exist; {how}")
        self.device = resolve_device(config.device)
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=91)
        if config.weights:
            try:
                state = torch.load(Path(config.weights).expanduser(), map_location="cpu", weights_only=True)
                model.load_state_dict(state)
            except (OSError, RuntimeError, KeyError, ValueError) as exc:
                raise DetectorError(f"cannot load {config.weights} into {name}: {exc}") from exc
        self.model = model.eval().to(self.device)
        self.threshold = 0.8 if config.score_threshold is None else config.score_threshold
        self.nms_threshold = config.nms_threshold
        # the model drops boxes below its own cut (Faster R-CNN 0.05) before ours: a lower --threshold lowers it
        holder = getattr(model, "roi_heads", model)
        if isinstance(getattr(holder, "score_thresh", None), float):
            holder.score_thresh = min(holder.score_thresh, self.threshold)

    def detect(self, image: np.ndarray) -> Detection:
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detection]:
        import torch

        tensors = [torch.from_numpy(np.array(im, copy=True)).permute(2, 0, 1).float().div(255).to(self.device)
                   for im in images]  # fmt: skip
        with torch.no_grad():
            outputs = self.model(tensors)
        results = []
        for out in outputs:
            keep = (out["labels"] == COCO_PERSON) & (out["scores"] >= self.threshold)
            boxes = out["boxes"][keep].cpu().numpy().astype(np.float64)
            scores = out["scores"][keep].cpu().numpy().astype(np.float64)
            found = [[*(float(v) for v in b), float(s)] for b, s in zip(boxes, scores, strict=True)]
            results.append(Detection(person_boxes=nms(found, self.nms_threshold)))
        return results


#: family -> factory(name after the colon, config) -> Detector
DETECTORS: dict[str, Callable[[str, DetectConfig], Detector]] = {
    "mtcnn+hog": lambda name, cfg: FacesOrHogDetector(cfg),
    "hog+face": lambda name, cfg: HogConfirmedByFaceDetector(cfg),
    "opencv-hog": lambda name, cfg: HogDetector(cfg),
    "opencv-haar-face": lambda name, cfg: HaarFaceDetector(cfg),
    "mtcnn": lambda name, cfg: MtcnnDetector(cfg),
    "torchvision": lambda name, cfg: TorchvisionDetector(name, cfg),
}
#: Families that take a name after the colon.
_NAMED = frozenset({"torchvision"})
#: The keys as a user types them (for help texts and errors).
BACKEND_CHOICES: tuple[str, ...] = tuple(f"{k}:NAME" if k in _NAMED else k for k in DETECTORS)


def create_detector(config: DetectConfig) -> Detector:
    """Instantiate the detector ``config.backend`` names; raise :class:`DetectorError` with a remedy otherwise."""
    family, _, name = config.backend.partition(":")
    if family not in DETECTORS:
        raise DetectorError(f"unknown backend {config.backend!r}; choose from {', '.join(BACKEND_CHOICES)}")
    if (family in _NAMED) != bool(name):
        raise DetectorError(
            f"{family} needs a model name: {family}:NAME" if family in _NAMED else f"{family} takes no name"
        )
    if family not in _NAMED and config.weights and family != "mtcnn":  # mtcnn says it itself
        raise DetectorError(f"{family} ships its own model; --weights is for torchvision:NAME")
    return DETECTORS[family](name, config)


# -- the workspace stage ----------------------------------------------------------------------------------------


@dataclass
class DetectSummary:
    """What one ``emo8 detect-people`` run did."""

    backend: str
    processed: int = 0
    already: int = 0
    with_person: int = 0
    faces: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0


def ensure_schema(ws: Workspace) -> None:
    """Create the ``people_detections`` table and the item columns (idempotent)."""
    ws.catalog.ensure_columns(PEOPLE_COLUMNS)
    with ws.catalog.transaction() as db:
        db.execute(_TABLE)


_Row = tuple[str, str, "str | None", "int | None", "int | None"]
#: What :func:`detect_row` returns: item id, detection (None when unreadable), error, original size, scale.
RowResult = tuple[str, "Detection | None", "str | None", int, int, float, float]


def detect_row(detector: Detector, store: ObjectStore, max_side: int, row: _Row) -> RowResult:
    """Decode one stored image (downscaled to ``max_side``) and detect; boxes are scaled back by the caller."""
    item_id, sha256, fmt, width, height = row
    try:
        # the catalog's width/height are the original size after EXIF orientation, as load_rgb decodes it
        image = np.asarray(load_rgb(store.source(sha256, fmt), max_side=max_side))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return item_id, None, f"{type(exc).__name__}: {exc}", 0, 0, 1.0, 1.0
    w, h = int(width or image.shape[1]), int(height or image.shape[0])
    return item_id, detector.detect(image), None, w, h, w / image.shape[1], h / image.shape[0]


def _todo(ws: Workspace, backend: str, redo: bool) -> tuple[list[_Row], int]:
    """Valid items without a result for ``backend`` (all valid items when ``redo``), and how many have one."""
    db = ws.catalog.connect()
    where = "status = 'valid' AND sha256 IS NOT NULL"
    total = db.execute(f"SELECT COUNT(*) FROM items WHERE {where}").fetchone()[0]
    sql = f"SELECT item_id, sha256, format, width, height FROM items WHERE {where}"
    params: list[Any] = []
    if not redo:
        sql += " AND item_id NOT IN (SELECT item_id FROM people_detections WHERE backend = ?)"
        params.append(backend)
    rows = [(r[0], r[1], r[2], r[3], r[4]) for r in db.execute(sql + " ORDER BY rowid", params)]
    return rows, int(total) - len(rows)


def detect_batches_local(
    store: ObjectStore, config: DetectConfig, chunks: Sequence[Sequence[_Row]], detector: Detector
) -> Iterator[list[RowResult]]:
    """The ``local`` executor: ``config.workers`` threads share ``detector``; one result list per chunk."""
    with ThreadPoolExecutor(max(1, config.workers)) as pool:
        for chunk in chunks:
            yield list(pool.map(lambda row: detect_row(detector, store, config.max_side, row), chunk))


#: How an executor detects: ``(store, config, chunks of rows, detector) -> one result list per chunk, in order``;
#: ``detector`` is used where it was created (local), remote executors create their own from ``config``.
ChunkDetector = Callable[
    [ObjectStore, DetectConfig, Sequence[Sequence[_Row]], Detector], Iterator[list[RowResult]]
]
#: Detection's implementation per executor kind (:mod:`emo8.core.executor`); Ray's in :mod:`emo8.label.people_ray`.
DETECT_EXECUTORS: StageExecutors[ChunkDetector] = StageExecutors("detect-people")
DETECT_EXECUTORS.register("local", detect_batches_local)
DETECT_EXECUTORS.register("ray", "emo8.label.people_ray:detect_batches")


def detect_people(
    ws: Workspace, config: DetectConfig = DetectConfig(), detector: Detector | None = None
) -> DetectSummary:
    """Run a detector over every valid item lacking a result for it; store boxes in original pixel coordinates.

    Parameters
    ----------
    ws
        The workspace.
    config
        Backend and settings (see :class:`DetectConfig`).
    detector
        An already created detector (saves creating it twice); created from ``config`` if None.

    Returns
    -------
    A :class:`DetectSummary`. Images that cannot be decoded are recorded with an ``error`` in
    ``people_detections`` (and not retried unless ``redo``).

    Raises
    ------
    DetectorError
        Unknown backend, missing package or weights.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    started = time.monotonic()
    detector = detector or create_detector(config)
    backend = detector.key
    ensure_schema(ws)
    todo, already = _todo(ws, backend, config.redo)
    summary = DetectSummary(backend, already=already)

    bar = Progress(
        TextColumn(f"[bold]detect-people {backend}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        disable=not config.progress,
    )  # fmt: skip
    with bar:
        task = bar.add_task("detect", total=len(todo))
        chunks = list(batched(todo, config.batch_size))
        batches = DETECT_EXECUTORS.get(config.executor)(ws.objects, config, chunks, detector)
        for chunk, results in zip(chunks, batches, strict=True):
            now = utc_now()
            table_rows: list[tuple[Any, ...]] = []
            item_rows: list[tuple[Any, ...]] = []
            for item_id, det, error, width, height, sx, sy in results:
                if det is None:
                    table_rows.append((item_id, backend, None, None, None, error, now))
                    summary.errors += 1
                    continue
                persons = scale_boxes(det.person_boxes, sx, sy, width, height)
                faces = None if det.face_boxes is None else scale_boxes(det.face_boxes, sx, sy, width, height)
                p_json, f_json = json.dumps(persons), (None if faces is None else json.dumps(faces))
                table_rows.append((item_id, backend, p_json, f_json, det.num_faces, None, now))
                item_rows.append((p_json, f_json, det.num_faces, backend, now, item_id))
                summary.with_person += bool(persons)
                summary.faces += det.num_faces or 0
            with ws.catalog.transaction() as db:
                db.executemany(
                    "INSERT OR REPLACE INTO people_detections(item_id, backend, person_boxes, face_boxes, "
                    "num_faces, error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    table_rows,
                )
                db.executemany(
                    "UPDATE items SET person_boxes = ?, face_boxes = ?, num_faces = ?, people_backend = ?, "
                    "updated_at = ? WHERE item_id = ?",
                    item_rows,
                )
            summary.processed += len(chunk)
            bar.advance(task, len(chunk))
    summary.seconds = time.monotonic() - started
    return summary


def detections(ws: Workspace, backend: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``people_detections`` (optionally one backend) with the JSON columns decoded."""
    ensure_schema(ws)
    sql = "SELECT * FROM people_detections" + (" WHERE backend = ?" if backend else "") + " ORDER BY rowid"
    rows = ws.catalog.connect().execute(sql, [backend] if backend else [])
    out = []
    for row in rows:
        record = dict(row)
        for column in ("person_boxes", "face_boxes"):
            record[column] = json.loads(record[column]) if record[column] else record[column]
        out.append(record)
    return out
