"""The detectors a service serves: loaded once, one frozen backbone per distinct backbone, two runtimes.

Each :class:`ServedDetector` scores a list of *requests* (each a ``[n_i, 3, S, S]`` tensor) in one call
and returns one result list per request. The forward pass may hold the images of several requests; a
method's set-level step (APRIL-GAN few-shot's normalisation, with the statistics frozen into the detector)
always runs per request, on that request's images alone. A detector whose scores depend on the other
images scored with it (transductive MuSc) is served only with ``set_dependence=accept``, and then every
request is scored alone, as its own set.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anomaly_vlm.decisions.outputs import decide
from anomaly_vlm.decisions.thresholds import CategoryThresholds
from anomaly_vlm.deploy import Detector, DetectorError
from anomaly_vlm.methods.contract import Prediction


@dataclasses.dataclass
class ImageResult:
    """One image's numbers, as :meth:`Detector.predict <anomaly_vlm.deploy.Detector.predict>` gives them.

    Attributes:
        image_score: the image score.
        anomaly_map: ``[S, S]`` float32 map.
        decision: ``ok``/``defect`` at the detector's image threshold (None without thresholds).
        defect_area: fraction of map pixels above the pixel threshold (None without one).
        mask: ``[S, S]`` bool mask of those pixels (None without a pixel threshold).
    """

    image_score: float
    anomaly_map: np.ndarray
    decision: str | None
    defect_area: float | None
    mask: np.ndarray | None


def decide_all(prediction: Prediction, thresholds: CategoryThresholds | None) -> list[ImageResult]:
    """Per image results of a prediction, decided exactly as ``Detector.predict`` decides."""
    scores = prediction.image_score.double().numpy()
    maps = prediction.anomaly_map.float().numpy()
    results = []
    for index in range(len(scores)):
        decided = None if thresholds is None else decide(scores[index], maps[index], thresholds)
        results.append(
            ImageResult(
                image_score=float(scores[index]),
                anomaly_map=maps[index],
                decision=None if decided is None else decided.decision,
                defect_area=None if decided is None else decided.defect_area,
                mask=None if decided is None else decided.mask,
            )
        )
    return results


class ServedDetector:
    """A detector as the service runs it (base of the two runtimes).

    Attributes:
        name: the URL name.
        path: its folder.
        meta: its ``detector.json``.
        thresholds: its thresholds (None: no decisions).
        set_dependence: why its scores depend on the other images of a call (None: they do not); such a
            detector is scored one request at a time.
    """

    runtime = "base"

    def __init__(self, name: str, path: Path, meta: dict, max_batch: int) -> None:
        self.name = name
        self.path = path
        self.meta = meta
        self.max_batch = max_batch
        thresholds = meta.get("thresholds")
        self.thresholds = None if thresholds is None else CategoryThresholds.from_dict(thresholds)
        self.set_dependence: str | None = None
        self.precision: dict[str, str] | None = None

    @property
    def image_size(self) -> int:
        return int(self.meta["preprocessing"]["image_size"])

    def describe(self) -> dict[str, Any]:
        """The metadata ``GET /v1/detectors/{name}`` returns (nothing of the server's file system)."""
        meta = self.meta
        return {
            "name": self.name,
            "method": meta.get("method"),
            "category": meta.get("category"),
            "shots": meta.get("shots", 0),
            "backbone": {key: meta.get("backbone", {}).get(key) for key in ("model", "identity", "digest")},
            # The backbone precision it runs in (the saved one unless the service's precision= overrides).
            "precision": self.precision,
            "input_size": self.image_size,
            "thresholds": meta.get("thresholds"),
            "set_dependence": self.set_dependence,
            "runtime": self.runtime,
            "format": meta.get("format"),
            "versions": meta.get("versions"),
        }

    def predict_requests(self, requests: Sequence[Tensor]) -> list[Prediction]:
        raise NotImplementedError

    def score_requests(self, requests: Sequence[Tensor]) -> list[list[ImageResult]]:
        """Score several requests' images in one call; each request's set step on its own images."""
        return [decide_all(prediction, self.thresholds) for prediction in self.predict_requests(requests)]


def _slices(requests: Sequence[Tensor]) -> list[slice]:
    slices, start = [], 0
    for images in requests:
        slices.append(slice(start, start + len(images)))
        start += len(images)
    return slices


class TorchDetector(ServedDetector):
    """A detector run by its PyTorch method (``runtime=torch``)."""

    runtime = "torch"

    def __init__(self, name: str, detector: Detector, max_batch: int) -> None:
        super().__init__(name, detector.path, detector.meta, max_batch)
        self.detector = detector
        self.set_dependence = detector.set_dependence
        self.precision = detector.precision

    @torch.no_grad()
    def predict_requests(self, requests: Sequence[Tensor]) -> list[Prediction]:
        method = self.detector.method
        if self.set_dependence is not None:
            # Its scores are a property of the scored set: each request is its own set, never mixed.
            return [self.detector.score(images) for images in requests]
        device = next(method.parameters()).device
        images = torch.cat(list(requests))
        parts = [
            method.predict_images(images[start : start + self.max_batch].to(device)).detach().to("cpu")
            for start in range(0, len(images), self.max_batch)
        ]
        whole = Prediction.concat(parts)
        results = []
        for part in _slices(requests):
            own = Prediction(
                whole.image_score[part],
                whole.anomaly_map[part],
                {key: value[part] for key, value in whole.extras.items()},
            )
            # The set-level step over this request's images alone (as Detector.score applies it).
            results.append(method.postprocess_set(own.to(device)).detach().to("cpu"))
        return results


class OnnxDetector(ServedDetector):
    """A detector run by its exported graph in onnxruntime (``runtime=onnx``).

    The graph is ``<detector>/model.onnx`` (``python -m anomaly_vlm.export detector=<folder>``); its
    metadata must name the same method, category and backbone weights as the folder's ``detector.json``.
    """

    runtime = "onnx"

    def __init__(self, name: str, path: Path, meta: dict, max_batch: int, threads: int | None = None) -> None:
        super().__init__(name, path, meta, max_batch)
        try:
            import onnxruntime as ort
        except ImportError:
            raise DetectorError(
                "runtime=onnx needs onnxruntime: pip install -e '.[export]' (pinned onnxruntime)"
            ) from None
        graph = path / "model.onnx"
        if not graph.is_file():
            raise DetectorError(
                f"runtime=onnx: detector={path} has no model.onnx; export it once with "
                f"`python -m anomaly_vlm.export detector={path}`"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        saved = {
            "method": str(meta.get("method")),
            "category": str(meta.get("category")),
            "backbone": meta.get("backbone", {}).get("digest"),
            "image_size": str(self.image_size),
        }
        found = {
            "method": props.get("anomaly_vlm.method"),
            "category": props.get("anomaly_vlm.category"),
            "backbone": json.loads(props.get("anomaly_vlm.backbone", "{}")).get("digest"),
            "image_size": props.get("anomaly_vlm.image_size"),
        }
        if saved != found:
            raise DetectorError(
                f"runtime=onnx: {graph} was exported from another detector ({found}) than {path} "
                f"({saved}); export it again"
            )
        self.mean = torch.tensor(json.loads(props["anomaly_vlm.mean"]), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(json.loads(props["anomaly_vlm.std"]), dtype=torch.float32).view(1, 3, 1, 1)

    def predict_requests(self, requests: Sequence[Tensor]) -> list[Prediction]:
        from anomaly_vlm.export.onnx import INPUT_NAME, OUTPUT_NAMES

        images = torch.cat(list(requests)).float()
        pixels = ((images - self.mean) / self.std).numpy()
        scores, maps = [], []
        for start in range(0, len(pixels), self.max_batch):
            score, anomaly_map = self.session.run(
                list(OUTPUT_NAMES), {INPUT_NAME: pixels[start : start + self.max_batch]}
            )
            scores.append(torch.from_numpy(score))
            maps.append(torch.from_numpy(anomaly_map))
        # The graph holds the set step with frozen statistics (export refuses set-dependent methods).
        whole = Prediction(torch.cat(scores), torch.cat(maps))
        return [Prediction(whole.image_score[part], whole.anomaly_map[part]) for part in _slices(requests)]


def _backbone_key(config: Any) -> str:
    from omegaconf import OmegaConf

    return json.dumps(OmegaConf.to_container(config.backbone, resolve=True), sort_keys=True, default=str)


def load_detectors(
    folders: dict[str, Path],
    runtime: str = "torch",
    device: str = "cpu",
    max_batch: int = 8,
    set_dependence: str = "refuse",
    threads: int | None = None,
    precision: str | None = None,
) -> dict[str, ServedDetector]:
    """Load every detector once; on PyTorch, detectors whose backbone config and weights are the same
    share one backbone object (its weights are checked against each detector's digest), run in
    ``precision`` (``backbone.precision``; None: as saved).

    Raises:
        DetectorError: a folder that is not a loadable detector, or (``set_dependence="refuse"``) one whose
            scores depend on the other images scored with it (the message says how to accept that).
    """
    from hydra.utils import instantiate

    served: dict[str, ServedDetector] = {}
    backbones: dict[str, Any] = {}
    for name, folder in folders.items():
        folder = Path(folder).expanduser()
        if runtime == "onnx":
            meta = Detector.read_meta(folder)
            if meta.get("set_dependence") and set_dependence != "accept":
                raise DetectorError(
                    f"detector={folder}: method {meta.get('method')}: {meta['set_dependence']}; it has no "
                    "ONNX graph, serve it with runtime=torch set_dependence=accept"
                )
            served[name] = OnnxDetector(name, folder, meta, max_batch, threads)
            continue
        meta = Detector.read_meta(folder)
        config = Detector.read_config(folder, meta)
        key = _backbone_key(config)
        if key not in backbones:
            backbones[key] = instantiate(config.backbone, _partial_=True)()
        try:
            detector = Detector.load(
                folder,
                device=device,
                set_dependence=set_dependence,
                backbone=backbones[key],
                precision=precision,
            )
        except DetectorError as error:
            if "detector_set_dependence=accept" not in str(error):
                raise
            message = str(error).split(". Add detector_set_dependence", 1)[0]
            raise DetectorError(
                f"{message}. The service refuses it by default; with set_dependence=accept it scores each "
                "request alone, as its own set (never batched with another request)"
            ) from None
        served[name] = TorchDetector(name, detector, max_batch)
    return served
