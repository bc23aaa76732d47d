"""The bench commands answer: ``python -m bench.parity`` / ``bench.perf`` and each harness's ``--help``.

The harnesses themselves need the official code and minutes of CPU (``make parity-*``); these checks keep
their command lines, option parsers and imports from rotting in between.
"""

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from warm_python import run_python

from bench.parity import METHODS
from bench.parity.__main__ import main as parity_main
from bench.perf import BENCHMARKS
from bench.perf.__main__ import main as perf_main
from bench.report import BenchReport

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return run_python([sys.executable, "-m", *args], cwd=ROOT, env=env, timeout=300)


def _help_in_process(main, name: str) -> tuple[int, str]:
    """``main([name, "--help"])`` in this process: the harness's imports and option parser, without a
    process per harness (test_help_lists_every_command and the checkout errors below run ``python -m``)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    return exited.value.code, out.getvalue()


@pytest.mark.parametrize(("package", "names"), [("bench.parity", METHODS), ("bench.perf", BENCHMARKS)])
def test_help_lists_every_command(package, names):
    result = _bench(package, "--help")
    assert result.returncode == 0, result.stderr
    for name in names:
        assert re.search(rf"^  {re.escape(name)}\s", result.stdout, re.MULTILINE), name


def test_every_parity_harness_answers_help():
    assert set(METHODS) >= {
        "winclip",
        "aprillab",
        "anomalyclip",
        "adaclip",
        "musc",
        "promptad",
        "aaclip",
        "faprompt",
    }
    for method in METHODS:
        code, out = _help_in_process(parity_main, method)
        assert code == 0, method
        assert f"python -m bench.parity {method}" in out
        assert "--official" in out and "--json FILE" in out


def test_every_benchmark_answers_help():
    for name in BENCHMARKS:
        code, out = _help_in_process(perf_main, name)
        assert code == 0, name
        assert f"python -m bench.perf {name}" in out and "--json FILE" in out


def test_a_missing_or_wrong_official_checkout_is_one_error_line(tmp_path):
    missing = _bench("bench.parity", "aprillab")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "error: no official checkout: pass --official DIR (make parity-aprillab APRILGAN_DIR=DIR); "
        "get the official code with: git clone https://github.com/ByChelsea/VAND-APRIL-GAN"
    ]
    wrong = _bench("bench.parity", "musc", "--official", str(tmp_path))
    assert wrong.returncode == 2
    assert wrong.stderr.startswith(
        f"error: --official {tmp_path} is not a checkout of https://github.com/xrli-U/MuSc"
    )
    assert "(no models/musc.py in it)" in wrong.stderr


def test_an_unknown_command_exits_2():
    result = _bench("bench.parity", "patchcore")
    assert result.returncode == 2 and "unknown command 'patchcore'" in result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_targets_call_the_bench_commands():
    targets = {
        "parity-winclip": "-m bench.parity winclip",
        "parity-aprillab APRILGAN_DIR=x": '-m bench.parity aprillab --official "x"',
        "parity-anomalyclip ANOMALYCLIP_DIR=x": '-m bench.parity anomalyclip --official "x"',
        "parity-adaclip ADACLIP_DIR=x PARITY_ARGS=--no-fp16-rounding": (
            '-m bench.parity adaclip --official "x" --no-fp16-rounding'
        ),
        "parity-aaclip AACLIP_DIR=x PARITY_ARGS=--corrected": (
            '-m bench.parity aaclip --official "x" --corrected'
        ),
        "parity-musc MUSC_DIR=x JSON=out.json": '-m bench.parity musc --official "x" --json "out.json"',
        "parity-promptad PROMPTAD_DIR=x PARITY_PRECISION=fp16": (
            '-m bench.parity promptad --official "x" --precision fp16'
        ),
        "bench-metrics": "-m bench.perf metrics",
        "bench-winclip": "-m bench.perf winclip",
        "bench-cache BENCH_CACHE_ARGS=--part=winclip": "-m bench.perf cache --part=winclip",
        "bench-export": "-m bench.perf export",
        "bench-precision BENCH_PRECISION_ARGS=--quick": "-m bench.perf precision --quick",
        "bench-official APRILGAN_DIR=x": '-m bench.perf official --official-aprillab "x"',
        "bench-official ANOMALYCLIP_DIR=a MUSC_DIR=m PROMPTAD_DIR=p ADACLIP_DIR=d": (
            '-m bench.perf official --official-anomalyclip "a" --official-musc "m" '
            '--official-promptad "p" --official-adaclip "d"'
        ),
    }
    for target, expected in targets.items():
        # -n prints the commands; -o keeps make from (re)building the environments it would depend on.
        command = ["make", "-n", "-o", ".venv/.installed", "-o", ".venv-parity/.installed", *target.split()]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert expected in " ".join(result.stdout.split()), f"{target}: {result.stdout}"


def test_no_bench_file_edits_sys_path():
    # Run from the repository root, `bench` and `anomaly_vlm` import as they are; only the official
    # checkouts are put on sys.path, by bench.parity.official.official_imports.
    edit = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\[")
    for path in (ROOT / "bench").rglob("*.py"):
        if path.name != "official.py":
            assert not edit.search(path.read_text()), path


@pytest.mark.slow
def test_export_benchmark_runs_from_a_fresh_interpreter_and_writes_its_json(tmp_path):
    # A plain process (not the warm one, which has the typed config schema imported already): the
    # benchmark composes conf/train.yaml itself.
    out = tmp_path / "export.json"
    command = [sys.executable, "-m", "bench.perf", "export", "--cases", "tiny", "--methods", "clip"]
    command += ["--repeats", "1", "--batch", "2", "--work", str(tmp_path / "work"), "--json", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = BenchReport.read_json(out)
    assert report.benchmark == "export" and report.status == 0
    assert report.settings["cases"] == "tiny" and report.environment["torch_threads"] == 1
    (case,) = report.results["cases"]
    assert (case["backbone"], case["method"], case["shots"]) == ("tiny", "clip", 0)
    assert case["score_delta"] < 1e-4 and case["onnx_ms_b1"] > 0 and case["torch_ms_b2"] > 0
