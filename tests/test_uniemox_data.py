"""Pretraining data: sources, prompts, the person crop, per-sample determinism and the global-batch sampler."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emo8.core.taxonomy import EMOTIONS
from uniemox.data import (
    MAX_PERSON_JITTER,
    PAD_RGB,
    AugmentConfig,
    GlobalBatchSampler,
    PretrainDataset,
    SampleMeta,
    TwoStreamTransform,
    best_person_box,
    build_prompts,
    decode_for_crops,
    open_source,
    person_square,
    rrc_params,
    to_unit,
)
from uniemox.prompts import (
    EMO8_SCALES,
    EMOSET_SCALES,
    AttributeScales,
    ImageAttributes,
    brightness_word,
    build_prompt,
    colorfulness_word,
    title_keywords,
)
from uniemox.testing import SAMPLES, make_emoset, make_hf_dataset, make_imagefolder, sample_rows


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hf_dataset(tmp_path_factory.mktemp("hf") / "ds", n=8)


def test_best_person_box_takes_the_most_confident() -> None:
    assert best_person_box([[0, 0, 10, 10, 0.3], [5, 5, 20, 30, 0.9], [1, 1, 2, 2, 0.5]]) == (5, 5, 20, 30)
    assert best_person_box([[0, 0, 10, 10]]) == (0, 0, 10, 10)
    assert best_person_box([]) is None and best_person_box(None) is None
    assert best_person_box([[10, 10, 5, 5, 1.0]]) is None  # degenerate


def _as_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def test_person_stream_receives_the_whole_box_padded_to_a_square() -> None:
    img = Image.open(SAMPLES / sample_rows(1)[0]["file"]).convert("RGB")  # 275 x 251
    w, h = img.size
    box = (w * 0.3, h * 0.2, w * 0.6, h * 0.9)  # a standing person: aspect 0.47
    cfg = AugmentConfig(img_size=32, person_jitter=0.0, hflip=0.0)
    scene, person, used = TwoStreamTransform(cfg)(img, box, np.random.default_rng(0))
    assert used and person.shape == scene.shape == (3, 32, 32) and person.dtype == scene.dtype == torch.uint8
    # the square around the box's centre whose side is the box's height: the whole person, aspect kept
    side, cx, cy = box[3] - box[1], (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    square = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    assert square[0] >= 0 and square[2] <= w  # inside the image here: context fills the sides
    expected = _as_tensor(img.resize((32, 32), Image.Resampling.BICUBIC, box=square))
    assert torch.equal(person, expected)
    whole = _as_tensor(img.resize((32, 32), Image.Resampling.BICUBIC))
    assert (person.float() - whole.float()).abs().mean() > 10
    # no box: the person stream gets the whole image, padded to a square, and says so
    _, fallback, used = TwoStreamTransform(cfg)(img, None, np.random.default_rng(0))
    assert not used
    assert (fallback[:, 0, :] == torch.tensor(PAD_RGB).view(3, 1)).all()  # 275 x 251: bands above and below
    assert (fallback[:, 16, :].float() - torch.tensor(PAD_RGB).view(3, 1)).abs().mean() > 5


@pytest.mark.parametrize("aspect", [0.3, 0.4, 0.6, 1.0, 1.7, 3.0])
def test_person_crop_keeps_the_box_whole_in_the_pixels(aspect: float) -> None:
    """A red box on grey: the box spans the square's long side and keeps its aspect on the short one."""
    bw, bh = (120 * aspect, 120.0) if aspect < 1 else (120.0, 120 / aspect)
    canvas = Image.new("RGB", (400, 300), (128, 128, 128))
    box = (150.0, 20.0, 150 + bw, 20 + bh)
    canvas.paste((255, 0, 0), tuple(round(v) for v in box))
    cfg = AugmentConfig(img_size=64, person_jitter=0.0, hflip=0.0)
    _, person, _ = TwoStreamTransform(cfg)(canvas, box, np.random.default_rng(0))
    red = (person[0] > 200) & (person[1] < 60) & (person[2] < 60)
    rows, cols = red.any(dim=1).nonzero().flatten(), red.any(dim=0).nonzero().flatten()
    height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    assert max(height, width) >= 62  # the long side fills the square (bicubic edges: 1 px each)
    assert min(height, width) == pytest.approx(64 * min(aspect, 1 / aspect), abs=2.5)


@pytest.mark.parametrize("jitter", [0.05, MAX_PERSON_JITTER])
def test_person_crop_covers_at_least_90_percent_of_the_box_for_aspects_0_3_to_3(jitter: float) -> None:
    rng = np.random.default_rng(0)
    worst = 1.0
    for aspect in np.geomspace(0.3, 3.0, 25):
        for _ in range(200):
            bw, bh = (100 * aspect, 100.0) if aspect < 1 else (100.0, 100 / aspect)
            x0, y0 = rng.uniform(0, 50), rng.uniform(0, 50)
            left, top, side = person_square((x0, y0, x0 + bw, y0 + bh), jitter, rng)
            cover_x = (min(x0 + bw, left + side) - max(x0, left)) / bw
            cover_y = (min(y0 + bh, top + side) - max(y0, top)) / bh
            worst = min(worst, cover_x, cover_y)
            # the square is never much larger than the box: the person is not shrunk into the background
            assert side <= max(bw, bh) * (1 + 2 * jitter) + 1e-9
    assert worst >= 0.9, worst
    with pytest.raises(ValueError, match="90 %"):
        AugmentConfig(person_jitter=0.1)


