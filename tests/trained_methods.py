"""What the tests of the trained methods share (``from trained_methods import held_out_learning_run``).

Each trained method's learning test trains it on one synthetic set and evaluates it, before and after, on
the test images of another generator seed (never seen), on the tiny random CLIP in seconds; the test states
the method, its settings and the margins it asserts. Here: the data, the Lightning trainer, the loss
recording, the held-out metrics, and the checkpoint round trip of the learned parameters.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from anomaly_vlm.data import AnomalyDataModule
from anomaly_vlm.data.datasets import SyntheticAD
from anomaly_vlm.metrics.functional import image_metrics, pixel_metrics

#: The synthetic sets of the check: two categories, one training image, three test images of each kind.
COUNTS = {"num_train": 1, "num_test_good": 3, "num_test_per_defect": 3, "categories": ["brick", "disc"]}
IMAGE_SIZE = 128


class LossRecorder(L.Callback):
    """The training loss of every step, per epoch (steps whose output has no ``"loss"`` are skipped)."""

    def __init__(self) -> None:
        self.losses: list[list[float]] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.losses.append([])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if isinstance(outputs, Mapping) and "loss" in outputs:
            self.losses[-1].append(float(outputs["loss"]))


def cpu_trainer(max_epochs: int, callbacks: Iterable[L.Callback] = ()) -> L.Trainer:
    """A quiet CPU trainer: no logger, checkpoints, progress bar or model summary."""
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def held_out_metrics(
    module: Any, datamodule: AnomalyDataModule, postprocess: bool = False
) -> tuple[float, float]:
    """``(pixel AUROC, image AUROC)`` of ``module`` (in eval mode) over the test images of every category.

    ``postprocess``: apply the method's set-level step to each batch's prediction, as the scoring path does
    for a method that declares one.
    """
    maps, masks, scores, labels = [], [], [], []
    module.eval()
    for category in datamodule.categories:
        module.setup_category(category, None)
        for batch in datamodule.category_test_dataloader(category):
            prediction = module.predict_images(batch.image)
            if postprocess:
                prediction = module.postprocess_set(prediction)
            maps.append(prediction.anomaly_map)
            masks.append(batch.mask)
            scores.append(prediction.image_score)
            labels.append(batch.label)
    pixel = pixel_metrics(torch.cat(maps).numpy(), torch.cat(masks).numpy())["pixel_auroc"]
    image = image_metrics(torch.cat(scores).numpy(), torch.cat(labels).numpy())["image_auroc"]
    return pixel, image


@dataclasses.dataclass
class LearningRun:
    """The held-out metrics before and after training, the losses per epoch and the training time."""

    untrained_pixel: float
    untrained_image: float
    trained_pixel: float
    trained_image: float
    losses: list[list[float]]
    seconds: float

    @property
    def first_loss(self) -> float:
        """Mean loss of the first epoch."""
        return sum(self.losses[0]) / len(self.losses[0])

    @property
    def last_loss(self) -> float:
        """Mean loss of the last epoch."""
        return sum(self.losses[-1]) / len(self.losses[-1])

    def summary(self) -> str:
        steps = sum(map(len, self.losses))
        loss = f"loss {self.first_loss:.3f} -> {self.last_loss:.3f}; " if steps else ""
        timing = f"{self.seconds / steps * 1e3:.0f} ms/step" if steps else f"training {self.seconds:.1f} s"
        return (
            f"{loss}held-out pixel AUROC {self.untrained_pixel:.3f} -> {self.trained_pixel:.3f}, "
            f"image AUROC {self.untrained_image:.3f} -> {self.trained_image:.3f}; {timing}"
        )


def held_out_learning_run(
    build_module: Callable[[], Any],
    root: Path,
    *,
    epochs: int,
    seed: int,
    train_batch_size: int | None = None,
    postprocess: bool = False,
    image_size: int = IMAGE_SIZE,
) -> LearningRun:
    """Train the module ``build_module()`` gives on one generated set for ``epochs`` epochs and evaluate it
    before and after on the test images of another generator seed.

    Args:
        build_module: builds the method (called after the data exist and ``seed`` is set).
        root: the folder of the two synthetic sets: generated there on first use, read as they are by
            later runs given the same folder (the sets depend on nothing a run sets).
        seed: ``L.seed_everything`` before the module is built.
        train_batch_size: the training loader's batch size (None: the datamodule's default).
        postprocess: see :func:`held_out_metrics`.
        image_size: the side the images are resized to (the backbone's input size).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend on a shared CPU
    try:
        train_source = SyntheticAD(root / "train", generator_seed=0, **COUNTS)
        held_out = SyntheticAD(root / "held_out", generator_seed=1, **COUNTS)
        batch = {} if train_batch_size is None else {"train_batch_size": train_batch_size}
        train_data = AnomalyDataModule(
            held_out, image_size, batch_size=32, train_source=train_source, **batch
        )
        test_data = AnomalyDataModule(held_out, image_size, batch_size=32)
        L.seed_everything(seed, verbose=False)
        module = build_module()
        untrained_pixel, untrained_image = held_out_metrics(module, test_data, postprocess)
        recorder = LossRecorder()
        started = time.perf_counter()
        cpu_trainer(epochs, [recorder]).fit(module, datamodule=train_data)
        seconds = time.perf_counter() - started
        trained_pixel, trained_image = held_out_metrics(module, test_data, postprocess)
    finally:
        torch.set_num_threads(threads)
    return LearningRun(
        untrained_pixel, untrained_image, trained_pixel, trained_image, recorder.losses, seconds
    )


def saved_checkpoint(module: Any, path: Path) -> dict:
    """``module``'s checkpoint as Lightning saves it, written to ``path``; asserts that it holds learned
    parameters and nothing of the frozen backbone."""
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"]
    assert all(name.startswith("model.") and "backbone" not in name for name in checkpoint["state_dict"])
    torch.save(checkpoint, path)
    return checkpoint


def assert_loads_back(module: Any, other: Any, path: Path) -> None:
    """``other``, its learned parameters zeroed first, loads the checkpoint ``path`` of ``module`` and then
    holds ``module``'s learned parameters."""
    with torch.no_grad():
        for parameter in other.parameters():
            if parameter.requires_grad:
                parameter.zero_()
    other.load_trainable_checkpoint(str(path))
    for name, tensor in module.trainable_state_dict().items():
        torch.testing.assert_close(other.trainable_state_dict()[name], tensor)
