"""WinCLIP / WinCLIP+: window layout, exact shortcuts, scoring formulas, text cache, few-shot memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.winclip import WinCLIPModel, WinCLIPModule
from anomaly_vlm.methods.winclip.torch_model import coverage_matrix, harmonic_aggregation, window_indices
from anomaly_vlm.prompts import PromptSet

CONF = Path(__file__).resolve().parents[3] / "conf"


def cpe_prompts() -> PromptSet:
    node = OmegaConf.to_container(OmegaConf.load(CONF / "prompts" / "winclip_cpe.yaml"))
    node.pop("_target_")
    return PromptSet(**node)


@pytest.fixture(scope="module")
def winclip_backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


def test_cpe_prompt_set_has_the_published_sizes():
    prompts = cpe_prompts()
    assert (len(prompts.normal_states), len(prompts.anomalous_states), len(prompts.templates)) == (7, 4, 21)
    normal, anomalous = prompts.sentences("bottle")
    assert len(normal) == 147 and len(anomalous) == 84
    assert "a photo of a bottle for anomaly detection." in normal
    assert "a cropped photo of the damaged bottle." in anomalous
    assert prompts.templates.count("a jpeg corrupted photo of the {}.") == 2  # anomalib's duplicate


def test_window_layout_matches_the_paper_on_the_15x15_grid():
    assert window_indices((15, 15), 2).shape == (196, 4)
    assert window_indices((15, 15), 3).shape == (169, 9)
    assert window_indices((3, 3), 2).tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    with pytest.raises(ValueError, match="does not fit"):
        window_indices((2, 2), 3)


def test_harmonic_aggregation_equals_the_per_patch_definition():
    grid = (5, 4)
    indices = window_indices(grid, 2)
    scores = torch.rand(3, indices.shape[0]) + 0.05
    result = harmonic_aggregation(scores, coverage_matrix(indices, 20))
    for patch in range(20):
        covering = [w for w in range(indices.shape[0]) if patch in indices[w].tolist()]
        expected = len(covering) / (1 / scores[:, covering]).sum(dim=1)
        torch.testing.assert_close(result[:, patch], expected)
    scores[0, 3] = 0.0  # a zero window score drives every patch it covers to 0, not NaN
    result = harmonic_aggregation(scores, coverage_matrix(indices, 20))
    assert torch.isfinite(result).all()
    assert (result[0, indices[3]] == 0).all() and (result[1:] > 0).all()


def test_full_grid_window_reproduces_the_image_embedding(winclip_backbone):
    images = torch.rand(2, 3, 128, 128)
    reference = winclip_backbone.encode_image(images).global_embedding
    for cls_only in (True, False):
        model = WinCLIPModel(winclip_backbone, scales=(8,), cls_only_last_block=cls_only)
        assert model.cls_only_last_block is cls_only
        image_embedding, _, windows = model.encode(images)
        torch.testing.assert_close(image_embedding, reference, rtol=1e-5, atol=1e-5)
        assert windows[0].shape == (2, 1, winclip_backbone.embed_dim)
        torch.testing.assert_close(windows[0][:, 0], reference, rtol=1e-4, atol=1e-5)


def test_batched_windows_equal_one_window_at_a_time(winclip_backbone):
    """Chunked, ln_pre-shared, CLS-only windows == each window run alone through the plain path."""
    images = torch.rand(2, 3, 128, 128)
    model = WinCLIPModel(winclip_backbone, scales=(2, 3), window_batch_size=7)
    _, _, windows = model.encode(images)
    tokens = winclip_backbone.embed_patches(images)
    for scale_index, scale in enumerate((2, 3)):
        indices = window_indices(winclip_backbone.grid_size, scale)
        assert windows[scale_index].shape == (2, indices.shape[0], winclip_backbone.embed_dim)
        for window in (0, 5, indices.shape[0] - 1):
            sequence = tokens[:, torch.cat([torch.zeros(1, dtype=torch.long), indices[window] + 1])]
            final, _ = winclip_backbone.run_blocks(sequence)
            torch.testing.assert_close(
                windows[scale_index][:, window], winclip_backbone.pool(final), rtol=1e-4, atol=1e-5
            )


def _reference_scores(backbone, text, images, references=None, scales=(2, 3), temperature=0.07):
    """A direct, loop-based reading of the WinCLIP / WinCLIP+ equations (independent of the model)."""
    tokens = backbone.embed_patches(images)
    features = backbone.encode_image(images)
    grid_h, grid_w = backbone.grid_size
    n = grid_h * grid_w

    def class_score(embedding):
        return (F.normalize(embedding, dim=-1) @ text.T / temperature).softmax(-1)[..., 1]

    def windows_of(token_batch, scale):
        out = []
        for row in range(grid_h - scale + 1):
            for col in range(grid_w - scale + 1):
                patches = [1 + (row + i) * grid_w + col + j for i in range(scale) for j in range(scale)]
                final, _ = backbone.run_blocks(token_batch[:, [0, *patches]])
                out.append((patches, backbone.pool(final)))
        return out

    def harmonic(window_scores, patch_lists):
        result = torch.zeros(images.shape[0], n)
        for p in range(n):
            covering = [k for k, patches in enumerate(patch_lists) if p + 1 in patches]
            result[:, p] = len(covering) / sum(1 / window_scores[k] for k in covering)
        return result

    s0 = class_score(features.global_embedding)
    query_windows = {scale: windows_of(tokens, scale) for scale in scales}
    inverse = 1 / s0[:, None].expand(-1, n)
    for scale in scales:
        patch_lists = [patches for patches, _ in query_windows[scale]]
        window_scores = [class_score(embedding) for _, embedding in query_windows[scale]]
        inverse = inverse + 1 / harmonic(window_scores, patch_lists)
    zero_shot = (len(scales) + 1) / inverse
    score = s0
    if references is not None:
        ref_tokens = backbone.embed_patches(references)
        ref_patches = backbone.encode_image(references).patch_tokens.flatten(0, 1)

        def distance(query, memory):
            cosine = F.normalize(query, dim=-1) @ F.normalize(memory, dim=-1).T
            return ((1 - cosine) / 2).min(dim=-1).values

        maps = [distance(features.patch_tokens, ref_patches)]
        for scale in scales:
            memory = torch.cat([embedding for _, embedding in windows_of(ref_tokens, scale)])
            patch_lists = [patches for patches, _ in query_windows[scale]]
            window_scores = [distance(embedding, memory) for _, embedding in query_windows[scale]]
            maps.append(harmonic(window_scores, patch_lists))
        few_shot = torch.stack(maps).mean(0)
        zero_shot = (zero_shot + few_shot) / 2
        score = (s0 + few_shot.amax(-1)) / 2
    grid = zero_shot.reshape(-1, 1, grid_h, grid_w)
    return score, F.interpolate(grid, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("shots", [0, 2])
def test_scores_follow_the_winclip_equations(winclip_backbone, shots):
    torch.manual_seed(shots)
    text = F.normalize(torch.randn(2, winclip_backbone.embed_dim), dim=-1)
    images = torch.rand(2, 3, 128, 128)
    references = torch.rand(shots, 3, 128, 128) if shots else None
    model = WinCLIPModel(winclip_backbone, scales=(2, 3))
    model.set_text_classifier(text)
    model.set_reference_images(references)
    assert model.few_shot is bool(shots)
    prediction = model(images)
    scores, maps = prediction.image_score, prediction.anomaly_map
    expected_scores, expected_maps = _reference_scores(winclip_backbone, text, images, references)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps, expected_maps, rtol=1e-4, atol=1e-5)


def test_a_query_among_the_references_has_no_few_shot_anomaly(winclip_backbone):
    images = torch.rand(3, 3, 128, 128)
    model = WinCLIPModel(winclip_backbone)
    model.set_text_classifier(F.normalize(torch.randn(2, winclip_backbone.embed_dim), dim=-1))
    prediction = model(images[:1])
    zero_scores, zero_maps = prediction.image_score, prediction.anomaly_map
    model.set_reference_images(images)
    prediction = model(images[:1])
    few_scores, few_maps = prediction.image_score, prediction.anomaly_map
    # The few-shot part is ~0 for a reference itself: everything is halved.
    torch.testing.assert_close(few_scores, zero_scores / 2, atol=2e-5, rtol=0)
    torch.testing.assert_close(few_maps, zero_maps / 2, atol=2e-5, rtol=0)


def test_second_run_of_a_category_encodes_no_text(tmp_path):
    prompts = cpe_prompts()
    first = WinCLIPModule(
        FrozenCLIP("anomaly-vlm-tiny", None, image_size=128), prompts, text_cache_dir=tmp_path
    )
    first.setup_category("disc", None)
    assert first.backbone.text_forward_passes == 1
    second = WinCLIPModule(
        FrozenCLIP("anomaly-vlm-tiny", None, image_size=128), prompts, text_cache_dir=tmp_path
    )
    second.setup_category("disc", None)
    assert second.backbone.text_forward_passes == 0
    torch.testing.assert_close(second.model.text_classifier, first.model.text_classifier)
    second.setup_category("nut", None)  # another class name is new text
    assert second.backbone.text_forward_passes == 1


def test_reference_memory_is_built_once_per_category(winclip_backbone, monkeypatch):
    module = WinCLIPModule(winclip_backbone, cpe_prompts(), shots=2)
    module.setup_category("disc", torch.rand(2, 3, 128, 128))
    assert module.model.reference_patches.shape == (2 * 64, winclip_backbone.width)
    assert [memory.shape[0] for memory in module.model.reference_windows] == [2 * 49, 2 * 36]
    calls = []
    monkeypatch.setattr(module.model, "set_reference_features", lambda *a, **k: calls.append(1))
    for _ in range(2):
        prediction = module.predict_images(torch.rand(2, 3, 128, 128))
        scores, maps = prediction.image_score, prediction.anomaly_map
    assert calls == [] and scores.shape == (2,) and maps.shape == (2, 128, 128)


def test_few_shot_needs_references_and_text(winclip_backbone):
    module = WinCLIPModule(winclip_backbone, cpe_prompts(), shots=2)
    with pytest.raises(ValueError, match="no reference images"):
        module.setup_category("disc", None)
    with pytest.raises(RuntimeError, match="set_text_classifier"):
        WinCLIPModel(winclip_backbone)(torch.rand(1, 3, 128, 128))
    with pytest.raises(ValueError, match="method.scales"):
        WinCLIPModel(winclip_backbone, scales=())


@pytest.mark.slow
def test_real_vit_b16_plus_240_zero_and_few_shot_batch():
    backbone = FrozenCLIP("ViT-B-16-plus-240", None, image_size=240, seed=0)
    assert backbone.grid_size == (15, 15)
    model = WinCLIPModel(backbone)
    assert [model.window_index(i).shape[0] for i in range(2)] == [196, 169]
    model.set_text_classifier(F.normalize(torch.randn(2, backbone.embed_dim), dim=-1))
    with torch.no_grad():
        images = torch.rand(2, 3, 240, 240)
        prediction = model(images)
        zero_scores, zero_maps = prediction.image_score, prediction.anomaly_map
        model.set_reference_images(torch.rand(1, 3, 240, 240))
        prediction = model(images)
        few_scores, few_maps = prediction.image_score, prediction.anomaly_map
    assert zero_maps.shape == few_maps.shape == (2, 240, 240)
    assert torch.isfinite(few_maps).all() and ((few_scores > 0) & (few_scores < 1)).all()
    assert not torch.allclose(zero_scores, few_scores)
