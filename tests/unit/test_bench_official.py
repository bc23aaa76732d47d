"""``python -m bench.perf official``: the timing loop, the official side's autocast and the command line.

The benchmark itself needs the official checkouts (``make bench-official``); the slow test runs its
``--quick`` check for every checkout named in the environment (APRILGAN_DIR, ANOMALYCLIP_DIR, MUSC_DIR,
PROMPTAD_DIR, ADACLIP_DIR) and is skipped without any.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.perf import official
from bench.report import BenchReport

ROOT = Path(__file__).resolve().parents[2]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    official.add_arguments(parser)
    return parser.parse_args(list(argv))


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def encode(self, x):
        out = self.linear(x)
        return out, [out * 2], out.dtype


def test_official_encoders_run_under_bf16_autocast_and_hand_back_float32():
    model = Encoder()
    x = torch.randn(2, 4)
    with official.encoders_under_autocast("amp-bf16", (model, "encode")):
        out, listed, inner_dtype = model.encode(x)
    assert inner_dtype == torch.bfloat16  # the encoder itself ran in mixed precision
    assert out.dtype == torch.float32 and listed[0].dtype == torch.float32  # NumPy-readable for their code
    assert "encode" not in model.__dict__  # the class's method is back
    assert model.encode(x)[2] == torch.float32
    with official.encoders_under_autocast("fp32", (model, "encode")):
        assert model.encode(x)[2] == torch.float32


def test_time_pair_alternates_sides_and_takes_the_peers_own_seconds():
    calls = []

    def ours():
        calls.append("ours")
        return torch.zeros(2), torch.zeros(2, 3, 3), None

    def theirs():
        calls.append("official")
        return torch.full((2,), 0.5), torch.ones(2, 3, 3), 4.0  # seconds measured in the peer process

    pair = official.Pair(ours, theirs, images=2, setting="test", before_theirs=lambda: calls.append("trim"))
    row = official.time_pair(pair, rounds=3)
    # warm-up, then who goes first alternates round by round; the peer trims its heap before each timed call
    assert calls == [
        *("ours", "official"),
        *("ours", "trim", "official"),
        *("trim", "official", "ours"),
        *("ours", "trim", "official"),
    ]
    assert row["official_s_per_image"] == 2.0  # the peer's 4 s over 2 images, not the call's wall time
    assert row["ratio"] == row["official_s_per_image"] / row["ours_s_per_image"]
    assert row["scores_max_delta"] == 0.5 and row["maps_max_delta"] == 1.0


def test_nothing_given_is_one_error_line_after_saying_what_is_skipped(capsys):
    with pytest.raises(SystemExit) as error:
        official.run(_args(), BenchReport("official"))
    assert str(error.value).startswith("error: no official code given: pass at least one of APRILGAN_DIR=DIR")
    out = capsys.readouterr().out
    for label in ("APRIL-GAN", "AnomalyCLIP", "MuSc", "PromptAD", "AdaCLIP", "WinCLIP"):
        assert f"skipped: {label}" in out


def test_a_wrong_precision_or_checkout_is_refused_before_anything_loads(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        official.run(_args("--precision", "fp32,fp16"), BenchReport("official"))
    assert str(error.value) == "error: --precision fp32,fp16: each mode must be one of fp32, amp-bf16"
    with pytest.raises(SystemExit) as error:
        official.run(_args("--official-musc", str(tmp_path)), BenchReport("official"))
    assert error.value.code == 2
    assert "is not a checkout of https://github.com/xrli-U/MuSc" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_times_every_method_whose_official_code_is_given(tmp_path):
    flags = {
        "APRILGAN_DIR": "--official-aprillab",
        "ANOMALYCLIP_DIR": "--official-anomalyclip",
        "MUSC_DIR": "--official-musc",
        "PROMPTAD_DIR": "--official-promptad",
        "ADACLIP_DIR": "--official-adaclip",
    }
    given = [(flag, os.environ[name]) for name, flag in flags.items() if os.environ.get(name)]
    if not given:
        pytest.skip("no official checkout named in the environment (APRILGAN_DIR, ...)")
    out = tmp_path / "official.json"
    command = [sys.executable, "-m", "bench.perf", "official", "--quick", "--json", str(out)]
    for flag, folder in given:
        command += [flag, folder]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]

    methods = json.loads(out.read_text())["results"]["methods"]
    assert len(methods) == len(given)
    for name, rows in methods.items():
        for precision in ("fp32", "amp-bf16"):
            assert rows[precision]["ours_s_per_image"] > 0, name
        # fp32: both sides computed the same thing (parity precision on these narrow models)
        assert rows["fp32"]["maps_max_delta"] < 1e-3 and rows["fp32"]["scores_max_delta"] < 1e-3, name


def test_methods_selects_a_subset_and_is_checked_before_anything_loads(tmp_path, capsys):
    assert official.selected_methods(None) == list(official.METHODS)
    assert official.selected_methods("musc, aprillab") == ["musc", "aprillab"]
    with pytest.raises(SystemExit) as error:
        official.run(_args("--methods", "musc,dino"), BenchReport("official"))
    assert str(error.value).startswith("error: --methods musc,dino: each name must be one of aprillab, ")
    with pytest.raises(SystemExit) as error:
        official.run(
            _args("--methods", "musc", "--official-aprillab", str(tmp_path)), BenchReport("official")
        )
    assert str(error.value) == (
        "error: --methods musc names musc, whose official code is not given: pass --official-musc (MUSC_DIR)"
    )
    # A checkout given for a method left out is not even looked at (tmp_path is no checkout): skipped.
    both = ("--official-aprillab", str(tmp_path), "--official-musc", str(tmp_path))
    with pytest.raises(SystemExit) as error:
        official.run(_args("--methods", "musc", *both), BenchReport("official"))
    assert error.value.code == 2  # the MuSc checkout is checked, and refused
    captured = capsys.readouterr()
    assert "is not a checkout of https://github.com/xrli-U/MuSc" in captured.err
    assert "VAND-APRIL-GAN" not in captured.err
    for label in ("APRIL-GAN zero-shot", "AnomalyCLIP zero-shot"):  # those before MuSc, which stops the run
        assert f"skipped: {label} (not in --methods)" in captured.out


def test_several_methods_run_one_child_interpreter_each_and_merge_their_reports(tmp_path, monkeypatch):
    """A process that already ran other checkouts' models times the next method slower: each method is
    measured as ``--methods <name>`` in its own interpreter, with the run's options passed on."""
    monkeypatch.setattr(official, "official_source", lambda name, value: Path(value))
    commands = []

    def child(command, cwd, check):
        commands.append(command)
        name = command[command.index("--methods") + 1]
        report = Path(command[command.index("--json") + 1])
        report.write_text(json.dumps({"results": {"methods": {name: {"fp32": {"ratio": 1.5}}}}}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(official.subprocess, "run", child)
    report = BenchReport("official")
    args = _args(
        "--official-musc",
        "/m",
        "--official-aprillab",
        "/a",
        "--precision",
        "fp32",
        "--rounds",
        "2",
        "--quick",
    )
    assert official.run(args, report) == 0
    assert [command[command.index("--methods") + 1] for command in commands] == ["aprillab", "musc"]
    aprillab = commands[0]
    assert aprillab[aprillab.index("--official-aprillab") + 1] == "/a" and "--official-musc" not in aprillab
    assert aprillab[aprillab.index("--rounds") + 1] == "2" and "--quick" in aprillab
    assert aprillab[aprillab.index("--precision") + 1] == "fp32"
    assert report.results["methods"] == {
        "aprillab": {"fp32": {"ratio": 1.5}},
        "musc": {"fp32": {"ratio": 1.5}},
    }

    def failing(command, cwd, check):
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(official.subprocess, "run", failing)
    with pytest.raises(SystemExit, match="bench-official for aprillab failed \\(exit 3\\)"):
        official.run(args, BenchReport("official"))
