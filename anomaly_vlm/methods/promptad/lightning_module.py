"""Lightning wrapper of PromptAD (``method=promptad``): per-category prompt training, then testing."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.base import AnomalyMethod, BlockOption
from anomaly_vlm.methods.contract import FrozenFeatures, concat_features
from anomaly_vlm.methods.promptad.torch_model import PromptADModel
from anomaly_vlm.prompts.promptad import PromptADPromptSet


class PromptADModule(AnomalyMethod):
    """Few-shot anomaly classification and segmentation with prompts learned from normal images only.

    Paper: Li et al., "PromptAD: Learning Prompts with only Normal Samples for Few-Shot Anomaly
    Detection", CVPR 2024 (official code: FuNz-0/PromptAD).

    For each category the prompts are trained from scratch on the ``shots`` normal references, inside the
    category set-up (a plain torch loop; no auxiliary dataset, so the runner has nothing to fit), and the
    references' patch tokens form the visual memory. Few-shot only: ``shots`` must be at least 1. Test
    images go through :meth:`frozen_features` (BGR by default, as the release), references through
    :meth:`reference_features` (RGB).

    Args:
        backbone: frozen CLIP (published: ViT-B-16-plus-240 ``laion400m_e32``, 240 px, fp16).
        prompts: the PromptAD prompt set (``prompts=promptad``).
        shots: normal references per category (1, 2 or 4 in the paper).
        text_cache_dir: unused (the text features are learned per category); accepted for a uniform
            constructor.
        **model_options: the model's options (``method.epochs=...``, ``method.vv_start=...``), forwarded to
            :class:`~anomaly_vlm.methods.promptad.torch_model.PromptADModel`, which documents them.
    """

    method_name = "promptad"
    supports_few_shot = True
    block_options = {"vv_start": BlockOption(many=False), "memory_blocks": BlockOption()}
    #: Learns from the shots of each category: zero-shot is refused before anything is built.
    requires_few_shot = True

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: PromptADPromptSet,
        shots: int = 1,
        text_cache_dir: str | None = None,
        **model_options: Any,
    ) -> None:
        if not isinstance(prompts, PromptADPromptSet):
            raise ValueError(
                f"method=promptad needs the PromptAD prompt set (prompts=promptad), got prompts "
                f"'{getattr(prompts, 'name', prompts)}' of type {type(prompts).__name__}"
            )
        model = PromptADModel(backbone, prompts, **model_options)
        super().__init__(model, prompts, shots, text_cache_dir)
        self.training_history: dict[str, dict[str, list[float]]] = {}

    @property
    def is_trainable(self) -> bool:
        # The prompts are learned per category inside setup_category, not by the runner's fit.
        return False

    def trainable_state_dict(self) -> dict[str, Tensor]:
        # The prompts belong to one category and are learned again, deterministically, whenever that
        # category is set up; a checkpoint therefore holds only the metadata.
        return {}

    def reference_features(self, images: Tensor, batch_size: int | None = None) -> FrozenFeatures:
        """Features of the references in RGB: only test images take the official BGR channel order."""
        if batch_size is None or len(images) <= batch_size:
            return self.model.reference_features(images)
        chunks = [
            self.model.reference_features(images[start : start + batch_size])
            for start in range(0, len(images), batch_size)
        ]
        return concat_features(chunks)

    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        if reference_images is None or reference_images.shape[0] == 0:
            raise ValueError(
                f"shots={self.shots} but no reference images were given for category '{category}'"
            )
        # The test start runs inside inference mode and no_grad; the prompt training needs autograd.
        with torch.inference_mode(False):
            features = self.reference_features(reference_images.clone())
            with torch.enable_grad():
                self.training_history[category] = self.model.fit_category(category, features)

    def prepare_saved_category(self, category: str) -> None:
        self.model.prepare_category(category)

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {**super().checkpoint_metadata(), "prompt_fingerprint": self.prompts.fingerprint()}
