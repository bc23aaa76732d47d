"""Every dataset reader, one module per dataset, on one base class.

Every reader is a :class:`~anomaly_vlm.data.datasets.base.DatasetSource` listing
:class:`~anomaly_vlm.data.batch.Sample` records, so every method, the evaluator and the cross-dataset
protocol (``train_data=<any> data=<any>``) work with them unchanged. Those in MVTec AD's layout derive
:class:`~anomaly_vlm.data.datasets.layout.MVTecLayout` and differ only in its class attributes.
"""

from anomaly_vlm.data.datasets.base import NORMAL, DatasetSource, Split
from anomaly_vlm.data.datasets.btad import BTAD
from anomaly_vlm.data.datasets.dagm import DAGM
from anomaly_vlm.data.datasets.dtd_synthetic import DTDSynthetic
from anomaly_vlm.data.datasets.folder import FolderDataset
from anomaly_vlm.data.datasets.images import ImageFiles
from anomaly_vlm.data.datasets.ksdd import KolektorSDD
from anomaly_vlm.data.datasets.ksdd2 import KolektorSDD2
from anomaly_vlm.data.datasets.layout import MVTecLayout
from anomaly_vlm.data.datasets.meta_json import MetaJSON
from anomaly_vlm.data.datasets.mpdd import MPDD
from anomaly_vlm.data.datasets.mvtec import MVTecAD
from anomaly_vlm.data.datasets.mvtec_ad2 import MVTecAD2
from anomaly_vlm.data.datasets.mvtec_loco import MVTecLOCO
from anomaly_vlm.data.datasets.realiad import RealIAD
from anomaly_vlm.data.datasets.toy import SyntheticAD
from anomaly_vlm.data.datasets.visa import VisA

__all__ = [
    "BTAD",
    "DAGM",
    "MPDD",
    "NORMAL",
    "DTDSynthetic",
    "DatasetSource",
    "FolderDataset",
    "ImageFiles",
    "KolektorSDD",
    "KolektorSDD2",
    "MVTecAD",
    "MVTecAD2",
    "MVTecLOCO",
    "MVTecLayout",
    "MetaJSON",
    "RealIAD",
    "Split",
    "SyntheticAD",
    "VisA",
]
