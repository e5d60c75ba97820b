"""UniEmoX model: MAE ViT shapes, masking, decoder patch tokens, SDPA attention, fusions, the two streams."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from uniemox.models import (
    FUSIONS,
    MAE_CONFIGS,
    UniEmoX,
    create_fusion,
    create_mae,
    mae_config,
    num_visible,
    random_masking,
)
from uniemox.models.pos_embed import interpolate_pos_embed, sincos_pos_embed_2d
from uniemox.models.vit import Attention

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
        "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def test_registry_sizes_match_the_issue() -> None:
    dims = {n: (c.embed_dim, c.depth, c.num_heads, c.patch_size, c.img_size) for n, c in MAE_CONFIGS.items()}
    assert dims == {
        "mae_vit_tiny_patch16": (192, 12, 3, 16, 224),
        "mae_vit_small_patch16": (384, 12, 6, 16, 224),
        "mae_vit_base_patch16": (768, 12, 12, 16, 224),
        "mae_vit_large_patch16": (1024, 24, 16, 16, 224),
    }
    assert all((c.decoder_embed_dim, c.decoder_depth) == (512, 8) for c in MAE_CONFIGS.values())
    assert mae_config("mae_vit_base_patch16", decoder_depth=4, patch_size=None).decoder_depth == 4
    with pytest.raises(KeyError, match="mae_vit_tiny_patch16"):
        mae_config("vit_huge")


def test_real_tiny_model_shapes_at_224() -> None:
    mae = create_mae("mae_vit_tiny_patch16", decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2)
    x = torch.randn(2, 3, 224, 224)
    latent, pred, mask = mae(x, mask_ratio=0.75)
    assert latent.shape == (2, 1 + 49, 192)  # 196 patches, 25% visible, plus CLS
    assert pred.shape == (2, 196, 16 * 16 * 3)
    assert mask.shape == (2, 196) and mask.sum(1).tolist() == [147.0, 147.0]


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_encoder_sees_only_visible_tokens(ratio: float) -> None:
    mae = create_mae("mae_vit_tiny_patch16", **TINY)
    seen: list[tuple[int, ...]] = []
    mae.blocks[0].register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    latent, mask, ids_restore = mae.forward_encoder(torch.randn(3, 3, 32, 32), ratio)
    k = num_visible(16, ratio)
    assert seen == [(3, 1 + k, 32)] and latent.shape == (3, 1 + k, 32)
    assert (mask == 0).sum(1).tolist() == [k] * 3
    assert ids_restore.shape == (3, 16)


def test_masks_differ_per_sample_and_repeat_with_a_seed() -> None:
    x = torch.randn(4, 16, 8)
    torch.manual_seed(123)
    _, m1, _ = random_masking(x, 0.75)
    torch.manual_seed(123)
    _, m2, _ = random_masking(x, 0.75)
    assert torch.equal(m1, m2)
    assert len({tuple(row.tolist()) for row in m1}) == 4  # every sample has its own mask
    torch.manual_seed(124)
    assert not torch.equal(random_masking(x, 0.75)[1], m1)


def test_masking_keeps_the_lowest_noise_patches_and_restores_order() -> None:
    x = torch.arange(8.0).view(1, 8, 1)
    noise = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4]])
    visible, mask, ids_restore = random_masking(x, 0.5, noise)
    assert visible.flatten().tolist() == [1.0, 3.0, 5.0, 7.0]
    assert mask.tolist() == [[1, 0, 1, 0, 1, 0, 1, 0]]
    shuffled = torch.gather(x, 1, torch.argsort(noise, 1).unsqueeze(-1))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore.unsqueeze(-1)), x)


def test_decoder_predicts_from_patch_tokens_not_the_cls_position() -> None:
    mae = create_mae("mae_vit_tiny_patch16", **TINY)
    raw: list[torch.Tensor] = []
    mae.decoder_pred.register_forward_hook(lambda m, inp, out: raw.append(out))
    _, pred, _ = mae(torch.randn(2, 3, 32, 32), 0.75)
    assert raw[0].shape == (2, 17, 192)  # CLS + 16 patches
    assert torch.equal(pred, raw[0][:, 1:])  # row l of pred is patch l, the CLS row is dropped


def test_patchify_roundtrip_and_layout() -> None:
    mae = create_mae("mae_vit_tiny_patch16", **TINY)
    imgs = torch.randn(2, 3, 32, 32)
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 16, 192)
    assert torch.equal(mae.unpatchify(patches), imgs)
    # patch 1 is the second 8x8 block of the first row, pixels in (row, col, channel) order
    assert torch.equal(patches[0, 1], imgs[0, :, 0:8, 8:16].permute(1, 2, 0).reshape(-1))


def test_position_embeddings_are_fixed_sincos_and_interpolate() -> None:
    mae = create_mae("mae_vit_tiny_patch16", **TINY)
    names = {n for n, _ in mae.named_parameters()}
    assert "pos_embed" not in names and "decoder_pos_embed" not in names
    assert "pos_embed" in mae.state_dict()
    pe = sincos_pos_embed_2d(32, 4)
    assert torch.equal(mae.pos_embed[0], pe) and torch.all(pe[0] == 0)
    assert torch.allclose(pe[1:, 0], torch.sin(torch.tensor([0.0, 1, 2, 3] * 4)), atol=1e-6)
    bigger = interpolate_pos_embed(pe[None], 64)
    assert bigger.shape == (1, 65, 32) and torch.equal(bigger[0, 0], pe[0])
    assert torch.equal(interpolate_pos_embed(pe[None], 16), pe[None])


def test_attention_matches_explicit_softmax() -> None:
    attn = Attention(16, 4)
    x = torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    ref = (torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v).transpose(1, 2).reshape(2, 5, 16)
    assert torch.allclose(attn(x), attn.proj(ref), atol=1e-6)


def test_paper_fusion_is_elu_linear_of_shared_layernorm_sum() -> None:
    fusion = create_fusion("paper", 8)
    norms = [m for m in fusion.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 1  # ONE LayerNorm shared by alpha and beta
    with torch.no_grad():
        norms[0].weight.uniform_(0.5, 1.5)
        norms[0].bias.uniform_(-0.5, 0.5)
    a, b = torch.randn(3, 8), torch.randn(3, 8)
    ln = norms[0]
    expected = F.elu(fusion.fc(ln(a) + ln(b)))  # type: ignore[operator]
    assert torch.allclose(fusion(a, b), expected)
    assert set(FUSIONS) == {"paper", "scene", "person", "sum", "gated"}
    assert torch.equal(create_fusion("sum", 8)(a, b), a + b)
    assert torch.equal(create_fusion("scene", 8)(a, None), a)
    assert torch.equal(create_fusion("person", 8)(None, b), b)
    g = create_fusion("gated", 8)(a, b)
    assert g.shape == (3, 8) and not torch.allclose(g, a) and not torch.allclose(g, b)


def _student(fusion: str = "paper") -> UniEmoX:
    return UniEmoX(mae_config("mae_vit_tiny_patch16", **TINY), teacher_dim=24, fusion=fusion)


def test_student_runs_the_person_stream_on_the_person_images_with_its_own_mask() -> None:
    model = _student()
    inputs: list[torch.Tensor] = []
    model.mae.patch_embed.register_forward_hook(lambda m, inp, out: inputs.append(inp[0]))
    scene, person = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    sn, pn = torch.rand(2, 16), torch.rand(2, 16)
    out = model(scene, person, sn, pn)
    assert len(inputs) == 2
    assert torch.allclose(inputs[0], model.normalise(scene)) and torch.allclose(
        inputs[1], model.normalise(person)
    )
    assert out.person_mask is not None and not torch.equal(out.mask, out.person_mask)
    assert out.gamma.shape == (2, 24) and out.pred.shape == out.target.shape == (2, 16, 192)
    # the person stream matters: another person image changes gamma but not the reconstruction
    out2 = model(scene, torch.rand(2, 3, 32, 32), sn, pn)
    assert not torch.allclose(out.gamma, out2.gamma) and torch.equal(out.pred, out2.pred)


def test_scene_only_fusion_skips_the_person_stream() -> None:
    model = _student("scene")
    calls: list[int] = []
    model.mae.patch_embed.register_forward_hook(lambda m, inp, out: calls.append(1))
    out = model(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    assert len(calls) == 1 and model.proj_person is None and out.person_mask is None
    assert _student("person").proj_scene is None


def _stream_gradients(term: str, detach_gamma: bool = False) -> tuple[UniEmoX, list[torch.Tensor]]:
    """Backward ONE loss term through the real student and losses; -> the model and the gradients that
    reached each stream's patch tokens (scene first, then person). ``detach_gamma``: the regression to catch."""
    from uniemox.losses import pretraining_losses

    model = _student()
    tokens: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        out.retain_grad()
        tokens.append(out)

    model.mae.patch_embed.register_forward_hook(keep)
    out = model(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), torch.rand(4, 16), torch.rand(4, 16))
    g = torch.Generator().manual_seed(1)
    omega = F.normalize(torch.randn(4, 24, generator=g), dim=-1)
    lam = F.normalize(torch.randn(4, 24, generator=g), dim=-1)
    gamma = out.gamma.detach() if detach_gamma else out.gamma
    terms = pretraining_losses(gamma, omega, lam, 100.0, out.pred, out.target, out.mask)
    (terms[term] + 0 * out.pred.sum()).backward()  # the zero term keeps a graph when gamma is detached
    assert len(tokens) == 2
    return model, [t.grad if t.grad is not None else torch.zeros_like(t) for t in tokens]


