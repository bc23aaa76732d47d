"""Lightning wrapper of MuSc (``method=musc``): a transductive, training-free, prompt-free method."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.base import AnomalyMethod, BlockOption
from anomaly_vlm.methods.musc.torch_model import (
    REFERENCE_R_LIST,
    RSCIN_K_DEFAULT,
    RSCIN_K_VISA,
    SUBSET_SEED,
    MuSc,
)
from anomaly_vlm.prompts import PromptSet

#: Dataset classes (last component of ``data._target_``) whose RsCIN list differs from the default.
RSCIN_K_BY_DATASET: dict[str, tuple[int, ...]] = {"VisA": RSCIN_K_VISA}


def default_rscin_k(dataset: str | None) -> tuple[int, ...]:
    """The release's RsCIN list for a dataset given as a class name or ``_target_`` path."""
    name = (dataset or "").rsplit(".", 1)[-1]
    return RSCIN_K_BY_DATASET.get(name, RSCIN_K_DEFAULT)


class MuScModule(AnomalyMethod):
    """MuSc: zero-shot, training-free, transductive anomaly classification and segmentation.

    Paper: Li et al., "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual
    Scoring of the Unlabeled Images", ICLR 2024.

    The whole test set of a category is scored at once: the evaluation path keeps each test batch's
    :meth:`frozen_features` and calls :meth:`score_set` once the category is complete; fewer images
    than the mutual scoring needs (5 by default, e.g. ``mode=predict`` on one image) raise
    :class:`MuScError`, a one-line user error. No prompt and no reference image play any part
    (``prompts`` is accepted for the common constructor and ignored). With ``divide_num > 1`` the
    images are dealt into subsets without looking at their labels (the release deals each defect type
    separately, which needs the ground truth).

    Args:
        backbone: frozen CLIP (published: OpenAI ViT-L-14-336, plain GELU, 518 px).
        prompts: ignored.
        shots: must be 0.
        layers: 1-based blocks; None = 6/12/18/24 scaled to the backbone depth.
        r_list: LNAMD aggregation degrees (published [1, 3, 5]).
        topmin_min, topmin_max: interval of sorted image-to-image distances averaged (published 0, 0.3).
        rscin_k: RsCIN neighbourhood sizes; None = the release's list for ``dataset`` (VisA [1, 8, 9],
            others [1, 2, 3]); an empty list or a 0 disables RsCIN.
        dataset: the data source's ``_target_`` (or class name), only to pick the RsCIN list.
        divide_num: subsets a category is split into before mutual scoring (published 1).
        subset_seed: seed of the subset division (the release's 42).
        block_bytes: memory bound of one distance block of the mutual scoring.
        text_cache_dir: unused (no text).
    """

    method_name = "musc"
    supports_few_shot = False
    block_options = {"layers": BlockOption()}
    tap_option = "layers"
    #: Scores a category's test images against each other (the torch model says the same): results are
    #: marked, never ranked silently with methods that score each image on its own. A class attribute,
    #: so the protocol is known from the config before anything is built.
    transductive = True
    #: Reads no prompt set (``prompts`` is accepted and ignored): results.json records it, so tables show no
    #: prompt set for its rows and a prompt sweep never splits them.
    uses_prompts = False

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: PromptSet,
        shots: int = 0,
        layers: Sequence[int] | None = None,
        r_list: Sequence[int] = REFERENCE_R_LIST,
        topmin_min: float = 0.0,
        topmin_max: float = 0.3,
        rscin_k: Sequence[int] | None = None,
        dataset: str | None = None,
        divide_num: int = 1,
        subset_seed: int = SUBSET_SEED,
        block_bytes: int = 256 * 2**20,
        text_cache_dir: str | None = None,
    ) -> None:
        k_list = default_rscin_k(dataset) if rscin_k is None else tuple(int(k) for k in rscin_k)
        model = MuSc(
            backbone, layers, r_list, topmin_min, topmin_max, k_list, divide_num, subset_seed, block_bytes
        )
        super().__init__(model, prompts, shots, text_cache_dir)

    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        """Nothing to prepare: no text classifier, no memory."""

    def feature_spec(self) -> dict[str, Any]:
        return self.model.feature_spec()

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {**super().checkpoint_metadata(), "transductive": True}
