"""``last.ckpt`` carries what decides the rest of training beyond the parameters: the random generator
states (torch, numpy, Python) and an epoch-interval learning-rate schedule."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from anomaly_vlm.callbacks.random_state import capture_random_state, restore_random_state
from anomaly_vlm.tasks import resume

EPOCHS = 4
KILL_AT = (2, 1)  # (epoch, batch): after last.ckpt of epoch 1


class Killed(RuntimeError):
    pass


class Noisy(L.LightningModule):
    """Draws from every global generator while it trains (dropout, torch, numpy, Python noise)."""

    def __init__(self, die: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.dropout = nn.Dropout(0.5)
        self.die = die

    def on_fit_start(self) -> None:
        # Runs once per fit, so a resumed run draws here and an uninterrupted one does not.
        torch.rand(3)
        np.random.rand(3)
        random.random()

    def training_step(self, batch, batch_idx):
        if self.die and (self.current_epoch, batch_idx) == KILL_AT:
            raise Killed
        (x,) = batch
        noise = torch.from_numpy(np.random.normal(size=x.shape).astype(np.float32)) * random.random()
        out = self.layer(self.dropout(x + noise + torch.randn_like(x)))
        return out.pow(2).mean()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.1)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)}


def _fit(output_dir, die: bool = False) -> Noisy:
    L.seed_everything(0, verbose=False)
    module = Noisy(die)
    loader = DataLoader(TensorDataset(torch.arange(24.0).reshape(6, 4)), batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[resume.checkpoint_callback(output_dir)],
    )
    last = resume.last_checkpoint(output_dir)
    trainer.fit(module, loader, ckpt_path=str(last) if last else None, weights_only=True)
    return module


def test_a_resumed_fit_draws_the_same_numbers_and_follows_the_same_schedule(tmp_path):
    straight = _fit(tmp_path / "straight")
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    with pytest.raises(Killed):
        _fit(tmp_path / "resumed", die=True)
    resumed = _fit(tmp_path / "resumed")
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert resumed.trainer.optimizers[0].param_groups[0]["lr"] == 0.1 * 0.5**EPOCHS
    assert straight.trainer.optimizers[0].param_groups[0]["lr"] == 0.1 * 0.5**EPOCHS


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # numpy keeps a cached Gaussian: it is part of the state
    path = tmp_path / "state.pt"
    torch.save({"state": capture_random_state()}, path)
    expected = (torch.rand(5), np.random.normal(size=5), [random.random() for _ in range(5)])
    restore_random_state(torch.load(path, weights_only=True)["state"])
    drawn = (torch.rand(5), np.random.normal(size=5), [random.random() for _ in range(5)])
    assert torch.equal(expected[0], drawn[0])
    assert np.array_equal(expected[1], drawn[1]) and expected[2] == drawn[2]
