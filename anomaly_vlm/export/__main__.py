"""``python -m anomaly_vlm.export detector=<folder> format=onnx|openvino [out=...] [opset=17] [check=true]``.

Writes ``<detector>/model.onnx`` (or ``out``): one graph, normalised image batch -> (image score,
anomaly map), with the detector's text embeddings, reference memory and trained parameters baked in;
then runs it in onnxruntime and prints its largest difference to the PyTorch detector. ``format=openvino``
converts the same graph to an OpenVINO IR (``model.xml`` + ``model.bin``), with an optional inference
precision hint (``precision=fp32|bf16|fp16``) and optional NNCF int8 quantisation (``int8=true
calibration=<folder of normal images>``). Mistakes end with one ``error:`` line and exit status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

FORMATS = ("onnx", "openvino")
KEYS = ("detector", "format", "out", "opset", "check", "tolerance", "precision", "int8", "calibration")
#: Options of format=openvino only.
OPENVINO_KEYS = ("precision", "int8", "calibration")
USAGE = (
    "python -m anomaly_vlm.export detector=<detector folder> format=onnx|openvino [out=<file>] [opset=17] "
    "[precision=fp32|bf16|fp16] [int8=true calibration=<folder>]"
)


class UsageError(ValueError):
    """A malformed command line."""


def parse(argv: Sequence[str]) -> dict[str, str]:
    """``key=value`` arguments -> dict, checked for unknown keys and the required ``detector``."""
    options: dict[str, str] = {}
    for argument in argv:
        key, equals, value = argument.partition("=")
        if not equals:
            raise UsageError(f"argument '{argument}' is not key=value; usage: {USAGE}")
        if key not in KEYS:
            raise UsageError(f"unknown option '{key}' (options: {', '.join(f'{k}=' for k in KEYS)})")
        options[key] = value
    if not options.get("detector"):
        raise UsageError(f"detector=<folder> is required; usage: {USAGE}")
    fmt = options.setdefault("format", "onnx")
    if fmt not in FORMATS:
        raise UsageError(f"format={fmt} is not supported (choose one of: {', '.join(FORMATS)})")
    wrong = [key for key in OPENVINO_KEYS if key in options and fmt != "openvino"]
    if wrong:
        raise UsageError(f"{wrong[0]}= is an option of format=openvino, not format={fmt}")
    return options


def _flag(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise UsageError(f"{key}={value} must be true or false")


def _number(key: str, value: str, kind: type) -> int | float:
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"{key}={value} is not a{'n integer' if kind is int else ' number'}") from None


def main(argv: Sequence[str] | None = None) -> int:
    from anomaly_vlm.deploy import DetectorError
    from anomaly_vlm.export.onnx import DEFAULT_OPSET, DEFAULT_TOLERANCE, ExportError, describe, export_onnx
    from anomaly_vlm.methods.contract import NotExportableError

    try:
        options = parse(sys.argv[1:] if argv is None else argv)
        if options["format"] == "openvino":
            from anomaly_vlm.export.openvino import describe as describe_openvino
            from anomaly_vlm.export.openvino import export_openvino

            result = export_openvino(
                options["detector"],
                out=options.get("out") or None,
                precision=options.get("precision", "fp32"),
                int8=_flag("int8", options.get("int8", "false")),
                calibration=options.get("calibration") or None,
                check=_flag("check", options.get("check", "true")),
                tolerance=float(
                    _number("tolerance", options.get("tolerance", str(DEFAULT_TOLERANCE)), float)
                ),
            )
            print(describe_openvino(result), flush=True)
            return 0
        result = export_onnx(
            options["detector"],
            out=options.get("out") or None,
            opset=int(_number("opset", options.get("opset", str(DEFAULT_OPSET)), int)),
            check=_flag("check", options.get("check", "true")),
            tolerance=float(_number("tolerance", options.get("tolerance", str(DEFAULT_TOLERANCE)), float)),
        )
    except (UsageError, DetectorError, ExportError, NotExportableError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    print(describe(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
