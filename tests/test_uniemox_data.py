"""Pretraining data: sources, prompts, the person crop, per-sample determinism and the global-batch sampler."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emo8.taxonomy import EMOTIONS
from uniemox.data import (
    AugmentConfig,
    GlobalBatchSampler,
    PretrainDataset,
    TwoStreamTransform,
    best_person_box,
    build_prompts,
    open_source,
    rrc_params,
)
from uniemox.prompts import ImageAttributes, brightness_word, build_prompt, colorfulness_word, title_keywords
from uniemox.testing import SAMPLES, make_emoset, make_hf_dataset, make_imagefolder, sample_rows


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hf_dataset(tmp_path_factory.mktemp("hf") / "ds", n=8)


def test_best_person_box_takes_the_most_confident() -> None:
    assert best_person_box([[0, 0, 10, 10, 0.3], [5, 5, 20, 30, 0.9], [1, 1, 2, 2, 0.5]]) == (5, 5, 20, 30)
    assert best_person_box([[0, 0, 10, 10]]) == (0, 0, 10, 10)
    assert best_person_box([]) is None and best_person_box(None) is None
    assert best_person_box([[10, 10, 5, 5, 1.0]]) is None  # degenerate


def test_person_stream_receives_the_crop_of_the_box() -> None:
    img = Image.open(SAMPLES / sample_rows(1)[0]["file"]).convert("RGB")
    w, h = img.size
    box = (w * 0.1, h * 0.3, w * 0.6, h * 0.9)
    ratio = (box[2] - box[0]) / (box[3] - box[1])
    cfg = AugmentConfig(img_size=32, person_scale=(1.0, 1.0), ratio=(ratio, ratio), hflip=0.0)
    scene, person, used = TwoStreamTransform(cfg)(img, box, np.random.default_rng(0))
    assert used and person.shape == scene.shape == (3, 32, 32)
    expected = np.asarray(img.resize((32, 32), Image.Resampling.BICUBIC, box=box), dtype=np.float32) / 255
    assert torch.allclose(person, torch.from_numpy(expected).permute(2, 0, 1), atol=1e-6)
    whole = np.asarray(img.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    assert (person - torch.from_numpy(whole).permute(2, 0, 1)).abs().mean() > 0.05
    # no box: the person stream falls back to the whole image, and says so
    _, _, used = TwoStreamTransform(cfg)(img, None, np.random.default_rng(0))
    assert not used


def test_flip_is_shared_by_both_streams() -> None:
    img = Image.open(SAMPLES / sample_rows(1)[0]["file"]).convert("RGB")
    full = (0.0, 0.0, float(img.width), float(img.height))
    ratio = img.width / img.height
    base = AugmentConfig(img_size=32, scale=(1.0, 1.0), person_scale=(1.0, 1.0), ratio=(ratio, ratio))
    s0, p0, _ = TwoStreamTransform(replace(base, hflip=0.0))(img, full, np.random.default_rng(0))
    s1, p1, _ = TwoStreamTransform(replace(base, hflip=1.0))(img, full, np.random.default_rng(0))
    assert torch.allclose(s1, s0.flip(-1), atol=1e-6) and torch.allclose(p1, p0.flip(-1), atol=1e-6)


def test_rrc_params_stay_inside_and_cover_the_scale_range() -> None:
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(200):
        left, top, w, h = rrc_params(200, 100, (0.2, 1.0), (3 / 4, 4 / 3), rng)
        assert left >= 0 and top >= 0 and left + w <= 200 + 1e-9 and top + h <= 100 + 1e-9
        areas.append(w * h / 20000)
    assert 0.2 <= min(areas) < 0.3 and max(areas) > 0.6


def test_hf_source_reads_labels_attributes_and_boxes(hf_dir: Path) -> None:
    src = open_source(str(hf_dir))
    assert src.name == "hf-disk" and len(src) == 8
    meta = src.metadata()
    assert [m.attributes.emotion for m in meta] == list(EMOTIONS)
    assert [m.box is not None for m in meta] == [True, False] * 4
    assert src.load_image(0).size == (int(sample_rows(1)[0]["width"]), int(sample_rows(1)[0]["height"]))
    box = meta[0].box
    assert box is not None and box[0] > 0  # the 0.9-score box, not the 0.6 one at the origin


def test_parquet_imagefolder_and_emoset_layouts(tmp_path: Path) -> None:
    pq = open_source(str(make_hf_dataset(tmp_path / "pq", n=4, fmt="parquet")))
    assert pq.name == "parquet" and len(pq) == 4 and pq.metadata()[1].attributes.emotion == "anger"
    folder = open_source(str(make_imagefolder(tmp_path / "folder", n=8)))
    assert folder.name == "imagefolder" and sorted(
        m.attributes.emotion or "" for m in folder.metadata()
    ) == sorted(EMOTIONS)
    emoset = open_source(str(make_emoset(tmp_path / "emoset", n=4)))
    assert emoset.name == "emoset" and len(emoset) == 4
    a = emoset.metadata()[2].attributes
    assert (a.emotion, a.scene, a.objects, a.facial_expression) == (
        "awe",
        "amusement_park",
        ("person", "tree"),
        "happy",
    )
    assert emoset.load_image(3).mode in ("RGB", "L", "P")
    with pytest.raises(FileNotFoundError):
        open_source(str(tmp_path / "missing"))


def test_prompt_follows_the_paper_template() -> None:
    a = ImageAttributes(emotion="awe", scene="mountain_pass", objects=("Person", "Tree", "Sky", "Dog"),
                        brightness=0.9, colorfulness=0.1, facial_expression="happy", human_action="hiking")  # fmt: skip
    assert build_prompt(a) == (
        "The scene type of this photo is mountain pass. The main subjects are person, tree and sky. "
        "The image has a brightness of very bright and color saturation of very low. Human facial expression "
        "is happy. The action being performed is hiking. The overall emotion conveyed is awe."
    )
    emo8 = ImageAttributes(emotion="fear", domain="cartoon", title="A dark_forest at night.jpg", num_people=2)
    assert build_prompt(emo8) == (
        "The style of this image is cartoon. The main subjects are dark, forest and night. "
        "There are people in the image. The overall emotion conveyed is fear."
    )
    assert title_keywords("IMG_2041 the Sunset over the sea") == ["sunset", "over", "sea"]
    assert brightness_word(250) == "very bright" and brightness_word(0.05) == "very dark"
    assert colorfulness_word(120.0) == "very high" and colorfulness_word(10.0) == "very low"


def test_prompts_are_deduplicated(hf_dir: Path) -> None:
    meta = open_source(str(hf_dir)).metadata()
    prompts, ids = build_prompts(meta + meta)
    assert len(prompts) == 8 and ids == list(range(8)) * 2


def test_samples_repeat_with_the_seed_and_differ_across_samples_and_epochs(hf_dir: Path) -> None:
    src = open_source(str(hf_dir))
    meta = src.metadata()
    ds = PretrainDataset(src, meta, list(range(8)), AugmentConfig(img_size=32), num_patches=16, seed=7)
    a, b = (
        ds[(0, 3)],
        PretrainDataset(src, meta, list(range(8)), AugmentConfig(img_size=32), 16, seed=7)[(0, 3)],
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["scene_noise"], a["person_noise"])  # independent masks for the two streams
    assert not torch.equal(a["scene_noise"], ds[(0, 4)]["scene_noise"])
    assert not torch.equal(a["scene"], ds[(1, 3)]["scene"])
    assert bool(ds[(0, 2)]["used_box"]) and not bool(ds[(0, 3)]["used_box"])


def test_sampler_splits_each_global_batch_across_ranks_and_resumes() -> None:
    single = list(GlobalBatchSampler(20, 4, 1, 0, seed=3, total=10))
    r0 = list(GlobalBatchSampler(20, 2, 2, 0, seed=3, total=10))
    r1 = list(GlobalBatchSampler(20, 2, 2, 1, seed=3, total=10))
    assert [x + y for x, y in zip(r0, r1, strict=True)] == single
    assert list(GlobalBatchSampler(20, 4, 1, 0, seed=3, total=10, start=6)) == single[6:]
    first_epoch = [i for batch in single[:5] for _, i in batch]
    assert sorted(first_epoch) == list(range(20)) and {e for b in single[5:] for e, _ in b} == {1}
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(3, 2, 2, 0, 0, 1)


def test_detected_boxes_are_cached_once_and_merged(hf_dir: Path, tmp_path: Path) -> None:
    from uniemox.detect import detect_persons, hog_detector
    from uniemox.train import _merge_detected_boxes

    src = open_source(str(hf_dir))
    seen: list[tuple[int, ...]] = []

    def fake(rgb: np.ndarray) -> list[list[float]]:
        seen.append(rgb.shape)
        return [[1.0, 2.0, 30.0, 40.0, 0.7]]

    counts = detect_persons(src, tmp_path / "boxes.json", detector=fake)
    assert counts == {"images": 8, "had_boxes": 4, "detected": 4} and len(seen) == 4  # only the box-less ones
    merged = _merge_detected_boxes(src.metadata(), str(tmp_path / "boxes.json"))
    assert [m.box for m in merged][1::2] == [(1.0, 2.0, 30.0, 40.0)] * 4
    assert [m.box for m in merged][0::2] == [m.box for m in src.metadata()][0::2]  # dataset boxes win
    img = np.asarray(src.load_image(0).convert("RGB"))
    assert all(len(b) == 5 for b in hog_detector()(img))  # the real detector runs offline
