"""A saved detector: one category's everything-but-the-backbone, loadable without the dataset.

Layout of ``<run dir>/detectors/<category>/``:

* ``detector.json`` -- format version, method, category, backbone reference (model name, weights
  identity and a digest of the weights, never the weights), thresholds, preprocessing, versions;
  and the SHA-256 of every other file of the folder;
* ``config.yaml`` -- the composed, resolved config of the run that saved it;
* ``state.safetensors`` + ``state.json`` -- the method's category state: text embeddings, reference
  memory, trained parameters (see :mod:`anomaly_vlm.deploy.state`), and the frozen set statistics.

``Detector.load(path).predict(images_or_paths)`` rebuilds the method from the config, checks the
backbone's weights against the digest, restores the state and scores: the same numbers as the run.

An image scores the same alone or in any batch. A method whose set-level step normalises over the
images scored together (APRIL-GAN few-shot: min-max of the map maxima) has the statistics of the set
its run scored (the category's test images) frozen into the detector, so the detector reproduces the
run's scores and scores any new image on that scale. A method whose scores are a property of the set
(transductive MuSc) cannot be frozen: its detector is saved and loaded only with
``detector_set_dependence=accept`` (Python: ``set_dependence="accept"``).

Opening a detector someone sent never runs their code: no file is unpickled, every file is checked
against its recorded SHA-256 before it is read, JSON and YAML are read within size and nesting limits,
and the config may only build this package's backbone, prompt and method classes. Detectors of format 1
(a pickled ``state.pt``) load only with ``trust_pickle=True``, or after
``python -m anomaly_vlm.deploy.convert detector=<folder>``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from anomaly_vlm.decisions.outputs import decide
from anomaly_vlm.decisions.thresholds import CategoryThresholds
from anomaly_vlm.deploy.state import (
    LEGACY_STATE_FILE,
    STATE_INDEX_FILE,
    STATE_TENSORS_FILE,
    backbone_digest,
    category_state,
    load_category_state,
    read_category_state,
    split_set_statistics,
    with_set_statistics,
    write_category_state,
)
from anomaly_vlm.methods import contract
from anomaly_vlm.methods.contract import Prediction
from anomaly_vlm.untrusted import UntrustedFileError, read_json, read_yaml_config, sha256_file, verify_sha256

#: Version of the folder layout; a detector written by a newer version is refused. Format 1 kept the
#: state in a pickle (``state.pt``); format 2 holds no pickle and records a checksum of every file;
#: format 3 adds the frozen set statistics (a format-2 reader would score such a detector per batch).
DETECTOR_FORMAT = 3
DETECTOR_FILE = "detector.json"
CONFIG_FILE = "config.yaml"
DETECTOR_DIR = "detectors"
#: The files of a detector's category state (format 2 and later), read after their checksums match.
STATE_FILES = (STATE_TENSORS_FILE, STATE_INDEX_FILE)
#: A detector.json is a few kilobytes; anything near this is not one.
MAX_DETECTOR_JSON_BYTES = 4 * 1024 * 1024
#: The config groups a detector builds, and the package each one's ``_target_`` must be a class of.
BUILT_GROUPS = {
    "backbone": "anomaly_vlm.backbones",
    "prompts": "anomaly_vlm.prompts",
    "method": "anomaly_vlm.methods",
}


#: ``detector_set_dependence`` values: save/load a detector whose scores depend on the other images of the
#: call (``accept``), or refuse to (``refuse``, the default).
SET_DEPENDENCE_CHOICES = ("refuse", "accept")


class DetectorError(ValueError):
    """A detector folder that cannot be loaded (missing, newer or unsafe format, tampered, other weights)."""


def check_set_dependence(value: str, key: str = "detector_set_dependence") -> str:
    """``value`` if it is in :data:`SET_DEPENDENCE_CHOICES`; else a :class:`DetectorError` naming ``key``."""
    if value not in SET_DEPENDENCE_CHOICES:
        raise DetectorError(f"{key}={value!r} must be one of {list(SET_DEPENDENCE_CHOICES)}")
    return value


def _set_dependent_refusal(what: str, method_name: str, reason: str) -> DetectorError:
    return DetectorError(
        f"{what}: method {method_name}: {reason}, so the same image would score differently depending on "
        "the other images scored with it. Add detector_set_dependence=accept (Python: "
        "set_dependence='accept') to accept that"
    )


def check_detector_method(method_class: type, set_dependence: str, method_name: str | None = None) -> None:
    """Before any weights load: refuse ``save_detector=true`` for a method whose scores are a property of
    the scored set (a transductive method class) unless ``set_dependence`` is ``accept``.

    Set dependence that only shows on the built model is checked again when each detector is saved.
    """
    check_set_dependence(set_dependence)
    transductive = getattr(method_class, "transductive", False)
    if transductive is True and set_dependence != "accept":
        name = method_name or getattr(method_class, "method_name", method_class.__name__)
        raise _set_dependent_refusal("save_detector=true", name, contract.TRANSDUCTIVE_DEPENDENCE)


@dataclasses.dataclass
class DetectorOutput:
    """What :meth:`Detector.predict` returns for N images.

    Attributes:
        image_score: ``[N]`` scores, each image's own whatever else is in the call (a detector loaded
            with ``set_dependence="accept"``: the method's set-level step over the N images).
        anomaly_map: ``[N, H, W]`` maps at the model input size.
        decision: per image ``ok``/``defect`` (None without thresholds).
        defect_area: per image fraction of map pixels above the pixel threshold (None without one).
        masks: ``[N, H, W]`` bool tensor of the defect masks (None without a pixel threshold).
    """

    image_score: Tensor
    anomaly_map: Tensor
    decision: list[str] | None
    defect_area: list[float | None] | None
    masks: Tensor | None


def _versions() -> dict[str, str]:
    import open_clip

    import anomaly_vlm

    return {
        "anomaly_vlm": getattr(anomaly_vlm, "__version__", "unknown"),
        "torch": torch.__version__,
        "open_clip_torch": open_clip.__version__,
        "python": platform.python_version(),
    }


def save_detector(
    folder: Path,
    method: Any,
    category: str,
    config: dict,
    thresholds: CategoryThresholds | None,
    method_name: str | None,
    scored: Prediction | None = None,
    set_dependence: str = "refuse",
) -> Path:
    """Write the detector of ``category`` (the method must be set up for it) into ``folder``.

    Args:
        folder: the detector folder.
        method: the method, set up for ``category``.
        category: its name.
        config: the resolved run config.
        thresholds: the category's thresholds, on the scale of the scores (None: no decisions).
        method_name: the ``method=`` value.
        scored: the prediction of the images the run scored for the category; the statistics of the
            method's set-level step over them are frozen into the detector (needed by such a method).
        set_dependence: ``accept`` saves a method whose scores still depend on the images scored
            together (transductive, or statistics that cannot be frozen); ``refuse`` raises.

    Raises:
        DetectorError: a set-dependent method and ``set_dependence="refuse"``.
    """
    check_set_dependence(set_dependence)
    name = method_name or getattr(method, "method_name", type(method).__name__)
    statistics = None if scored is None else method.set_statistics(scored)
    reason = contract.set_dependence(method.model, frozen=bool(statistics))
    if reason is not None and set_dependence != "accept":
        raise _set_dependent_refusal(f"save_detector ({category})", name, reason)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = category_state(method)
    if statistics:
        state = with_set_statistics(state, statistics)
    written = write_category_state(state, folder)
    (folder / CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    backbone = method.backbone
    meta = {
        "format": DETECTOR_FORMAT,
        "method": name,
        "category": category,
        "shots": int(getattr(method, "shots", 0) or 0),
        "backbone": {
            "model": backbone.model_name,
            "identity": backbone.identity,
            "digest": backbone_digest(backbone),
        },
        "preprocessing": {
            "image_size": int(backbone.image_size),
            "resize": "bicubic squash",
            "range": "[0, 1]",
        },
        "thresholds": None if thresholds is None else thresholds.to_dict(),
        # Frozen from the images the run scored, so those score as in the run and any other on that scale.
        "set_statistics": (
            {"names": sorted(statistics), "scored_images": len(scored), "values": _plain(statistics)}
            if statistics
            else None
        ),
        # Why its scores still depend on the images scored together (saved with set_dependence=accept).
        "set_dependence": reason,
        "versions": _versions(),
        "files": {name: sha256_file(folder / name) for name in [CONFIG_FILE, *written]},
    }
    (folder / DETECTOR_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def _run_precision(
    path: str | Path, precision: str | None, saved: str, device: str | torch.device, method: str
) -> tuple[str, str]:
    """``(precision, reason)`` a detector saved in ``saved`` runs in when ``precision`` is asked for.

    Raises:
        DetectorError: an unknown precision, or another one than a low-precision detector was saved in.
    """
    from anomaly_vlm.backbones.precision import RELEASE_GPU_PRECISION, resolve_precision

    if precision is None:
        return saved, "as saved"
    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    try:
        wanted, reason = resolve_precision(str(precision), device_type, RELEASE_GPU_PRECISION.get(method))
    except ValueError as error:
        raise DetectorError(str(error)) from None
    if wanted != saved and saved != "fp32":
        raise DetectorError(
            f"detector={path} was saved with backbone.precision={saved}: its weights were rounded to it, so "
            f"it runs in {saved} only, not {wanted}; save it from a backbone.precision=fp32 run to choose "
            "the precision when loading"
        )
    return wanted, reason


def _digest_as_saved(backbone: Any, saved_precision: str) -> str:
    """The backbone's weights digest in the precision the detector was saved with: computed, or, for a
    shared backbone already converted to another precision, the one checked before converting it."""
    if getattr(backbone, "precision", "fp32") != saved_precision:
        recorded = getattr(backbone, "digest_as_saved", None)
        if recorded is not None and recorded[0] == saved_precision:
            return str(recorded[1])
    return backbone_digest(backbone)


def _plain(statistics: dict[str, Tensor]) -> dict[str, Any]:
    """The statistics as JSON numbers or lists, for people reading ``detector.json`` (the state file
    holds the exact tensors)."""
    return {name: value.detach().cpu().double().tolist() for name, value in statistics.items()}


class Detector:
    """A loaded detector. Build it with :meth:`load`.

    Attributes:
        set_dependence: why its scores depend on the other images of a call (loaded with
            ``set_dependence="accept"``); None: each image scores the same alone or in any batch.
    """

    def __init__(self, method: Any, meta: dict, config: DictConfig, path: Path) -> None:
        self.method = method
        self.meta = meta
        self.config = config
        self.path = path
        record = getattr(getattr(method, "backbone", None), "precision_record", None)
        #: The backbone precision this detector runs in (requested, resolved, reason), None without one.
        self.precision: dict[str, str] | None = record() if callable(record) else None
        thresholds = meta.get("thresholds")
        self.thresholds = None if thresholds is None else CategoryThresholds.from_dict(thresholds)
        self.set_dependence: str | None = method.set_dependence

    @property
    def category(self) -> str:
        return str(self.meta["category"])

    @property
    def image_size(self) -> int:
        return int(self.meta["preprocessing"]["image_size"])

    @staticmethod
    def read_meta(path: str | Path) -> dict:
        """``detector.json`` of a folder, checked for presence, size, nesting and format version."""
        folder = Path(path).expanduser()
        meta_file = folder / DETECTOR_FILE
        if not meta_file.is_file():
            raise DetectorError(f"detector={path} is not a detector folder (no {DETECTOR_FILE})")
        try:
            meta = read_json(meta_file, what=DETECTOR_FILE, max_bytes=MAX_DETECTOR_JSON_BYTES)
        except UntrustedFileError as error:
            raise DetectorError(str(error)) from None
        if not isinstance(meta, dict):
            raise DetectorError(f"{meta_file} is not a detector description (a JSON object)")
        version = meta.get("format")
        if not isinstance(version, int) or version > DETECTOR_FORMAT:
            raise DetectorError(
                f"detector={path} has format {version}, newer than this anomaly_vlm reads "
                f"({DETECTOR_FORMAT}): upgrade anomaly_vlm to load it"
            )
        return meta

    @staticmethod
    def read_config(folder: Path, meta: dict) -> DictConfig:
        """The saved run config, after every file of the folder matched its recorded checksum.

        Only the classes of :data:`BUILT_GROUPS` may be built from it: the config comes with the folder,
        and Hydra would call any ``_target_`` it names.
        """
        files = meta.get("files")
        if meta["format"] >= 2:
            # Every file that is read must be one whose checksum is recorded.
            unlisted = sorted({CONFIG_FILE, *STATE_FILES} - set(files if isinstance(files, dict) else ()))
            if unlisted:
                raise DetectorError(f"{folder / DETECTOR_FILE} records no checksum of {', '.join(unlisted)}")
            try:
                for name, expected in files.items():
                    if Path(name).name != name:
                        raise DetectorError(
                            f"{folder / DETECTOR_FILE} names a file outside the folder: {name!r}"
                        )
                    verify_sha256(folder / name, str(expected), what=f"detector={folder}")
            except UntrustedFileError as error:
                raise DetectorError(str(error)) from None
        try:
            config = read_yaml_config(folder / CONFIG_FILE, what=CONFIG_FILE)
        except (UntrustedFileError, FileNotFoundError) as error:
            raise DetectorError(f"detector={folder}: {error}") from None
        for group, package in BUILT_GROUPS.items():
            _check_targets(config.get(group), group, package, folder)
        return config

    @staticmethod
    def read_state(folder: Path, meta: dict, trust_pickle: bool = False) -> dict[str, object]:
        """The saved category state: safetensors (format 2), or an opted-in pickle (format 1)."""
        if meta["format"] >= 2:
            try:
                return read_category_state(folder)
            except (UntrustedFileError, ValueError) as error:
                raise DetectorError(f"detector={folder}: {error}") from None
        if not trust_pickle:
            raise DetectorError(
                f"detector={folder} has format {meta['format']}: its {LEGACY_STATE_FILE} is a pickle, which "
                f"can run code when opened. Convert it once with `python -m anomaly_vlm.deploy.convert "
                f"detector={folder}` (it reads only tensors and flags), or, if you trust its source, load it "
                f"with Detector.load(..., trust_pickle=True)"
            )
        # Unsafe by design, and only on the caller's explicit word (trust_pickle=True): format 1 detectors
        # pickled their state, and a pickle can only be read by running it.
        state_file = folder / LEGACY_STATE_FILE
        return torch.load(state_file, map_location="cpu", weights_only=False)  # trust_pickle: caller vouched

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        backbone_overrides: dict | None = None,
        trust_pickle: bool = False,
        set_dependence: str = "refuse",
        backbone: Any = None,
        precision: str | None = None,
    ):
        """Rebuild the method from the saved config, check the backbone weights, restore the state.

        Args:
            path: the detector folder.
            device: where to score.
            backbone_overrides: replace backbone config values (e.g. ``cache_dir``, or ``pretrained`` to
                point at a local copy of the same weights; other weights are refused). A ``precision``
                among them is as the ``precision`` argument.
            trust_pickle: also open a format-1 detector, whose state is a pickle. **Unsafe**: unpickling
                runs whatever code the file names, so pass it only for files you made yourself or whose
                source you trust as you would trust a program from it; better, convert them once with
                ``python -m anomaly_vlm.deploy.convert detector=<folder>``.
            set_dependence: ``accept`` also loads a detector whose scores depend on the other images of
                a call (a transductive method such as MuSc, or one saved before set statistics were
                frozen); ``refuse`` (default) raises.
            backbone: a frozen backbone already built from the same backbone config (detectors served
                together share one); its weights are checked against the digest like a built one's.
            precision: run the backbone in this ``backbone.precision`` (``auto`` resolves for ``device``);
                None: the precision it was saved with. Precision is not the weights' identity: they are
                checked as saved, then run in this precision (a detector saved in fp32 runs in any; one
                saved in a low precision only in that one, its weights being rounded).

        Raises:
            DetectorError: missing folder, newer or (without ``trust_pickle``) pickled format, a file that
                does not match its checksum, a config that builds anything but this package's backbone,
                prompt and method classes, backbone weights whose digest differs, or (without
                ``set_dependence="accept"``) scores that depend on the other images of a call.
        """
        from hydra.utils import instantiate

        def build(node, **kwargs):
            # Through a partial, as the runner builds: Hydra would turn dataclass kwargs (prompt sets)
            # back into configs.
            return instantiate(node, _partial_=True)(**kwargs)

        check_set_dependence(set_dependence, key="set_dependence")
        folder = Path(path).expanduser()
        meta = cls.read_meta(folder)
        saved_dependence = meta.get("set_dependence")
        if saved_dependence and set_dependence != "accept":
            raise _set_dependent_refusal(f"detector={path}", str(meta.get("method")), str(saved_dependence))
        config = cls.read_config(folder, meta)
        try:
            state, statistics = split_set_statistics(cls.read_state(folder, meta, trust_pickle=trust_pickle))
        except ValueError as error:
            raise DetectorError(f"detector={folder}: {error}") from None
        saved_precision = str(config.backbone.get("precision") or "fp32")
        if backbone_overrides:
            overrides = dict(backbone_overrides)
            asked = overrides.pop("precision", None)
            precision = asked if precision is None else precision
            config.backbone = OmegaConf.merge(config.backbone, overrides)
        wanted, reason = _run_precision(path, precision, saved_precision, device, str(meta.get("method")))
        if backbone is None:
            backbone = build(config.backbone)
        digest = _digest_as_saved(backbone, saved_precision)
        if digest != meta["backbone"]["digest"]:
            raise DetectorError(
                f"detector={path} was saved with backbone {meta['backbone']['model']} weights "
                f"{meta['backbone']['identity']} (digest {meta['backbone']['digest']}); the weights loaded "
                f"now ({backbone.identity}, digest {digest}) are other weights"
            )
        if wanted != getattr(backbone, "precision", "fp32"):
            backbone.convert_precision(wanted, reason)
            # A backbone shared by several detectors is checked against each one's digest as saved.
            backbone.digest_as_saved = (saved_precision, digest)
        if wanted != saved_precision:
            config.backbone.precision = wanted
        prompts = build(config.prompts)
        class_names = (config.get("data") or {}).get("class_names") or {}
        if class_names and hasattr(prompts, "class_name_overrides"):
            prompts = dataclasses.replace(
                prompts, class_name_overrides={**prompts.class_name_overrides, **dict(class_names)}
            )
        method = build(
            config.method,
            backbone=backbone,
            prompts=prompts,
            shots=int(meta.get("shots", 0)),
            text_cache_dir=None,
        )
        method.to(device).eval()
        method.prepare_saved_category(str(meta["category"]))
        load_category_state(method, state)
        if statistics:
            method.freeze_set_statistics(statistics)
        reason = method.set_dependence
        if reason is not None and set_dependence != "accept":
            raise _set_dependent_refusal(f"detector={path}", str(meta.get("method")), reason)
        return cls(method, meta, config, folder)

    def load_images(self, images_or_paths: str | Path | Sequence[str | Path] | Tensor) -> Tensor:
        """``[N, 3, S, S]`` images in ``[0, 1]`` (``S`` = :attr:`image_size`): a tensor as given (checked),
        or image files (one path or several) loaded and resized as in the run; none gives ``N = 0``.

        Raises:
            DetectorError: a tensor that is not ``[N, 3, S, S]`` floating point.
        """
        if isinstance(images_or_paths, Tensor):
            return self.check_images(images_or_paths)
        if isinstance(images_or_paths, str | Path):
            images_or_paths = [images_or_paths]
        paths = list(images_or_paths)
        if not paths:
            return torch.empty(0, 3, self.image_size, self.image_size)
        from anomaly_vlm.data.image_io import load_image

        return torch.stack([load_image(str(path), self.image_size) for path in paths])

    def check_images(self, images: Tensor) -> Tensor:
        """``images`` if they are what the detector scores: ``[N, 3, S, S]`` floats in ``[0, 1]``.

        Raises:
            DetectorError: saying what it expects, in the caller's terms (``detector.image_size``).
        """
        size = self.image_size
        expected = (
            f"this detector scores images as a float tensor [N, 3, {size}, {size}] in [0, 1] "
            f"(N images, RGB, {size} = detector.image_size), or a list of image files, which it resizes"
        )
        shape = list(images.shape)
        if images.ndim != 4 or shape[1] != 3 or shape[2:] != [size, size]:
            hint = ""
            if images.ndim == 3 and shape[0] == 3:
                hint = "; for one image pass images[None]"
            elif images.ndim == 4 and shape[1] == 3:
                hint = (
                    f"; resize them to {size}x{size} first (e.g. torch.nn.functional.interpolate(images, "
                    f"size=({size}, {size}), mode='bicubic')) or pass the files"
                )
            elif images.ndim == 4 and shape[-1] == 3:
                hint = "; channels last: pass images.permute(0, 3, 1, 2)"
            raise DetectorError(f"{expected}; got shape {shape}{hint}")
        if not images.is_floating_point():
            raise DetectorError(f"{expected}; got {images.dtype} values (e.g. images.float() / 255)")
        return images

    def _empty(self) -> Prediction:
        size = self.image_size
        return Prediction(torch.empty(0), torch.empty(0, size, size))

    @torch.no_grad()
    def score(self, images: Tensor) -> Prediction:
        """The method's prediction for ``[N, 3, S, S]`` images (set step included; each image's own
        score, unless the detector was loaded with ``set_dependence="accept"``). ``N = 0``: empty."""
        images = self.check_images(images)
        if not len(images):
            return self._empty()
        device = next(self.method.parameters()).device
        prediction = self.method.predict_images(images.to(device))
        return self.method.postprocess_set(prediction).detach().to("cpu")

    @torch.no_grad()
    def score_paths(self, paths: Sequence[str | Path], batch_size: int = 8) -> Prediction:
        """Score image files in batches as one set: features per batch, then the method's set step."""
        from anomaly_vlm.methods.contract import concat_features, is_transductive

        if not len(paths):
            return self._empty()
        device = next(self.method.parameters()).device
        parts, features = [], []
        for start in range(0, len(paths), batch_size):
            images = self.load_images(list(paths[start : start + batch_size])).to(device)
            batch_features = self.method.frozen_features(images)
            if is_transductive(self.method.model):
                features.append({name: value.cpu() for name, value in batch_features.items()})
            else:
                parts.append(self.method.score(batch_features).detach().to("cpu"))
        if features:
            merged = {name: value.to(device) for name, value in concat_features(features).items()}
            prediction = self.method.score_set(merged).detach().to("cpu")
        else:
            prediction = Prediction.concat(parts)
        return self.method.postprocess_set(prediction).detach().to("cpu")

    def predict(self, images_or_paths: str | Path | Sequence[str | Path] | Tensor) -> DetectorOutput:
        """Scores, maps and (with thresholds) decisions of images or image files.

        Args:
            images_or_paths: a ``[N, 3, S, S]`` float tensor in ``[0, 1]`` (``S`` = :attr:`image_size`),
                or image files (one path or a list), loaded and resized as in the run.

        Returns:
            Torch tensors throughout (``masks`` a bool tensor); no images give empty outputs (N = 0).

        Raises:
            DetectorError: a tensor of another shape or dtype (the message says what is expected).
        """
        prediction = self.score(self.load_images(images_or_paths))
        scores = prediction.image_score.double().numpy()
        maps = prediction.anomaly_map.float().numpy()
        decision = area = masks = None
        if self.thresholds is not None:
            decided = [decide(scores[i], maps[i], self.thresholds) for i in range(len(scores))]
            decision = [item.decision for item in decided]
            area = [item.defect_area for item in decided]
            if self.thresholds.pixel is not None:
                masks = torch.zeros(prediction.anomaly_map.shape, dtype=torch.bool)
                for index, item in enumerate(decided):
                    masks[index] = torch.from_numpy(item.mask)
        return DetectorOutput(prediction.image_score, prediction.anomaly_map, decision, area, masks)


