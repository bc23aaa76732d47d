"""The method contract: what a method's torch model computes, and what the evaluation path does with it.

Every method splits its forward pass in two:

1. ``frozen_features(images) -> FrozenFeatures``: a pure function of the frozen backbone, the
   preprocessing and the input images. Nothing learned and nothing category-specific enters it, so
   its result can be cached per image and reused across jobs of a sweep, few-shot references and
   training epochs. Every tensor in the dict has the batch axis first; ``features[key][i]`` belongs to
   ``images[i]`` alone.
2. Scoring from those features, with the text classifier, the few-shot memory and anything learned:
   ``score(features) -> Prediction`` for inductive methods (each image scored on its own), or
   ``score_set(features) -> Prediction`` for transductive methods, which score a whole category at
   once (e.g. MuSc's mutual scoring of the test images against each other).

A step that needs the whole category's predictions (e.g. APRIL-GAN's min-max of few-shot map maxima
over the test set) is a declared set-level post-processing, ``postprocess_set(prediction)``, that
the one evaluation path applies once a category's predictions are complete, for test and predict
alike. Methods never keep per-batch state on the module for it.

Such a step makes an image's score depend on the other images scored with it. A saved detector must
not: a model whose step only needs a few numbers of the set declares them, so they can be frozen:

* ``set_statistics(prediction) -> dict[str, Tensor]``: the statistics of a scored set that its step
  uses (``{}`` when it uses none, e.g. APRIL-GAN zero-shot);
* ``postprocess_set(prediction, statistics=None)``: with ``statistics``, uses those instead of the
  set's own;
* ``freeze_set_statistics(statistics)`` (None: unfreeze): from then on the step uses the frozen ones,
  so every image scores the same alone or in any batch (a loaded detector and its export graph);
* ``uses_set_statistics``: whether the step currently uses any (APRIL-GAN: with a few-shot memory).

:func:`set_dependence` says why a model's scores still depend on the set (a transductive model, a set
step without declared statistics, or statistics not frozen); a detector of such a method is saved and
served only when the user accepts it.

Export (ONNX) is a capability too: a model that can score a batch as one static graph declares
``export_module()``, returning a module ``normalised images [B, 3, S, S] -> (image_score [B],
anomaly_map [B, S, S])`` with its category state baked in (usually a :class:`ScoringGraph`). A model
without it, a transductive one, one whose scores depend on the batch (:func:`set_dependence`), or one
that sets ``export_unsupported`` to a reason, is refused by :func:`export_module` with that reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from anomaly_vlm.data.batch import AnomalyBatch

#: Per-image frozen features: name -> tensor with the batch axis first.
FrozenFeatures = dict[str, Tensor]


@dataclasses.dataclass
class Prediction:
    """What a method returns for a batch (or, concatenated, for a whole category).

    Attributes:
        image_score: ``[B]`` image-level anomaly scores, higher = more anomalous.
        anomaly_map: ``[B, H, W]`` pixel-level anomaly maps at the evaluation resolution.
        extras: named per-image tensors (batch axis first) that a set-level post-processing step
            needs, e.g. the raw text probability and the map maximum that APRIL-GAN's few-shot score
            combines over the category.
    """

    image_score: Tensor
    anomaly_map: Tensor
    extras: dict[str, Tensor] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_score.ndim != 1:
            raise ValueError(f"image_score must be [B], got shape {tuple(self.image_score.shape)}")
        if self.anomaly_map.ndim != 3 or self.anomaly_map.shape[0] != self.image_score.shape[0]:
            raise ValueError(
                f"anomaly_map must be [B, H, W] with B={self.image_score.shape[0]}, "
                f"got shape {tuple(self.anomaly_map.shape)}"
            )
        for name, value in self.extras.items():
            if value.shape[0] != self.image_score.shape[0]:
                raise ValueError(f"extras[{name!r}] must have the batch axis first, got {tuple(value.shape)}")

    def __len__(self) -> int:
        return int(self.image_score.shape[0])

    def to(self, device: torch.device | str) -> Prediction:
        return Prediction(
            self.image_score.to(device),
            self.anomaly_map.to(device),
            {name: value.to(device) for name, value in self.extras.items()},
        )

    def detach(self) -> Prediction:
        return Prediction(
            self.image_score.detach(),
            self.anomaly_map.detach(),
            {name: value.detach() for name, value in self.extras.items()},
        )

    @staticmethod
    def concat(parts: Sequence[Prediction]) -> Prediction:
        """Concatenate batch predictions along the batch axis (same extras in every part)."""
        if not parts:
            raise ValueError("Prediction.concat needs at least one part")
        names = set(parts[0].extras)
        for part in parts[1:]:
            if set(part.extras) != names:
                raise ValueError(f"parts disagree on extras: {sorted(names)} vs {sorted(part.extras)}")
        return Prediction(
            torch.cat([part.image_score for part in parts]),
            torch.cat([part.anomaly_map for part in parts]),
            {name: torch.cat([part.extras[name] for part in parts]) for name in sorted(names)},
        )


def slice_features(features: Mapping[str, Tensor], index: int | slice) -> FrozenFeatures:
    """The features of one image (``index`` an int keeps a batch axis of 1) or a range of images."""
    if isinstance(index, int):
        index = slice(index, index + 1)
    return {name: value[index] for name, value in features.items()}


def concat_features(parts: Sequence[Mapping[str, Tensor]]) -> FrozenFeatures:
    """Concatenate per-image or per-batch features along the batch axis."""
    if not parts:
        raise ValueError("concat_features needs at least one part")
    names = set(parts[0])
    return {name: torch.cat([part[name] for part in parts]) for name in sorted(names)}


@runtime_checkable
class FrozenFeatureExtractor(Protocol):
    """The frozen half of a method's torch model.

    ``feature_spec()`` returns a JSON-serialisable description of everything, besides the backbone
    identity, its preprocessing and the image itself, that determines the features (tap layers, DPAM,
    window scales, ...). Together with those it is the key of the feature cache. A method whose
    image features depend on learned parameters (e.g. visual prompts) sets ``cacheable = False``.
    """

    cacheable: bool

    def feature_spec(self) -> dict[str, Any]: ...

    def frozen_features(self, images: Tensor) -> FrozenFeatures: ...


@runtime_checkable
class InductiveScorer(Protocol):
    """Scores each image on its own from its frozen features."""

    def score(self, features: FrozenFeatures) -> Prediction: ...


@runtime_checkable
class TransductiveScorer(Protocol):
    """Scores a whole category at once (``transductive = True``); the evaluation path accumulates the
    category's frozen features and calls :meth:`score_set` once."""

    transductive: bool

    def score_set(self, features: FrozenFeatures) -> Prediction: ...