def test_the_old_random_resized_person_crop_fails_the_coverage_bound() -> None:
    """What the person stream used to get (area 0.5-1, aspect 3/4-4/3 of the box) cuts a standing person."""
    rng = np.random.default_rng(0)
    covers = [rrc_params(40, 100, (0.5, 1.0), (3 / 4, 4 / 3), rng)[3] / 100 for _ in range(200)]
    assert min(covers) < 0.6  # so the bound above can fail; the new crop keeps >= 0.9


def test_jpeg_is_drafted_only_as_far_as_the_crops_allow(tmp_path: Path) -> None:
    img = Image.open(SAMPLES / sample_rows(1)[0]["file"]).convert("RGB")
    big = img.resize((img.width * 8, img.height * 8), Image.Resampling.BICUBIC)  # 2200 x 2008
    big.save(tmp_path / "big.jpg", quality=95)
    big.save(tmp_path / "big.png")
    drafted = decode_for_crops(Image.open(tmp_path / "big.jpg"), reduction=4.5)
    assert drafted.mode == "RGB" and drafted.size == (550, 502)  # DCT scale 1/4: still >= 1/4.5 of the size
    assert decode_for_crops(Image.open(tmp_path / "big.jpg"), reduction=1.5).size == big.size
    assert decode_for_crops(Image.open(tmp_path / "big.png"), reduction=8).size == big.size  # not a JPEG
    assert decode_for_crops(Image.open(tmp_path / "big.jpg"), 8, allow_draft=False).size == big.size
    # the streams from a drafted decode match the full decode up to resampling noise
    box = (600.0, 300.0, 1200.0, 1900.0)
    on, off = (
        TwoStreamTransform(AugmentConfig(img_size=64, draft=d))(
            Image.open(tmp_path / "big.jpg"), box, np.random.default_rng(3)
        )
        for d in (True, False)
    )
    for a, b in zip(on[:2], off[:2], strict=True):
        assert (a.float() - b.float()).abs().mean() < 4, (a.float() - b.float()).abs().mean()


