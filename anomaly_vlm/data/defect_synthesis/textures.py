"""Foreign textures for DRAEM-style defects: bundled scikit-image photos, your image files, or the
normal images of the other training categories."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anomaly_vlm.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, DataError, _open, list_images, to_rgb
from anomaly_vlm.data.links import warn_outside_links

#: Real photos shipped inside scikit-image (no download): textures, materials, scenes, micrographs.
#: DRAEM drew its textures from the Describable Textures Dataset; pass its image folder in
#: ``train_data.synthesis.textures`` to do the same.
DEFAULT_TEXTURES: tuple[str, ...] = (
    "brick",
    "grass",
    "gravel",
    "coffee",
    "chelsea",
    "rocket",
    "astronaut",
    "hubble_deep_field",
    "immunohistochemistry",
    "coins",
    "moon",
    "camera",
    "cell",
    "clock",
)

#: The ``textures`` entry that means: the normal training images of the other categories.
OTHER_CATEGORIES = "other_categories"


@functools.lru_cache(maxsize=32)
def skimage_photo(name: str) -> np.ndarray:
    """``skimage.data.<name>()`` as ``[H, W, 3]`` uint8 (grayscale photos are repeated over channels)."""
    from skimage import data

    image = np.asarray(getattr(data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(image.astype(np.float64) / max(float(image.max()), 1e-12) * 255.0, 0, 255)
        image = image.astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


#: The config key of the texture files' pixel limit (the training data's, interpolated).
TEXTURE_LIMIT_KEY = "train_data.synthesis.max_image_pixels"


@functools.lru_cache(maxsize=32)
def image_file(path: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file as ``[H, W, 3]`` uint8 RGB; one over ``max_pixels`` is refused before decoding."""
    return np.asarray(to_rgb(_open(path, max_pixels, "texture", TEXTURE_LIMIT_KEY)), dtype=np.uint8)


def _skimage_names() -> set[str]:
    from skimage import data

    return {name for name in getattr(data, "__all__", dir(data)) if not name.startswith("_")}


def resolve_textures(entries: Sequence[str] | None) -> list[list[str]]:
    """The texture groups named by ``train_data.synthesis.textures``: a defect draws one group uniformly,
    then one texture of that group uniformly (so a folder of 5000 images weighs as much as one photo).

    Args:
        entries: image files, folders of images (searched recursively), names of scikit-image photos
            (``brick``, ``coffee``, ...), and/or ``other_categories``; None = :data:`DEFAULT_TEXTURES`.

    Returns:
        One list of sources per entry: ``skimage:<name>``, image paths (a folder's sorted), or
        ``[OTHER_CATEGORIES]``.

    Raises:
        DataError: an entry that is none of these, or a folder without images.
    """
    if entries is None:
        return [[f"skimage:{name}"] for name in DEFAULT_TEXTURES]
    if isinstance(entries, str):
        entries = [entries]
    groups: list[list[str]] = []
    skimage_names: set[str] | None = None
    for entry in entries:
        entry = str(entry)
        path = Path(entry).expanduser()
        if entry == OTHER_CATEGORIES:
            groups.append([OTHER_CATEGORIES])
        elif path.is_dir():
            # Sorted as text, the order texture draws have always indexed.
            found = sorted(str(file) for file in list_images(path, recursive=True))
            if not found:
                raise DataError(f"train_data.synthesis.textures: folder {path} holds no images")
            warn_outside_links(path, "texture folder")
            groups.append(found)
        elif path.is_file():
            groups.append([str(path)])
        else:
            if skimage_names is None:
                skimage_names = _skimage_names()
            if entry not in skimage_names or "/" in entry:
                raise DataError(
                    f"train_data.synthesis.textures: '{entry}' is not an image file, a folder of images, "
                    f"a scikit-image photo (e.g. {', '.join(DEFAULT_TEXTURES[:4])}) or '{OTHER_CATEGORIES}'"
                )
            try:
                skimage_photo(entry)
            except Exception as error:  # noqa: BLE001 -- some photos need an optional download
                raise DataError(
                    f"train_data.synthesis.textures: scikit-image photo '{entry}' cannot be loaded offline "
                    f"({type(error).__name__}); use one of {', '.join(DEFAULT_TEXTURES)}"
                ) from None
            groups.append([f"skimage:{entry}"])
    if not groups:
        raise DataError("train_data.synthesis.textures is empty; null uses the bundled scikit-image photos")
    return groups


def load_texture(source: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """One texture source of :func:`resolve_textures` as ``[H, W, 3]`` uint8 (a file over ``max_pixels``
    is refused before decoding)."""
    if source.startswith("skimage:"):
        return skimage_photo(source.removeprefix("skimage:"))
    return image_file(source, max_pixels)
