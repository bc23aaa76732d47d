"""AnomalyCLIP's Lightning wrapper: zero-shot only, checkpoints of prompts only, and it learns."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pytest
import torch

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.data import AnomalyDataModule
from anomaly_vlm.data.datasets import SyntheticAD
from anomaly_vlm.methods.anomalyclip import AnomalyCLIPModule
from anomaly_vlm.metrics.functional import image_metrics, pixel_metrics
from anomaly_vlm.prompts import LearnablePromptSet, PromptSet

PROMPTS = LearnablePromptSet("anomalyclip_learned", deep_prompt_depth=4)


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


def _module(backbone: FrozenCLIP, **kwargs) -> AnomalyCLIPModule:
    torch.manual_seed(111)
    return AnomalyCLIPModule(backbone, kwargs.pop("prompts", PROMPTS), **{"layers": [8], **kwargs})


def test_few_shot_is_rejected_clearly(backbone: FrozenCLIP) -> None:
    with pytest.raises(
        ValueError, match=r"method 'anomalyclip' is zero-shot only; shots=2 is not supported \(use shots=0\)"
    ):
        _module(backbone, shots=2)


def test_fixed_prompt_sets_are_rejected(backbone: FrozenCLIP) -> None:
    fixed = PromptSet("two_prompt", ["flawless {}"], ["damaged {}"], ["a photo of a {}."])
    with pytest.raises(ValueError, match="prompts=anomalyclip_learned"):
        _module(backbone, prompts=fixed)


def test_checkpoint_holds_only_prompts_and_refuses_other_shapes(backbone: FrozenCLIP, tmp_path: Path) -> None:
    module = _module(backbone)
    assert module.parameter_counts()["trainable"] == (12 + 12 + 3 * 4) * 64
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {
        "model.prompt_encoder.context_normal",
        "model.prompt_encoder.context_anomalous",
        "model.prompt_encoder.deep_prompts",
    }
    meta = checkpoint["anomaly_vlm"]
    assert meta["method"] == "anomalyclip" and meta["layers"] == [8] and meta["dpam_start"] == 3
    assert (meta["context_length"], meta["deep_prompt_length"], meta["deep_prompt_depth"]) == (12, 4, 4)
    path = tmp_path / "trained.ckpt"
    torch.save(checkpoint, path)

    other = _module(backbone)
    with torch.no_grad():
        for parameter in other.model.prompt_encoder.parameters():
            parameter.zero_()
    other.load_trainable_checkpoint(str(path))
    for name, tensor in module.trainable_state_dict().items():
        torch.testing.assert_close(other.trainable_state_dict()[name], tensor)

    shallower = _module(backbone, prompts=LearnablePromptSet("anomalyclip_learned", deep_prompt_depth=3))
    with pytest.raises(ValueError, match="deep_prompt_depth: checkpoint has 4, this run has 3"):
        shallower.load_trainable_checkpoint(str(path))
    with pytest.raises(ValueError, match="layers: checkpoint has"):
        _module(backbone, layers=[7]).load_trainable_checkpoint(str(path))


class _LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[list[float]] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.losses.append([])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses[-1].append(float(outputs["loss"]))


def _held_out_metrics(module: AnomalyCLIPModule, datamodule: AnomalyDataModule) -> tuple[float, float]:
    maps, masks, scores, labels = [], [], [], []
    module.eval()
    for category in datamodule.categories:
        module.setup_category(category, None)
        for batch in datamodule.category_test_dataloader(category):
            prediction = module.predict_images(batch.image)
            batch_scores, batch_maps = prediction.image_score, prediction.anomaly_map
            maps.append(batch_maps)
            masks.append(batch.mask)
            scores.append(batch_scores)
            labels.append(batch.label)
    pixel = pixel_metrics(torch.cat(maps).numpy(), torch.cat(masks).numpy())["pixel_auroc"]
    image = image_metrics(torch.cat(scores).numpy(), torch.cat(labels).numpy())["image_auroc"]
    return pixel, image


def test_training_lowers_the_loss_and_beats_untrained_prompts_on_held_out_images(
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
        train_data = AnomalyDataModule(held_out, 128, batch_size=32, train_source=train_source)
        test_data = AnomalyDataModule(held_out, 128, batch_size=32)
        L.seed_everything(111, verbose=False)
        # sigma 1 at 128 px is about the official sigma 4 at 518 px
        module = _module(backbone, blur_sigma=1.0)
        untrained_pixel, untrained_image = _held_out_metrics(module, test_data)

        recorder = _LossRecorder()
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=20,
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
    assert trained_pixel > untrained_pixel + 0.08
