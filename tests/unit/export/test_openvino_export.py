"""OpenVINO export of saved detectors: the IR of the ONNX graph reproduces the PyTorch detector."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_vlm.export.__main__ import main
from anomaly_vlm.export.openvino import compile_openvino, export_openvino

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

_spec = importlib.util.spec_from_file_location(
    "onnx_export_helpers", Path(__file__).with_name("test_onnx_export.py")
)
helpers = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("onnx_export_helpers", helpers)
_spec.loader.exec_module(helpers)


@pytest.fixture(scope="module")
def winclip_detector(tmp_path_factory):
    """WinCLIP+ 1-shot: windows, reference memory and harmonic aggregation in the graph. One window scale
    (the second repeats the same ops; test_onnx_export runs both) and two prompts (the text classifier is
    a constant of the graph) keep the trace and the conversion short."""
    folder = tmp_path_factory.mktemp("ov")
    return helpers.make_detector(folder, "winclip", 1, *helpers.TWO, "method.scales=[2]")


@pytest.fixture(scope="module")
def bf16_ir(winclip_detector, tmp_path_factory):
    """One export (seconds of tracing) serves the tests of the hint, the metadata and fp32 parity."""
    return export_openvino(winclip_detector, out=tmp_path_factory.mktemp("ir"), precision="bf16")


def test_ir_carries_the_hint_and_the_detectors_metadata(bf16_ir):
    import openvino as ov

    assert bf16_ir.path.name == "model.xml" and bf16_ir.path.with_suffix(".bin").exists()
    model = ov.Core().read_model(str(bf16_ir.path))
    assert model.get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(str) == "bf16"
    assert model.get_rt_info(["anomaly_vlm", "method"]).astype(str) == "winclip"
    assert "bfloat16" in str(compile_openvino(bf16_ir.path).get_property("INFERENCE_PRECISION_HINT")).lower()
    assert bf16_ir.score_delta is not None  # measured, not enforced, in bf16


def test_ir_at_fp32_matches_the_detector(winclip_detector, bf16_ir):
    from anomaly_vlm.deploy import Detector
    from anomaly_vlm.export.onnx import normalize

    detector = Detector.load(winclip_detector)
    images = torch.rand(
        3, 3, detector.image_size, detector.image_size, generator=torch.Generator().manual_seed(3)
    )
    expected = detector.score(images)
    compiled = compile_openvino(bf16_ir.path, precision="fp32")
    outputs = compiled({"images": normalize(detector, images).numpy()})
    torch.testing.assert_close(
        torch.from_numpy(np.asarray(outputs[compiled.output("anomaly_map")])),
        expected.anomaly_map,
        atol=1e-4,
        rtol=0,
    )
    torch.testing.assert_close(
        torch.from_numpy(np.asarray(outputs[compiled.output("image_score")])),
        expected.image_score,
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.slow
def test_int8_is_calibrated_on_normal_images(winclip_detector, tmp_path):
    folder = tmp_path / "good"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    result = export_openvino(winclip_detector, out=tmp_path / "int8.xml", int8=True, calibration=folder)
    assert result.int8 and result.calibration_images == 4
    text = result.path.read_text()
    assert "FakeQuantize" in text or "FakeConvert" in text


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["detector=x", "format=onnx", "precision=bf16"], "precision= is an option of format=openvino"),
        (["detector=x", "format=openvino", "int8=maybe"], "int8=maybe must be true or false"),
    ],
)
def test_command_line_mistakes_are_one_error_line(capsys, arguments, message):
    assert main(arguments) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_int8_without_calibration_images_says_what_it_needs(winclip_detector, capsys):
    assert main([f"detector={winclip_detector}", "format=openvino", "int8=true"]) == 1
    assert "int8=true needs calibration=<folder of normal images>" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line_writes_the_ir(winclip_detector, tmp_path, capsys):
    assert main([f"detector={winclip_detector}", "format=openvino", f"out={tmp_path}"]) == 0
    assert "OpenVINO vs PyTorch max |delta|" in capsys.readouterr().out
    assert (tmp_path / "model.xml").exists()