def is_transductive(model: object) -> bool:
    """Whether ``model`` scores whole categories (``transductive = True`` and a ``score_set``)."""
    return bool(getattr(model, "transductive", False)) and callable(getattr(model, "score_set", None))


def postprocess_set(
    model: object, prediction: Prediction, statistics: Mapping[str, Tensor] | None = None
) -> Prediction:
    """Apply ``model.postprocess_set`` when the model declares one; otherwise the identity.

    ``statistics``: set statistics to use instead of those of ``prediction`` (see :func:`set_statistics`).
    """
    step = getattr(model, "postprocess_set", None)
    if step is None:
        return prediction
    return step(prediction) if statistics is None else step(prediction, statistics=statistics)


def declares_set_statistics(model: object) -> bool:
    """Whether ``model`` declares the statistics its set-level step uses (so they can be frozen)."""
    return callable(getattr(model, "set_statistics", None)) and callable(
        getattr(model, "freeze_set_statistics", None)
    )


def set_statistics(model: object, prediction: Prediction) -> dict[str, Tensor] | None:
    """The statistics of the scored set ``prediction`` that ``model``'s set-level step uses.

    ``{}`` for a model without a set-level step (or one that uses none now); None for a model whose step
    declares no statistics, so it cannot be frozen.
    """
    if getattr(model, "postprocess_set", None) is None:
        return {}
    if not declares_set_statistics(model):
        return None
    return {name: value.detach() for name, value in model.set_statistics(prediction).items()}


