"""The ASGI app: REST API, the web page at ``/``, health, readiness and Prometheus metrics.

Routes (the OpenAPI schema is at ``/openapi.json``):

* ``POST /v1/detectors/{name}/predict`` -- images as ``multipart/form-data`` (any number of file parts,
  up to ``max_images``) or one image as the raw body with its content type; ``?maps=true`` adds each
  anomaly map as a 16-bit PNG (base64) with its value range, ``?masks=true`` the binary mask PNG;
* ``GET /v1/detectors``, ``GET /v1/detectors/{name}`` -- method, backbone, input size, thresholds, versions;
* ``GET /healthz`` (the process answers), ``GET /readyz`` (200 once every detector scored a warm-up image);
* ``GET /metrics`` -- Prometheus text.

Errors are JSON ``{"detail": "..."}``: 404 unknown detector, 408 body not received within
``read_timeout_s``, 413 body over ``max_upload_mb`` or more than ``max_images`` images, 415 not an image
(or an unsupported content type), 422 truncated/corrupt image or one over ``max_image_pixels``, 503 not
ready, queue full or deadline (``request_timeout_s``) passed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from PIL import Image
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from anomaly_vlm.data.image_io import DataError
from anomaly_vlm.serve.batching import Batcher, Overloaded
from anomaly_vlm.serve.images import GENERIC_TYPES, IMAGE_TYPES, ImageRejected, decode_image, safe_name
from anomaly_vlm.serve.metrics import Metrics
from anomaly_vlm.serve.registry import ImageResult, ServedDetector, load_detectors
from anomaly_vlm.serve.settings import ServeSettings

API_VERSION = "1"


class BodyTooLarge(Exception):
    """The request body passed ``max_upload_mb`` while it was read."""


class BodyLimit:
    """ASGI middleware: 413 for a declared ``Content-Length`` over the limit, before reading a byte; for
    a body that turns out larger (chunked, or a lying header), :class:`BodyTooLarge` as soon as it passes."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                response = JSONResponse(
                    {
                        "detail": f"request body is {int(value):,} bytes, over max_upload_mb "
                        f"({self.max_bytes:,} bytes)"
                    },
                    status_code=413,
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited, send)


class ImageOut(BaseModel):
    """One image's result."""

    name: str
    image_score: float
    decision: str | None = None
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    defect_area: float | None = None
    map_size: list[int]
    anomaly_map_png: str | None = None
    map_min: float | None = None
    map_max: float | None = None
    mask_png: str | None = None


class PredictOut(BaseModel):
    """A prediction response: the detector, the runtime and one entry per uploaded image, in order."""

    detector: str
    runtime: str
    images: list[ImageOut]


def _png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_json(
    name: str, result: ImageResult, detector: ServedDetector, maps: bool, masks: bool
) -> dict[str, Any]:
    """The JSON of one image (map as a 16-bit PNG over its own value range, mask as an 8-bit PNG)."""
    thresholds = detector.thresholds
    out: dict[str, Any] = {
        "name": name,
        "image_score": result.image_score,
        "decision": result.decision,
        "image_threshold": None if thresholds is None else float(thresholds.image),
        "pixel_threshold": (
            None if thresholds is None or thresholds.pixel is None else float(thresholds.pixel)
        ),
        "defect_area": result.defect_area,
        "map_size": list(result.anomaly_map.shape),
    }
    if maps:
        values = result.anomaly_map.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
        out["anomaly_map_png"] = _png(np.round(scaled * 65535).astype(np.uint16))
        out["map_min"], out["map_max"] = low, high
    if masks and result.mask is not None:
        out["mask_png"] = _png(result.mask.astype(np.uint8) * 255)
    return out


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES[:3]},
        },
    }
}


class Service:
    """The state behind the app: detectors, batchers, model worker, metrics, readiness."""

    def __init__(self, settings: ServeSettings, detectors: dict[str, ServedDetector] | None = None) -> None:
        self.settings = settings
        self.detectors = detectors
        self.metrics = Metrics()
        self.batchers: dict[str, Batcher] = {}
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.ready = False
        self.warmup_task: asyncio.Task | None = None

    def load(self) -> None:
        s = self.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        if self.detectors is None:
            self.detectors = load_detectors(
                s.detectors, s.runtime, s.device, s.max_batch, s.set_dependence, s.threads
            )

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        if self.detectors is None:
            await loop.run_in_executor(self.executor, self.load)
        for name, detector in self.detectors.items():
            batcher = Batcher(
                name,
                detector.score_requests,
                self.executor,
                s.max_batch,
                s.batch_wait_ms / 1000.0,
                s.max_queue,
                # A set-dependent detector scores each request as its own set: batching has nothing to join.
                batching=s.batching and detector.set_dependence is None,
                on_batch=lambda images, requests, name=name: self.metrics.batch(name, images, requests),
                on_queue=lambda images, name=name: self.metrics.queued.__setitem__(name, images),
            )
            batcher.start()
            self.batchers[name] = batcher
        if s.warmup:
            self.warmup_task = loop.create_task(self.warm_up())
        else:
            self._set_ready()

    async def warm_up(self) -> None:
        """Score one grey image per detector (first passes allocate and pick kernels), then be ready."""
        loop = asyncio.get_running_loop()
        for detector in self.detectors.values():
            size = detector.image_size
            grey = torch.full((1, 3, size, size), 0.5)
            await loop.run_in_executor(self.executor, detector.score_requests, [grey])
        self._set_ready()

    def _set_ready(self) -> None:
        self.ready = True
        self.metrics.ready = True

    async def stop(self) -> None:
        if self.warmup_task is not None:
            self.warmup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.warmup_task
        for batcher in self.batchers.values():
            await batcher.stop()
        self.executor.shutdown(wait=True, cancel_futures=True)


