"""backbone.precision: mixed (amp-*) and pure low-precision modes, auto, and what records them."""

import functools

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from anomaly_vlm.backbones import FrozenCLIP, FrozenDINOv2, precision
from anomaly_vlm.backbones.precision import BatchFirstAttention, resolve_precision
from anomaly_vlm.cache.feature_cache import backbone_fingerprint
from anomaly_vlm.methods.winclip.torch_model import WinCLIPModel
from anomaly_vlm.prompts.learnable import encode_deep_prompted_text


def tiny(mode: str) -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0, precision=mode)


@functools.cache
def built(mode: str) -> FrozenCLIP:
    """``tiny(mode)`` built once, for the tests that only run it (a frozen backbone keeps no state)."""
    return tiny(mode)


@pytest.fixture(scope="module")
def mixed_bf16():
    return built("amp-bf16")


def cosine(a, b):
    return F.cosine_similarity(a.float().flatten(1), b.float().flatten(1)).min().item()


def test_mixed_rounds_matmul_weights_once_and_keeps_stream_norms_and_projections_float32(mixed_bf16):
    block = mixed_bf16.blocks[0]
    assert block.attn.in_proj_weight.dtype == torch.bfloat16
    assert block.attn.out_proj.weight.dtype == torch.bfloat16
    assert block.mlp.c_fc.weight.dtype == torch.bfloat16
    assert mixed_bf16.visual.conv1.weight.dtype == torch.bfloat16
    for kept in (
        block.ln_1.weight,
        mixed_bf16.visual.ln_post.weight,
        mixed_bf16.proj,
        mixed_bf16.positional_embedding,
    ):
        assert kept.dtype == torch.float32
    assert mixed_bf16.clip.text_projection.dtype == torch.float32
    assert mixed_bf16.dtype == torch.float32 and mixed_bf16.compute_dtype == torch.bfloat16


def test_mixed_features_are_float32_and_close_to_fp32(tiny_backbone, mixed_bf16):
    images = torch.rand(2, 3, 128, 128)
    ours = mixed_bf16.encode_image(images, layers=[2, 8])
    reference = tiny_backbone.encode_image(images, layers=[2, 8])
    for value in (ours.global_embedding, ours.patch_tokens, ours.layer_tokens[2], ours.layer_tokens[8]):
        assert value.dtype == torch.float32
    assert cosine(ours.global_embedding, reference.global_embedding) > 0.999
    assert cosine(ours.patch_tokens, reference.patch_tokens) > 0.999
    assert not torch.equal(ours.global_embedding, reference.global_embedding)  # bf16 did run
    text = mixed_bf16.encode_text(["a photo of a thing", "a photo of a broken thing"])
    assert text.dtype == torch.float32
    assert (
        cosine(text, tiny_backbone.encode_text(["a photo of a thing", "a photo of a broken thing"])) > 0.999
    )
    dual = mixed_bf16.encode_dual_path(images, vv_start=3, layers=[4], post_attention_layers=[4])
    expected = tiny_backbone.encode_dual_path(images, vv_start=3, layers=[4], post_attention_layers=[4])
    assert dual.vv_patch_embeddings.dtype == torch.float32
    assert cosine(dual.vv_patch_embeddings, expected.vv_patch_embeddings) > 0.999


def test_pure_bf16_keeps_open_clips_low_precision_stream():
    backbone = built("bf16")
    assert backbone.blocks[0].attn.in_proj_weight.dtype == torch.bfloat16
    assert backbone.proj.dtype == torch.bfloat16
    tokens = backbone.ln_pre(backbone.embed_patches(torch.rand(1, 3, 128, 128)))
    final, taps = backbone.run_blocks(tokens, [2], apply_ln_pre=False)
    assert final.dtype == torch.bfloat16 and taps[2].dtype == torch.bfloat16
    # What leaves the backbone meets float32 text classifiers, memories and learned layers.
    features = backbone.encode_image(torch.rand(1, 3, 128, 128), layers=[2])
    assert features.layer_tokens[2].dtype == torch.float32
    assert features.patch_tokens.dtype == features.global_embedding.dtype == torch.float32
    assert backbone.project(final).dtype == torch.float32


def test_gradients_reach_float32_prompts_through_a_mixed_backbone(tiny_backbone, mixed_bf16):
    images = torch.rand(1, 3, 128, 128)
    grads = {}
    for name, backbone in (("fp32", tiny_backbone), ("amp", mixed_bf16)):
        prompt = torch.zeros(2, backbone.width, requires_grad=True)
        with torch.no_grad():
            prompt.normal_(generator=torch.Generator().manual_seed(1))
        features = backbone.encode_image_prompted(images, [prompt])
        features.global_embedding.square().sum().backward()
        grads[name] = prompt.grad
    assert grads["amp"].dtype == torch.float32
    assert grads["amp"].abs().sum() > 0
    assert cosine(grads["amp"][None], grads["fp32"][None]) > 0.99


