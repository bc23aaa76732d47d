"""Your own images in MVTec-like layout (``data=folder``).

::

    <root>/<category>/train/good/*.png            normal images (few-shot references)
    <root>/<category>/test/good/*.png             normal test images
    <root>/<category>/test/<defect>/*.png         anomalous test images, one folder per defect type
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   optional masks

``root`` may also be a single category folder (one holding ``test/`` or ``train/`` itself). A category of
normal images only (``train/good``, no ``test/``) serves as training data with synthesized defects
(``train_data.synthesize_anomalies=true datamodule.train_split=train``). Any format PIL reads
works (PNG incl. 16-bit, JPEG, BMP, TIFF, WebP; grayscale, palette, RGBA): images become 8-bit RGB.
A category whose anomalous images have no masks at all reports image metrics only (pixel metrics
are absent, ``null`` in results.json); one with masks for some anomalous images but not others is an
error, because pixel metrics over a subset would be silently wrong.
"""

from __future__ import annotations

from anomaly_vlm.data.datasets.layout import MVTecLayout


class FolderDataset(MVTecLayout):
    """A user's dataset in MVTec-like layout, masks optional.

    Args:
        root: folder of category folders, or one category folder.
        categories: subset; None means every category folder with a ``test/`` or ``train/`` subfolder.
        class_names: category -> words used in prompts, e.g. ``{pcb_v2: printed circuit board}``;
            default the folder name.
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.datasets.base.DatasetSource`).
        mask_suffix: mask file name = image stem + this suffix (``_mask`` as in MVTec AD; ``""`` for
            masks named exactly like their image).
        require_masks: every anomalous test image must have its mask (set for ``train_data=folder``:
            training on an anomalous image with an all-zero mask would teach the opposite).
    """

    name = "folder"
    # Unlike the benchmarks, a user's category may hold normal training images only (train/good).
    category_subfolders = ("test", "train")
    root_may_be_category = True
    require_masks = False
