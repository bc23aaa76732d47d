"""``python train.py ...`` for tests, minus the 15 s of imports: children forked from a warm interpreter.

Importing torch, Lightning and open_clip takes ~17 s on a two-core CI machine, and the end-to-end tests
start dozens of entry-point processes. A *warm server* is a copy of the pytest worker itself, forked at
session start right after that worker imported those modules (which its collection imports anyway, so
the server costs no import of its own). The copy first undoes what pytest changed in the interpreter
(warnings filters, logging handlers, standard streams, import hooks, exception hooks, ``sys.path``),
then waits. Each request forks it: the child gets its own process, environment, working directory, argv
and stdin/stdout/stderr files, runs the script or module as ``__main__`` exactly as ``python`` would,
runs the ``atexit`` handlers and exits with the script's status. Tests keep process isolation and read
the same ``returncode``/``stdout``/``stderr`` as from :func:`subprocess.run`.

The worker forks before it runs any test or torch operation: its imports start no Python thread (checked),
and the only native threads they may start (the BLAS pools numpy loads, unless ``OMP_NUM_THREADS=1`` as
under ``make test``) are shut down at fork by the BLAS library's own handlers, so forking is safe. Where
forking is not available (not Linux), ``ANOMALY_VLM_TEST_FORK=0``, or the session started no server (see
``tests/conftest.py``), :meth:`WarmPython.run` is a plain :func:`subprocess.run`.
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

#: Imported once by the server; each is what a train/evaluate/export process imports first. Every module
#: of the ``anomaly_vlm`` package is imported too, and Hydra's plugin discovery runs (each ``train.py``
#: runs it): the worker's collection imports them anyway, and a child then compiles and imports none of
#: them again (``PYTHONDONTWRITEBYTECODE`` leaves no bytecode to reuse).
WARM_MODULES = (
    "torch",
    "lightning",
    "hydra",
    "omegaconf",
    "open_clip",
    "anomaly_vlm.config",
    "anomaly_vlm.tasks",
    "anomaly_vlm.entry",
    "skimage.io",  # the predictions' TIFF maps
)

#: Environment variables read when the interpreter starts (its streams, its warnings filters) or a module is
#: imported (huggingface_hub freezes its offline flag): a request whose values differ from the server's
#: runs as a plain subprocess instead.
IMPORT_TIME_VARIABLES = (
    "PYTHONUNBUFFERED",
    "PYTHONIOENCODING",
    "PYTHONWARNINGS",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "TRANSFORMERS_OFFLINE",
)


def forking_enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("ANOMALY_VLM_TEST_FORK", "1") != "0"


class WarmPython:
    """Client of one warm server; ``run`` mirrors ``subprocess.run(..., capture_output=True, text=True)``."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(env)
        self._server: ForkedServer | None = None

    def start(self) -> None:
        """Import :data:`WARM_MODULES` here and fork the server from this process. Call it before any test
        runs (``pytest_sessionstart``): a process that has run torch operations may hold thread pools a
        fork cannot copy."""
        if self._server is None:
            self._server = ForkedServer.fork()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
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
            or self._server is None
            or command[0] != sys.executable
            or any(env.get(name) != self.env.get(name) for name in IMPORT_TIME_VARIABLES)
        )
        if plain:
            with open(out, "w") as stdout, open(err, "w") as stderr:
                process = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
            return RunningCommand(command, folder, timeout, process=process)
        server = self._server
        if server.poll() is not None:
            raise RuntimeError(f"warm python server exited with status {server.returncode}")
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
        server: ForkedServer | None = None,
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


# ----- server side (a forked copy of the pytest worker) ---------------------------------------------------


def _run_child(request: dict, server_files: tuple[int, ...]) -> None:
    """In the forked child: become ``python <argv>`` and never return."""
    import atexit
    import runpy
    import signal

    os.setsid()  # its own process group: a timeout kills the job and everything it started
    for fd in server_files:  # the server's pipes are not the script's to hold open
        os.close(fd)
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
    _open_standard_streams()  # a fresh interpreter's buffering for these files
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


#: A release build's warnings filters before ``-W`` and ``PYTHONWARNINGS`` (CPython's ``init_filters``).
RELEASE_WARNING_FILTERS = (
    ("default", None, DeprecationWarning, "__main__", 0),
    ("ignore", None, DeprecationWarning, None, 0),
    ("ignore", None, PendingDeprecationWarning, None, 0),
    ("ignore", None, ImportWarning, None, 0),
    ("ignore", None, ResourceWarning, None, 0),
)

#: The pytest worker's standard streams, kept referenced in the server so that no copy of them is ever
#: finalized there (finalizing one would close a file descriptor the server or a child reuses).
_WORKER_STREAMS: list = []


