"""The inspection service: saved detectors behind a REST API and a web page (``python -m anomaly_vlm.serve``).

See :mod:`anomaly_vlm.serve.app` for the routes, :mod:`anomaly_vlm.serve.batching` for dynamic batching
and :mod:`anomaly_vlm.serve.settings` for the keys and limits.
"""

from anomaly_vlm.serve.settings import ServeSettings, UsageError, parse

__all__ = ["ServeSettings", "UsageError", "create_app", "parse"]


def create_app(*args, **kwargs):
    """:func:`anomaly_vlm.serve.app.create_app` (imported on use: FastAPI is the ``serve`` extra)."""
    from anomaly_vlm.serve.app import create_app as build

    return build(*args, **kwargs)
