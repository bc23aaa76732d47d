"""Readers of the zero-shot benchmarks beyond MVTec AD and VisA, one module per dataset.

Every reader is a :class:`~anomaly_vlm.data.source.DatasetSource` listing
:class:`~anomaly_vlm.data.batch.Sample` records, so every method, the evaluator and the cross-dataset
protocol (``train_data=<any> data=<any>``) work with them unchanged.
"""

from anomaly_vlm.data.datasets.btad import BTAD
from anomaly_vlm.data.datasets.dagm import DAGM
from anomaly_vlm.data.datasets.dtd_synthetic import DTDSynthetic
from anomaly_vlm.data.datasets.ksdd import KolektorSDD
from anomaly_vlm.data.datasets.ksdd2 import KolektorSDD2
from anomaly_vlm.data.datasets.meta_json import MetaJSON
from anomaly_vlm.data.datasets.mpdd import MPDD
from anomaly_vlm.data.datasets.mvtec_ad2 import MVTecAD2
from anomaly_vlm.data.datasets.mvtec_loco import MVTecLOCO
from anomaly_vlm.data.datasets.realiad import RealIAD

__all__ = [
    "BTAD",
    "DAGM",
    "MPDD",
    "DTDSynthetic",
    "KolektorSDD",
    "KolektorSDD2",
    "MVTecAD2",
    "MVTecLOCO",
    "MetaJSON",
    "RealIAD",
]
