"""anomaly-vlm: vision-language (CLIP) anomaly classification and segmentation experiments."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: ``import anomaly_vlm`` stays light; ``anomaly_vlm.Detector`` pulls in torch on first use.
    if name == "Detector":
        from anomaly_vlm.deploy import Detector

        return Detector
    raise AttributeError(f"module 'anomaly_vlm' has no attribute {name!r}")
