"""The warm interpreter of ``tests/warm_python.py`` behaves like ``subprocess.run`` of the same command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from warm_python import forking_enabled, run_python, shared_server

SCRIPT = """
import os, sys
print("argv", sys.argv[1:])
print("cwd", os.getcwd())
print("env", os.environ.get("WARM_PROBE"))
print("oops", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "probe.py"
    path.write_text(SCRIPT)
    return path


def _both(command: list[str], cwd: Path, env: dict[str, str]) -> tuple:
    warm = run_python(command, cwd=cwd, env=env, timeout=60)
    plain = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    return warm, plain


@pytest.mark.skipif(not forking_enabled(), reason="forking is off (not Linux or ANOMALY_VLM_TEST_FORK=0)")
def test_a_script_sees_its_own_argv_cwd_environment_and_exit_status(script: Path, tmp_path: Path) -> None:
    env = {**shared_server().env, "WARM_PROBE": "seen"}
    warm, plain = _both([sys.executable, str(script), "7", "x=1"], tmp_path, env)
    assert (warm.returncode, warm.stdout, warm.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    assert warm.returncode == 7 and "env seen" in warm.stdout and f"cwd {tmp_path}" in warm.stdout


@pytest.mark.skipif(not forking_enabled(), reason="forking is off (not Linux or ANOMALY_VLM_TEST_FORK=0)")
def test_modules_code_and_errors_run_as_python_runs_them(tmp_path: Path) -> None:
    env = dict(shared_server().env)
    commands = [
        [sys.executable, "-c", "import sys; print(sys.argv); raise SystemExit('bad')", "a"],
        [sys.executable, "-m", "json.tool", "--help"],
        [sys.executable, "-c", "raise ValueError('boom')"],
    ]
    for command in commands:
        warm, plain = _both(command, tmp_path, env)
        assert warm.returncode == plain.returncode, command
        assert warm.stdout == plain.stdout, command
        # the same last line (a traceback's frames name the file that ran the code)
        assert warm.stderr.strip().splitlines()[-1:] == plain.stderr.strip().splitlines()[-1:], command


@pytest.mark.skipif(not forking_enabled(), reason="forking is off (not Linux or ANOMALY_VLM_TEST_FORK=0)")
def test_a_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_python([sys.executable, "-c", "import time; time.sleep(30)"], cwd=tmp_path, timeout=0.2)
    # the server still serves the next command
    assert run_python([sys.executable, "-c", "print(1)"], cwd=tmp_path, timeout=60).stdout == "1\n"
