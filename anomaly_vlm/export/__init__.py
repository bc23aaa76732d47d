"""Exporting a saved detector: one ONNX graph, normalised images -> (image score, anomaly map)."""

from anomaly_vlm.export.onnx import (
    INPUT_NAME,
    OUTPUT_NAMES,
    ExportError,
    OnnxExport,
    export_onnx,
    onnx_parity,
)

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "ExportError", "OnnxExport", "export_onnx", "onnx_parity"]
