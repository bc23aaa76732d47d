"""ONNX export of a saved detector (:class:`~anomaly_vlm.deploy.Detector`).

The graph is the method's export module (:func:`~anomaly_vlm.methods.contract.export_module`):
``images [B, 3, S, S]`` (RGB, resized to the detector's ``S``, in ``[0, 1]``, then normalised with the
detector's mean and std) -> ``image_score [B]`` and ``anomaly_map [B, S, S]``, with the batch axis
dynamic. Everything the detector holds (text embeddings, reference memory, trained parameters, the
positional embedding already resized to ``S``) is a constant of the graph; the text encoder is not in
it. The preprocessing, thresholds and provenance travel in the model's metadata (``metadata_props``).

The graph is traced by PyTorch's TorchScript-based exporter (``dynamo=False``): it needs no extra
package, handles every op these methods use, and keeps the batch axis dynamic through
``dynamic_axes``. ``nn.MultiheadAttention``'s inference fast path (a fused op ONNX does not have) is
switched off while tracing; the arithmetic of the two paths is the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from anomaly_vlm.deploy import Detector
from anomaly_vlm.methods.contract import NotExportableError
from anomaly_vlm.runtime import default_file_mode

INPUT_NAME = "images"
OUTPUT_NAMES = ("image_score", "anomaly_map")
DEFAULT_FILE = "model.onnx"
#: Opset of the written graphs: ONNX Runtime >= 1.13 runs it; every op used here exists in it.
DEFAULT_OPSET = 17
#: Opsets the graphs can be written in: scaled_dot_product_attention (V-V attention) needs 14; 20 is
#: the newest the TorchScript-based exporter writes.
OPSETS = range(14, 21)
#: Largest |onnxruntime - PyTorch| accepted by the check after export (scores and maps).
DEFAULT_TOLERANCE = 1e-4


class ExportError(ValueError):
    """An export that cannot be done or whose graph does not reproduce the detector."""


@dataclasses.dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote and measured.

    Attributes:
        path: the ``.onnx`` file.
        seconds: time of the trace and the write.
        score_delta, map_delta: max |onnxruntime - PyTorch| on the check batch (None: not checked).
    """

    path: Path
    seconds: float
    score_delta: float | None = None
    map_delta: float | None = None


def _require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxruntime") if not _importable(name)]
    if missing:
        raise ExportError(
            f"format=onnx needs {' and '.join(missing)}, which is not installed: "
            "pip install -e '.[export]' (pinned onnx and onnxruntime)"
        )


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _tracing_friendly():
    """No fused attention fast path (``aten::_native_multi_head_attention`` has no ONNX form) and no
    exporter chatter, restored afterwards."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def normalize(detector: Detector, images: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` images -> the graph's input (the detector's mean and std)."""
    return detector.method.backbone.normalize(images.float().cpu())


def _metadata(detector: Detector) -> dict[str, str]:
    backbone = detector.method.backbone
    meta = detector.meta
    return {
        "anomaly_vlm.method": str(meta.get("method")),
        "anomaly_vlm.category": str(meta.get("category")),
        "anomaly_vlm.shots": str(meta.get("shots", 0)),
        "anomaly_vlm.backbone": json.dumps(meta.get("backbone", {})),
        "anomaly_vlm.image_size": str(detector.image_size),
        "anomaly_vlm.mean": json.dumps([float(v) for v in backbone.pixel_mean.flatten()]),
        "anomaly_vlm.std": json.dumps([float(v) for v in backbone.pixel_std.flatten()]),
        "anomaly_vlm.input": (
            f"RGB resized to {detector.image_size}x{detector.image_size} (bicubic squash), in [0, 1], "
            "then (x - mean) / std per channel; NCHW float32"
        ),
        "anomaly_vlm.thresholds": json.dumps(meta.get("thresholds")),
        "anomaly_vlm.detector_format": str(meta.get("format")),
    }


def _write_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "anomaly_vlm"
    onnx.save(model, str(path))


