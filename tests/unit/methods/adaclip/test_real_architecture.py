"""AdaCLIP on the real architecture (ViT-L-14-336, plain GELU, 518 px, random weights)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.adaclip import AdaCLIPModule
from anomaly_vlm.prompts import PromptSet

CONF = Path(__file__).resolve().parents[4] / "conf"


@pytest.mark.slow
def test_vit_l14_336_at_518_trains_one_step_and_scores_one_image() -> None:
    backbone = FrozenCLIP("ViT-L-14-336", None, image_size=518, pos_embed_interpolation="bicubic")
    assert backbone.grid_size == (37, 37) and backbone.num_layers == 24
    prompts = OmegaConf.to_container(OmegaConf.load(CONF / "prompts" / "adaclip.yaml"))
    prompts.pop("_target_")
    method = OmegaConf.to_container(OmegaConf.load(CONF / "method" / "adaclip.yaml"))["method"]
    method.pop("_target_")
    torch.manual_seed(111)
    module = AdaCLIPModule(backbone, PromptSet(**prompts), **method)  # published defaults
    model = module.model
    assert model.layers == [6, 12, 18, 24]
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters() if p.requires_grad}
    assert shapes["model.visual_static"] == (4, 5, 1024) and shapes["model.text_static"] == (4, 5, 768)
    assert shapes["model.patch_projections.0.weight"] == (768, 1024)
    assert shapes["model.visual_generator.4.weight"] == (1024, 768)

    images = torch.rand(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(1, 518, 518)
    masks[0, 100:200, 150:300] = 1.0
    batch = AnomalyBatch(
        image=images,
        label=torch.tensor([1]),
        category=["bottle"],
        path=["b.png"],
        defect_type=["broken"],
        mask=masks,
    )
    optimizer = module.configure_optimizers()
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["betas"] == (0.5, 0.999)
    before = {name: tensor.clone() for name, tensor in module.trainable_state_dict().items()}
    module.log_dict = lambda *args, **kwargs: None  # no Trainer attached
    started = time.perf_counter()
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    step_seconds = time.perf_counter() - started
    assert torch.isfinite(loss)
    changed = [
        name
        for name, tensor in module.trainable_state_dict().items()
        if not torch.equal(tensor, before[name])
    ]
    assert len(changed) == len(before)

    module.setup_category("bottle", None)
    started = time.perf_counter()
    out = module.test_step(batch, 0).prediction
    test_seconds = time.perf_counter() - started
    assert out.anomaly_map.shape == (1, 518, 518) and torch.isfinite(out.anomaly_map).all()
    assert 0 <= float(out.image_score[0]) <= 1
    print(
        f"ViT-L-14-336 @518, batch 1, CPU: train step {step_seconds:.1f} s, test image {test_seconds:.1f} s"
    )
