"""APRIL-GAN's published architecture (ViT-L-14-336 at 518 px, random weights): one training step and
one few-shot test batch on the 37x37 grid with the interpolated positional embedding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.aprillab import AprilGANModule
from anomaly_vlm.prompts import PromptSet

pytestmark = pytest.mark.slow


def test_vit_l14_336_at_518_trains_one_step_and_tests_one_batch():
    native = FrozenCLIP("ViT-L-14-336", None, quick_gelu=False, seed=5)
    native_pos = native.visual.positional_embedding.detach().clone()
    del native
    backbone = FrozenCLIP("ViT-L-14-336", None, image_size=518, quick_gelu=False, seed=5)
    assert backbone.grid_size == (37, 37) and backbone.num_layers == 24 and backbone.width == 1024
    pos = backbone.visual.positional_embedding.detach()
    assert native_pos.shape == (1 + 24 * 24, 1024) and pos.shape == (1 + 37 * 37, 1024)
    torch.testing.assert_close(pos[0], native_pos[0])
    grid = native_pos[1:].reshape(1, 24, 24, 1024).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(37, 37), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pos[1:], expected.permute(0, 2, 3, 1).reshape(37 * 37, 1024))

    torch.manual_seed(0)
    module = AprilGANModule(backbone, PromptSet("t", ["flawless {}"], ["damaged {}"], ["a photo of a {}."]))
    assert module.stages == (6, 12, 18, 24)
    assert [tuple(layer.weight.shape) for layer in module.model.projections] == [(768, 1024)] * 4

    mask = torch.zeros(1, 518, 518)
    mask[:, 200:260, 300:380] = 1
    batch = AnomalyBatch(
        image=torch.rand(1, 3, 518, 518),
        label=torch.tensor([1]),
        category=["bottle"],
        path=["x.png"],
        defect_type=["broken"],
        mask=mask,
    )
    optimizer = module.configure_optimizers()
    before = module.model.projections[0].weight.detach().clone()
    loss = module.segmentation_loss(batch)[0]
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, module.model.projections[0].weight)

    module.setup_category("bottle", torch.rand(1, 3, 518, 518))
    assert [tuple(bank.shape) for bank in module.model.memory] == [(37 * 37, 1024)] * 4
    with torch.no_grad():
        prediction = module.predict_images(batch.image)
        scores, maps = prediction.image_score, prediction.anomaly_map
    assert scores.shape == (1,) and maps.shape == (1, 518, 518)
    assert torch.isfinite(maps).all() and float(maps.min()) >= -1e-4
