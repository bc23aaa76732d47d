"""FAPrompt's Lightning wrapper: zero-shot only, checkpoints of learned parameters only, and it learns."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pytest
import torch

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.data import AnomalyDataModule
from anomaly_vlm.data.datasets import SyntheticAD
from anomaly_vlm.methods.faprompt import FAPromptModule
from anomaly_vlm.metrics.functional import image_metrics, pixel_metrics
from anomaly_vlm.prompts import LearnablePromptSet
from anomaly_vlm.prompts.faprompt import FAPromptSet

PROMPTS = FAPromptSet("faprompt", deep_prompt_depth=4)


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


def _module(backbone: FrozenCLIP, **kwargs) -> FAPromptModule:
    torch.manual_seed(111)
    return FAPromptModule(backbone, kwargs.pop("prompts", PROMPTS), **{"blur_sigma": 2.5, **kwargs})


def test_few_shot_and_other_prompt_sets_are_rejected(backbone: FrozenCLIP) -> None:
    with pytest.raises(ValueError, match=r"method 'faprompt' is zero-shot only; shots=1 is not supported"):
        _module(backbone, shots=1)
    with pytest.raises(ValueError, match="prompts=faprompt"):
        _module(backbone, prompts=LearnablePromptSet("anomalyclip_learned", deep_prompt_depth=4))


def test_checkpoint_holds_only_learned_parameters_and_refuses_other_shapes(
    backbone: FrozenCLIP, tmp_path: Path
) -> None:
    module = _module(backbone)
    width, embed, k = backbone.text_width, backbone.embed_dim, 10
    hidden = embed * k // 16
    expected = (
        5 * width  # shared normal context
        + 10 * 2 * width  # abnormality tokens of the 10 compound prompts
        + 3 * 4 * width  # deep prompts of text blocks 2..4
        + (k * embed * hidden + hidden)  # prior network, first layer
        + (hidden * width + width)  # prior network, second layer
    )
    assert module.parameter_counts()["trainable"] == expected
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert all(name.startswith("model.") and "backbone" not in name for name in checkpoint["state_dict"])
    assert checkpoint["anomaly_vlm"]["method"] == "faprompt"
    path = tmp_path / "trained.ckpt"
    torch.save(checkpoint, path)
    other = _module(backbone)
    with torch.no_grad():
        for parameter in other.parameters():
            if parameter.requires_grad:
                parameter.zero_()
    other.load_trainable_checkpoint(str(path))
    for name, tensor in module.trainable_state_dict().items():
        torch.testing.assert_close(other.trainable_state_dict()[name], tensor)
    with pytest.raises(ValueError, match="prior_tokens: checkpoint has 10, this run has 4"):
        _module(backbone, prior_tokens=4).load_trainable_checkpoint(str(path))


class _LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[list[float]] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.losses.append([])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses[-1].append(float(outputs["loss"]))


def _held_out_metrics(module: FAPromptModule, datamodule: AnomalyDataModule) -> tuple[float, float]:
    maps, masks, scores, labels = [], [], [], []
    module.eval()
    for category in datamodule.categories:
        module.setup_category(category, None)
        for batch in datamodule.category_test_dataloader(category):
            prediction = module.predict_images(batch.image)
            maps.append(prediction.anomaly_map)
            masks.append(batch.mask)
            scores.append(prediction.image_score)
            labels.append(batch.label)
    pixel = pixel_metrics(torch.cat(maps).numpy(), torch.cat(masks).numpy())["pixel_auroc"]
    image = image_metrics(torch.cat(scores).numpy(), torch.cat(labels).numpy())["image_auroc"]
    return pixel, image


def test_training_lowers_the_loss_and_raises_held_out_pixel_auroc(
    backbone: FrozenCLIP, tmp_path: Path
) -> None:
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
        L.seed_everything(111, verbose=False)
        module = _module(backbone)
        untrained_pixel, untrained_image = _held_out_metrics(module, test_data)
        recorder = _LossRecorder()
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=8,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[recorder],
        )
        started = time.perf_counter()
        trainer.fit(module, datamodule=train_data)
        seconds_per_step = (time.perf_counter() - started) / sum(map(len, recorder.losses))
        trained_pixel, trained_image = _held_out_metrics(module, test_data)
    finally:
        torch.set_num_threads(threads)

    first, last = (sum(epoch) / len(epoch) for epoch in (recorder.losses[0], recorder.losses[-1]))
    print(
        f"loss {first:.3f} -> {last:.3f}; held-out pixel AUROC {untrained_pixel:.3f} -> {trained_pixel:.3f}, "
        f"image AUROC {untrained_image:.3f} -> {trained_image:.3f}; {seconds_per_step * 1e3:.0f} ms/step"
    )
    assert last < 0.9 * first
    assert trained_pixel > untrained_pixel + 0.1  # measured 0.445 -> 0.658