#: :func:`set_dependence` of a transductive model.
TRANSDUCTIVE_DEPENDENCE = (
    "it is transductive: it scores each image against the other images scored with it, so its scores are "
    "a property of the set"
)


def set_dependence(model: object, frozen: bool | None = None) -> str | None:
    """Why an image's score on ``model`` depends on the other images scored with it; None when it does not.

    Args:
        model: a method's torch model, set up for its category.
        frozen: whether its set statistics are (or are about to be) frozen; None asks the model.
    """
    if is_transductive(model):
        return TRANSDUCTIVE_DEPENDENCE
    if getattr(model, "postprocess_set", None) is None:
        return None
    if not declares_set_statistics(model):
        return (
            "its set-level step (postprocess_set) works over the images scored together and declares no "
            "set statistics that could be frozen"
        )
    if not getattr(model, "uses_set_statistics", True):
        return None
    if frozen is None:
        frozen = getattr(model, "frozen_set_statistics", None) is not None
    if frozen:
        return None
    return (
        "its image score is normalised over the images scored together and this detector holds no frozen "
        "set statistics"
    )


class NotExportableError(ValueError):
    """A method whose scoring cannot be written as one per-image graph (the message says why)."""


class ScoringGraph(nn.Module):
    """``normalised images -> (image_score, anomaly_map)`` of an inductive model, for export.

    Runs ``frozen_features(pixels, normalized=True, **feature_options)``, the model's ``score`` and its
    set-level step (:func:`postprocess_set` with the frozen set statistics, as :meth:`Detector.score
    <anomaly_vlm.deploy.Detector.score>` applies it), so a graph traced from it computes exactly what the
    saved detector computes. Category state (text classifier, memories, trained parameters, frozen set
    statistics) is read from the model at trace time and becomes constants of the graph.

    Args:
        model: the method's torch model, set up for its category.
        feature_options: extra keyword arguments of ``frozen_features`` (e.g. WinCLIP's unchunked
            window pass, so the traced graph serves any batch size).
    """

    def __init__(self, model: nn.Module, **feature_options: Any) -> None:
        super().__init__()
        self.model = model
        self.feature_options = feature_options

    def score(self, features: FrozenFeatures) -> Prediction:
        return self.model.score(features)

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        features = self.model.frozen_features(pixels, normalized=True, **self.feature_options)
        prediction = postprocess_set(self.model, self.score(features))
        return prediction.image_score, prediction.anomaly_map


def export_module(model: object, method_name: str | None = None) -> nn.Module:
    """The model's export graph (see :class:`ScoringGraph`), or :class:`NotExportableError` saying why not.

    Args:
        model: a method's torch model, set up for its category.
        method_name: the ``method=`` value, for the message.
    """
    name = method_name or type(model).__name__
    reason = getattr(model, "export_unsupported", None)
    if reason:
        raise NotExportableError(f"method {name} cannot be exported: {reason}")
    if is_transductive(model):
        raise NotExportableError(
            f"method {name} cannot be exported: it is transductive (it scores each image against the "
            "other test images of its category), so no graph scores an image on its own"
        )
    dependence = set_dependence(model)
    if dependence is not None:
        # A graph's batch would be the set: the same image would score differently in another batch.
        raise NotExportableError(
            f"method {name} cannot be exported: {dependence}; a detector saved by this version freezes "
            "them (save it again)"
        )
    build = getattr(model, "export_module", None)
    if not callable(build):
        raise NotExportableError(
            f"method {name} cannot be exported: its torch model {type(model).__name__} declares no "
            "export graph (export_module())"
        )
    return build()


@dataclasses.dataclass
class ScoredBatch:
    """What a method's test (and predict) step returns to the evaluation path.

    Exactly one of ``prediction`` (inductive: the batch scored) and ``features`` (transductive: the
    batch's frozen features, scored with the rest of the category) is set.
    """

    batch: AnomalyBatch
    prediction: Prediction | None = None
    features: FrozenFeatures | None = None

    def __post_init__(self) -> None:
        if (self.prediction is None) == (self.features is None):
            raise ValueError("ScoredBatch needs exactly one of prediction and features")

    def __len__(self) -> int:
        return len(self.batch)
