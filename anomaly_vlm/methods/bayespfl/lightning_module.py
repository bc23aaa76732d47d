"""Lightning wrapper of Bayes-PFL (``method=bayespfl``): prompt-flow training on auxiliary data, testing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.base import AnomalyMethod, BlockOption
from anomaly_vlm.methods.bayespfl.official_weights import BayesPFLRelease
from anomaly_vlm.methods.bayespfl.torch_model import BayesPFL, class_sentence
from anomaly_vlm.prompts import PromptSet


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor of ``transformers.get_cosine_schedule_with_warmup`` (half a cosine):
    ``step / warmup`` during the warm-up (0 at the first step), then ``0.5 (1 + cos(pi progress))``."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


class BayesPFLModule(AnomalyMethod):
    """Zero-shot anomaly classification and segmentation with prompt distributions (Bayes-PFL).

    Paper: Qu et al., "Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", CVPR 2025 (official
    code: xiaozhen228/Bayes-PFL).

    Trains the prompt bank, the three prompt flows, the residual cross-attention and the temperatures on an
    auxiliary dataset (stage 1 of the official ``train.py``), then scores each category by Monte-Carlo
    sampling of ``sample_num`` prompts per flow. The sentence is the official ``"X <class>"``, so no prompt
    set is read (``prompts`` is accepted and ignored). Zero-shot only: ``shots`` must be 0.

    The official trainer chooses its checkpoint, and when to switch to its classification-only stage 2,
    by the pixel AP of five TEST classes of the target dataset after every epoch. That selection uses test
    data and is not reproduced: this trains stage 1 for the whole published schedule and tests the last
    weights with stage 1 (``test_stage=null`` scores an authors' release file with stage 2, as ``test.py``).

    Args:
        backbone: frozen CLIP.
        prompts: ignored (the sentences are the official ``"X <class>"``).
        shots: must be 0.
        lr_prompt, lr_temperature, lr_flow, lr_linear: the official Adam parameter groups: the prompt bank
            (1e-3), the two temperatures (0.01), the flows' own parameters (amortisation layers, states;
            1e-3), everything else (encoders, RCA, mappings; 1e-4).
        betas: Adam betas (0.5, 0.999).
        warmup_fraction: linear warm-up share of the cosine schedule, stepped per iteration (0.1).
        text_cache_dir: unused (the text depends on each image), accepted for a uniform constructor.
        **model_options: the model's options (``method.sample_num=...``), forwarded to
            :class:`~anomaly_vlm.methods.bayespfl.torch_model.BayesPFL`, which documents them.
    """

    method_name = "bayespfl"
    supports_few_shot = False
    trains_on_auxiliary_data = True
    uses_prompts = False
    block_options = {"layers": BlockOption()}
    tap_option = "layers"
    #: ``ckpt_path=<train_visa.pth | train_mvtec.pth | epoch_post_*.pth of the official train.py>`` loads.
    official_weights = BayesPFLRelease()

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: PromptSet | None = None,
        shots: int = 0,
        lr_prompt: float = 1e-3,
        lr_temperature: float = 0.01,
        lr_flow: float = 1e-3,
        lr_linear: float = 1e-4,
        betas: Sequence[float] = (0.5, 0.999),
        warmup_fraction: float = 0.1,
        text_cache_dir: str | None = None,
        **model_options: Any,
    ) -> None:
        model = BayesPFL(backbone, **model_options)
        super().__init__(model, prompts, shots, text_cache_dir)
        self.learning_rates = {
            "prompt": float(lr_prompt),
            "temperature": float(lr_temperature),
            "flow": float(lr_flow),
            "linear": float(lr_linear),
        }
        self.betas = tuple(float(beta) for beta in betas)
        if len(self.betas) != 2:
            raise ValueError(f"method.betas={list(betas)} must hold two values")
        if not 0.0 <= float(warmup_fraction) < 1.0:
            raise ValueError(f"method.warmup_fraction={warmup_fraction} must be in [0, 1)")
        self.warmup_fraction = float(warmup_fraction)
        self._token_ids: dict[str, Tensor] = {}
        #: File name of the trained parameters loaded by ``ckpt_path`` (the official stage is read from it).
        self.checkpoint_name: str | None = None

    def sentence_ids(self, categories: Sequence[str]) -> Tensor:
        """``[B, T]`` token ids of each category's ``"X <class>"`` sentence."""
        for category in set(categories) - set(self._token_ids):
            self._token_ids[category] = self.backbone.tokenize([class_sentence(category)])[0]
        return torch.stack([self._token_ids[category] for category in categories]).to(self.device)

    # ----- testing ---------------------------------------------------------------------------------
    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        self.model.set_category(category)
        self.model.stage = self.model.test_stage or self.official_file_stage() or 1

    def official_file_stage(self) -> int | None:
        """The stage ``test.py`` scores the loaded official file with: the one in an
        ``epoch_post_<epoch>_<stage>.pth`` name, else 2 (the released files); None for other parameters."""
        if self.checkpoint_origin != "official" or not self.checkpoint_name:
            return None
        stem = Path(self.checkpoint_name).stem
        if "epoch_post" in stem:
            try:
                return int(stem.split("_")[-1])
            except ValueError:
                return None
        return 2

    def load_trainable_checkpoint(self, path: str) -> None:
        super().load_trainable_checkpoint(path)
        self.checkpoint_name = Path(path).name

    # ----- training --------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.model.set_category(None)

    def training_step(self, batch: AnomalyBatch, batch_idx: int) -> Tensor:
        if batch.mask is None:
            raise ValueError(
                "Bayes-PFL trains on pixel masks, but the auxiliary training batch has none "
                f"(first image: {batch.path[0]}); use a train_data source with ground-truth masks"
            )
        features = self.frozen_features(batch.image, batch.digest)
        # One prompt of the bank per iteration, shared by the batch (official torch.randint(0, B)).
        index = int(torch.randint(0, self.model.prompt_num, (1,)))
        losses = self.model.loss(features, batch.mask, batch.label, self.sentence_ids(batch.category), index)
        self.log_dict(
            {f"train/{name}": value.detach() for name, value in losses.items()},
            prog_bar=True,
            batch_size=len(batch),
        )
        return losses["loss"]

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The official optimiser groups, by parameter name."""
        groups: dict[str, list[torch.nn.Parameter]] = {name: [] for name in self.learning_rates}
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            if "prompt_" in name:
                groups["prompt"].append(parameter)
            elif "temperature" in name:
                groups["temperature"].append(parameter)
            elif name.startswith(("context_flow.", "normal_flow.", "abnormal_flow.")):
                groups["flow"].append(parameter)
            else:
                groups["linear"].append(parameter)
        return groups

    def configure_optimizers(self) -> dict[str, Any]:
        groups = [
            {"params": parameters, "lr": self.learning_rates[name]}
            for name, parameters in self.parameter_groups().items()
            if parameters
        ]
        optimizer = torch.optim.Adam(groups, betas=self.betas)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        warmup = int(self.warmup_fraction * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, warmup, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ----- checkpoints -----------------------------------------------------------------------------
    def checkpoint_metadata(self) -> dict[str, Any]:
        model = self.model
        return {
            **super().checkpoint_metadata(),
            "layers": list(model.layers),
            "prompt_num": model.prompt_num,
            "prompt_lengths": [model.context_length, model.state_length],
            "num_flows": model.num_flows,
        }
