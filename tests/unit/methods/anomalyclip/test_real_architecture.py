"""AnomalyCLIP on the real architecture (ViT-L-14-336 QuickGELU at 518 px, random weights)."""

from __future__ import annotations

import time

import pytest
import torch

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.anomalyclip import AnomalyCLIPModule
from anomaly_vlm.prompts import LearnablePromptSet


@pytest.mark.slow
def test_vit_l14_336_at_518_trains_one_step_and_scores_one_batch() -> None:
    backbone = FrozenCLIP(
        "ViT-L-14-336-quickgelu", None, image_size=518, quick_gelu=True, pos_embed_interpolation="bilinear"
    )
    assert backbone.grid_size == (37, 37) and backbone.num_layers == 24
    torch.manual_seed(111)
    module = AnomalyCLIPModule(backbone, LearnablePromptSet("anomalyclip_learned"))  # published defaults
    model = module.model
    assert model.layers == [24] and model.dpam_start == 6
    shapes = {
        name: tuple(parameter.shape)
        for name, parameter in module.named_parameters()
        if parameter.requires_grad
    }
    assert shapes == {
        "model.prompt_encoder.context_normal": (12, 768),
        "model.prompt_encoder.context_anomalous": (12, 768),
        "model.prompt_encoder.deep_prompts": (8, 4, 768),  # text blocks 2..9
    }

    images = torch.rand(2, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 518, 518)
    masks[1, 100:200, 150:300] = 1.0
    batch = AnomalyBatch(
        image=images,
        label=torch.tensor([0, 1]),
        category=["bottle", "bottle"],
        path=["a.png", "b.png"],
        defect_type=["good", "broken"],
        mask=masks,
    )
    features = model.encode_image(images[:1])
    assert features.global_embedding.shape == (1, 768)
    assert features.patch_embeddings[24].shape == (1, 37 * 37, 768)

    optimizer = module.configure_optimizers()
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["betas"] == (0.5, 0.999)
    before = {name: tensor.clone() for name, tensor in module.trainable_state_dict().items()}
    started = time.perf_counter()
    module.log_dict = lambda *args, **kwargs: None  # no Trainer attached
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    step_seconds = time.perf_counter() - started
    assert torch.isfinite(loss)
    for name, tensor in module.trainable_state_dict().items():
        assert not torch.equal(tensor, before[name]), name

    module.setup_category("bottle", None)
    started = time.perf_counter()
    out = module.test_step(batch, 0).prediction
    test_seconds = time.perf_counter() - started
    assert out.image_score.shape == (2,) and out.anomaly_map.shape == (2, 518, 518)
    assert torch.isfinite(out.anomaly_map).all() and bool(
        ((out.image_score >= 0) & (out.image_score <= 1)).all()
    )
    print(
        f"ViT-L-14-336 @518, batch 2, CPU: train step {step_seconds:.1f} s, test batch {test_seconds:.1f} s"
    )
