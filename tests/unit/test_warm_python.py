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


INTERPRETER_STATE = """
import faulthandler, logging, sys, threading, warnings
warnings.warn("deprecated", DeprecationWarning)  # shown in __main__ only, by the release defaults
print("filters", warnings.filters)
print("root", logging.getLogger().handlers, logging.getLogger().level)
print("path", sys.path)
print("finders", [type(f).__name__ for f in sys.meta_path])
print("hooks", sys.excepthook is sys.__excepthook__, threading.excepthook is threading.__excepthook__,
      sys.unraisablehook is sys.__unraisablehook__, faulthandler.is_enabled())
print("streams", sys.stdout is sys.__stdout__, sys.stderr.errors, sys.stderr.line_buffering, sys.stdin.read())
"""

needs_server = pytest.mark.skipif(
    not forking_enabled() or shared_server()._server is None,
    reason="no warm server in this session (not Linux, ANOMALY_VLM_TEST_FORK=0, or not started)",
)


@needs_server
def test_a_child_of_the_forked_worker_meets_a_fresh_interpreter(tmp_path: Path) -> None:
    """The server is a copy of a pytest worker: pytest's warnings filters, log handlers, import hook,
    exception hooks, captured streams and sys.path entries must not reach the scripts it runs."""
    script = tmp_path / "state.py"
    script.write_text(INTERPRETER_STATE)
    env = {**shared_server().env, "PYTHONPATH": str(tmp_path / "extra")}
    warm, plain = _both([sys.executable, str(script)], tmp_path, env)
    assert warm.returncode == plain.returncode == 0, warm.stderr
    assert warm.stdout.splitlines() == plain.stdout.splitlines()
    assert warm.stderr == plain.stderr


def test_every_test_file_that_starts_entry_points_gets_the_warm_server() -> None:
    """A test file that uses the warm server outside ``WARM_SERVER_USERS`` would silently fall back to
    plain subprocesses (correct, but 15 s of imports per command) when run on its own."""
    from conftest import REPO_ROOT, WARM_SERVER_USERS

    users = [REPO_ROOT / user for user in WARM_SERVER_USERS]
    for path in sorted((REPO_ROOT / "tests").rglob("test_*.py")):
        text = path.read_text()
        if "run_python" in text or "submit_python" in text:
            assert any(path == user or user in path.parents for user in users), (
                f"{path.relative_to(REPO_ROOT)} starts commands through the warm server: "
                "add it to WARM_SERVER_USERS in tests/conftest.py"
            )


@needs_server
def test_a_script_sees_its_own_argv_cwd_environment_and_exit_status(script: Path, tmp_path: Path) -> None:
    env = {**shared_server().env, "WARM_PROBE": "seen"}
    warm, plain = _both([sys.executable, str(script), "7", "x=1"], tmp_path, env)
    assert (warm.returncode, warm.stdout, warm.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    assert warm.returncode == 7 and "env seen" in warm.stdout and f"cwd {tmp_path}" in warm.stdout


@needs_server
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


@needs_server
def test_a_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_python([sys.executable, "-c", "import time; time.sleep(30)"], cwd=tmp_path, timeout=0.2)
    # the server still serves the next command
    assert run_python([sys.executable, "-c", "print(1)"], cwd=tmp_path, timeout=60).stdout == "1\n"