def _error(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


async def _read_uploads(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded image: multipart file parts, or the raw body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=settings.max_images + 1, max_fields=settings.max_images + 16)
        except StarletteHTTPException as error:  # starlette's multipart limits (a 400 by default)
            too_many = "Too many files" in str(error.detail)
            raise _error(413 if too_many else 400, f"multipart body refused: {error.detail}") from None
        files = [value for _, value in form.multi_items() if not isinstance(value, str)]
        if len(files) > settings.max_images:
            raise _error(413, f"{len(files)} images in one request, over max_images ({settings.max_images})")
        uploads = []
        for index, upload in enumerate(files):
            part_type = (upload.content_type or "").split(";")[0].strip().lower()
            name = safe_name(upload.filename, index)
            if part_type not in IMAGE_TYPES and part_type not in GENERIC_TYPES:
                raise _error(415, f"{name}: content type {part_type} is not an image type")
            uploads.append((name, await upload.read()))
        await form.close()
        return uploads
    if kind in IMAGE_TYPES or kind in GENERIC_TYPES:
        body = await request.body()
        return [(safe_name(request.headers.get("x-filename"), 0), body)]
    raise _error(
        415,
        f"content type {kind or '(none)'} is not accepted: send multipart/form-data or one of "
        f"{', '.join(IMAGE_TYPES)}",
    )


def create_app(settings: ServeSettings, detectors: dict[str, ServedDetector] | None = None) -> FastAPI:
    """The app serving ``settings.detectors`` (or already loaded ``detectors``, e.g. in tests)."""
    service = Service(settings, detectors)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="anomaly_vlm inspection service",
        version=API_VERSION,
        description="Scores images with saved anomaly detectors: image score, ok/defect decision, map, mask.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN, which the offline machines cannot reach:
        # the schema itself is served at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    page = resources.files("anomaly_vlm.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, error: BodyTooLarge) -> JSONResponse:
        return JSONResponse(
            {"detail": f"request body over max_upload_mb ({settings.max_upload_bytes:,} bytes)"},
            status_code=413,
            headers={"Connection": "close"},
        )

    def served(name: str) -> ServedDetector:
        detector = (service.detectors or {}).get(name)
        if detector is None:
            raise _error(404, f"no detector named {name!r}; GET /v1/detectors lists them")
        return detector

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready after every detector scored a warm-up image")
    async def readyz() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"status": "warming up"}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready", "detectors": sorted(service.detectors)})

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/detectors", summary="The served detectors and their metadata")
    async def list_detectors() -> dict[str, Any]:
        return {
            "detectors": [d.describe() for d in (service.detectors or {}).values()],
            "limits": {
                "max_images": settings.max_images,
                "max_upload_mb": settings.max_upload_mb,
                "max_image_pixels": settings.max_image_pixels,
            },
        }

    @app.get("/v1/detectors/{name}", summary="One detector's metadata")
    async def get_detector(name: str) -> dict[str, Any]:
        return served(name).describe()

    @app.post(
        "/v1/detectors/{name}/predict",
        response_model=PredictOut,
        summary="Score images: multipart files, or one image as the raw body",
        openapi_extra=PREDICT_BODY,
        responses={
            404: {"description": "unknown detector"},
            408: {"description": "body not received within read_timeout_s"},
            413: {"description": "body over max_upload_mb, or more than max_images images"},
            415: {"description": "not an image"},
            422: {"description": "truncated or corrupt image, or over max_image_pixels"},
            503: {"description": "warming up, queue full, or request_timeout_s passed"},
        },
    )
    async def predict(name: str, request: Request, maps: bool = False, masks: bool = False) -> JSONResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + settings.request_timeout_s
        label = name if name in (service.detectors or {}) else "-"
        images = 0
        status = 500
        try:
            detector = served(name)
            if not service.ready:
                raise _error(503, "warming up; GET /readyz says when the service is ready")
            try:
                uploads = await asyncio.wait_for(_read_uploads(request, settings), settings.read_timeout_s)
            except TimeoutError:
                raise _error(
                    408, f"request body not received within read_timeout_s ({settings.read_timeout_s:g} s)"
                ) from None
            if not uploads:
                raise _error(422, "no image in the request")
            size, limit = detector.image_size, settings.max_image_pixels

            def decode_all() -> torch.Tensor:
                return torch.stack([decode_image(data, size, limit, label) for label, data in uploads])

            try:
                tensors = await loop.run_in_executor(None, decode_all)
            except ImageRejected as error:
                raise _error(error.status, str(error)) from None
            images = len(uploads)
            try:
                results = await service.batchers[name].submit(tensors, deadline)
            except Overloaded as error:
                raise _error(503, str(error)) from None
            except (ValueError, DataError) as error:
                # The method refuses this set (e.g. MuSc needs at least 5 images scored together).
                raise _error(422, str(error)) from None

            def respond() -> dict[str, Any]:
                # PNG encoding of maps and masks: off the event loop, like decoding.
                return {
                    "detector": name,
                    "runtime": detector.runtime,
                    "images": [
                        image_json(upload_name, result, detector, maps, masks)
                        for (upload_name, _), result in zip(uploads, results, strict=True)
                    ],
                }

            body = await loop.run_in_executor(None, respond)
            status = 200
            return JSONResponse(body)
        except HTTPException as error:
            status = error.status_code
            raise
        except BodyTooLarge:
            status = 413
            raise
        finally:
            service.metrics.request(label, status, loop.time() - started, images if status == 200 else 0)

    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    return app
