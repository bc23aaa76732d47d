"""AnomalyDINO's commands: its make targets, the kNN benchmark, and make weights for DINOv2 configs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from anomaly_vlm.backbones import download
from anomaly_vlm.backbones.dinov2 import DinoViT, architecture

ROOT = Path(__file__).resolve().parents[4]


def _make(*target: str) -> str:
    command = ["make", "-n", "-o", ".venv/.installed", *target]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def test_make_targets():
    parity = _make("parity-anomalydino", "ANOMALYDINO_DIR=x", "DINOV2_DIR=y", "PARITY_ARGS=--shots 2")
    assert '-m bench.parity anomalydino --official "x" --dinov2 "y"' in parity and "--shots 2" in parity
    reproduce = _make("reproduce-anomalydino-visa")
    assert "experiment=anomalydino_visa shots=1,2,4,8,16 reference_seed=0,1,2" in reproduce
    assert "shots=0" not in reproduce  # the few-shot table; the batched zero-shot mode is another setting
    assert "-m bench.perf knn --quick" in _make("bench-knn", "BENCH_KNN_ARGS=--quick")


def test_knn_benchmark_checks_faiss_against_torch(capsys):
    pytest.importorskip("faiss")
    from bench.perf.__main__ import main

    assert main(["knn", "--quick"]) == 0
    assert "faiss ms/img" in capsys.readouterr().out


def test_make_weights_resolves_dinov2_configs(tmp_path, capsys):
    weights = tmp_path / "tiny.pth"
    torch.save(DinoViT(architecture("anomaly-vlm-tiny-dinov2")).state_dict(), weights)
    conf = tmp_path / "conf"
    conf.mkdir()
    common = "_target_: anomaly_vlm.backbones.FrozenDINOv2\nmodel: {model}\npretrained: {pretrained}\n"
    (conf / "a_file.yaml").write_text(common.format(model="anomaly-vlm-tiny-dinov2", pretrained=weights))
    (conf / "b_random.yaml").write_text(common.format(model="anomaly-vlm-tiny-dinov2", pretrained="null"))
    assert download.main(["--conf-dir", str(conf)]) == 0
    out = capsys.readouterr().out
    assert f"anomaly-vlm-tiny-dinov2:{weights} -> {weights}" in out and "b_random" in out
    # An unreleased tag is refused by the DINOv2 resolver (open_clip's would name open_clip tags).
    (conf / "c_tag.yaml").write_text(common.format(model="dinov2_vits14", pretrained="laion2b"))
    assert download.main(["--conf-dir", str(conf)]) == 1
    assert "neither a file nor a DINOv2 weight tag" in capsys.readouterr().err
