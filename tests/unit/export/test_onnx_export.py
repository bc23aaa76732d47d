"""ONNX export of saved detectors: onnxruntime on CPU reproduces the PyTorch detector (tiny CLIP)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from composed import compose_config as composed
from omegaconf import OmegaConf

from anomaly_vlm.deploy import Detector
from anomaly_vlm.deploy.detector import save_detector
from anomaly_vlm.export import INPUT_NAME, OUTPUT_NAMES, export_onnx
from anomaly_vlm.export.__main__ import main
from anomaly_vlm.export.onnx import _tracing_friendly, normalize
from anomaly_vlm.methods.contract import NotExportableError, Prediction, export_module
from anomaly_vlm.methods.export_ops import resize_matrices, resize_with_matrices
from anomaly_vlm.tasks.instantiate import build

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

TOLERANCE = 1e-4
#: 64 px on the 128 px tiny CLIP: the resized (bicubic) positional embedding is baked into the graph.
SIZE = 64
ANOMALYCLIP = ("method.layers=[8]", "prompts.deep_prompt_depth=4")
PROMPTAD = ("backbone.precision=fp32", "method.epochs=2", "method.progress=false", "method.map_size=80")


def compose_config(tmp: Path, method: str, shots: int, *extra: str, backbone: str = "tiny"):
    size = [f"backbone.image_size={SIZE}"] if backbone == "tiny" else ["backbone.pretrained=null"]
    overrides = [f"backbone={backbone}", *size, f"paths.output_dir={tmp}", f"paths.cache_dir={tmp / 'cache'}"]
    return composed("train", [*overrides, f"method={method}", f"shots={shots}", *extra])


def build_method(cfg, shots: int, setup: bool = True):
    """The method of ``cfg`` set up (``setup``) for category ``widget``, its learnable parameters moved
    off their init (as training would), with ``shots`` random references."""
    method = build(
        cfg.method, backbone=build(cfg.backbone), prompts=build(cfg.prompts), shots=shots, text_cache_dir=None
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in method.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    size = method.backbone.image_size
    references = torch.rand(shots, 3, size, size, generator=generator) if shots else None
    if setup:
        method.setup_category("widget", references)
    return method


def make_detector(root: Path, method_name: str, shots: int, *extra: str, backbone: str = "tiny") -> Path:
    cfg = compose_config(root / "run", method_name, shots, *extra, backbone=backbone)
    method = build_method(cfg, shots)
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    # The set a run would have scored: its set statistics (APRIL-GAN few-shot) are frozen into the detector.
    size = method.backbone.image_size
    scored = method.predict_images(torch.rand(5, 3, size, size, generator=torch.Generator().manual_seed(2)))
    accept = "accept" if method.transductive else "refuse"
    folder = root / f"{method_name}-{shots}"
    return save_detector(folder, method, "widget", config, None, method_name, scored, set_dependence=accept)


def run_onnx(path: Path, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels.numpy()}))


#: The text classifier is a constant of the graph whatever sentences made it: two prompts keep it cheap.
TWO = ("prompts=two_prompt",)
CASES = [
    # clip 0-shot: test_the_graph_file_follows_the_umask_like_the_detector_files exports and checks it.
    ("clip", 0, TWO),
    # One window scale: the zero-shot graph differs from the 2-shot one (both scales) by its missing memory.
    ("winclip", 0, (*TWO, "method.scales=[2]")),
    ("winclip", 2, TWO),
    ("aprillab", 0, TWO),  # trained projections (moved off their init)
    ("aprillab", 2, TWO),  # + few-shot memory and the set-level score over the batch
    ("anomalyclip", 0, ANOMALYCLIP),  # learned prompts, DPAM, Gaussian blur
    ("faprompt", 0, ("prompts.deep_prompt_depth=4",)),  # per-image prompts: the text encoder in the graph
]
#: Cases whose graph another default-suite test exports and checks against Detector.score (in `make
#: test-all` they run here too). The few-shot graphs of WinCLIP and APRIL-GAN are their zero-shot graphs
#: plus the memory terms (``if few_shot`` / ``if has_memory`` in ``score``), so the 2-shot checks cover
#: the zero-shot ops as well.
COVERED_ELSEWHERE = {
    ("clip", 0),  # test_the_graph_file_follows_the_umask_like_the_detector_files
    ("winclip", 0),  # the winclip-2shot case below
    # test_command_line_writes_the_graph_with_its_metadata: the same 2-shot detector, one-image batch.
    ("aprillab", 0),
    ("aprillab", 2),
}


@pytest.mark.parametrize(
    ("method", "shots", "extra"),
    [
        pytest.param(
            m,
            s,
            e,
            id=f"{m}-{s}shot",
            marks=[pytest.mark.slow] if (m, s) in COVERED_ELSEWHERE else [],
        )
        for m, s, e in CASES
    ],
)
def test_onnxruntime_matches_the_detector(tmp_path, method, shots, extra):
    folder = make_detector(tmp_path, method, shots, *extra)
    result = export_onnx(folder)  # checks a batch of 3 (traced with 2) against Detector.score
    assert result.path == folder / "model.onnx"
    assert result.score_delta <= TOLERANCE and result.map_delta <= TOLERANCE


def test_command_line_writes_the_graph_with_its_metadata(tmp_path, capsys):
    folder = make_detector(tmp_path, "aprillab", 2, *TWO)  # few-shot memory and the set-level step
    out = tmp_path / "exported" / "aprillab.onnx"
    assert main([f"detector={folder}", "format=onnx", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "onnxruntime vs PyTorch max |delta|" in printed
    # One image (traced with two): the batch axis is dynamic, the set-level step frozen in the graph.
    detector = Detector.load(folder)
    images = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    expected = detector.score(images)
    score, maps = run_onnx(out, normalize(detector, images))
    assert score.shape == (1,) and maps.shape == (1, SIZE, SIZE)
    np.testing.assert_allclose(score, expected.image_score.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(maps, expected.anomaly_map.numpy(), atol=TOLERANCE, rtol=0)
    model = onnx.load(str(out))
    meta = {entry.key: entry.value for entry in model.metadata_props}
    assert meta["anomaly_vlm.method"] == "aprillab" and meta["anomaly_vlm.category"] == "widget"
    assert meta["anomaly_vlm.image_size"] == str(SIZE)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"  # the dynamic batch axis


def test_the_graph_file_follows_the_umask_like_the_detector_files(tmp_path):
    # 0o027 (-> 0o640) is neither the usual 0o022 nor 0o002: a fixed 0o644, 0o664 or 0o600 fails.
    umask = 0o027
    previous = os.umask(umask)
    try:
        folder = make_detector(tmp_path, "clip", 0, *TWO)
        result = export_onnx(folder)
    finally:
        os.umask(previous)
    # The same export is the default suite's check of the CLIP baseline's graph (the clip-0shot case).
    assert result.score_delta <= TOLERANCE and result.map_delta <= TOLERANCE
    expected = 0o666 & ~umask
    assert stat.S_IMODE(result.path.stat().st_mode) == expected
    others = [path for path in folder.iterdir() if path.is_file() and path != result.path]
    assert others and {stat.S_IMODE(path.stat().st_mode) for path in others} == {expected}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["format=onnx"], "detector=<folder> is required"),
        (["detector=x", "colour=red"], "unknown option 'colour'"),
        (["detector=x", "format=tflite"], "format=tflite is not supported"),
        (["detector=x", "opset=high"], "opset=high is not an integer"),
        (["detector=x", "opset=9"], "opset=9 is not supported (choose 14..20)"),
        (["detector"], "argument 'detector' is not key=value"),
    ],
)
def test_command_line_mistakes_are_one_error_line(capsys, arguments, message):
    assert main(arguments) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_a_folder_that_is_no_detector_is_named(tmp_path, capsys):
    assert main([f"detector={tmp_path}"]) == 1
    assert f"error: detector={tmp_path} is not a detector folder" in capsys.readouterr().err


def test_transductive_musc_says_why_it_cannot_be_exported(tmp_path, capsys):
    folder = make_detector(tmp_path, "musc", 0)
    assert main([f"detector={folder}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: method musc cannot be exported: it is transductive")
    assert not (folder / "model.onnx").exists()


def test_exportability_is_a_declared_capability():
    class Plain:
        def score(self, features):
            return None

    class Declined(Plain):
        export_unsupported = "its scores need the whole test set"

        def export_module(self):
            raise AssertionError("never built")

    with pytest.raises(NotExportableError, match="declares no export graph"):
        export_module(Plain(), "newmethod")
    with pytest.raises(NotExportableError, match="newmethod cannot be exported: its scores need the whole"):
        export_module(Declined(), "newmethod")


# ----- export-friendly rewrites equal what they replace -----------------------------------------------
@pytest.mark.parametrize(("in_size", "out_size"), [(400, 240), (80, 96), (37, 518)])
def test_antialiased_resize_as_matrix_products_equals_interpolate(in_size, out_size):
    maps = torch.rand(2, in_size, in_size, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(
        maps[:, None], size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True
    )[:, 0]
    resized = resize_with_matrices(maps, *resize_matrices(in_size, out_size, antialias=True))
    assert (resized - expected).abs().max() <= 2e-5


def test_aprillab_set_step_without_branches_equals_the_formula(tmp_path):
    method = build_method(compose_config(tmp_path, "aprillab", 1, *TWO), 1, setup=False)
    text = torch.tensor([0.2, 0.7, 0.4])
    maps = torch.zeros(3, 4, 4)
    for maxima, normalised in (
        (torch.tensor([1.0, 3.0, 2.0]), torch.tensor([0.0, 1.0, 0.5])),
        (torch.tensor([2.0, 2.0, 2.0]), torch.zeros(3)),  # equal maxima: the normalised term is 0
    ):
        extras = {"text_probability": text, "map_max": maxima}
        scored = method.postprocess_set(Prediction(text, maps, extras))
        torch.testing.assert_close(scored.image_score, 0.5 * (text + normalised))


def test_winclip_unchunked_windows_equal_the_chunked_pass(tmp_path):
    cfg = compose_config(tmp_path, "winclip", 0, "method.window_batch_size=10", *TWO)
    model = build_method(cfg, 0, setup=False).model
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    chunked = model.frozen_features(images)
    whole = model.frozen_features(model.backbone.normalize(images), normalized=True, chunked=False)
    for key, value in chunked.items():
        torch.testing.assert_close(whole[key], value, atol=1e-5, rtol=0)


def test_promptad_graph_matches_the_method_in_onnxruntime(tmp_path):
    """PromptAD's graph (BGR test images, antialiased resize as matrices) on the live method."""
    method = build_method(compose_config(tmp_path, "promptad", 2, *PROMPTAD), 2).eval()
    path = tmp_path / "promptad.onnx"
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    pixels = method.backbone.normalize(images)
    with _tracing_friendly():
        torch.onnx.export(
            method.export_module().eval(),
            (pixels[:2],),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
        )
    with torch.no_grad():
        expected = method.postprocess_set(method.predict_images(images))
    score, maps = run_onnx(path, pixels)
    np.testing.assert_allclose(score, expected.image_score.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(maps, expected.anomaly_map.numpy(), atol=TOLERANCE, rtol=0)


# ----- a real architecture with random weights ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("method", "shots"), [("clip", 0), ("winclip", 1)])
def test_real_architecture_matches_in_onnxruntime(tmp_path, method, shots):
    """ViT-B-16-plus-240 (random weights) at 240 px: 15x15 grid, 196 + 169 windows per image."""
    folder = make_detector(tmp_path, method, shots, *TWO, backbone="vit_b16_plus_240")
    result = export_onnx(folder)
    assert result.score_delta <= TOLERANCE and result.map_delta <= TOLERANCE
