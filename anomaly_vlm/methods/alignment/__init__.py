"""Text-visual alignment strategies composed of the shared parts of the published methods (the analysis)."""

from anomaly_vlm.methods.alignment.lightning_module import AlignmentModule
from anomaly_vlm.methods.alignment.torch_model import (
    PUBLISHED_ALIGNMENT,
    STRATEGIES,
    AlignmentModel,
    parse_alignment,
)

__all__ = ["PUBLISHED_ALIGNMENT", "STRATEGIES", "AlignmentModel", "AlignmentModule", "parse_alignment"]