def test_boxes_are_read_in_exif_oriented_pixels(tmp_path: Path) -> None:
    img = Image.open(SAMPLES / sample_rows(1)[0]["file"]).convert("RGB")  # 275 x 251
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers (and emo8's box detection) turn it 90 degrees clockwise
    img.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    box = (40.0, 30.0, 140.0, 230.0)
    cfg = AugmentConfig(img_size=32, person_jitter=0.0, hflip=0.0)
    _, person, _ = TwoStreamTransform(cfg)(Image.open(tmp_path / "rot.jpg"), box, np.random.default_rng(0))
    _, upright, _ = TwoStreamTransform(cfg)(img, box, np.random.default_rng(0))
    assert (person.float() - upright.float()).abs().mean() < 6  # JPEG noise only


def test_uint8_images_leave_the_workers_and_become_floats_on_the_device(hf_dir: Path) -> None:
    from torch.utils.data import DataLoader

    src = open_source(str(hf_dir))
    meta = src.metadata()
    ds = PretrainDataset(src, meta, list(range(8)), AugmentConfig(img_size=32), num_patches=16, seed=0)
    loader = DataLoader(ds, batch_sampler=GlobalBatchSampler(8, 4, 1, 0, seed=0, total=2), num_workers=1)
    batch = next(iter(loader))
    assert batch["scene"].dtype == batch["person"].dtype == torch.uint8
    assert batch["scene"].shape == (4, 3, 32, 32)
    unit = to_unit(batch["scene"], "cpu")
    assert unit.dtype == torch.float32 and torch.equal(unit, batch["scene"].float() / 255)
    assert float(unit.min()) >= 0.0 and float(unit.max()) <= 1.0 and float(unit.max()) > 0.5
    assert to_unit(unit) is unit  # float input passes through


def test_flip_is_shared_by_both_streams() -> None:
    img = Image.open(SAMPLES / sample_rows(1)[0]["file"]).convert("RGB")
    full = (0.0, 0.0, float(img.width), float(img.height))
    ratio = img.width / img.height
    base = AugmentConfig(img_size=32, scale=(1.0, 1.0), person_jitter=0.0, ratio=(ratio, ratio))
    s0, p0, _ = TwoStreamTransform(replace(base, hflip=0.0))(img, full, np.random.default_rng(0))
    s1, p1, _ = TwoStreamTransform(replace(base, hflip=1.0))(img, full, np.random.default_rng(0))
    assert torch.equal(s1, s0.flip(-1)) and torch.equal(p1, p0.flip(-1))


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
    assert brightness_word(250, "8bit") == "very bright" and brightness_word(0.05, "unit") == "very dark"
    assert (
        colorfulness_word(120.0, "hasler") == "very high" and colorfulness_word(10.0, "hasler") == "very low"
    )


def test_colourfulness_scale_comes_from_the_source_not_the_value(tmp_path: Path, hf_dir: Path) -> None:
    # Hasler & Suesstrunk (Emo8): 0.9 and 1.5 are both near-grey; on EmoSet's [0, 1] scale 0.9 is very high
    assert colorfulness_word(0.9, "hasler") == colorfulness_word(1.5, "hasler") == "very low"
    assert colorfulness_word(70.0, "hasler") == "high"
    assert colorfulness_word(0.9, "unit") == "very high" and colorfulness_word(0.1, "unit") == "very low"
    grey = ImageAttributes(emotion="sadness", colorfulness=0.9)
    assert "color saturation of very low" in build_prompt(grey, EMO8_SCALES)
    assert "color saturation of very high" in build_prompt(grey, EMOSET_SCALES)
    with pytest.raises(KeyError):
        colorfulness_word(0.5, "auto")
    with pytest.raises(ValueError, match="colorfulness scale"):
        AttributeScales(colorfulness="percent")
    # the layouts declare their scales; an override replaces them
    emoset = open_source(str(make_emoset(tmp_path / "emoset", n=4)))
    assert emoset.scales == EMOSET_SCALES and open_source(str(hf_dir)).scales == EMO8_SCALES
    assert open_source(str(hf_dir), scales=EMOSET_SCALES).scales == EMOSET_SCALES
    # the same images in both layouts (Hasler values in the release, /120 in EmoSet) get the same words for
    # the extremes: index 1 has 63.6 (Hasler: high) = 0.53 (EmoSet: medium) ... only the source knows which
    emoset_words = [build_prompt(m.attributes, emoset.scales) for m in emoset.metadata()]
    naive = [build_prompt(m.attributes, EMO8_SCALES) for m in emoset.metadata()]
    assert emoset_words != naive  # reading EmoSet's values as Hasler's would change the prompts


# the longest labels of EmoSet's vocabularies (Places365 scenes, Kinetics actions) with a long object list
LONG = ImageAttributes(
    emotion="contentment", domain="advertising cover", scene="natural_history_museum/indoor",
    objects=("personal flotation device", "kitchen & dining room table", "television remote control"),
    brightness=0.55, colorfulness=44.0, facial_expression="surprise mixed with happiness",
    human_action="passing american football (not in game)", num_people=3,
)  # fmt: skip


def test_long_prompts_drop_their_least_important_sentences_never_the_emotion() -> None:
    import open_clip

    from uniemox.models.teacher import prompt_token_count

    tokenizer = open_clip.get_tokenizer("ViT-B-16")  # the real CLIP BPE, bundled with open_clip
    full = build_prompt(LONG)
    assert prompt_token_count(tokenizer, full) > 77  # the precondition: open_clip would cut the emotion off
    cut = tokenizer([full])[0]
    assert "contentment" not in tokenizer.decode(cut[1:-1].tolist())
    fitted = build_prompt(LONG, fits=lambda t: prompt_token_count(tokenizer, t) <= 77)
    assert prompt_token_count(tokenizer, fitted) <= 77
    assert fitted.endswith("The overall emotion conveyed is contentment.")
    tokens = tokenizer([fitted])[0]
    assert "contentment" in tokenizer.decode(tokens[tokens.nonzero().flatten()][1:-1].tolist())
    # least important first: brightness/saturation went, facial expression and action stayed
    assert "brightness" not in fitted and "facial expression is surprise" in fitted and "american" in fitted
    # a prompt that fits is left as it is; with only the emotion left, it is kept whatever happens
    short = ImageAttributes(emotion="awe", scene="beach")
    assert build_prompt(short, fits=lambda t: True) == build_prompt(short)
    assert build_prompt(LONG, fits=lambda t: False) == "The overall emotion conveyed is contentment."
    prompts, ids = build_prompts([SampleMeta(LONG, None)] * 2, EMO8_SCALES, fits=lambda t: len(t) < 200)
    assert ids == [0, 0] and len(prompts[0]) < 200 and prompts[0].endswith("contentment.")


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
    from emo8.label.people import DetectConfig, create_detector
    from uniemox.detect import detect_persons
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
    real = create_detector(DetectConfig(backend="opencv-hog"))  # the registry of emo8 detect-people, offline
    assert all(len(b) == 5 for b in real.detect(img).person_boxes)
    players = Image.open(SAMPLES / "images" / "ocv-0002.jpg").convert("RGB")  # basketball players, 512 x 384
    boxes = real.detect(np.asarray(players)).person_boxes
    assert boxes  # not vacuous: HOG finds a player here
    assert all(
        len(b) == 5 and 0 <= b[0] < b[2] <= 512 and 0 <= b[1] < b[3] <= 384 and b[4] > 0 for b in boxes
    )
