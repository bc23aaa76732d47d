"""The thin Lightning base every method wrapper derives from.

A method wrapper owns a pure torch model and answers three questions: how to get ready for a
category (text classifier, few-shot memory), how to score a batch, and (optionally) how to train.
The scoring follows the contract of :mod:`anomaly_vlm.methods.contract`: the torch model's
``frozen_features`` and its ``score`` (or ``score_set`` and ``postprocess_set``), reached through this
wrapper so that test batches, reference images and training batches all pass one
:meth:`AnomalyMethod.frozen_features`. It never computes metrics: the evaluation path
(:mod:`anomaly_vlm.callbacks.scoring`) does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import torch
from torch import Tensor, nn

from anomaly_vlm.backbones.capabilities import BackboneCapabilities, BackboneNeeds, backbone_problem
from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods import contract
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction, ScoredBatch
from anomaly_vlm.methods.official_weights import (
    OfficialWeights,
    flatten,
    load_official_state,
    not_this_release_message,
)
from anomaly_vlm.prompts import PromptSet, TextEmbeddingCache
from anomaly_vlm.untrusted import lightning_checkpoint_types, load_torch_file, sha256_file

if TYPE_CHECKING:
    from anomaly_vlm.cache import FeatureCache

CHECKPOINT_KEY = "anomaly_vlm"


@dataclasses.dataclass(frozen=True)
class BlockOption:
    """What a method option that names backbone blocks (1-based) holds, so a config can be checked
    against the backbone's depth before any weights load.

    Attributes:
        many: a list of distinct blocks (``[6, 12, 18, 24]``) rather than one block or depth (``6``).
        encoders: the encoders the blocks index; with both, the shallower one bounds the value.
    """

    many: bool = True
    encoders: tuple[str, ...] = ("vision",)


class AnomalyMethod(L.LightningModule):
    """Base class of the Lightning wrappers.

    Args:
        model: the method's pure torch model (holds the frozen backbone).
        prompts: the prompt set.
        shots: number of normal reference images per category (0 = zero-shot).
        text_cache_dir: disk cache of text embeddings; None keeps them in memory only.
    """

    method_name: str = "base"
    supports_few_shot: bool = True
    #: Needs reference images (shots >= 1), e.g. because it learns from them.
    requires_few_shot: bool = False
    #: Learns parameters on an auxiliary dataset (``train_data``) before testing.
    trains_on_auxiliary_data: bool = False
    #: Constructor options (``method.<key>``) that name backbone blocks; null values take the method's
    #: default for the backbone's depth and are not checked.
    block_options: ClassVar[Mapping[str, BlockOption]] = {}
    #: The block option (a key of :attr:`block_options`) that chooses the blocks the method taps, read by
    #: the layer analysis; None for a method without one.
    tap_option: ClassVar[str | None] = None
    #: What the published setting taps: ``"scaled"`` (the default blocks, scaled to the backbone depth) or
    #: ``"last"`` (the last block alone).
    published_taps: ClassVar[str] = "scaled"
    #: Reads a text prompt set (False: tables show none for it).
    uses_prompts: ClassVar[bool] = True
    #: What the method needs from its backbone; None: CLIP's token-level API, and its text tower when the
    #: method reads prompts (:meth:`backbone_requirements`).
    backbone_needs: ClassVar[BackboneNeeds | None] = None
    #: How the authors' released weights look and map to this method's trainable parameters, so
    #: ``ckpt_path=<their file>`` loads them (:mod:`anomaly_vlm.methods.official_weights`); None: no
    #: released format is known.
    official_weights: ClassVar[OfficialWeights | None] = None
    #: Where the loaded trained parameters came from: ``"official"`` (the authors' release), ``"project"``
    #: (a checkpoint of this project); None until :meth:`load_trainable_checkpoint` ran.
    checkpoint_origin: str | None = None
    #: SHA-256 of the file :meth:`load_trainable_checkpoint` read.
    checkpoint_sha256: str | None = None
    #: Disk cache of frozen features (:mod:`anomaly_vlm.cache`), set by the runner; None computes them.
    feature_cache: FeatureCache | None = None
    #: File digests of the reference images handed to the next ``setup_category`` (set around that call
    #: by the scoring path), so few-shot memories come from the cache too; None bypasses it.
    reference_digests: Sequence[str | None] | None = None

    @classmethod
    def shots_problem(cls, shots: int, name: str | None = None) -> str | None:
        """Why this method cannot run with ``shots`` reference images (None when it can).

        The one statement of the rule: the config check asks it before anything is built, the
        constructor again for Python callers.
        """
        name = name or cls.method_name
        if shots < 0:
            return f"shots={shots} is negative"
        if shots and not cls.supports_few_shot:
            return f"method '{name}' is zero-shot only; shots={shots} is not supported (use shots=0)"
        if not shots and cls.requires_few_shot:
            return (
                f"method '{name}' is few-shot only: it learns from the normal reference images of each "
                "category; shots=0 is not supported (use shots=1, 2 or 4)"
            )
        return None

    @classmethod
    def backbone_requirements(cls) -> BackboneNeeds:
        """What this method needs from its backbone (:attr:`backbone_needs`, or the CLIP default)."""
        if cls.backbone_needs is not None:
            return cls.backbone_needs
        return BackboneNeeds(text_tower=bool(cls.uses_prompts), patch_tokens=False, clip_tokens=True)

    @classmethod
    def backbone_problem(
        cls, capabilities: BackboneCapabilities, name: str | None = None, backbone_name: str | None = None
    ) -> str | None:
        """Why this method cannot run on a backbone with ``capabilities`` (None when it can); the config
        check asks it from the ``_target_`` classes before anything is built."""
        return backbone_problem(
            name or cls.method_name, cls.backbone_requirements(), capabilities, backbone_name
        )

    def __init__(
        self, model: nn.Module, prompts: PromptSet, shots: int = 0, text_cache_dir: str | None = None
    ):
        super().__init__()
        problem = self.shots_problem(shots)
        if problem:
            raise ValueError(problem)
        capabilities = getattr(getattr(model, "backbone", None), "capabilities", None)
        if isinstance(capabilities, BackboneCapabilities):
            problem = self.backbone_problem(capabilities)
            if problem:
                raise ValueError(problem)
        self.model = model
        self.prompts = prompts
        self.shots = int(shots)
        self.text_cache = TextEmbeddingCache(text_cache_dir)
        # Checkpoints hold only trainable parameters: Lightning's resume (fit(ckpt_path=...)) must not
        # demand the frozen backbone; on_load_checkpoint checks the trainable keys instead.
        self.strict_loading = False

    @property
    def backbone(self) -> FrozenCLIP:
        return self.model.backbone

    @property
    def is_trainable(self) -> bool:
        return any(parameter.requires_grad for parameter in self.parameters())

    def parameter_counts(self) -> dict[str, int]:
        total = sum(parameter.numel() for parameter in self.parameters())
        trainable = sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)
        return {"total": int(total), "trainable": int(trainable)}

    # ----- the method contract ---------------------------------------------------------------------
    @property
    def transductive(self) -> bool:
        """Whether the method scores a whole category at once (``score_set``)."""
        return contract.is_transductive(self.model)

    @torch.no_grad()
    def frozen_features(self, images: Tensor, digests: Sequence[str | None] | None = None) -> FrozenFeatures:
        """The frozen half of the forward pass, for test, reference and training images alike.

        ``digests``: per image the content digest of its file (``AnomalyBatch.digest``); with a
        :attr:`feature_cache`, those images are read from it or stored in it (None: not a file's pixels).
        """
        if self.feature_cache is None:
            return self.model.frozen_features(images)
        return self.feature_cache.extract(self.model, images, digests)

    def reference_features(self, images: Tensor, batch_size: int | None = None) -> FrozenFeatures:
        """:meth:`frozen_features` of a category's normal references (in chunks of ``batch_size``)."""
        digests = self.reference_digests
        if digests is not None and len(digests) != len(images):
            digests = None
        if batch_size is None or len(images) <= batch_size:
            return self.frozen_features(images, digests)
        chunks = [
            self.frozen_features(
                images[start : start + batch_size],
                None if digests is None else digests[start : start + batch_size],
            )
            for start in range(0, len(images), batch_size)
        ]
        return contract.concat_features(chunks)

    def score(self, features: FrozenFeatures) -> Prediction:
        return self.model.score(features)

    def score_set(self, features: FrozenFeatures) -> Prediction:
        return self.model.score_set(features)

    def score_at(self, features: FrozenFeatures, map_size: tuple[int, int]) -> Prediction:
        """:meth:`score` with maps of ``map_size`` ``(H, W)`` (``AnomalyBatch.map_size``: the files'
        resolution with ``datamodule.evaluation_resolution=file``).

        By default the final maps are resized bilinearly (half-pixel, no antialias); a method whose map
        depends on the resolution it is finished at (AnomalyDINO blurs after its resize) overrides it.
        """
        return resized_maps(self.score(features), map_size)

    def score_set_at(self, features: FrozenFeatures, map_size: tuple[int, int]) -> Prediction:
        """:meth:`score_set` with maps of ``map_size`` (see :meth:`score_at`)."""
        return resized_maps(self.score_set(features), map_size)

    def postprocess_set(
        self, prediction: Prediction, statistics: dict[str, Tensor] | None = None
    ) -> Prediction:
        """The method's set-level step over a whole category's prediction (identity by default).

        ``statistics``: set statistics (:meth:`set_statistics`) to use instead of the prediction's own.
        """
        return contract.postprocess_set(self.model, prediction, statistics)

    def set_statistics(self, prediction: Prediction) -> dict[str, Tensor] | None:
        """The statistics of a scored set that the set-level step uses (see
        :func:`~anomaly_vlm.methods.contract.set_statistics`; None: not declared, so not freezable)."""
        return contract.set_statistics(self.model, prediction)

    def freeze_set_statistics(self, statistics: dict[str, Tensor] | None) -> None:
        """Score every later set with ``statistics`` (None: each set's own); a model without a declared
        set-level step has nothing to freeze."""
        if contract.declares_set_statistics(self.model):
            self.model.freeze_set_statistics(statistics)

    @property
    def set_dependence(self) -> str | None:
        """Why an image's score depends on the other images scored with it now (None: it does not)."""
        return contract.set_dependence(self.model)

    def export_module(self) -> nn.Module:
        """The torch model's export graph for the current category (see
        :func:`~anomaly_vlm.methods.contract.export_module`).

        Raises:
            NotExportableError: the method cannot be one per-image graph (the message says why).
        """
        return contract.export_module(self.model, self.method_name)

    def setup_category(self, category: str, reference_images: Tensor | None) -> None:
        """Get ready to score ``category`` (text classifier, few-shot memory from ``reference_images``)."""
        raise NotImplementedError

    def prepare_saved_category(self, category: str) -> None:
        """Build the per-category modules a saved detector's state is loaded into (nothing by default).

        A method that creates modules while it sets a category up (PromptAD's prompt learners) creates
        them here, untrained, so ``Detector.load`` can put the saved values back without the references.
        """

    def predict_images(self, images: Tensor) -> Prediction:
        """Score ``[B, 3, H, W]`` images as one set, before any set-level post-processing."""
        features = self.frozen_features(images)
        return self.score_set(features) if self.transductive else self.score(features)

    # ----- Lightning hooks ------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, AnomalyBatch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def test_step(self, batch: AnomalyBatch, batch_idx: int) -> ScoredBatch:
        features = self.frozen_features(batch.image, batch.digest)
        if self.transductive:
            return ScoredBatch(batch, features=features)
        with torch.no_grad():
            if batch.map_size is not None:
                return ScoredBatch(batch, prediction=self.score_at(features, batch.map_size))
            return ScoredBatch(batch, prediction=self.score(features))

    predict_step = test_step

    # ----- checkpoints: trainable parameters only -------------------------------------------------
    def checkpoint_metadata(self) -> dict[str, Any]:
        """What a checkpoint must match to be loaded back (checked on load)."""
        return {
            "method": self.method_name,
            "backbone": self.backbone.identity,
            "backbone_model": self.backbone.model_name,
            "image_size": self.backbone.image_size,
            "prompt_set": self.prompts.name,
        }

    def trainable_state_dict(self) -> dict[str, Tensor]:
        names = {name for name, parameter in self.named_parameters() if parameter.requires_grad}
        return {name: tensor for name, tensor in self.state_dict().items() if name in names}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen backbone is rebuilt from its config; storing it would cost gigabytes per run.
        checkpoint["state_dict"] = self.trainable_state_dict()
        checkpoint[CHECKPOINT_KEY] = self.checkpoint_metadata()
        # The resolved run config (when the runner set it) documents how the parameters were made.
        checkpoint["config"] = getattr(self, "run_config", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint(checkpoint, source="checkpoint")
        missing = sorted(set(self.trainable_state_dict()) - set(checkpoint.get("state_dict", {})))
        if missing:
            raise ValueError(f"checkpoint lacks trainable parameters {missing}")

    def check_checkpoint(self, checkpoint: dict[str, Any], source: str) -> None:
        """Refuse a checkpoint made for another method, backbone, input size or prompt set."""
        stored = checkpoint.get(CHECKPOINT_KEY)
        if stored is None:
            raise ValueError(f"{source} is not an anomaly-vlm checkpoint (no '{CHECKPOINT_KEY}' metadata)")
        expected = self.checkpoint_metadata()
        mismatched = {
            key: (stored.get(key), value)
            for key, value in expected.items()
            if key in stored and stored.get(key) != value
        }
        if mismatched:
            details = "; ".join(
                f"{key}: checkpoint has {old!r}, this run has {new!r}"
                for key, (old, new) in mismatched.items()
            )
            raise ValueError(f"{source} was made for another configuration: {details}")

    def load_trainable_checkpoint(self, path: str) -> None:
        """Load trained parameters saved by :meth:`on_save_checkpoint` (or by Lightning).

        Nothing in the file runs: it is read with ``weights_only`` and Lightning's few own types, so a
        checkpoint carrying any other object is refused (:class:`~anomaly_vlm.untrusted.UntrustedFileError`).
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ckpt_path does not exist: {path}")
        checkpoint = load_torch_file(path, what=f"ckpt_path={path}", allowed=lightning_checkpoint_types())
        if not isinstance(checkpoint, dict):
            raise ValueError(f"ckpt_path={path} is not a checkpoint (it holds a {type(checkpoint).__name__})")
        if CHECKPOINT_KEY not in checkpoint:
            self._load_official(checkpoint, path)
            return
        self.check_checkpoint(checkpoint, source=f"ckpt_path={path}")
        state = checkpoint.get("state_dict", {})
        expected = set(self.trainable_state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"ckpt_path={path} does not fit this method: missing {missing}, unexpected {unexpected}"
            )
        self.load_state_dict(state, strict=False)
        self.checkpoint_origin, self.checkpoint_sha256 = "project", sha256_file(path)

    def _load_official(self, payload: dict[str, Any], path: str) -> None:
        """Load the authors' release file ``path`` through :attr:`official_weights` (every shape checked)."""
        source = f"ckpt_path={path}"
        flat = flatten(payload)
        if self.official_weights is None or not self.official_weights.recognises(flat):
            raise ValueError(not_this_release_message(self, flat, source))
        self.load_state_dict(load_official_state(self, payload, source), strict=False)
        self.checkpoint_origin, self.checkpoint_sha256 = "official", sha256_file(path)


def resized_maps(prediction: Prediction, size: tuple[int, int]) -> Prediction:
    """``prediction`` with its maps resized bilinearly (half-pixel, no antialias) to ``size`` ``(H, W)``."""
    if tuple(prediction.anomaly_map.shape[-2:]) == tuple(size):
        return prediction
    maps = torch.nn.functional.interpolate(
        prediction.anomaly_map.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False
    )[:, 0]
    return dataclasses.replace(prediction, anomaly_map=maps)
