"""Bayes-PFL's pure torch model: flows, KL, seeded sampling, the set-level score, export."""

from __future__ import annotations

import pytest
import torch

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.methods.bayespfl.torch_model import (
    BayesPFL,
    class_sentence,
    flow_kl,
    official_topk,
    planar_flow,
)
from anomaly_vlm.methods.contract import NotExportableError, Prediction, export_module


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


def _model(backbone: FrozenCLIP, **kwargs) -> BayesPFL:
    torch.manual_seed(0)
    return BayesPFL(backbone, **{"sample_num": 2, "blur_sigma": 2.0, "topk": 50, **kwargs})


def test_building_the_model_leaves_the_frozen_backbone_alone(backbone: FrozenCLIP) -> None:
    before = {name: value.clone() for name, value in backbone.state_dict().items()}
    _model(backbone)
    assert all(torch.equal(value, backbone.state_dict()[name]) for name, value in before.items())


def test_official_sentences_and_topk() -> None:
    assert (
        class_sentence("metal_nut") == "X metal nut" and class_sentence("pcb3") == "X printed circuit board"
    )
    assert class_sentence("bottle") == "X bottle"
    assert official_topk("screw") == 20 and official_topk("bottle") == 2000 and official_topk("pcb1") == 2000


def test_planar_log_determinant_is_that_of_the_jacobian() -> None:
    torch.manual_seed(1)
    z, u, w, b = (
        torch.randn(1, 5),
        torch.randn(1, 5, 1) * 0.3,
        torch.randn(1, 1, 5) * 0.3,
        torch.randn(1, 1, 1),
    )
    jacobian = torch.autograd.functional.jacobian(lambda x: planar_flow(x.unsqueeze(0), u, w, b)[0][0], z[0])
    exact = torch.log(torch.abs(torch.linalg.det(jacobian)))
    assert planar_flow(z, u, w, b)[1][0] == pytest.approx(float(exact), abs=1e-4)


def test_state_flow_kl_is_broadcast_against_the_batch() -> None:
    """A one-row (image-agnostic) flow: (log q - log p) counted once per image, log det once, over B."""
    torch.manual_seed(2)
    mean, scale, z0, zk = torch.randn(1, 4), torch.rand(1, 4) + 0.5, torch.randn(1, 4), torch.randn(1, 4)
    log_det = torch.tensor([0.7])
    log_q = (-0.5 * (scale.log() + (z0 - mean) ** 2 / scale)).sum()
    log_p = (-0.5 * zk**2).sum()
    expected = (log_q - log_p) - 0.7 / 8
    assert float(flow_kl(mean, scale, z0, zk, log_det, batch=8)) == pytest.approx(float(expected), rel=1e-5)


def test_widths_must_match(backbone: FrozenCLIP, monkeypatch) -> None:
    monkeypatch.setattr(type(backbone), "embed_dim", property(lambda self: 32))
    with pytest.raises(ValueError, match="embedding width 32"):
        BayesPFL(backbone)


def test_samples_follow_the_seed(backbone: FrozenCLIP) -> None:
    images = torch.rand(3, 3, 128, 128)
    model = _model(backbone)
    features = model.frozen_features(images)
    model.set_category("disc")
    first = model.score(features)
    model.set_category("disc")
    again = model.score(features)
    torch.testing.assert_close(first.image_score, again.image_score, rtol=0, atol=0)
    other = _model(backbone, sample_seed=5)
    other.set_category("disc")
    assert not torch.allclose(other.score(features).image_score, first.image_score)


