"""Synthesized defects on normal images, so methods that learn from masks train without any
(``train_data.synthesize_anomalies=true``)."""

from anomaly_vlm.data.defect_synthesis.dataset import EpochSampler, SynthesizedAnomalies
from anomaly_vlm.data.defect_synthesis.noise import perlin_noise
from anomaly_vlm.data.defect_synthesis.synthesizer import KINDS, AnomalySynthesizer, Synthesized
from anomaly_vlm.data.defect_synthesis.textures import DEFAULT_TEXTURES, OTHER_CATEGORIES, resolve_textures

__all__ = [
    "DEFAULT_TEXTURES",
    "KINDS",
    "OTHER_CATEGORIES",
    "AnomalySynthesizer",
    "EpochSampler",
    "Synthesized",
    "SynthesizedAnomalies",
    "perlin_noise",
    "resolve_textures",
]
