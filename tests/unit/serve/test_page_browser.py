"""The web page in a real browser (Debian's headless chromium, driven over the DevTools protocol on a pipe).

Slow (``make test-all``): starts the service on a free port, opens ``/``, uploads two images through the
file input, and checks the cards against the API's JSON (scores, ok/defect badges, drawn overlays), that
the threshold slider re-decides the badges without a request, and that nothing was logged as an error.
Skips, saying why, where chromium is missing and cannot be installed (as the report's browser test).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from anomaly_vlm.serve import ServeSettings, create_app

from .conftest import png_bytes
from .test_server import Server

pytestmark = pytest.mark.slow


def _browser() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and apt-get cannot install it here (not root or no apt-get)")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(command)}): {done.stderr.strip()[-300:]}")
    return shutil.which("chromium") or pytest.skip("apt-get installed chromium but it is not on PATH")


class DevTools:
    """Chromium's DevTools protocol over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, NUL-framed JSON)."""

    def __init__(self, browser: str, profile: Path) -> None:
        to_browser, self._in = os.pipe()
        self._out, from_browser = os.pipe()

        def wire() -> None:  # runs in the child before exec
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.process = subprocess.Popen(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            preexec_fn=wire,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def _read(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no message from the browser")
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed the pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._in, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def evaluate(self, expression: str):
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.call("Runtime.evaluate", params)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"never true: {expression}")

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(str(details.get("exception", {}).get("description") or details.get("text")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(json.dumps(params["args"])[:300])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", "")[:300])
        return found

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)
        os.close(self._in)
        os.close(self._out)


def test_the_page_scores_two_images_and_the_slider_re_decides(detectors, tmp_path):
    browser = _browser()
    # Each request alone (the page sends four at once): the API's numbers below are then bit-identical.
    settings = ServeSettings(detectors={"clip": detectors["clip"]}, batching=False)
    files = []
    for index in range(2):
        path = tmp_path / f"part-{index}.png"
        path.write_bytes(png_bytes(20 + index, size=(96, 80)))
        files.append(path)
    with Server(create_app(settings)) as url:
        for _ in range(300):
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
            time.sleep(0.05)
        expected = {}
        for path in files:
            response = httpx.post(
                f"{url}/v1/detectors/clip/predict?maps=true&masks=true",
                files=[("files", (path.name, path.read_bytes(), "image/png"))],
            )
            expected[path.name] = response.json()["images"][0]
        tools = DevTools(browser, tmp_path / "profile")
        try:
            target = tools.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            tools.session = tools.call(
                "Target.attachToTarget", {"targetId": target, "flatten": True}, session=False
            )["sessionId"]
            for domain in ("Runtime", "Log", "Page", "DOM"):
                tools.call(f"{domain}.enable")
            tools.call("Page.navigate", {"url": f"{url}/"})
            tools.wait_for("document.querySelectorAll('#detector option').length === 1")
            root = tools.call("DOM.getDocument")["root"]["nodeId"]
            node = tools.call("DOM.querySelector", {"nodeId": root, "selector": "#files"})["nodeId"]
            tools.call("DOM.setFileInputFiles", {"nodeId": node, "files": [str(path) for path in files]})
            tools.wait_for(
                "document.body.dataset.pending === '0' && document.querySelectorAll('.card').length === 2 && "
                "Array.from(document.querySelectorAll('.card canvas')).every(c => c.dataset.overlay)"
            )
            cards = tools.evaluate(
                """Array.from(document.querySelectorAll('.card')).map(c => {
                  const canvas = c.querySelector('canvas');
                  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                  let lit = 0;
                  for (let i = 0; i < data.length; i += 4) { if (data[i] + data[i+1] + data[i+2]) lit++; }
                  return {name: c.dataset.name, score: parseFloat(c.dataset.score),
                          badge: c.querySelector('.badge').textContent, overlay: canvas.dataset.overlay,
                          lit: lit, pixels: data.length / 4};
                })"""
            )
            assert sorted(card["name"] for card in cards) == sorted(expected)
            for card in cards:
                api = expected[card["name"]]
                assert card["score"] == api["image_score"]
                assert card["badge"] == api["decision"]  # at the detector's own threshold
                assert card["overlay"] == ("heatmap mask" if api.get("mask_png") else "heatmap")
                assert card["lit"] > 0.5 * card["pixels"]  # the image and its overlay were drawn
            # The slider re-decides on the client: lowest position -> every image a defect, highest -> ok.
            for end, decision in (("min", "defect"), ("max", "ok")):
                badges = tools.evaluate(
                    f"""(() => {{ const s = document.getElementById('threshold');
                      s.value = s.{end}; s.dispatchEvent(new Event('input'));
                      const badges = document.querySelectorAll('.card .badge');
                      return Array.from(badges).map(b => b.textContent); }})()"""
                )
                assert badges == [decision, decision]
            # Between the two scores: each badge follows its own score.
            scores = sorted(card["score"] for card in cards)
            state = tools.evaluate(
                f"""(() => {{ const s = document.getElementById('threshold');
                  s.value = {(scores[0] + scores[1]) / 2}; s.dispatchEvent(new Event('input'));
                  return {{t: window.__inspection.threshold(),
                          cards: Array.from(document.querySelectorAll('.card')).map(c =>
                            [parseFloat(c.dataset.score), c.querySelector('.badge').textContent])}}; }})()"""
            )
            assert len({badge for _, badge in state["cards"]}) == 2 or scores[0] == scores[1]
            assert all(badge == ("defect" if score > state["t"] else "ok") for score, badge in state["cards"])
            csv = tools.evaluate("window.__inspection.csv()").strip().splitlines()
            assert csv[0].startswith("name,detector,image_score") and len(csv) == 3
            assert tools.errors() == []
            # The check itself can fail: a script error is seen.
            tools.evaluate("setTimeout(function () { throw new Error('deliberate'); }, 0); 1")
            tools.wait_for("new Promise(r => setTimeout(() => r(true), 100))")
            assert any("deliberate" in error for error in tools.errors())
        finally:
            tools.close()
