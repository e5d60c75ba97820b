"""The frozen CLIP teacher: own normalisation, no silent fallback to random weights, prompt-embedding cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from uniemox.models import ClipTeacher, TeacherLoadError, load_open_clip, prompt_embeddings
from uniemox.testing import tiny_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> ClipTeacher:
    model, tok = load_open_clip(
        str(tiny_teacher(tmp_path_factory.mktemp("t"))), "random", torch.device("cpu")
    )
    return ClipTeacher(model, tok)


def test_teacher_is_frozen_and_normalises_with_clip_constants(teacher: ClipTeacher) -> None:
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.model.training
    assert teacher.mean.flatten().tolist() == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    imgs = torch.rand(3, 3, 32, 32)
    omega = teacher.encode_images(imgs)
    assert omega.shape == (3, 32) and torch.allclose(omega.norm(dim=-1), torch.ones(3), atol=1e-5)
    manual = teacher.model.encode_image((imgs - teacher.mean) / teacher.std)
    assert torch.allclose(omega, torch.nn.functional.normalize(manual, dim=-1), atol=1e-5)
    assert teacher.encode_images(torch.rand(2, 3, 64, 64)).shape == (2, 32)  # resized to its own size
    assert teacher.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)


def test_missing_or_unknown_weights_raise_with_instructions(tmp_path: Path) -> None:
    arch = str(tiny_teacher(tmp_path))
    with pytest.raises(TeacherLoadError, match="--teacher-pretrained /path/to"):
        load_open_clip(arch, str(tmp_path / "nope.safetensors"), torch.device("cpu"))
    with pytest.raises(TeacherLoadError, match=r"open_clip\.create_model"):
        load_open_clip("ViT-B-16", "no-such-tag", torch.device("cpu"))
    with pytest.raises(TeacherLoadError, match="unknown open_clip architecture"):
        load_open_clip("ViT-Nope", "openai", torch.device("cpu"))


def test_local_checkpoint_file_is_loaded(tmp_path: Path) -> None:
    arch = str(tiny_teacher(tmp_path))
    torch.manual_seed(5)
    model, _ = load_open_clip(arch, "random", torch.device("cpu"))
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    torch.manual_seed(6)
    loaded, _ = load_open_clip(arch, str(tmp_path / "tiny.pt"), torch.device("cpu"))
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_prompt_embeddings_are_computed_once_and_cached(teacher: ClipTeacher, tmp_path: Path) -> None:
    calls: list[int] = []
    original = teacher.model.encode_text

    def counting(tokens: Any) -> Any:
        calls.append(len(tokens))
        return original(tokens)

    teacher.model.encode_text = counting
    try:
        prompts = ["The overall emotion conveyed is awe.", "The overall emotion conveyed is fear."]
        cache = tmp_path / "lam.pt"
        first = prompt_embeddings(teacher, prompts, "tiny|random", cache)
        assert calls == [2] and first.shape == (2, 32)
        again = prompt_embeddings(teacher, prompts, "tiny|random", cache)
        assert calls == [2] and torch.equal(first, again)  # served from the cache
        prompt_embeddings(teacher, prompts, "other|teacher", cache)
        assert calls == [2, 2]  # another teacher: recomputed
    finally:
        teacher.model.encode_text = original


def test_prompt_fits_counts_the_real_clip_tokens(teacher: ClipTeacher) -> None:
    from uniemox.models.teacher import prompt_token_count

    short = "The overall emotion conveyed is awe."
    tokens = teacher.tokenizer([short])[0]  # what the text tower receives: SOT ... EOT, zero padding
    assert prompt_token_count(teacher.tokenizer, short) == int((tokens != 0).sum()) == 10
    long = " ".join(["The scene type of this photo is natural history museum."] * 8)
    assert teacher.prompt_fits(short) and not teacher.prompt_fits(long)
    # exactly at the limit: what fits is what the tokenizer keeps whole (its last token is EOT, not a cut word)
    words = "word " * 80
    fitting = max(n for n in range(80) if teacher.prompt_fits(" ".join(words.split()[:n])))
    ids = teacher.tokenizer([" ".join(words.split()[:fitting])])[0]
    assert int((ids != 0).sum()) <= 77 and not teacher.prompt_fits(" ".join(words.split()[: fitting + 1]))


def test_teacher_precision_is_fp32_unless_bf16_is_asked_for(tmp_path: Path) -> None:
    arch = str(tiny_teacher(tmp_path))
    fp32 = ClipTeacher.from_open_clip(arch, "random", torch.device("cpu"))
    assert fp32.dtype == torch.float32 and all(p.dtype == torch.float32 for p in fp32.parameters())
    bf16 = ClipTeacher.from_open_clip(arch, "random", torch.device("cpu"), precision="bf16")
    assert bf16.dtype == torch.bfloat16 and next(bf16.model.parameters()).dtype == torch.bfloat16
    assert (
        bf16.encode_images(torch.rand(2, 3, 32, 32)).dtype == torch.float32
    )  # Omega stays fp32 for the losses
    with pytest.raises(ValueError, match="fp32, bf16"):
        ClipTeacher.from_open_clip(arch, "random", torch.device("cpu"), precision="fp16")