def _check_targets(node: Any, group: str, package: str, folder: Path) -> None:
    """Refuse a saved config whose ``group`` would build anything but one class of ``package``.

    The string is checked before anything is imported, so a name outside the package is never imported.
    """
    import importlib
    import inspect

    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise DetectorError(f"detector={folder}: {CONFIG_FILE} has no {group}._target_ to build")
    nested = [key for key in _target_keys(node) if key != "_target_"]
    target = node.get("_target_")
    refusal = (
        f"detector={folder}: {CONFIG_FILE} {group}._target_ is {target!r}; only {package} classes are built"
    )
    if nested:
        raise DetectorError(f"detector={folder}: {CONFIG_FILE} nests a _target_ at {group}.{nested[0]}")
    if (
        not isinstance(target, str)
        or not target.startswith(package + ".")
        or not target.replace(".", "").replace("_", "").isalnum()
    ):
        raise DetectorError(refusal)
    module_name, _, name = target.rpartition(".")
    try:
        built = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise DetectorError(refusal) from None
    if not inspect.isclass(built) or not built.__module__.startswith(package + "."):
        raise DetectorError(refusal)


def _target_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every ``_target_`` below ``node`` (``_target_`` itself for its own)."""
    found = []
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for key, value in items:
        dotted = f"{prefix}{key}"
        if key == "_target_":
            found.append(dotted)
        elif isinstance(value, DictConfig | ListConfig):
            found.extend(_target_keys(value, dotted + "."))
    return found


class DetectorSaver:
    """Writes ``<run dir>/detectors/<category>/`` for each finished test category (``save_detector=true``).

    Runs after :class:`~anomaly_vlm.decisions.consumers.CategoryDecisions`, whose thresholds it stores;
    the method is still set up for the category when its result arrives, and the category's scored test
    set gives the set statistics that are frozen into the detector. ``config``'s
    ``detector_set_dependence`` decides whether a set-dependent method is saved.
    """

    images_wanted = 0

    def __init__(self, output_dir: Path, config: dict, decisions: Any, method_name: str | None) -> None:
        self.folder = Path(output_dir) / DETECTOR_DIR
        self.config = config
        self.decisions = decisions
        self.method_name = method_name
        self.saved: dict[str, Path] = {}

    def consume(self, result: Any, trainer: Any) -> None:
        thresholds = self.decisions.thresholds.get(result.category) if self.decisions is not None else None
        self.saved[result.category] = save_detector(
            self.folder / result.category,
            trainer.lightning_module,
            result.category,
            self.config,
            thresholds,
            self.method_name,
            scored=result.prediction,
            set_dependence=str(self.config.get("detector_set_dependence") or "refuse"),
        )