@pytest.mark.parametrize("term", ["l_sim", "l_con"])
def test_distillation_terms_train_the_encoder_through_both_streams(term: str) -> None:
    """L_sim and L_con reach the shared encoder through the scene AND the person stream, and alpha, beta and the
    fusion: a detached gamma, a skipped stream or the teacher's omega used as the student would give zeros."""
    model, (scene_grad, person_grad) = _stream_gradients(term)
    assert scene_grad.abs().sum() > 0 and person_grad.abs().sum() > 0
    named = dict(model.named_parameters())
    for name in (
        "mae.blocks.0.attn.qkv.weight", "mae.blocks.1.mlp.fc2.weight", "mae.patch_embed.proj.weight",
        "mae.cls_token", "proj_scene.weight", "proj_person.weight", "fusion.fc.weight", "fusion.norm.weight",
    ):  # fmt: skip
        grad = named[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(named[n].grad is None or named[n].grad.abs().sum() == 0 for n in named if "decoder" in n)
    # the same checks see a detached gamma: nothing reaches the encoder's streams or the projections
    model, (scene_grad, person_grad) = _stream_gradients(term, detach_gamma=True)
    assert scene_grad.abs().sum() == 0 and person_grad.abs().sum() == 0
    assert model.proj_scene is not None and model.proj_scene.weight.grad is None


def test_reconstruction_alone_never_reaches_the_person_stream() -> None:
    model, (scene_grad, person_grad) = _stream_gradients("l_rec")
    assert scene_grad.abs().sum() > 0 and person_grad.abs().sum() == 0
    assert model.proj_person is not None and model.proj_person.weight.grad is None
