"""BTAD, beanTech Anomaly Detection (Mishra et al., ICIP 2021, "VT-ADL"): 3 products.

As downloaded (``BTech_Dataset_transformed``)::

    <root>/{01,02,03}/train/ok/*.{bmp,png}
    <root>/{01,02,03}/test/{ok,ko}/*.{bmp,png}
    <root>/{01,02,03}/ground_truth/ko/<stem>.{png,bmp}

Normal images live in ``ok`` folders, anomalous ones in ``ko`` (AnomalyCLIP's ``generate_dataset_json/
btad.py`` treats every folder but ``ok`` as anomalous). Images are BMP or PNG depending on the product
(anomalib's reader accepts both); masks are matched by stem whatever their extension (anomalib's reader
expects ``.png`` masks; BMP masks are accepted too, in case a copy kept them in that format). The
products have no names: the prompts use the folder names ``01``/``02``/``03``, as the official code does.
"""

from __future__ import annotations

from anomaly_vlm.data.datasets.layout import RELEASE_MASK_SUFFIXES, MVTecLayout

BTAD_CATEGORIES = ("01", "02", "03")


class BTAD(MVTecLayout):
    """BTAD as downloaded (``ok``/``ko`` folders, BMP or PNG).

    Options (``root``: the ``BTech_Dataset_transformed`` folder; ``categories``: a subset of ``01``,
    ``02``, ``03``; ``class_names``, ``max_image_pixels``) as for every MVTec-style dataset
    (:class:`~anomaly_vlm.data.datasets.layout.MVTecLayout`).
    """

    name = "btad"
    title = "BTAD"
    known_categories = BTAD_CATEGORIES
    normal_folder = "ok"
    mask_suffixes = RELEASE_MASK_SUFFIXES
    pair_masks_by_position = True
