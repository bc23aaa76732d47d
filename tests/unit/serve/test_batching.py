"""Dynamic batching: whole requests per pass, never mixed in a set step; deadlines and a full queue: 503."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient

from anomaly_vlm.deploy import Detector, DetectorError
from anomaly_vlm.serve import ServeSettings, create_app
from anomaly_vlm.serve.batching import Batcher, Overloaded
from anomaly_vlm.serve.images import decode_image
from anomaly_vlm.serve.registry import load_detectors

from .conftest import SIZE, png_bytes, wait_ready


def _run_batcher(sizes, max_batch=4, batching=True, wait_s=0.05, work_s=0.0, timeout=5.0, max_queue=100):
    """Submit requests of ``sizes`` images at once; the calls the model worker got and each answer."""
    calls = []

    def score(requests):
        calls.append([len(images) for images in requests])
        time.sleep(work_s)
        return [images[:, 0, 0, 0].tolist() for images in requests]

    async def main():
        executor = ThreadPoolExecutor(max_workers=1)
        batcher = Batcher("x", score, executor, max_batch, wait_s, max_queue, batching=batching)
        batcher.start()
        loop = asyncio.get_running_loop()
        requests = [torch.full((n, 1, 1, 1), float(i)) for i, n in enumerate(sizes)]
        answers = await asyncio.gather(
            *(batcher.submit(images, loop.time() + timeout) for images in requests), return_exceptions=True
        )
        await batcher.stop()
        executor.shutdown()
        return answers

    return calls, asyncio.run(main())


def test_requests_arriving_together_share_a_pass_of_whole_requests():
    calls, answers = _run_batcher([1, 2, 3, 1, 2], max_batch=4)
    # Each request gets its own images' results back.
    assert answers == [[float(i)] * n for i, n in enumerate([1, 2, 3, 1, 2])]
    assert sorted(n for call in calls for n in call) == [1, 1, 2, 2, 3]  # every request whole, once
    assert all(sum(call) <= 4 for call in calls)
    assert max(len(call) for call in calls) > 1  # batched
    # A request larger than max_batch goes alone.
    calls, _ = _run_batcher([6, 1], max_batch=4)
    assert [6] in calls


def test_without_batching_each_request_is_its_own_pass():
    calls, answers = _run_batcher([1, 2, 3], batching=False)
    assert calls == [[1], [2], [3]]
    assert answers == [[0.0], [1.0, 1.0], [2.0, 2.0, 2.0]]


def test_deadline_and_a_full_queue_answer_overloaded():
    # Each pass takes 0.3 s; deadlines of 0.1 s: the first is answered late (503), the queued ones
    # are dropped unscored once their deadline passed.
    calls, answers = _run_batcher([1, 1, 1], batching=False, work_s=0.3, timeout=0.1)
    assert all(isinstance(answer, Overloaded) for answer in answers)
    assert len(calls) == 1  # the others were never scored
    calls, answers = _run_batcher([3, 3, 3], batching=False, max_queue=4, work_s=0.05)
    assert [isinstance(answer, Overloaded) for answer in answers].count(True) == 2


def _concurrent_posts(client, name, counts, seed=0):
    def post(index_count):
        index, count = index_count
        files = [
            ("files", (f"{index}-{k}.png", png_bytes(seed + 10 * index + k), "image/png"))
            for k in range(count)
        ]
        return client.post(f"/v1/detectors/{name}/predict", files=files)

    with ThreadPoolExecutor(len(counts)) as pool:
        return list(pool.map(post, enumerate(counts)))


def _images(count_index, count, seed=0):
    return torch.stack(
        [decode_image(png_bytes(seed + 10 * count_index + k), SIZE, 10**6) for k in range(count)]
    )


@pytest.mark.parametrize("name", ["clip", "aprillab"])
def test_batched_requests_score_as_detector_score_of_their_pass(detectors, name):
    served = load_detectors({name: detectors[name]}, max_batch=8)
    passes = []
    original = served[name].predict_requests

    def spy(requests):
        passes.append([images.clone() for images in requests])
        return original(requests)

    served[name].predict_requests = spy
    settings = ServeSettings(detectors={name: detectors[name]}, batch_wait_ms=300, max_batch=8, warmup=False)
    with TestClient(create_app(settings, served)) as client:
        responses = _concurrent_posts(client, name, [1, 2, 3])
    assert all(response.status_code == 200 for response in responses)
    assert max(len(p) for p in passes) > 1, "the requests were not batched"
    detector = Detector.load(detectors[name])
    for index, count in enumerate([1, 2, 3]):
        images = _images(index, count)
        scores = [image["image_score"] for image in responses[index].json()["images"]]
        (scored_with,) = [p for p in passes if any(torch.equal(images, other) for other in p)]
        # Exactly Detector.score of the images of its pass (|delta| = 0), sliced to the request...
        whole = detector.score(torch.cat(scored_with))
        start = sum(
            len(other) for other in scored_with[: [torch.equal(images, o) for o in scored_with].index(True)]
        )
        assert scores == whole.image_score[start : start + count].double().tolist()
        # ... and Detector.predict of the request alone up to float rounding of the batch size.
        alone = detector.predict(images).image_score.double()
        assert torch.allclose(torch.tensor(scores, dtype=torch.float64), alone, atol=1e-5, rtol=0)


def test_set_dependent_detectors_are_refused_unless_accepted(set_dependent):
    with pytest.raises(DetectorError, match="set_dependence=accept"):
        load_detectors({"x": set_dependent("aprillab_open")})


@pytest.mark.parametrize("name", [pytest.param("musc", marks=pytest.mark.slow), "aprillab_open"])
def test_set_dependent_requests_are_never_mixed(set_dependent, name):
    folder = set_dependent(name)
    settings = ServeSettings(
        detectors={name: folder}, batch_wait_ms=300, set_dependence="accept", warmup=False, max_batch=8
    )
    with TestClient(create_app(settings)) as client:
        # MuSc scores a set of at least 5 images.
        responses = _concurrent_posts(client, name, [5, 6], seed=5)
    detector = Detector.load(folder, set_dependence="accept")
    first, second = _images(0, 5, seed=5), _images(1, 6, seed=5)
    for images, response in ((first, responses[0]), (second, responses[1])):
        assert response.status_code == 200
        scores = [image["image_score"] for image in response.json()["images"]]
        assert scores == detector.predict(images).image_score.double().tolist()  # its own set, |delta| = 0
    # Mixed into one set the scores would differ: the check above can fail.
    mixed = detector.predict(torch.cat([first, second])).image_score.double()
    own = [image["image_score"] for response in responses for image in response.json()["images"]]
    assert (mixed - torch.tensor(own, dtype=torch.float64)).abs().max() > 1e-4


def test_onnx_runtime_matches_the_detector_within_the_export_tolerance(detectors, tmp_path):
    import shutil

    pytest.importorskip("onnxruntime")
    from anomaly_vlm.export.onnx import DEFAULT_TOLERANCE, export_onnx

    folder = tmp_path / "clip"
    shutil.copytree(detectors["clip"], folder)
    with pytest.raises(DetectorError, match="python -m anomaly_vlm.export"):
        load_detectors({"clip": folder}, runtime="onnx")
    # The served answers below are compared with the PyTorch detector, so the export's own onnxruntime
    # check (a second session and PyTorch pass) would repeat that comparison.
    export_onnx(folder, check=False)
    settings = ServeSettings(detectors={"clip": folder}, runtime="onnx")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)  # the ONNX warm-up pass; before it ends a predict is (rightly) 503
        files = [("files", (f"{k}.png", png_bytes(k), "image/png")) for k in range(3)]
        response = client.post("/v1/detectors/clip/predict", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["runtime"] == "onnx"
    images = torch.stack([decode_image(png_bytes(k), SIZE, 10**6) for k in range(3)])
    expected = Detector.load(folder).predict(images)
    scores = torch.tensor([image["image_score"] for image in body["images"]], dtype=torch.float64)
    assert (scores - expected.image_score.double()).abs().max() <= DEFAULT_TOLERANCE
    assert [image["decision"] for image in body["images"]] == expected.decision


def test_a_request_dropped_at_its_deadline_answers_overloaded_not_cancelled():
    # The loop may see the deadline pass just before the waiter's own timeout: it cancels the job's
    # future, and the waiter must answer 503 (Overloaded), not end its request as cancelled.
    async def main():
        executor = ThreadPoolExecutor(max_workers=1)
        batcher = Batcher("x", lambda requests: [None] * len(requests), executor, 4, 0.0, 100)
        loop = asyncio.get_running_loop()
        waiter = loop.create_task(batcher.submit(torch.zeros(1, 1, 1, 1), loop.time() + 10))
        await asyncio.sleep(0.01)
        batcher._take(loop.time() + 20)  # the loop, past the deadline
        try:
            await waiter
        finally:
            executor.shutdown()

    with pytest.raises(Overloaded, match="deadline"):
        asyncio.run(main())