def onnx_parity(
    detector: Detector, path: Path, images: torch.Tensor, threads: int | None = None
) -> tuple[float, float]:
    """Max |onnxruntime - PyTorch| of (scores, maps) on ``[0, 1]`` ``images``, the detector's own
    :meth:`~anomaly_vlm.deploy.Detector.score` being the PyTorch side."""
    import onnxruntime as ort

    expected = detector.score(images)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    score, maps = session.run(list(OUTPUT_NAMES), {INPUT_NAME: normalize(detector, images).numpy()})
    score_delta = float(np.abs(score - expected.image_score.float().numpy()).max())
    map_delta = float(np.abs(maps - expected.anomaly_map.float().numpy()).max())
    return score_delta, map_delta


def export_onnx(
    detector: Detector | str | os.PathLike,
    out: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> OnnxExport:
    """Write the detector's ONNX graph and (``check``) prove it against PyTorch.

    Args:
        detector: a loaded detector or its folder.
        out: the ``.onnx`` file, or a folder to put ``model.onnx`` in (default: the detector folder).
        opset: ONNX opset of the graph.
        check: run the graph in onnxruntime (CPU) on random images, with another batch size than the
            trace's, and compare with the detector's PyTorch scores and maps.
        tolerance: largest accepted difference of the check.
        seed: seed of the trace and check images.

    Raises:
        ExportError: onnx missing, a detector that is not fp32, or a check above ``tolerance``.
        NotExportableError: the method has no per-image graph (the message says why).
    """
    _require_onnx()
    if int(opset) not in OPSETS:
        raise ExportError(f"opset={opset} is not supported (choose {OPSETS.start}..{OPSETS.stop - 1})")
    if not isinstance(detector, Detector):
        # export_module refuses a set-dependent method itself, saying why a graph cannot serve it.
        detector = Detector.load(detector, set_dependence="accept")
    method = detector.method
    precision = getattr(method.backbone, "precision", "fp32")
    if precision != "fp32":
        raise ExportError(
            f"detector={detector.path} runs its backbone in backbone.precision={precision}; ONNX export "
            "writes float32 graphs and would not reproduce its numbers (save it with precision fp32)"
        )
    method.cpu().eval()
    target = Path(out).expanduser() if out is not None else detector.path / DEFAULT_FILE
    if target.is_dir():
        target = target / DEFAULT_FILE
    if target.suffix != ".onnx":
        raise ExportError(f"out={out} must be a .onnx file or a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    graph = method.export_module().eval()

    size = detector.image_size
    generator = torch.Generator().manual_seed(seed)
    trace_images = torch.rand(2, 3, size, size, generator=generator)
    started = time.perf_counter()
    # Written beside the target and renamed: an interrupted export never leaves a half-written model.
    handle, temporary = tempfile.mkstemp(suffix=".onnx", dir=target.parent)
    os.close(handle)
    try:
        with _tracing_friendly():
            torch.onnx.export(
                graph,
                (normalize(detector, trace_images),),
                temporary,
                dynamo=False,
                opset_version=int(opset),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={
                    INPUT_NAME: {0: "batch"},
                    OUTPUT_NAMES[0]: {0: "batch"},
                    OUTPUT_NAMES[1]: {0: "batch"},
                },
            )
        _write_metadata(Path(temporary), _metadata(detector))
        # mkstemp creates the file private (0600); the model is shared like the detector's other files.
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    result = OnnxExport(path=target, seconds=time.perf_counter() - started)
    if check:
        check_images = torch.rand(3, 3, size, size, generator=generator)
        result.score_delta, result.map_delta = onnx_parity(detector, target, check_images)
        worst = max(result.score_delta, result.map_delta)
        if not worst <= tolerance:
            raise ExportError(
                f"{target}: onnxruntime differs from PyTorch by {worst:.3g} "
                f"(scores {result.score_delta:.3g}, maps {result.map_delta:.3g}) > tolerance {tolerance:g}; "
                "the file is kept for inspection"
            )
    return result


def describe(result: OnnxExport) -> str:
    """One line for the command line."""
    line = f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB, {result.seconds:.1f} s)"
    if result.score_delta is not None:
        line += (
            f"; onnxruntime vs PyTorch max |delta|: scores {result.score_delta:.2e}, "
            f"maps {result.map_delta:.2e}"
        )
    return line


__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "ExportError",
    "NotExportableError",
    "OnnxExport",
    "describe",
    "export_onnx",
    "normalize",
    "onnx_parity",
]
