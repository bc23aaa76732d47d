"""``python train.py ...`` for tests, minus the 15 s of imports: children forked from a warm interpreter.

Importing torch, Lightning and open_clip takes ~17 s on a two-core CI machine, and the end-to-end tests
start dozens of entry-point processes. A *warm server* is one plain interpreter (started once per
pytest worker, never touched by pytest) that imports those modules and then waits. Each request forks
it: the child gets its own process, environment, working directory, argv and stdin/stdout/stderr
files, runs the script or module as ``__main__`` exactly as ``python`` would, runs the ``atexit``
handlers and exits with the script's status. Tests keep process isolation and read the same
``returncode``/``stdout``/``stderr`` as from :func:`subprocess.run`.

The server never runs a torch operation, so it starts no threads and forking it is safe. Where forking
is not available (not Linux) or ``ANOMALY_VLM_TEST_FORK=0``, :meth:`WarmPython.run` is a plain
:func:`subprocess.run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

#: Imported once by the server; each is what a train/evaluate/export process imports first.
WARM_MODULES = (
    "torch",
    "lightning",
    "hydra",
    "omegaconf",
    "open_clip",
    "anomaly_vlm.config",
    "anomaly_vlm.tasks",
    "anomaly_vlm.entry",
)

#: Environment variables read when a module is imported (huggingface_hub freezes its offline flag):
#: a request whose values differ from the server's runs as a plain subprocess instead.
IMPORT_TIME_VARIABLES = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_OFFLINE")


def forking_enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("ANOMALY_VLM_TEST_FORK", "1") != "0"


class WarmPython:
    """Client of one warm server; ``run`` mirrors ``subprocess.run(..., capture_output=True, text=True)``."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(env)
        self._server: subprocess.Popen | None = None
        self._ready = False

    def start(self) -> None:
        """Start the server (its imports run in the background until the first :meth:`run`)."""
        if self._server is None or self._server.poll() is not None:
            self._server = subprocess.Popen(
                [sys.executable, __file__, "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self.env,
                text=True,
                bufsize=1,
            )
            self._ready = False

    def _ready_server(self) -> subprocess.Popen:
        self.start()
        if not self._ready:
            ready = self._server.stdout.readline().strip()
            if ready != "ready":
                raise RuntimeError(f"warm python server failed to start: {ready!r}")
            self._ready = True
        return self._server

    def close(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.stdin.close()
            self._server.wait(timeout=30)
        self._server = None

    def run(
        self, command: list[str], cwd: str | Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess:
        """Run ``command`` (``[sys.executable, script | -m module | -c code, ...]``) and capture its
        output as text."""
        return self.submit(command, cwd, env, timeout).result()

    def submit(
        self, command: list[str], cwd: str | Path, env: dict[str, str], timeout: float
    ) -> RunningCommand:
        """Start ``command`` and return at once (for a test that acts while it runs). The server runs one
        command at a time: collect this one's :meth:`RunningCommand.result` before the next."""
        folder = Path(tempfile.mkdtemp(prefix="warm_python_"))
        out, err = folder / "stdout", folder / "stderr"
        out.touch()
        err.touch()
        plain = (
            not forking_enabled()
            or command[0] != sys.executable
            or any(env.get(name) != self.env.get(name) for name in IMPORT_TIME_VARIABLES)
        )
        if plain:
            with open(out, "w") as stdout, open(err, "w") as stderr:
                process = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
            return RunningCommand(command, folder, timeout, process=process)
        server = self._ready_server()
        request = {
            "argv": command[1:],
            "cwd": str(cwd),
            "env": env,
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
            "server_threads": self.env.get("OMP_NUM_THREADS"),
        }
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        return RunningCommand(command, folder, timeout, server=server)


class RunningCommand:
    """A submitted command: its output so far, then its ``CompletedProcess``."""

    def __init__(
        self,
        command: list[str],
        folder: Path,
        timeout: float,
        process: subprocess.Popen | None = None,
        server: subprocess.Popen | None = None,
    ) -> None:
        self.command, self.folder, self.timeout = command, folder, timeout
        self._process, self._server = process, server

    def wait_for_output(self, text: str, timeout: float = 60) -> str:
        """Block until the command's stdout contains ``text``; returns that stdout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stdout = (self.folder / "stdout").read_text(errors="replace")
            if text in stdout:
                return stdout
            if self._ended():
                stderr = (self.folder / "stderr").read_text(errors="replace")
                raise AssertionError(f"{self.command} ended without {text!r} on stdout:\n{stderr[-3000:]}")
            time.sleep(0.02)
        raise AssertionError(f"{self.command}: no {text!r} on stdout within {timeout} s")

    def _ended(self) -> bool:
        if self._process is not None:
            return self._process.poll() is not None
        import select

        # the server replies once the command has ended; the reply stays unread until result()
        return bool(select.select([self._server.stdout.fileno()], [], [], 0)[0])

    def result(self) -> subprocess.CompletedProcess:
        """Wait for the command to end; raises ``subprocess.TimeoutExpired`` past its timeout."""
        try:
            if self._process is not None:
                try:
                    returncode, timed_out = self._process.wait(timeout=self.timeout), False
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    returncode, timed_out = self._process.wait(), True
            else:
                reply = self._server.stdout.readline()
                if not reply:
                    raise RuntimeError("warm python server died")
                status = json.loads(reply)
                returncode, timed_out = status["returncode"], status["timed_out"]
            stdout = (self.folder / "stdout").read_text(errors="replace")
            stderr = (self.folder / "stderr").read_text(errors="replace")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
        if timed_out:
            raise subprocess.TimeoutExpired(self.command, self.timeout, output=stdout, stderr=stderr)
        return subprocess.CompletedProcess(self.command, returncode, stdout, stderr)


_SHARED: WarmPython | None = None


def shared_server() -> WarmPython:
    """This process's warm server (created on first use, closed at exit)."""
    global _SHARED
    if _SHARED is None:
        import atexit

        _SHARED = WarmPython(dict(os.environ))
        atexit.register(_SHARED.close)
    return _SHARED


def run_python(
    command: list[str], *, cwd: str | Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True)`` through this process's warm server."""
    return shared_server().run(
        command, cwd=cwd, env=dict(os.environ) if env is None else env, timeout=timeout
    )


def submit_python(
    command: list[str], *, cwd: str | Path, env: dict[str, str] | None = None, timeout: float = 300
) -> RunningCommand:
    """Start ``command`` through this process's warm server and return while it runs."""
    environment = dict(os.environ) if env is None else env
    return shared_server().submit(command, cwd=cwd, env=environment, timeout=timeout)


# ----- server side (runs in its own interpreter: ``python warm_python.py --serve``) --------------------


def _run_child(request: dict) -> None:
    """In the forked child: become ``python <argv>`` and never return."""
    import atexit
    import runpy
    import signal

    os.setsid()  # its own process group: a timeout kills the job and everything it started
    # What the server created is the server's to clean up: a child must not run its exit finalizers or
    # the cleanups the server's imports registered. W&B's media folder (a TemporaryDirectory made when
    # wandb is imported, removed by an atexit hook of its own) would vanish for every later child.
    for finalizer in list(weakref.finalize._registry):
        finalizer.atexit = False
    wandb_media = sys.modules.get("wandb.sdk.data_types._private")
    if wandb_media is not None:
        atexit.unregister(wandb_media.MEDIA_TMP.cleanup)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for source, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(source, target)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads != request["server_threads"]:
        import torch  # the OpenMP runtime read OMP_NUM_THREADS when the server imported torch

        torch.set_num_threads(int(threads))
    argv = request["argv"]
    extra_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    code = 0
    try:
        if argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            sys.path[0:1] = ["", *extra_paths]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        elif argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0:1] = [os.getcwd(), *extra_paths]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(argv[0])
            sys.argv = [argv[0], *argv[1:]]
            sys.path[0:1] = [os.path.dirname(script), *extra_paths]
            runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        # The interpreter's own exit order: threads' exit hooks first (executors such as joblib's loky shut
        # their workers down there), then atexit (multiprocessing joins its children). atexit alone would
        # wait forever on workers nobody told to stop.
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, 9)
            os.waitpid(pid, 0)
            return -9, True
        time.sleep(0.02)


def serve() -> None:
    import importlib
    import threading

    # Replies travel on a private copy of stdout; fd 1 itself now points at stderr, so a module that
    # prints while importing cannot corrupt the protocol.
    reply_stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, as for `python train.py`
    for name in WARM_MODULES:
        importlib.import_module(name)
    if threading.active_count() != 1:
        raise SystemExit(f"warm python server: imports started {threading.active_count() - 1} threads")
    reply_stream.write("ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(request)
        returncode, timed_out = _wait(pid, float(request["timeout"]))
        reply_stream.write(json.dumps({"returncode": returncode, "timed_out": timed_out}) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
