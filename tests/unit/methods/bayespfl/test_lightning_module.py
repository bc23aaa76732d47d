"""Bayes-PFL's Lightning wrapper: the official optimiser groups and schedule, checkpoints, and it learns."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pytest
import torch

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.data import AnomalyDataModule
from anomaly_vlm.data.datasets import SyntheticAD
from anomaly_vlm.methods.bayespfl import BayesPFLModule
from anomaly_vlm.methods.bayespfl.lightning_module import cosine_with_warmup
from anomaly_vlm.metrics.functional import pixel_metrics
from anomaly_vlm.prompts import PromptSet

PROMPTS = PromptSet("two_prompt", ["{}"], ["damaged {}"], ["{}"])


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


def _module(backbone: FrozenCLIP, **kwargs) -> BayesPFLModule:
    torch.manual_seed(333)
    options = {"sample_num": 2, "blur_sigma": 2.0, "topk": 100, **kwargs}
    return BayesPFLModule(backbone, PROMPTS, **options)


def test_few_shot_is_rejected(backbone: FrozenCLIP) -> None:
    with pytest.raises(ValueError, match=r"method 'bayespfl' is zero-shot only; shots=1 is not supported"):
        _module(backbone, shots=1)


def test_official_parameter_groups_and_schedule(backbone: FrozenCLIP) -> None:
    module = _module(backbone)
    groups = {name: {id(p) for p in parameters} for name, parameters in module.parameter_groups().items()}
    named = dict(module.model.named_parameters())
    assert groups["prompt"] == {
        id(named[n]) for n in ("prompt_context", "prompt_state_normal", "prompt_state_abnormal")
    }
    assert groups["temperature"] == {id(named["temperature_pixel"]), id(named["temperature_image"])}
    flow = {n for n in named if n.startswith(("context_flow.", "normal_flow.", "abnormal_flow."))}
    assert groups["flow"] == {id(named[n]) for n in flow} and "normal_flow.state" in flow
    assert id(named["state_encoder.weight_mean.module.0.weight"]) in groups["linear"]
    assert id(named["rca.q_proj_pre.weight"]) in groups["linear"]
    # As get_cosine_schedule_with_warmup: the first step at 0, peak after the warm-up, 0 at the end.
    assert cosine_with_warmup(0, 204, 2040) == 0.0
    assert cosine_with_warmup(102, 204, 2040) == pytest.approx(0.5)
    assert cosine_with_warmup(204, 204, 2040) == pytest.approx(1.0)
    assert cosine_with_warmup(1122, 204, 2040) == pytest.approx(0.5)
    assert cosine_with_warmup(2040, 204, 2040) == pytest.approx(0.0, abs=1e-12)


def test_checkpoint_holds_only_learned_parameters(backbone: FrozenCLIP, tmp_path: Path) -> None:
    module = _module(backbone)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert all(name.startswith("model.") and "backbone" not in name for name in checkpoint["state_dict"])
    meta = checkpoint["anomaly_vlm"]
    assert meta["method"] == "bayespfl" and meta["layers"] == [2, 4, 6, 8] and meta["num_flows"] == 10
    torch.save(checkpoint, tmp_path / "trained.ckpt")
    with pytest.raises(ValueError, match="num_flows: checkpoint has 10, this run has 4"):
        _module(backbone, num_flows=4).load_trainable_checkpoint(str(tmp_path / "trained.ckpt"))


def _held_out_pixel_auroc(module: BayesPFLModule, datamodule: AnomalyDataModule) -> float:
    maps, masks = [], []
    module.eval()
    for category in datamodule.categories:
        module.setup_category(category, None)
        for batch in datamodule.category_test_dataloader(category):
            maps.append(module.predict_images(batch.image).anomaly_map)
            masks.append(batch.mask)
    return pixel_metrics(torch.cat(maps).numpy(), torch.cat(masks).numpy())["pixel_auroc"]


def test_training_raises_held_out_pixel_auroc(backbone: FrozenCLIP, tmp_path: Path) -> None:
    """Train on one generated set, evaluate on images of another generator seed (never seen)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend on a shared CPU
    try:
        counts = {
            "num_train": 1,
            "num_test_good": 3,
            "num_test_per_defect": 3,
            "categories": ["brick", "disc"],
        }
        train_source = SyntheticAD(tmp_path / "train", generator_seed=0, **counts)
        held_out = SyntheticAD(tmp_path / "held_out", generator_seed=1, **counts)
        train_data = AnomalyDataModule(
            held_out, 128, batch_size=32, train_source=train_source, train_batch_size=8
        )
        test_data = AnomalyDataModule(held_out, 128, batch_size=32)
        L.seed_everything(333, verbose=False)
        # Higher learning rates than the published 1e-4 / 1e-3 make a few CPU steps enough.
        module = _module(backbone, lr_linear=3e-3, lr_prompt=3e-3, lr_flow=3e-3, warmup_fraction=0.0)
        untrained = _held_out_pixel_auroc(module, test_data)
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=EPOCHS,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        started = time.perf_counter()
        trainer.fit(module, datamodule=train_data)
        seconds = time.perf_counter() - started
        trained = _held_out_pixel_auroc(module, test_data)
    finally:
        torch.set_num_threads(threads)
    print(f"held-out pixel AUROC {untrained:.3f} -> {trained:.3f}; training {seconds:.1f} s")
    assert trained > untrained + MARGIN


EPOCHS = 4
MARGIN = 0.15  # measured: 0.423 -> 0.689


@pytest.mark.parametrize("resample", [False, True])
def test_saved_category_state_scores_as_the_run(backbone: FrozenCLIP, resample: bool) -> None:
    """What a saved detector keeps (the category's sentence, top-k and samples) scores the images as the run
    did; with per-image samples, as long as the images come in the run's order (its stream restarts)."""
    from anomaly_vlm.deploy.state import category_state, load_category_state

    images = torch.rand(3, 3, 128, 128)
    module = _module(backbone, resample_per_image=resample)
    module.setup_category("disc", None)
    expected = module.predict_images(images)
    fresh = _module(backbone, resample_per_image=resample)
    load_category_state(fresh, category_state(module))
    again = fresh.predict_images(images)
    torch.testing.assert_close(again.image_score, expected.image_score, rtol=0, atol=1e-6)
    torch.testing.assert_close(again.anomaly_map, expected.anomaly_map, rtol=0, atol=1e-6)