def test_fixed_samples_score_an_image_alone_as_in_a_batch_and_export(backbone: FrozenCLIP) -> None:
    images = torch.rand(3, 3, 128, 128)
    model = _model(backbone, resample_per_image=False)
    model.set_category("disc")
    batch = model.score(model.frozen_features(images))
    alone = model.score(model.frozen_features(images[2:]))
    torch.testing.assert_close(alone.image_score, batch.image_score[2:], atol=1e-5, rtol=1e-4)
    model.freeze_set_statistics(model.set_statistics(batch))
    graph = export_module(model)
    score, heatmap = graph(backbone.normalize(images))
    torch.testing.assert_close(score, model.postprocess_set(batch).image_score, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(heatmap, batch.anomaly_map, atol=1e-5, rtol=1e-4)
    resampling = _model(backbone)
    resampling.set_category("disc")
    resampling.freeze_set_statistics(model.frozen_set_statistics)
    with pytest.raises(NotExportableError, match="resample_per_image"):
        export_module(resampling)


def test_set_level_score_is_the_official_min_max_fusion(backbone: FrozenCLIP) -> None:
    model = _model(backbone)
    text, topk = torch.tensor([0.2, 0.6, 0.4]), torch.tensor([3.0, 1.0, 2.0])
    prediction = Prediction(text, torch.zeros(3, 4, 4), {"text_score": text, "topk_mean": topk})
    fused = model.postprocess_set(prediction).image_score
    expected = 0.5 * (text - 0.2) / (0.4 + 1e-8) + 0.5 * (topk - 1.0) / (2.0 + 1e-8)
    torch.testing.assert_close(fused, expected)
    model.freeze_set_statistics(model.set_statistics(prediction))
    single = Prediction(text[:1], torch.zeros(1, 4, 4), {"text_score": text[:1], "topk_mean": topk[:1]})
    torch.testing.assert_close(model.postprocess_set(single).image_score, expected[:1])


def test_loss_reaches_every_stage_one_parameter(backbone: FrozenCLIP) -> None:
    model = _model(backbone)
    images, masks = torch.rand(2, 3, 128, 128), torch.zeros(2, 128, 128)
    masks[1, 40:70, 50:90] = 1
    ids = backbone.tokenize([class_sentence("brick"), class_sentence("disc")])
    losses = model.loss(model.frozen_features(images), masks, torch.tensor([0, 1]), ids, prompt_index=2)
    losses["loss"].backward()
    missing = sorted(name for name, p in model.named_parameters() if p.requires_grad and p.grad is None)
    # Stage 2's image branch only: stage 2 trains it.
    assert all(name.startswith(("fuse.", "image_mapping.")) for name in missing), missing
    assert all(torch.isfinite(value) for value in losses.values())


def test_stage_two_loss_reaches_only_the_stage_two_parameters(backbone: FrozenCLIP) -> None:
    """Official optimizer_stage2: class_mapping, image_mapping and fuse (names holding them), CE only."""
    model = _model(backbone)
    images = torch.rand(2, 3, 128, 128)
    ids = backbone.tokenize([class_sentence("brick"), class_sentence("disc")])
    losses = model.stage_two_loss(model.frozen_features(images), torch.tensor([0, 1]), ids, prompt_index=1)
    losses["loss"].backward()
    reached = {name for name, p in model.named_parameters() if p.grad is not None}
    official_rule = {
        name
        for name, p in model.named_parameters()
        if p.requires_grad and ("class_mapping" in name or "image_mapping" in name or "fuse" in name)
    }
    assert reached == official_rule == {name for name, _ in model.stage_two_parameters()}
    assert {name.split(".")[0] for name in reached} == {"class_mapping", "image_mapping", "fuse"}
    assert torch.isfinite(losses["loss"]) and set(losses) == {"loss", "classification_loss"}


def test_onnx_graph_scores_any_batch_as_torch(tmp_path) -> None:
    """Fixed samples: one static graph, traced at batch 2, scores a batch of 3 as the torch model does."""
    import warnings

    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    # 64 px (16 patches, a 64x64 map, still more pixels than the top-k): the graph is the same as at
    # 128 px and tracing, exporting and running it take under half the time.
    backbone = FrozenCLIP("anomaly-vlm-tiny", None, image_size=64, seed=0)
    images = torch.rand(4, 3, 64, 64)
    model = _model(backbone, resample_per_image=False)
    model.set_category("disc")
    model.freeze_set_statistics(model.set_statistics(model.score(model.frozen_features(images))))
    graph = export_module(model)
    path = tmp_path / "bayespfl.onnx"
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, (backbone.normalize(images[:2]),), str(path), dynamo=False, opset_version=17,
                input_names=["images"], output_names=["score", "map"],
                dynamic_axes={"images": {0: "b"}, "score": {0: "b"}, "map": {0: "b"}},
            )  # fmt: skip
            score, heatmap = graph(backbone.normalize(images[:3]))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    session = ort.InferenceSession(str(path))
    their_score, their_map = session.run(None, {"images": backbone.normalize(images[:3]).numpy()})
    assert abs(their_score - score.numpy()).max() < 1e-4 and abs(their_map - heatmap.numpy()).max() < 1e-4
