"""The service's REST API in process: results equal to Detector.predict, metadata, every error status."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from anomaly_vlm.deploy import Detector
from anomaly_vlm.serve import ServeSettings, create_app
from anomaly_vlm.serve.images import decode_image

from .conftest import SIZE, png_bytes, wait_ready


@pytest.fixture(scope="module")
def client(detectors):
    # "clip2": the clip detector again under another name (same backbone config and weights).
    folders = {**detectors, "clip2": detectors["clip"]}
    settings = ServeSettings(detectors=folders, max_images=3, max_upload_mb=0.5, max_image_pixels=500_000)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def multipart(*images: tuple[str, bytes], kind: str = "image/png") -> list:
    return [("files", (name, data, kind)) for name, data in images]


def test_results_are_those_of_detector_predict(client, detectors, tmp_path):
    files = [("a.png", png_bytes(0)), ("b.jpg", png_bytes(1, fmt="JPEG"))]
    response = client.post("/v1/detectors/clip/predict?maps=true&masks=true", files=multipart(*files))
    assert response.status_code == 200
    body = response.json()
    assert [image["name"] for image in body["images"]] == ["a.png", "b.jpg"]
    # Detector.predict of the same files, read from disk as a run reads them.
    paths = []
    for name, data in files:
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    expected = Detector.load(detectors["clip"]).predict(paths)
    for index, image in enumerate(body["images"]):
        assert image["image_score"] == float(expected.image_score[index].double())  # |delta| = 0
        assert image["decision"] == expected.decision[index]
        assert image["defect_area"] == expected.defect_area[index]
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(image["mask_png"])))) > 0
        assert np.array_equal(mask, expected.masks[index].numpy())
        # The map PNG is the map over its own range, to 16 bits.
        level = np.asarray(Image.open(io.BytesIO(base64.b64decode(image["anomaly_map_png"])))).astype(
            np.float64
        )
        values = image["map_min"] + level / 65535 * (image["map_max"] - image["map_min"])
        reference = expected.anomaly_map[index].double().numpy()
        assert image["map_min"] == reference.min() and image["map_max"] == reference.max()
        assert np.abs(values - reference).max() <= (reference.max() - reference.min()) / 65535
    # One image as the raw body: Detector.predict of that one file.
    raw = client.post(
        "/v1/detectors/clip/predict", content=files[0][1], headers={"content-type": "image/png"}
    )
    assert raw.status_code == 200
    alone = Detector.load(detectors["clip"]).predict(paths[0])
    assert raw.json()["images"][0]["image_score"] == float(alone.image_score[0].double())


def test_decoded_upload_is_the_tensor_a_run_reads_from_the_file(tmp_path):
    from anomaly_vlm.data.image_io import load_image

    for index, fmt in enumerate(("PNG", "JPEG", "BMP", "WEBP", "TIFF")):
        data = png_bytes(index, fmt=fmt)
        path = tmp_path / f"x.{fmt.lower()}"
        path.write_bytes(data)
        assert torch.equal(decode_image(data, SIZE, 10**6), load_image(str(path), SIZE))


def test_metadata_health_readiness_openapi_and_page(client):
    listed = client.get("/v1/detectors").json()
    assert {d["name"] for d in listed["detectors"]} == {"clip", "clip2", "aprillab"}
    clip = client.get("/v1/detectors/clip").json()
    assert clip["method"] == "clip" and clip["input_size"] == SIZE and clip["thresholds"]["image"] is not None
    assert clip["backbone"]["model"] == "anomaly-vlm-tiny" and clip["versions"]["torch"]
    assert "path" not in str(clip)  # nothing of the server's file system
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    schema = client.get("/openapi.json").json()
    assert "/v1/detectors/{name}/predict" in schema["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "<title>Anomaly inspection</title>" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline


def test_detectors_with_the_same_backbone_share_one(client):
    served = client.app.state.service.detectors
    assert served["clip"].detector.method.backbone is served["clip2"].detector.method.backbone
    # The APRIL-GAN detector's backbone has other weights (another seed): its own.
    assert served["aprillab"].detector.method.backbone is not served["clip"].detector.method.backbone


def _solid_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` pixels, with almost no data (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "kind", "status", "words"),
    [
        (b"GIF89a not really", "image/png", 415, "not an image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "image/png", 415, "not an image"),
        (png_bytes(3)[:400], "image/png", 422, "truncated"),
        (_bomb_png(100_000, 100_000), "image/png", 422, "over the limit"),
        (_solid_png(800, 700), "image/png", 422, "max_image_pixels"),
        (b"", "image/png", 422, "empty"),
        (png_bytes(5), "text/plain", 415, "content type"),
    ],
    ids=["not-image", "eps", "truncated", "bomb", "over-pixels", "empty", "wrong-type"],
)
def test_bad_images_get_415_or_422_and_the_service_keeps_serving(client, data, kind, status, words):
    response = client.post("/v1/detectors/clip/predict", content=data, headers={"content-type": kind})
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert (
        client.post("/v1/detectors/clip/predict", files=multipart(("ok.png", png_bytes(0)))).status_code
        == 200
    )


def test_a_bad_part_of_a_multipart_upload_is_refused(client):
    files = [("good.png", png_bytes(0), "image/png"), ("notes.txt", b"hello", "text/plain")]
    response = client.post("/v1/detectors/clip/predict", files=[("files", item) for item in files])
    assert response.status_code == 415 and "notes.txt" in response.json()["detail"]


def test_bodies_over_max_upload_mb_and_too_many_images_get_413(client):
    big = b"\0" * (600 * 1024)
    declared = client.post("/v1/detectors/clip/predict", content=big, headers={"content-type": "image/png"})
    assert declared.status_code == 413 and "max_upload_mb" in declared.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(12):
            yield b"\0" * (64 * 1024)

    streamed = client.post(
        "/v1/detectors/clip/predict", content=chunks(), headers={"content-type": "image/png"}
    )
    assert streamed.status_code == 413
    many = multipart(*[(f"{i}.png", png_bytes(i, size=(16, 16))) for i in range(4)])
    response = client.post("/v1/detectors/clip/predict", files=many)
    assert response.status_code == 413 and "max_images" in response.json()["detail"]
    # Far more parts: the multipart parser stops counting at max_images + 1.
    lots = multipart(*[(f"{i}.png", png_bytes(i, size=(4, 4))) for i in range(12)])
    assert client.post("/v1/detectors/clip/predict", files=lots).status_code == 413
    assert client.post("/v1/detectors/clip/predict", files=many[:3]).status_code == 200


@pytest.mark.parametrize("name", ["nope", "..", "%2e%2e%2f%2e%2e%2fetc", "clip%2F..", "..%2Fclip"])
def test_unknown_detectors_get_404(client, name):
    response = client.post(
        f"/v1/detectors/{name}/predict", content=png_bytes(0), headers={"content-type": "image/png"}
    )
    assert response.status_code == 404
    assert client.get(f"/v1/detectors/{name}").status_code == 404


def test_a_file_name_is_a_label_only(client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hostile = "../../" + str(tmp_path / "written.png")
    response = client.post("/v1/detectors/clip/predict", files=multipart((hostile, png_bytes(0))))
    assert response.status_code == 200
    assert response.json()["images"][0]["name"] == "written.png"
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere it names


def test_metrics_count_requests_errors_latency_and_batches(client):
    client.post("/v1/detectors/clip/predict", files=multipart(("m.png", png_bytes(0))))
    client.post("/v1/detectors/clip/predict", content=b"x", headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert 'anomaly_vlm_requests_total{detector="clip",status="200"}' in text
    assert 'anomaly_vlm_errors_total{detector="clip",status="415"}' in text
    assert 'anomaly_vlm_request_seconds_bucket{detector="clip",le="+Inf"}' in text
    assert 'anomaly_vlm_batch_images_count{detector="clip"}' in text
    assert "anomaly_vlm_ready 1" in text