class ForkedServer:
    """The server process seen from the worker: its pid, the request pipe and the reply pipe."""

    def __init__(self, pid: int, stdin, stdout) -> None:
        self.pid, self.stdin, self.stdout = pid, stdin, stdout
        self.returncode: int | None = None

    @classmethod
    def fork(cls) -> ForkedServer:
        import importlib
        import pkgutil

        threads_before = set(threading.enumerate())
        for name in WARM_MODULES:
            importlib.import_module(name)
        package = importlib.import_module("anomaly_vlm")
        for module in pkgutil.walk_packages(package.__path__, "anomaly_vlm."):
            if not module.name.endswith("__main__"):  # a __main__ runs its command when imported
                importlib.import_module(module.name)
        from hydra.core.plugins import Plugins

        Plugins.instance()
        started = set(threading.enumerate()) - threads_before
        if started:
            raise RuntimeError(f"warm python server: importing {WARM_MODULES} started threads {started}")
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the server: never returns into pytest
            status = 0
            try:
                os.close(request_write)
                os.close(reply_read)
                _become_plain_python()
                _serve(os.fdopen(request_read), os.fdopen(reply_write, "w", buffering=1))
            except BaseException:
                import traceback

                traceback.print_exc()
                status = 1
            finally:
                os._exit(status)
        os.close(request_read)
        os.close(reply_write)
        return cls(pid, os.fdopen(request_write, "w", buffering=1), os.fdopen(reply_read))

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def close(self, timeout: float = 30) -> None:
        """End the server (it stops at the end of its request stream) and reap it."""
        if self.poll() is None:
            self.stdin.close()
            self.returncode, _ = _wait(self.pid, timeout)
        self.stdout.close()


def _become_plain_python() -> None:
    """In the freshly forked server: undo what pytest changed in this interpreter, so a command run from it
    meets what ``python`` gives a script (the modules stay imported; that is the point)."""
    import faulthandler
    import logging
    import warnings

    # imports: pytest's assertion rewriter must not touch what a script imports
    sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_pytest")]
    # warnings: the interpreter's defaults, then its -W options and PYTHONWARNINGS, as at start-up
    warnings.filters[:] = list(RELEASE_WARNING_FILTERS)
    warnings._filters_mutated()
    warnings._processoptions(sys.warnoptions)
    warnings.showwarning = warnings._showwarning_orig
    if getattr(warnings._showwarnmsg_impl, "__module__", None) != "warnings":
        raise RuntimeError("warm python server: forked while warnings were being recorded")
    # logging: no handlers on the root logger, level WARNING
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    # hooks pytest installs to collect exceptions of threads and finalizers
    sys.excepthook = sys.__excepthook__
    threading.excepthook = threading.__excepthook__
    sys.unraisablehook = sys.__unraisablehook__
    faulthandler.disable()
    # standard streams: the worker's (pytest's capture) stay referenced, never finalized here
    _WORKER_STREAMS.extend([sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _open_standard_streams()
    # sys.path: the interpreter's own entries; each child puts its script's folder and PYTHONPATH in front
    tests = str(Path(__file__).resolve().parent)
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    added = {"", os.getcwd(), tests, str(Path(tests).parent), *pythonpath}
    sys.path[:] = ["", *(p for p in sys.path if p not in added)]
    # a child's garbage collections then leave the server's objects (and their memory pages) alone
    import gc

    gc.collect()
    gc.freeze()


def _open_standard_streams() -> None:
    """``sys.stdin``/``stdout``/``stderr`` over file descriptors 0-2, made as CPython makes them at start-up
    (``create_stdio``): unbuffered writes under ``-u``/``PYTHONUNBUFFERED``, else line buffering for a
    terminal and for stderr; the encoding and error handlers of the worker's own start-up streams."""
    import io

    originals = _WORKER_STREAMS[3:6] if _WORKER_STREAMS else [sys.__stdin__, sys.__stdout__, sys.__stderr__]
    unbuffered = isinstance(originals[1].buffer, io.FileIO)
    streams = []
    for fd, mode, original in zip((0, 1, 2), "rww", originals, strict=True):
        raw = io.FileIO(fd, mode, closefd=False)
        if mode == "w" and unbuffered:
            buffer = raw
        else:
            buffer = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
        streams.append(
            io.TextIOWrapper(
                buffer,
                encoding=original.encoding,
                errors=original.errors,
                line_buffering=not unbuffered and (os.isatty(fd) or fd == 2),
                write_through=mode == "w" and unbuffered,
            )
        )
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams


def _serve(requests, replies) -> None:
    """Fork one child per request line; answer each with its exit status, in order."""
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(request, server_files=(requests.fileno(), replies.fileno()))
        returncode, timed_out = _wait(pid, float(request["timeout"]))
        replies.write(json.dumps({"returncode": returncode, "timed_out": timed_out}) + "\n")