def test_layer_hooks_leave_autocast_off_even_when_a_layer_fails(mixed_bf16):
    with pytest.raises(RuntimeError):
        mixed_bf16.blocks[0].mlp.c_fc(torch.rand(3, 7))  # wrong width
    assert not torch.is_autocast_enabled("cpu")
    mixed_bf16.blocks[0].mlp.c_fc(torch.rand(3, mixed_bf16.width))
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("mask_kind", [None, "float", "bool"])
@pytest.mark.parametrize("cross", [False, True])
def test_batch_first_attention_equals_pytorchs(mask_kind, cross):
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(32, 4, batch_first=True)
    ours = nn.MultiheadAttention(32, 4, batch_first=True)
    ours.load_state_dict(reference.state_dict())
    ours.__class__ = BatchFirstAttention
    tokens = torch.randn(3, 6, 32)
    query = tokens[:, :2] if cross else tokens
    mask = None
    if mask_kind is not None:
        causal = torch.ones(query.shape[1], 6, dtype=torch.bool).triu(1)
        mask = causal if mask_kind == "bool" else torch.zeros(causal.shape).masked_fill(causal, float("-inf"))
    expected = reference(query, tokens, tokens, need_weights=False, attn_mask=mask)[0]
    got, weights = ours(query, tokens, tokens, need_weights=False, attn_mask=mask)
    assert weights is None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert ours.state_dict().keys() == reference.state_dict().keys()


def test_auto_picks_mixed_bf16_on_native_bf16_cpus_and_the_release_precision_on_gpus(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu")[0] == "amp-bf16"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu")[0] == "fp32"
    assert resolve_precision("auto", "cuda", "fp16")[0] == "fp16"
    assert resolve_precision("auto", "cuda")[0] == "amp-fp16"
    assert resolve_precision("bf16", "cuda", "fp16") == ("bf16", "configured")
    with pytest.raises(ValueError, match="backbone.precision='half'"):
        resolve_precision("half")


def test_auto_backbone_records_what_it_resolved_to(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    backbone = FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, precision="auto", precision_device="cpu")
    record = backbone.precision_record()
    assert record["requested"] == "auto" and record["resolved"] == "amp-bf16"
    assert "native bf16" in record["reason"]
    assert backbone.identity.endswith(":amp-bf16")


def test_feature_cache_key_differs_per_precision_and_fp32_keys_are_unchanged(tiny_backbone, mixed_bf16):
    fp32 = backbone_fingerprint(tiny_backbone)
    assert "precision" not in fp32  # caches written before precisions existed stay valid
    amp = backbone_fingerprint(mixed_bf16)
    assert amp["precision"] == "amp-bf16"
    assert amp != fp32 and amp["weights"] != fp32["weights"]


def winclip_prediction(backbone: FrozenCLIP):
    torch.manual_seed(0)
    images, references = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)
    model = WinCLIPModel(backbone)
    text = backbone.encode_text(["a photo of a thing", "a photo of a broken thing"])
    model.set_text_classifier(F.normalize(text.float(), dim=-1))
    model.set_reference_images(references)
    with torch.no_grad():
        return model(images)


@pytest.fixture(scope="module")
def winclip_fp32(tiny_backbone):
    return winclip_prediction(tiny_backbone)


# fp16 matmuls have no fast CPU kernels: those modes take seconds here, so they run with -m slow.
@pytest.mark.parametrize(
    "mode",
    [
        "amp-bf16",
        "bf16",
        pytest.param("amp-fp16", marks=pytest.mark.slow),
        pytest.param("fp16", marks=pytest.mark.slow),
    ],
)
def test_winclip_scores_in_every_precision_close_to_fp32(winclip_fp32, mode):
    """Pure bf16 used to fail in class_scores: expected m1 and m2 to have the same dtype."""
    got, expected = winclip_prediction(built(mode)), winclip_fp32
    assert got.anomaly_map.dtype == torch.float32 and got.image_score.dtype == torch.float32
    rho = spearmanr(got.anomaly_map.flatten().numpy(), expected.anomaly_map.flatten().numpy()).statistic
    assert rho > 0.99
    span = float(expected.anomaly_map.max() - expected.anomaly_map.min())
    assert float((got.anomaly_map - expected.anomaly_map).abs().max()) < 0.2 * span


def test_winclip_window_pass_in_mixed_bf16_copies_no_weight_per_window(mixed_bf16):
    """PyTorch's attention multiplied the transposed window batch against the weight expanded per
    position (aten::bmm on a copied [L, W, 3W] weight): the slow fallback the profile found."""
    model = WinCLIPModel(mixed_bf16)
    tokens = mixed_bf16.ln_pre(mixed_bf16.embed_patches(torch.rand(1, 3, 128, 128)))
    with torch.no_grad(), torch.profiler.profile() as profile:
        model.encode_windows(tokens, 0)
    names = {event.key for event in profile.key_averages()}
    assert "aten::bmm" not in names


