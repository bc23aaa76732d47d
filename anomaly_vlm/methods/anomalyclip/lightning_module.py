"""Lightning wrapper of AnomalyCLIP (``method=anomalyclip``): prompt training on auxiliary data, testing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.anomalyclip.official_weights import AnomalyCLIPRelease
from anomaly_vlm.methods.anomalyclip.torch_model import AnomalyCLIP, AnomalyCLIPFeatures
from anomaly_vlm.methods.base import BlockOption
from anomaly_vlm.methods.prompt_training import PromptTrainingMethod, check_prompt_set
from anomaly_vlm.prompts.learnable import LearnablePromptSet


class AnomalyCLIPModule(PromptTrainingMethod):
    """Zero-shot anomaly classification and segmentation with object-agnostic learnable prompts.

    Paper: Zhou et al., "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection",
    ICLR 2024 (official code: zqhang/AnomalyCLIP).

    Trains only the prompt parameters (context vectors and deep prompt tokens) with the glocal loss on an
    auxiliary dataset, then scores every category with the same two text features: the prompts are
    object-agnostic, so the category name never enters them. Zero-shot only: ``shots`` must be 0.

    Args:
        backbone: frozen CLIP.
        prompts: the learnable prompt set (``prompts=anomalyclip_learned``).
        shots: must be 0.
        lr, betas: Adam settings of the official training script (1e-3, (0.5, 0.999)).
        text_cache_dir: unused (the text features are learned), accepted for a uniform constructor.
        **model_options: the model's options (``method.layers=...``, ``method.dpam=...``), forwarded to
            :class:`~anomaly_vlm.methods.anomalyclip.torch_model.AnomalyCLIP`, which documents them.
    """

    method_name = "anomalyclip"
    #: ``ckpt_path=<the authors' release file>`` loads it (every key and shape checked).
    official_weights = AnomalyCLIPRelease()
    block_options = {"layers": BlockOption(), "dpam_start": BlockOption(many=False)}
    tap_option = "layers"
    published_taps = "last"
    display_name = "AnomalyCLIP"

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: LearnablePromptSet,
        shots: int = 0,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.5, 0.999),
        text_cache_dir: str | None = None,
        **model_options: Any,
    ) -> None:
        check_prompt_set(
            prompts, LearnablePromptSet, "anomalyclip", "a learnable prompt set (prompts=anomalyclip_learned)"
        )
        model = AnomalyCLIP(backbone, prompts, **model_options)
        super().__init__(model, prompts, shots, lr, betas, text_cache_dir)

    def learned_text(self) -> Tensor:
        # Object-agnostic prompts: the same two text features serve every category.
        return self.model.text_features()

    def training_features(self, batch: AnomalyBatch) -> AnomalyCLIPFeatures:
        return AnomalyCLIPFeatures.from_dict(
            self.frozen_features(batch.image, batch.digest), self.model.layers
        )

    # ----- checkpoints -----------------------------------------------------------------------------
    def checkpoint_metadata(self) -> dict[str, Any]:
        prompts = self.prompts
        return {
            **super().checkpoint_metadata(),
            "layers": list(self.model.layers),
            "dpam": self.model.dpam,
            "dpam_start": self.model.dpam_start,
            "global_ln_post": self.model.global_ln_post,
            "prompt_fingerprint": prompts.fingerprint(),
            "context_length": int(prompts.context_length),
            "deep_prompt_length": int(prompts.deep_prompt_length),
            "deep_prompt_depth": int(prompts.deep_prompt_depth),
        }
