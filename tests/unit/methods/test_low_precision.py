"""The methods with learned layers inside or beside the backbone, and AnomalyDINO, in mixed and pure bf16:
they score, and one training step reaches their float32 learned parameters through the bf16 backbone."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from composed import compose_config

from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.tasks.instantiate import build

#: method -> the backbone config of its offline experiment (AnomalyDINO: the tiny DINOv2).
METHODS = {"aaclip": "tiny", "bayespfl": "tiny", "faprompt": "tiny", "anomalydino": "dinov2_tiny"}
#: Half the backbones' own sizes (a whole number of patches): precision does not depend on the size, and a
#: quarter of the tokens keeps the bf16 passes on the CPU short.
IMAGE_SIZE = {"tiny": 64, "dinov2_tiny": 140}
MODES = ("amp-bf16", "bf16")


def _method(name: str, mode: str):
    backbone = METHODS[name]
    overrides = [f"experiment={name}_synthetic", f"backbone={backbone}", f"backbone.precision={mode}"]
    overrides.append(f"backbone.image_size={IMAGE_SIZE[backbone]}")
    cfg = compose_config("train", [*overrides, "seed=0"])
    torch.manual_seed(0)
    shots = int(cfg.get("shots") or 0)
    method = build(
        cfg.method, backbone=build(cfg.backbone), prompts=build(cfg.prompts), shots=shots, text_cache_dir=None
    )
    method.log = method.log_dict = lambda *args, **kwargs: None  # steps outside a trainer log nothing
    return method, shots


def _batch(size: int) -> AnomalyBatch:
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, size, size, generator=generator)
    masks = torch.zeros(2, size, size)
    masks[1, size // 4 : size // 2, size // 4 : size // 2] = 1.0
    return AnomalyBatch(
        image=images,
        label=torch.tensor([0, 1]),
        category=["disc", "disc"],
        path=["a.png", "b.png"],
        defect_type=["good", "dent"],
        mask=masks,
    )


def _learned(method) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in method.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_scores_in_low_precision(name: str, mode: str) -> None:
    method, shots = _method(name, mode)
    assert method.backbone.precision == mode
    size = method.backbone.image_size
    images = _batch(size).image
    method.eval()
    with torch.no_grad():
        method.setup_category("disc", images[:shots] if shots else None)
        prediction = method.postprocess_set(method.predict_images(images))
    assert prediction.anomaly_map.shape == (2, size, size)
    assert torch.isfinite(prediction.anomaly_map).all() and torch.isfinite(prediction.image_score).all()


class _Gradients(L.Callback):
    """Records, after each backward pass, the learned parameters that got a gradient."""

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def on_after_backward(self, trainer, module) -> None:
        self.seen.append(
            {
                name: p.grad.clone()
                for name, p in module.named_parameters()
                if p.requires_grad and p.grad is not None
            }
        )


#: method -> optimiser steps: AA-CLIP's first epoch trains its text side, the second its image side.
STEPS = {"aaclip": 2, "bayespfl": 1, "faprompt": 1}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(STEPS))
def test_a_training_step_reaches_the_float32_learned_parameters(name: str, mode: str) -> None:
    method, _ = _method(name, mode)
    before = _learned(method)
    assert before and all(value.dtype == torch.float32 for value in before.values())
    batch = _batch(method.backbone.image_size)

    class One(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> AnomalyBatch:
            return batch

    gradients = _Gradients()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=STEPS[name],
        max_epochs=STEPS[name] + 1,  # AA-CLIP checks that its text epochs leave image epochs
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[gradients],
    )
    trainer.fit(method, torch.utils.data.DataLoader(One(), batch_size=None))
    assert len(gradients.seen) >= STEPS[name]
    for grads in gradients.seen:
        assert grads, "no learned parameter got a gradient"
        assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
        assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    after = _learned(method)
    assert all(value.dtype == torch.float32 and torch.isfinite(value).all() for value in after.values())
    named = dict(method.named_parameters())
    # AA-CLIP: each stage moved its own side; the others: one step moved something.
    sides = [method.model.text_parameters(), method.model.image_parameters()] if name == "aaclip" else [None]
    for side in sides:
        keys = [key for key in before if side is None or any(named[key] is p for p in side)]
        assert any(not torch.equal(after[key], before[key]) for key in keys)