def test_text_features_leave_a_pure_low_precision_backbone_in_float32():
    """They meet float32 learned layers (Bayes-PFL's class mapping failed: mat1 and mat2 dtypes)."""
    backbone = built("bf16")
    assert backbone.encode_text(["a photo of a thing"]).dtype == torch.float32
    ids = backbone.tokenize(["a photo of a thing"])
    embedded = backbone.token_embeddings(ids).float().requires_grad_(True)
    features = encode_deep_prompted_text(backbone, embedded, ids, [torch.zeros(2, backbone.text_width)])
    assert features.dtype == torch.float32
    features.square().sum().backward()
    assert embedded.grad.dtype == torch.float32 and embedded.grad.abs().sum() > 0


def test_dinov2_runs_mixed_precision_with_float32_norms_and_features(monkeypatch):
    fp32 = FrozenDINOv2("anomaly-vlm-tiny-dinov2", None, image_size=140, seed=0)
    amp = FrozenDINOv2("anomaly-vlm-tiny-dinov2", None, image_size=140, seed=0, precision="amp-bf16")
    block = amp.vit.blocks[0]
    assert block.attn.qkv.weight.dtype == block.mlp.fc1.weight.dtype == torch.bfloat16
    assert block.norm1.weight.dtype == amp.vit.cls_token.dtype == torch.float32
    assert amp.dtype == torch.float32 and amp.identity.endswith(":amp-bf16")
    images = torch.rand(2, 3, 140, 140)
    got, expected = amp.patch_tokens(images, [2, 4]), fp32.patch_tokens(images, [2, 4])
    for index in (2, 4):
        assert got[index].dtype == torch.float32
        assert cosine(got[index], expected[index]) > 0.99
        assert not torch.equal(got[index], expected[index])  # bf16 did run
    assert (
        FrozenDINOv2("anomaly-vlm-tiny-dinov2", None, image_size=140, precision="bf16")
        .patch_tokens(images)[4]
        .dtype
        == torch.float32
    )
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    auto = FrozenDINOv2(
        "anomaly-vlm-tiny-dinov2", None, image_size=140, precision="auto", precision_device="cpu"
    )
    assert auto.precision_record()["resolved"] == "amp-bf16"


@pytest.mark.parametrize("mode", ["amp-bf16", "bf16"])
def test_an_fp32_backbone_converted_to_a_precision_is_the_one_built_in_it(mode):
    """What a saved fp32 detector loaded with another precision runs (its weights checked as saved)."""
    converted = tiny("fp32")
    converted.convert_precision(mode)
    assert converted.precision == mode and converted.identity == built(mode).identity
    images = torch.rand(2, 3, 128, 128)
    got, expected = converted.encode_image(images, layers=[4]), built(mode).encode_image(images, layers=[4])
    torch.testing.assert_close(got.layer_tokens[4], expected.layer_tokens[4], rtol=0, atol=0)
    torch.testing.assert_close(got.global_embedding, expected.global_embedding, rtol=0, atol=0)
    text = ["a photo of a thing"]
    torch.testing.assert_close(converted.encode_text(text), built(mode).encode_text(text), rtol=0, atol=0)
    with pytest.raises(ValueError, match="its weights are rounded already"):
        built(mode).convert_precision("fp32")


needs_onednn_bf16 = pytest.mark.skipif(
    not precision._onednn_bf16(), reason="this CPU's oneDNN has no bf16 linear kernels (autocast's path only)"
)


@needs_onednn_bf16
def test_packed_kernels_serve_frozen_layers_and_agree_with_autocasts_path(mixed_bf16, monkeypatch):
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        packed = mixed_bf16.encode_image(images, layers=[4])
        block = mixed_bf16.blocks[0]
        # in_proj, out_proj, c_fc (with GELU inside) and c_proj all ran on packed weights
        assert {block.attn, block.attn.out_proj, block.mlp.c_fc, block.mlp.c_proj} <= set(
            precision._PACKED_WEIGHTS
        )
        monkeypatch.setattr(precision, "PACKED_KERNELS", False)
        plain = mixed_bf16.encode_image(images, layers=[4])
    # Same products; the packed kernel adds the bias and applies GELU before rounding (one rounding fewer).
    assert cosine(packed.patch_tokens, plain.patch_tokens) > 0.9995
    assert cosine(packed.layer_tokens[4], plain.layer_tokens[4]) > 0.9995
    assert (packed.global_embedding - plain.global_embedding).abs().max() < 0.02


@needs_onednn_bf16
def test_packed_weights_follow_reloaded_weights_and_stay_out_of_copies_and_state_dicts():
    import copy
    import io

    backbone = tiny("amp-bf16")
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        before = backbone.encode_image(images).global_embedding
        state = {key: value.clone() for key, value in backbone.clip.state_dict().items()}
        c_fc = backbone.blocks[0].mlp.c_fc
        c_fc.weight.mul_(0.0)  # an in-place reload (load_state_dict) must invalidate the packed copy
        changed = backbone.encode_image(images).global_embedding
        assert (changed - before).abs().max() > 1e-3
        backbone.clip.load_state_dict(state)
        again = backbone.encode_image(images).global_embedding
    torch.testing.assert_close(again, before)
    copy.deepcopy(backbone)  # no opaque oneDNN tensor inside the module
    torch.save(backbone.clip.state_dict(), io.BytesIO())
