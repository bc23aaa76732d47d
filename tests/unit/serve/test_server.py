"""The service over a real socket (uvicorn in a thread): slow clients, deadlines, readiness; command line."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn

from anomaly_vlm.methods.contract import Prediction
from anomaly_vlm.serve import ServeSettings, UsageError, create_app, parse
from anomaly_vlm.serve.__main__ import main
from anomaly_vlm.serve.registry import ServedDetector

from .conftest import png_bytes


class SlowDetector(ServedDetector):
    """Scores every image 0 after ``seconds`` (a stand-in for a large model)."""

    def __init__(self, seconds: float) -> None:
        super().__init__("slow", Path("slow"), {"preprocessing": {"image_size": 16}, "method": "fake"}, 8)
        self.seconds = seconds
        self.release = threading.Event()

    def predict_requests(self, requests):
        self.release.wait(self.seconds)
        return [Prediction(torch.zeros(len(images)), torch.zeros(len(images), 16, 16)) for images in requests]


class Server:
    def __init__(self, app) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _settings(**kwargs) -> ServeSettings:
    return ServeSettings(detectors={"slow": Path("slow")}, **kwargs)


def test_a_slow_client_gets_408_and_holds_nothing_up():
    detector = SlowDetector(0.0)
    # 0.5 s: the other request is answered in ~0.05 s even on a loaded machine
    app = create_app(_settings(read_timeout_s=0.5, warmup=False), {"slow": detector})
    with Server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        slow = socket.create_connection((host, int(port)))
        # Headers and 10 of 1000 announced bytes, then nothing.
        slow.sendall(
            b"POST /v1/detectors/slow/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000\r\n\r\n" + b"\x89PNG\r\n\x1a\n\0\0"
        )
        started = time.monotonic()
        ok = httpx.post(
            f"{url}/v1/detectors/slow/predict", content=png_bytes(0), headers={"content-type": "image/png"}
        )
        assert ok.status_code == 200 and time.monotonic() - started < 0.45  # served while the slow one waits
        slow.settimeout(5)
        # Headers and body may come in separate packets: read until the announced body is in.
        answer = slow.recv(4096)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
        while len(body) < length and (chunk := slow.recv(4096)):
            body += chunk
            answer += chunk
        slow.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"read_timeout_s" in answer


def test_a_request_past_its_deadline_gets_503_and_the_service_recovers():
    detector = SlowDetector(2.0)
    app = create_app(_settings(request_timeout_s=0.3, warmup=False), {"slow": detector})
    with Server(app) as url:
        late = httpx.post(
            f"{url}/v1/detectors/slow/predict", content=png_bytes(0), headers={"content-type": "image/png"}
        )
        assert late.status_code == 503 and "request_timeout_s" in late.json()["detail"]
        detector.seconds = 0.0
        detector.release.set()
        ok = httpx.post(
            f"{url}/v1/detectors/slow/predict", content=png_bytes(1), headers={"content-type": "image/png"}
        )
        assert ok.status_code == 200


def test_not_ready_until_the_warm_up_pass_finished():
    detector = SlowDetector(30.0)
    app = create_app(_settings(), {"slow": detector})
    with Server(app) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 503
        response = httpx.post(
            f"{url}/v1/detectors/slow/predict", content=png_bytes(0), headers={"content-type": "image/png"}
        )
        assert response.status_code == 503 and "warming up" in response.json()["detail"]
        detector.seconds = 0.0
        detector.release.set()
        for _ in range(200):
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
            time.sleep(0.02)
        assert httpx.get(f"{url}/readyz").json()["status"] == "ready"


def test_command_line_keys(tmp_path):
    settings = parse(
        ["detector=a/disc", "detector.other=b/disc", "port=9000", "max_batch=4", "batching=false"]
    )
    assert settings.detectors == {"disc": Path("a/disc"), "other": Path("b/disc")}
    assert (settings.port, settings.max_batch, settings.batching, settings.host) == (
        9000,
        4,
        False,
        "127.0.0.1",
    )
    for argv, words in [
        ([], "detector=<folder> is required"),
        (["detector=a/disc", "detector=b/disc"], "two detectors are named 'disc'"),
        (["detector=a", "colour=red"], "unknown option 'colour'"),
        (["detector=a", "max_batch=lots"], "max_batch=lots is not an integer"),
        (["detector=a", "runtime=tensorrt"], "runtime=tensorrt must be one of"),
        (["detector.bad/name=a"], "detector name 'bad/name'"),
        (["detector=a", "max_upload_mb=0"], "max_upload_mb=0.0 must be positive"),
    ]:
        with pytest.raises(UsageError, match=words):
            parse(argv)


def test_command_line_mistakes_are_one_error_line(tmp_path, capsys):
    assert main([f"detector={tmp_path / 'missing'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "is not a detector folder" in err[0]
    assert main(["detector=x", "port=http"]) == 1
    assert capsys.readouterr().err.startswith("error: port=http is not an integer")
    assert main(["--help"]) == 0
    assert "max_upload_mb=" in capsys.readouterr().out


@pytest.mark.slow  # a fresh interpreter imports torch and loads the detector: tens of seconds on a busy CPU
def test_the_command_serves_the_page_and_the_api_offline(detectors, tmp_path):
    import os
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "anomaly_vlm.serve", f"detector={detectors['clip']}", f"port={port}"]
    server = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert server.poll() is None, server.stdout.read().decode()
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert "Anomaly inspection" in httpx.get(f"{url}/").text
        response = httpx.post(
            f"{url}/v1/detectors/clip-0/predict", files=[("files", ("a.png", png_bytes(0)))]
        )
        assert response.status_code == 200 and response.json()["images"][0]["decision"] in ("ok", "defect")
    finally:
        server.terminate()
        server.wait(30)
    assert list(tmp_path.iterdir()) == []  # it writes nothing where it runs
