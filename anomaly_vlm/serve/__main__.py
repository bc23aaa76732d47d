"""``python -m anomaly_vlm.serve detector=<folder> [detector=<folder2> ...] [host=] [port=] [max_batch=]``.

Loads every detector (checking it before the server binds), then serves the API and the page with
uvicorn on ``host:port`` (``127.0.0.1:8000`` by default). Mistakes end with one ``error:`` line and exit
status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from anomaly_vlm.deploy import DetectorError
    from anomaly_vlm.serve.settings import KEYS, USAGE, UsageError, parse

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(argument in ("-h", "--help", "help") for argument in argv):
        print(f"usage: {USAGE}\nkeys: {', '.join(f'{key}=' for key in KEYS)}, detector.<name>=")
        print("The keys and limits: the ServeSettings of anomaly_vlm/serve/settings.py, and docs/serve.md.")
        return 0
    try:
        settings = parse(argv)
        try:
            import uvicorn

            from anomaly_vlm.serve.app import create_app
            from anomaly_vlm.serve.registry import load_detectors
        except ImportError as error:
            raise UsageError(
                f"the service needs {error.name}, which is not installed: pip install -e '.[serve]'"
            ) from None
        import torch

        if settings.threads:
            torch.set_num_threads(settings.threads)
        detectors = load_detectors(
            settings.detectors,
            settings.runtime,
            settings.device,
            settings.max_batch,
            settings.set_dependence,
            settings.threads,
            settings.precision,
        )
    except (UsageError, DetectorError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    app = create_app(settings, detectors)
    names = ", ".join(sorted(detectors))
    print(f"serving {names} ({settings.runtime}) on http://{settings.host}:{settings.port}/", flush=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # One process: the detectors live in its memory; concurrency comes from the event loop + batching.
        workers=1,
        timeout_keep_alive=5,
        limit_concurrency=1024,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
