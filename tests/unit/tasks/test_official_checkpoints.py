"""``make official-checkpoints`` against a local HTTP server serving a generated file (no network):
progress, resume of an interrupted transfer, pinned checksums, unpinned files checked by their layout."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import torch

from anomaly_vlm.methods.aprillab import AprilGANModule
from anomaly_vlm.methods.official_weights import ReleaseFile
from anomaly_vlm.tasks import official_checkpoints as oc


class _Server(http.server.ThreadingHTTPServer):
    """Serves ``payload`` at any path; ``cut`` stops the first response after that many bytes (the
    announced length stays the whole file); ``honour_range`` answers Range requests with 206."""

    payload = b""
    cut: int | None = None
    honour_range = True
    ranges: list[str | None]


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):  # noqa: N802 - the stdlib's name
        server: _Server = self.server  # type: ignore[assignment]
        data, asked = server.payload, self.headers.get("Range")
        server.ranges.append(asked)
        start = int(asked.removeprefix("bytes=").rstrip("-")) if asked and server.honour_range else 0
        if start >= len(data) and asked and server.honour_range:
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if server.cut is not None:
            body, server.cut = body[: server.cut], None
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.ranges = []
    # shutdown() waits for serve_forever's next poll: the default 0.5 s interval idled through every teardown.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _release_bytes(tmp_path: Path) -> bytes:
    """A generated APRIL-GAN-layout file (a few hundred KB, so the transfer takes several chunks)."""
    torch.manual_seed(0)
    layer = {
        f"fc.{i}.{name}": torch.randn(64, 256) if name == "weight" else torch.randn(64)
        for i in range(4)
        for name in ("weight", "bias")
    }
    path = tmp_path / "generated.pth"
    torch.save({"trainable_linearlayer": layer}, path)
    return path.read_bytes()


def _file(server: _Server, **pins) -> ReleaseFile:
    url = f"http://127.0.0.1:{server.server_address[1]}/exps/pretrained/visa_pretrained.pth"
    return ReleaseFile("visa_pretrained.pth", trained_on="VisA", tests=("mvtec",), url=url, **pins)


def test_a_download_verifies_its_pinned_sha256_and_is_not_fetched_twice(server, tmp_path):
    server.payload = _release_bytes(tmp_path)
    file = _file(server, sha256=hashlib.sha256(server.payload).hexdigest())
    path, how = oc.download(file, tmp_path / "weights", progress=True)
    assert path.read_bytes() == server.payload and how == "SHA-256 verified"
    assert not path.with_name(path.name + ".part").exists()
    path, how = oc.download(file, tmp_path / "weights")
    assert how.endswith("(already there)") and len(server.ranges) == 1


def test_an_interrupted_transfer_is_resumed_with_a_range_request(server, tmp_path):
    server.payload = _release_bytes(tmp_path)
    server.cut = 100_000
    file = _file(server, sha256=hashlib.sha256(server.payload).hexdigest())
    with pytest.raises(oc.DownloadError, match=r"run again to resume"):
        oc.download(file, tmp_path / "weights", progress=False)
    part = tmp_path / "weights" / "visa_pretrained.pth.part"
    assert part.stat().st_size == 100_000
    path, how = oc.download(file, tmp_path / "weights", progress=False)
    assert server.ranges == [None, "bytes=100000-"]
    assert path.read_bytes() == server.payload and how == "SHA-256 verified"


def test_a_server_that_ignores_the_range_sends_the_whole_file_again(server, tmp_path):
    server.payload = _release_bytes(tmp_path)
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "visa_pretrained.pth.part").write_bytes(b"stale bytes of something else")
    server.honour_range = False
    file = _file(server, sha256=hashlib.sha256(server.payload).hexdigest())
    path, _ = oc.download(file, folder, progress=False)
    assert path.read_bytes() == server.payload


def test_a_wrong_checksum_deletes_the_download_and_fails(server, tmp_path):
    server.payload = _release_bytes(tmp_path)
    file = _file(server, sha256="0" * 64)
    with pytest.raises(oc.DownloadError, match=r"SHA-256 .* is not the pinned 0000000000000000\.\.\. of "):
        oc.download(file, tmp_path / "weights", progress=False)
    assert list((tmp_path / "weights").iterdir()) == []


def test_the_git_blob_id_pin_is_gits_own_id(server, tmp_path):
    server.payload = _release_bytes(tmp_path)
    generated = tmp_path / "generated.pth"
    if shutil.which("git"):
        blob = subprocess.run(["git", "hash-object", str(generated)], capture_output=True, text=True).stdout
        assert oc.git_blob_id(generated) == blob.strip()
    path, how = oc.download(_file(server, git_blob=oc.git_blob_id(generated)), tmp_path / "w", progress=False)
    assert how == "git blob id verified"
    with pytest.raises(oc.DownloadError, match=r"git blob id .* is not the pinned"):
        oc.download(_file(server, git_blob="f" * 40), tmp_path / "other", progress=False)


def test_an_unpinned_file_is_checked_for_its_layout(server, tmp_path):
    server.payload = _release_bytes(tmp_path)
    weights = AprilGANModule.official_weights
    _, how = oc.download(_file(server), tmp_path / "a", weights, progress=False)
    assert how.startswith("key layout verified")
    buffer = tmp_path / "other.pth"
    torch.save({"prompt_learner": {"ctx_pos": torch.zeros(2)}}, buffer)
    server.payload = buffer.read_bytes()
    with pytest.raises(oc.DownloadError, match=r"is not a APRIL-GAN .* release file"):
        oc.download(_file(server), tmp_path / "b", weights, progress=False)
    assert list((tmp_path / "b").iterdir()) == []


def test_a_file_without_an_address_says_where_to_get_it(tmp_path):
    file = ReleaseFile("x.pth", trained_on="?", manual="https://drive.example/x")
    with pytest.raises(oc.DownloadError, match=r"no stable download address: get it from https://drive"):
        oc.download(file, tmp_path)


def test_path_of_the_ckpt_official_file(tmp_path, capsys):
    assert oc.main(["--dir", str(tmp_path), "--path", "aprillab", "mvtec"]) == 1
    assert "visa_pretrained.pth is missing: run `make official-checkpoints`" in capsys.readouterr().err
    (tmp_path / "aprillab").mkdir()
    (tmp_path / "aprillab" / "visa_pretrained.pth").write_bytes(b"x")
    assert oc.main(["--dir", str(tmp_path), "--path", "aprillab", "mvtec"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "aprillab" / "visa_pretrained.pth")
    assert oc.main(["--dir", str(tmp_path), "--path", "anomalyclip", "mvtec"]) == 1
    assert oc.main(["--dir", str(tmp_path), "--path", "aprillab", "btad"]) == 1
    assert "no released weights for data=btad" in capsys.readouterr().err


def test_the_command_downloads_every_declared_file_and_reports_failures(
    server, tmp_path, monkeypatch, capsys
):
    server.payload = _release_bytes(tmp_path)
    good = _file(server, sha256=hashlib.sha256(server.payload).hexdigest())
    bad = ReleaseFile("other.pth", trained_on="?", url=good.url, sha256="1" * 64)

    class Release(type(AprilGANModule.official_weights)):
        files = (good, bad)

    monkeypatch.setattr(oc, "releases", lambda: iter([("aprillab", Release())]))
    assert oc.main(["--dir", str(tmp_path / "w"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "aprillab     visa_pretrained.pth: SHA-256 verified" in captured.out
    assert "error: aprillab other.pth:" in captured.err
    assert (tmp_path / "w" / "aprillab" / "visa_pretrained.pth").read_bytes() == server.payload
