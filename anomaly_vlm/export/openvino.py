"""OpenVINO IR export of a saved detector, from the same graph as the ONNX export.

The detector's ONNX graph (:func:`~anomaly_vlm.export.onnx.export_onnx`, normalised images ->
``image_score``, ``anomaly_map``) is converted by ``openvino.convert_model`` and saved as
``model.xml`` + ``model.bin`` with float32 weights. Two options on top:

* ``precision``: the inference precision hint the IR carries (``rt_info`` ``runtime_options``
  ``INFERENCE_PRECISION_HINT``; :func:`compile_openvino` applies it): ``fp32`` (default; the OpenVINO CPU
  plugin would otherwise pick bf16 by itself on CPUs with AMX), ``bf16`` or ``fp16``.
* ``int8``: post-training quantisation with NNCF (``nncf.quantize``, transformer preset), calibrated on
  normal images (``calibration=<folder>``: the detector's normal reference images, or any normal images
  of its category), preprocessed as the detector does.

The check compiles the IR as :func:`compile_openvino` does and compares it with the PyTorch detector
on random images: at ``fp32`` within ``tolerance``; in bf16 / int8 the differences are reported, not
enforced (``make bench-export`` measures their effect on AUROC).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anomaly_vlm.deploy import Detector
from anomaly_vlm.export.onnx import (
    DEFAULT_TOLERANCE,
    INPUT_NAME,
    OUTPUT_NAMES,
    ExportError,
    _metadata,
    export_onnx,
    normalize,
)

DEFAULT_FILE = "model.xml"
#: ``precision=`` -> OpenVINO's INFERENCE_PRECISION_HINT.
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
#: Calibration images NNCF reads at most (NNCF's default subset size).
CALIBRATION_LIMIT = 300


@dataclasses.dataclass
class OpenVinoExport:
    """What :func:`export_openvino` wrote and measured.

    Attributes:
        path: the ``.xml`` file (its weights in the ``.bin`` beside it).
        seconds: time of the ONNX trace, the conversion, the quantisation and the write.
        precision: the inference precision hint in the IR.
        int8: quantised with NNCF.
        calibration_images: images the quantisation was calibrated on (0 without int8).
        score_delta, map_delta: max |OpenVINO - PyTorch| on the check batch (None: not checked).
    """

    path: Path
    seconds: float
    precision: str
    int8: bool
    calibration_images: int = 0
    score_delta: float | None = None
    map_delta: float | None = None


def _require_openvino(int8: bool) -> None:
    needed = ["openvino", *(["nncf"] if int8 else [])]
    missing = []
    for name in needed:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(
            f"format=openvino needs {' and '.join(missing)}, which is not installed: "
            "pip install -e '.[export]' (pinned openvino and nncf)"
        )


def calibration_images(folder: str | os.PathLike, size: int, limit: int = CALIBRATION_LIMIT) -> torch.Tensor:
    """``[N, 3, size, size]`` images of ``folder`` (searched recursively), as the detector reads them."""
    from anomaly_vlm.data.image_io import list_images, load_image

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ExportError(f"calibration={folder} is not a folder of normal images")
    files = list_images(root, recursive=True)[:limit]
    if not files:
        raise ExportError(f"calibration={folder} holds no images")
    return torch.stack([load_image(str(file), size) for file in files])


def compile_openvino(path: str | os.PathLike, threads: int | None = None, precision: str | None = None):
    """The compiled IR on the CPU, with the precision hint it carries (or ``precision``)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    hint = HINTS[precision] if precision else "f32"
    if precision is None and model.has_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]):
        hint = model.get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(str)
    config = {"INFERENCE_PRECISION_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(model, "CPU", config)


def openvino_parity(detector: Detector, path: Path, images: torch.Tensor) -> tuple[float, float]:
    """Max |OpenVINO - PyTorch| of (scores, maps) on ``[0, 1]`` ``images``."""
    expected = detector.score(images)
    compiled = compile_openvino(path)
    outputs = compiled({INPUT_NAME: normalize(detector, images).numpy()})
    score = np.asarray(outputs[compiled.output(OUTPUT_NAMES[0])])
    maps = np.asarray(outputs[compiled.output(OUTPUT_NAMES[1])])
    score_delta = float(np.abs(score - expected.image_score.float().numpy()).max())
    map_delta = float(np.abs(maps - expected.anomaly_map.float().numpy()).max())
    return score_delta, map_delta


def export_openvino(
    detector: Detector | str | os.PathLike,
    out: str | os.PathLike | None = None,
    precision: str = "fp32",
    int8: bool = False,
    calibration: str | os.PathLike | None = None,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> OpenVinoExport:
    """Write the detector's OpenVINO IR (``model.xml`` + ``model.bin``) and (``check``) compare it.

    Args:
        detector: a loaded detector or its folder.
        out: the ``.xml`` file, or a folder to put ``model.xml`` in (default: the detector folder).
        precision: inference precision hint stored in the IR: ``fp32``, ``bf16`` or ``fp16``.
        int8: quantise with NNCF, calibrated on ``calibration``.
        calibration: folder of normal images of the detector's category (needed with ``int8``).
        check: run the IR on random images and compare with the PyTorch detector.
        tolerance: largest accepted difference at ``fp32`` without ``int8``.
        seed: seed of the trace and check images.

    Raises:
        ExportError: openvino/nncf missing, a bad option, or an fp32 check above ``tolerance``.
        NotExportableError: the method has no per-image graph.
    """
    if precision not in HINTS:
        raise ExportError(f"precision={precision} is not one of {', '.join(HINTS)}")
    if int8 and calibration is None:
        raise ExportError(
            "int8=true needs calibration=<folder of normal images> (the detector's normal reference images)"
        )
    _require_openvino(int8)
    import openvino as ov

    if not isinstance(detector, Detector):
        detector = Detector.load(detector, set_dependence="accept")
    target = Path(out).expanduser() if out is not None else detector.path / DEFAULT_FILE
    if target.is_dir():
        target = target / DEFAULT_FILE
    if target.suffix != ".xml":
        raise ExportError(f"out={out} must be a .xml file or a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    calibration_set = calibration_images(calibration, detector.image_size) if int8 else None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        # The ONNX graph is the one source of both formats; its own check runs in make bench-export.
        onnx_file = export_onnx(detector, out=Path(scratch) / "model.onnx", check=False, seed=seed).path
        model = ov.convert_model(str(onnx_file))
    for key, value in _metadata(detector).items():
        model.set_rt_info(value, ["anomaly_vlm", key.removeprefix("anomaly_vlm.")])
    model.set_rt_info(HINTS[precision], ["runtime_options", "INFERENCE_PRECISION_HINT"])
    if int8:
        import nncf

        pixels = [normalize(detector, image[None]).numpy() for image in calibration_set]
        model = nncf.quantize(
            model,
            nncf.Dataset(pixels),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(pixels),
        )
        model.set_rt_info("true", ["anomaly_vlm", "int8"])
    ov.save_model(model, str(target), compress_to_fp16=False)
    result = OpenVinoExport(
        path=target,
        seconds=time.perf_counter() - started,
        precision=precision,
        int8=int8,
        calibration_images=0 if calibration_set is None else len(calibration_set),
    )
    if check:
        generator = torch.Generator().manual_seed(seed + 1)
        size = detector.image_size
        images = torch.rand(3, 3, size, size, generator=generator)
        result.score_delta, result.map_delta = openvino_parity(detector, target, images)
        worst = max(result.score_delta, result.map_delta)
        if precision == "fp32" and not int8 and not worst <= tolerance:
            raise ExportError(
                f"{target}: OpenVINO differs from PyTorch by {worst:.3g} (scores {result.score_delta:.3g}, "
                f"maps {result.map_delta:.3g}) > tolerance {tolerance:g}; the file is kept for inspection"
            )
    return result


def describe(result: OpenVinoExport) -> str:
    """One line for the command line."""
    weights = result.path.with_suffix(".bin")
    size = (result.path.stat().st_size + (weights.stat().st_size if weights.exists() else 0)) / 1e6
    kind = f"{result.precision} hint" + (
        f", int8 (NNCF, {result.calibration_images} images)" if result.int8 else ""
    )
    line = f"wrote {result.path} ({size:.1f} MB, {kind}, {result.seconds:.1f} s)"
    if result.score_delta is not None:
        line += (
            f"; OpenVINO vs PyTorch max |delta|: scores {result.score_delta:.2e}, maps {result.map_delta:.2e}"
        )
    return line
