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

from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError
from anomaly_vlm.data.source import MVTecLayout


class FolderDataset(MVTecLayout):
    """A user's dataset in MVTec-like layout, masks optional.

    Args:
        root: folder of category folders, or one category folder.
        categories: subset; None means every category folder with a ``test/`` or ``train/`` subfolder.
        class_names: category -> words used in prompts, e.g. ``{pcb_v2: printed circuit board}``;
            default the folder name.
        mask_suffix: mask file name = image stem + this suffix (``_mask`` as in MVTec AD; ``""`` for
            masks named exactly like their image).
        require_masks: every anomalous test image must have its mask (set for ``train_data=folder``:
            training on an anomalous image with an all-zero mask would teach the opposite).
        max_image_pixels: largest image or mask file, in pixels (``data.max_image_pixels``; see
            :class:`~anomaly_vlm.data.source.DatasetSource`).
    """

    name = "folder"

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        class_names: Mapping[str, str] | None = None,
        mask_suffix: str = "_mask",
        require_masks: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        path = Path(root).expanduser()
        if (path / "test").is_dir() or (path / "train").is_dir():
            # A single category folder: its name is the category.
            if categories and list(categories) != [path.name]:
                raise DataError(
                    f"data.root={path} is a single category folder ('{path.name}'); "
                    f"data.categories={list(categories)} does not match it"
                )
            categories = [path.name]
            path = path.parent
        super().__init__(
            path,
            categories,
            require_masks=require_masks,
            mask_suffix=mask_suffix,
            class_names=class_names,
            max_image_pixels=max_image_pixels,
        )

    def available_categories(self) -> list[str]:
        # Unlike the benchmarks, a user's category may hold normal training images only (train/good).
        self._check_root()
        found = sorted(
            path.name
            for path in self.root.iterdir()
            if path.is_dir()
            and not path.name.startswith(".")
            and ((path / "test").is_dir() or (path / "train").is_dir())
        )
        if not found:
            raise DataError(
                f"dataset root {self.root} holds no category folders with a test/ or train/ subfolder"
            )
        return found
