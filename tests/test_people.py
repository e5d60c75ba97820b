"""Person and face detection on real photos: portraits, a sports scene, landscapes; incremental and resumable."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.ingest import IngestOptions, ingest
from emo8.people import (
    DetectConfig,
    Detection,
    DetectorError,
    HaarFaceDetector,
    create_detector,
    detect_people,
    detections,
    iou,
    nms,
    person_from_face,
)
from emo8.sources import create_source

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[1] / "emo8" / "samples" / "images"
ASTRONAUT, HOPPER, BASKETBALL = "skm-0007.jpg", "mpl-0001.jpg", "ocv-0002.jpg"
LANDSCAPES = ["lom-0005.jpg", "lom-0006.jpg", "lom-0009.jpg", "lom-0011.jpg", "pla-0009.jpg", "pla-0013.jpg"]
#: Face centres in the bundled files' pixels (astronaut 512 x 512, Grace Hopper 437 x 512), by eye.
FACE_CENTRES = {ASTRONAUT: (224.0, 115.0), HOPPER: (226.0, 196.0)}


@pytest.fixture
def people_ws(ws: Workspace, tmp_path: Path) -> Workspace:
    incoming = tmp_path / "people"
    incoming.mkdir()
    for name in [ASTRONAUT, HOPPER, BASKETBALL, *LANDSCAPES]:
        shutil.copy(SAMPLES / name, incoming / name)
    ingest(ws, create_source("folder", directory=str(incoming)), IngestOptions(workers=1, progress=False))
    return ws


def _by_file(ws: Workspace) -> dict[str, dict[str, object]]:
    items = ws.items(["source_path", "person_boxes", "face_boxes", "num_faces", "people_backend"])
    return {Path(r["source_path"]).name: r for r in items.to_dict("records")}


def _centre(box: list[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


FACE_BACKENDS = ["opencv-haar-face"] + (["mtcnn"] if importlib.util.find_spec("facenet_pytorch") else [])


@pytest.mark.parametrize("backend", FACE_BACKENDS)
def test_face_backends_find_the_person_in_portraits_and_nothing_in_landscapes(
    people_ws: Workspace, backend: str
) -> None:
    summary = detect_people(people_ws, DetectConfig(backend=backend, progress=False))
    assert summary.processed == 9 and summary.errors == 0
    rows = _by_file(people_ws)
    for name, (cx, cy) in FACE_CENTRES.items():
        faces = json.loads(str(rows[name]["face_boxes"]))
        persons = json.loads(str(rows[name]["person_boxes"]))
        assert rows[name]["num_faces"] == len(faces) >= 1, (name, faces)
        fx, fy = _centre(faces[0])
        assert abs(fx - cx) < 40 and abs(fy - cy) < 40, (name, faces)
        # the person box contains the face and reaches below it (head and shoulders)
        px0, py0, px1, py1, _ = persons[0]
        assert px0 <= faces[0][0] and py0 <= faces[0][1] and px1 >= faces[0][2] and py1 > faces[0][3]
    for name in LANDSCAPES:
        assert json.loads(str(rows[name]["person_boxes"])) == [] and rows[name]["num_faces"] == 0, name
    assert {r["people_backend"] for r in rows.values()} == {backend}


def test_hog_finds_the_players_and_nothing_in_landscapes(people_ws: Workspace) -> None:
    detect_people(people_ws, DetectConfig(backend="opencv-hog", progress=False))
    rows = _by_file(people_ws)
    players = json.loads(str(rows[BASKETBALL]["person_boxes"]))
    assert len(players) >= 1 and all(b[3] - b[1] > b[2] - b[0] for b in players)  # upright people
    for name in LANDSCAPES:
        assert json.loads(str(rows[name]["person_boxes"])) == [], name
    assert (
        rows[BASKETBALL]["num_faces"] is None and rows[BASKETBALL]["face_boxes"] is None
    )  # no face detector


def test_boxes_are_in_original_pixel_coordinates(ws: Workspace, tmp_path: Path) -> None:
    incoming = tmp_path / "big"
    incoming.mkdir()
    with Image.open(SAMPLES / ASTRONAUT) as im:
        im.resize((1024, 1024), Image.Resampling.LANCZOS).save(incoming / "astronaut-2x.jpg", quality=92)
    ingest(ws, create_source("folder", directory=str(incoming)), IngestOptions(workers=1, progress=False))
    detect_people(ws, DetectConfig(backend="opencv-haar-face", max_side=512, progress=False))
    face = json.loads(ws.items(["face_boxes"])["face_boxes"].iloc[0])[0]
    cx, cy = FACE_CENTRES[ASTRONAUT]
    fx, fy = _centre(face)
    assert abs(fx - 2 * cx) < 60 and abs(fy - 2 * cy) < 60, face
    assert 150 < face[2] - face[0] < 260  # about twice the ~92 px face of the 512 px file


def test_detection_is_incremental_per_backend_and_resumes_after_a_crash(people_ws: Workspace) -> None:
    class Crashing(HaarFaceDetector):
        calls = 0

        def detect(self, image: np.ndarray) -> Detection:
            Crashing.calls += 1
            if Crashing.calls > 4:
                raise RuntimeError("killed")
            return super().detect(image)

    config = DetectConfig(backend="opencv-haar-face", batch_size=2, progress=False)
    with pytest.raises(RuntimeError, match="killed"):
        detect_people(people_ws, config, detector=Crashing(config))
    assert len(detections(people_ws, "opencv-haar-face")) == 4  # two committed batches, nothing half-written
    resumed = detect_people(people_ws, config)
    assert (resumed.processed, resumed.already) == (5, 4)
    again = detect_people(people_ws, config)
    assert (again.processed, again.already) == (0, 9)
    # another backend is incremental on its own and becomes the items' current result; both are kept
    hog = detect_people(people_ws, DetectConfig(backend="opencv-hog", progress=False))
    assert hog.processed == 9
    assert {r["people_backend"] for r in _by_file(people_ws).values()} == {"opencv-hog"}
    assert {r["backend"] for r in detections(people_ws)} == {"opencv-hog", "opencv-haar-face"}
    redo = detect_people(people_ws, DetectConfig(backend="opencv-haar-face", redo=True, progress=False))
    assert redo.processed == 9


def test_cli_detect_people_and_backend_errors(people_ws: Workspace) -> None:
    ws_arg = ["-w", str(people_ws.root)]
    result = runner.invoke(app, ["detect-people", "--backend", "opencv-haar-face", "-q", *ws_arg])
    assert result.exit_code == 0, result.output
    assert "9 image(s)" in result.output and "3 with a person" in result.output  # both portraits and a player
    again = runner.invoke(app, ["detect-people", "--backend", "opencv-haar-face", "-q", *ws_arg])
    assert "0 image(s)" in again.output and "9 already done" in again.output
    unknown = runner.invoke(app, ["detect-people", "--backend", "yolo", *ws_arg])
    assert unknown.exit_code == 2 and "unknown backend" in unknown.output
    no_weights = runner.invoke(
        app, ["detect-people", "--backend", "torchvision:fasterrcnn_resnet50_fpn", *ws_arg]
    )
    assert (
        no_weights.exit_code == 2
        and "--weights" in no_weights.output
        and "download.pytorch.org" in no_weights.output
    )
    with pytest.raises(DetectorError, match="unknown torchvision detection model"):
        create_detector(DetectConfig(backend="torchvision:nonsense", random_init=True))
    with pytest.raises(DetectorError, match="needs a model name"):
        create_detector(DetectConfig(backend="torchvision"))


def test_torchvision_backend_runs_batched_with_random_weights(people_ws: Workspace) -> None:
    config = DetectConfig(backend="torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", random_init=True,
                          score_threshold=0.0, batch_size=4, max_side=320, progress=False)  # fmt: skip
    summary = detect_people(people_ws, config)
    assert summary.processed == 9 and summary.errors == 0
    for row in _by_file(people_ws).values():
        boxes = json.loads(str(row["person_boxes"]))
        assert row["num_faces"] is None and isinstance(boxes, list)
        assert all(len(b) == 5 and 0 <= b[0] <= b[2] and 0 <= b[1] <= b[3] for b in boxes)


def test_geometry_helpers() -> None:
    assert iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    kept = nms([[0, 0, 10, 10, 0.5], [1, 1, 10, 10, 0.9], [20, 20, 30, 30, 0.1]], 0.4)
    assert kept == [[1, 1, 10, 10, 0.9], [20, 20, 30, 30, 0.1]]
    assert person_from_face([10, 10, 20, 20, 0.8], 100, 100) == [0.0, 5.0, 30.0, 50.0, 0.8]
    assert person_from_face([90, 90, 100, 100, 1.0], 100, 100)[2:4] == [100.0, 100.0]
