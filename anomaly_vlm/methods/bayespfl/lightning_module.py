"""Lightning wrapper of Bayes-PFL (``method=bayespfl``): prompt-flow training on auxiliary data, testing."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.base import AnomalyMethod, BlockOption
from anomaly_vlm.methods.bayespfl.augment import OfficialAugmentation
from anomaly_vlm.methods.bayespfl.official_weights import BayesPFLRelease
from anomaly_vlm.methods.bayespfl.torch_model import BayesPFL, class_sentence
from anomaly_vlm.prompts import PromptSet
from anomaly_vlm.untrusted import lightning_checkpoint_types, load_torch_file

log = logging.getLogger(__name__)

#: Key of a checkpoint that holds the last stage its training ran.
TRAINED_STAGE_KEY = "bayespfl_trained_stage"


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

    Training runs the two stages of the official ``train.py`` in one Lightning fit of ``trainer.max_epochs``
    epochs on an auxiliary dataset:

    1. stage 1 trains the prompt bank, the three prompt flows, the residual cross-attention, the
       temperatures and the class mapping with the full loss;
    2. the last ``stage2_epochs`` epochs train only the class mapping, the image mapping and the fused-tap
       branch with the classification loss (a fresh Adam, constant ``lr_stage2``), and the image embedding
       becomes ``image_mapping(g + fuse(taps))``; test images are then scored with it, as ``test.py`` scores
       the files stage 2 wrote.

    Each category is scored by Monte-Carlo sampling of ``sample_num`` prompts per flow. The sentence is the
    official ``"X <class>"``, so no prompt set is read (``prompts`` is accepted and ignored). Zero-shot only:
    ``shots`` must be 0.

    The official trainer chooses its checkpoint, when to switch to stage 2 (restoring the best stage-1
    weights) and when to stop, by the pixel / image AP of five TEST classes of the target dataset after
    every epoch. That selection uses test data and is not reproduced: the stages get fixed epoch counts and
    the last weights are tested.

    Args:
        backbone: frozen CLIP.
        prompts: ignored (the sentences are the official ``"X <class>"``).
        shots: must be 0.
        lr_prompt, lr_temperature, lr_flow, lr_linear: the official Adam parameter groups: the prompt bank
            (1e-3), the two temperatures (0.01), the flows' own parameters (amortisation layers, states;
            1e-3), everything else (encoders, RCA, mappings; 1e-4).
        betas: Adam betas (0.5, 0.999).
        warmup_fraction: linear warm-up share of the cosine schedule, stepped per iteration (0.1).
        stage2_epochs: the last epochs of ``trainer.max_epochs`` that train stage 2 (5: the shortest stage 2
            of the official trainer, whose first stage-2 epoch always counts as an improvement and which
            stops after four more without one); 0 trains stage 1 only. A fit of at most this many epochs
            trains stage 1 only (with a warning).
        lr_stage2: the stage-2 learning rate (``--learning_rate_linear``, 1e-4, no schedule).
        augment: the official training augmentation
            (:class:`~anomaly_vlm.methods.bayespfl.augment.OfficialAugmentation`); augmented batches bypass
            the feature cache.
        augment_seed: with the epoch and the batch, the seed of the augmentation (the run seed).
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
        stage2_epochs: int = 5,
        lr_stage2: float = 1e-4,
        augment: bool = True,
        augment_seed: int = 0,
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
        if int(stage2_epochs) < 0:
            raise ValueError(f"method.stage2_epochs={stage2_epochs} must be 0 or more")
        self.stage2_epochs = int(stage2_epochs)
        self.lr_stage2 = float(lr_stage2)
        self.augment = bool(augment)
        self.augment_seed = int(augment_seed)
        self._augmentation: OfficialAugmentation | None = None
        #: The last stage training ran (2 once stage 2 has; read back from this project's checkpoints).
        self.trained_stage = 1
        # Two optimisers, one per stage (the official optimizer_stage1 / optimizer_stage2).
        self.automatic_optimization = False
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
        self.model.stage = self.model.test_stage or self.official_file_stage() or self.trained_stage

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
        if self.checkpoint_origin == "project":
            checkpoint = load_torch_file(path, what=f"ckpt_path={path}", allowed=lightning_checkpoint_types())
            self.trained_stage = int(checkpoint.get(TRAINED_STAGE_KEY, 1))

    # ----- training --------------------------------------------------------------------------------
    def stage_two_epochs(self) -> int:
        """Epochs of stage 2 in this fit: the last ``stage2_epochs`` of ``trainer.max_epochs``, none when
        that would leave stage 1 no epoch."""
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 0 or max_epochs <= self.stage2_epochs:
            return 0
        return self.stage2_epochs

    def training_stage(self, epoch: int | None = None) -> int:
        """1 or 2: the stage that trains epoch ``epoch`` (default: the current one)."""
        epoch = self.current_epoch if epoch is None else epoch
        stage_two = self.stage_two_epochs()
        return 2 if stage_two and epoch >= self.trainer.max_epochs - stage_two else 1

    def on_train_start(self) -> None:
        self.model.set_category(None)
        if self.stage2_epochs and not self.stage_two_epochs():
            log.warning(
                "method.stage2_epochs=%d leaves no stage-1 epoch in trainer.max_epochs=%s: Bayes-PFL trains "
                "stage 1 only and scores with it",
                self.stage2_epochs,
                self.trainer.max_epochs,
            )

    def training_inputs(self, batch: AnomalyBatch, batch_idx: int) -> tuple[Tensor, Tensor, Any]:
        """The batch's images, masks and feature-cache digests, augmented when ``augment`` is on."""
        if not self.augment:
            return batch.image, batch.mask, batch.digest
        if self._augmentation is None:
            self._augmentation = OfficialAugmentation(self.augment_seed)
        images, masks = self._augmentation(batch.image, batch.mask, self.current_epoch, batch_idx)
        return images, masks, None  # new pixels: no file's cached features

    def training_step(self, batch: AnomalyBatch, batch_idx: int) -> Tensor:
        if batch.mask is None:
            raise ValueError(
                "Bayes-PFL trains on pixel masks, but the auxiliary training batch has none "
                f"(first image: {batch.path[0]}); use a train_data source with ground-truth masks"
            )
        images, masks, digest = self.training_inputs(batch, batch_idx)
        features = self.frozen_features(images, digest)
        # One prompt of the bank per iteration, shared by the batch (official torch.randint(0, B)).
        index = int(torch.randint(0, self.model.prompt_num, (1,)))
        ids = self.sentence_ids(batch.category)
        stage_one, stage_two = self.optimizers()
        if self.training_stage() == 1:
            optimizer = stage_one
            losses = self.model.loss(features, masks, batch.label, ids, index)
        else:
            optimizer = stage_two
            losses = self.model.stage_two_loss(features, batch.label, ids, index)
            self.trained_stage = 2
        self.model.zero_grad(set_to_none=True)
        self.manual_backward(losses["loss"])
        optimizer.step()
        # The official scheduler steps every iteration, in stage 2 too (where it moves nothing trained).
        self.lr_schedulers().step()
        self.log_dict(
            {f"train/{name}": value.detach() for name, value in losses.items()},
            prog_bar=True,
            batch_size=len(batch),
        )
        self.log("train/stage", float(self.training_stage()), batch_size=len(batch))
        return losses["loss"].detach()

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

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
        """Stage 1: Adam over the official groups, cosine schedule with warm-up over the whole fit (as the
        official, over ``len(loader) * epochs``). Stage 2: a separate Adam over the stage-2 parameters at
        ``lr_stage2``, no schedule (the official ``optimizer_stage2``)."""
        groups = [
            {"params": parameters, "lr": self.learning_rates[name]}
            for name, parameters in self.parameter_groups().items()
            if parameters
        ]
        optimizer = torch.optim.Adam(groups, betas=self.betas)
        stage_two = torch.optim.Adam(
            [parameter for _, parameter in self.model.stage_two_parameters()],
            lr=self.lr_stage2,
            betas=self.betas,
        )
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        warmup = int(self.warmup_fraction * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, warmup, total)
        )
        return [optimizer, stage_two], [{"scheduler": schedule, "interval": "step"}]

    # ----- checkpoints -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[TRAINED_STAGE_KEY] = int(self.trained_stage)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.trained_stage = int(checkpoint.get(TRAINED_STAGE_KEY, 1))

    def checkpoint_metadata(self) -> dict[str, Any]:
        model = self.model
        return {
            **super().checkpoint_metadata(),
            "layers": list(model.layers),
            "prompt_num": model.prompt_num,
            "prompt_lengths": [model.context_length, model.state_length],
            "num_flows": model.num_flows,
        }
