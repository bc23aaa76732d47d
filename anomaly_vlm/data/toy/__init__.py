"""The toy dataset: a procedurally generated anomaly-detection dataset in MVTec AD layout.

The real benchmarks (MVTec AD, VisA) cannot be downloaded on the build machines, so the demo and
the test-suite run on this small dataset instead. It is written to disk in exactly the MVTec AD
layout, so the ordinary MVTec loader reads it and nothing downstream knows it is synthetic::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png

Categories:
    * ``brick``, ``grass``, ``gravel`` -- textures. Random crops (scale, position, flips) of the
      grayscale texture photos that scikit-image ships offline, colourised with a fixed
      per-category two-colour ramp (brick red, grass green, sandy gravel) plus slight
      brightness/contrast jitter.
    * ``disc`` -- object. A shaded blue disc with a concentric groove, like a bottle cap seen from
      above, on a plain light background with a soft drop shadow. Position, radius and colour jitter.
    * ``nut`` -- object. A metallic hexagon nut with a chamfer and a threaded central hole on a dark
      background; random rotation, small position/size/colour jitter.

Defects (see :data:`DEFECT_TYPES`):
    * ``scratch`` -- a thin dark (groove) or bright (reflection) polyline of 2-4 segments.
    * ``stain`` -- an irregular blob of rust, oil, paint or water colour with a soft edge, blended
      with varying opacity; faint ones are hard to see.
    * ``hole`` -- on textures a dark pit (a shallow dent when subtle); on objects a missing part:
      the region is cut out of the object and shows the background, chipping the rim when the
      defect falls on the outline.

Every defect has a random strength, so some are obvious and some are subtle. Ground-truth masks are
binary (0/255) and mark exactly the pixels the defect changed: for soft edges the pixels whose
defect weight is at least one half (the usual annotation convention), and on objects only pixels
that belong to the object. A defect covers :data:`DEFECT_AREA_RANGE` of the image.

Generation is deterministic: every image draws from its own ``numpy.random.Generator`` seeded
with ``(seed, category index, split code, image index)``; the global RNG is never used. A
category's images therefore do not depend on which other categories are generated with it.

Its reader, the ``data=synthetic`` source, is :class:`~anomaly_vlm.data.datasets.toy.SyntheticAD`; it
generates the files on first use. This package is split by role; every name is importable from it:

* :mod:`~anomaly_vlm.data.toy.render` -- the renderer: categories, defects and the pixels
  of every image (:func:`render_sample`).
* :mod:`~anomaly_vlm.data.toy.cache` -- the disk cache: where it lives, its manifest, the
  file lock and the removal of stale output.
* this module -- :func:`generate_synthetic_dataset`, which renders into the locked cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from anomaly_vlm.data.toy.cache import (
    _PENDING_NAME,
    _TMP_PREFIX,
    MANIFEST_NAME,
    _exclusive_lock,
    _is_complete,
    _remove_previous_output,
    _write_json,
    default_synthetic_root,
)
from anomaly_vlm.data.toy.render import (
    DEFECT_AREA_RANGE,
    DEFECT_TYPES,
    GENERATOR_VERSION,
    OBJECT_CATEGORIES,
    SYNTHETIC_CATEGORIES,
    TEXTURE_CATEGORIES,
    _check_categories,
    _check_size,
    _write_category,
    render_sample,
)

# The scene and defect steps stay reachable here, where the single-module version had them.
from anomaly_vlm.data.toy.render import _apply_defect as _apply_defect
from anomaly_vlm.data.toy.render import _render_scene as _render_scene

__all__ = [
    "DEFECT_AREA_RANGE",
    "DEFECT_TYPES",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "OBJECT_CATEGORIES",
    "SYNTHETIC_CATEGORIES",
    "TEXTURE_CATEGORIES",
    "default_synthetic_root",
    "generate_synthetic_dataset",
    "render_sample",
]


def generate_synthetic_dataset(
    root: str | Path,
    categories: Sequence[str] = SYNTHETIC_CATEGORIES,
    image_size: int | tuple[int, int] = 128,
    num_train: int = 8,
    num_test_good: int = 4,
    num_test_per_defect: int = 3,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic dataset in MVTec AD layout under ``root``, or reuse a cached copy.

    Each category gets ``num_train`` normal training images, ``num_test_good`` normal test images
    and, for every defect in :data:`DEFECT_TYPES`, ``num_test_per_defect`` defective test images
    with binary masks.

    A manifest (``<root>/.synthetic.json``: generator version and all arguments) is written last.
    When it exists with the same arguments (and its category folders are present) the call
    returns at once and writes nothing. Otherwise the category folders recorded by a previous run
    (and the leftovers of a crashed one) are removed and the dataset is regenerated: images are
    rendered into a temporary folder inside ``root`` and moved into place before the manifest is
    written, so a half-written dataset is never mistaken for a complete one. Concurrent calls on
    the same root (e.g. a parallel Hydra multirun) are serialised with a file lock where the
    platform has ``fcntl``.

    Args:
        root: Dataset root; created if missing. Use a separate root per argument set when several
            configurations are needed at once: a root holds one dataset at a time.
        categories: Subset of :data:`SYNTHETIC_CATEGORIES` to generate.
        image_size: Side length in pixels, or ``(height, width)``; at least 32.
        num_train: Normal training images per category (at least 1).
        num_test_good: Normal test images per category (at least 1).
        num_test_per_defect: Defective test images per category and defect type (at least 1).
        seed: Non-negative base seed; the same arguments give byte-identical PNG files.
        overwrite: Regenerate even when the cache matches, and replace category folders in
            ``root`` that this generator did not write (without it they raise an error).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: For an unknown category or an invalid count, size or seed.
        FileExistsError: If a category folder that this generator did not write is in the way
            and ``overwrite`` is false.
    """
    root = Path(root).expanduser()
    cats = _check_categories(categories)
    height, width = _check_size(image_size)
    for name, value in (
        ("num_train", num_train),
        ("num_test_good", num_test_good),
        ("num_test_per_defect", num_test_per_defect),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")

    manifest = {
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "args": {
            "categories": list(cats),
            "image_size": [height, width],
            "num_train": int(num_train),
            "num_test_good": int(num_test_good),
            "num_test_per_defect": int(num_test_per_defect),
            "seed": int(seed),
        },
        "defect_types": list(DEFECT_TYPES),
    }
    # Checked before taking the lock so a cache hit leaves the root untouched (no lock file).
    if not overwrite and _is_complete(root, manifest):
        return root

    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root):
        # Another process may have finished the same dataset while we waited for the lock.
        if not overwrite and _is_complete(root, manifest):
            return root
        _remove_previous_output(root, cats, overwrite)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
        try:
            for cat in cats:
                _write_category(
                    tmp / cat,
                    cat,
                    height,
                    width,
                    int(num_train),
                    int(num_test_good),
                    int(num_test_per_defect),
                    int(seed),
                )
            # Recorded before the moves so that a crash between them still lets the next run
            # know which folders are ours to delete.
            _write_json(root / _PENDING_NAME, {"categories": list(cats)})
            for cat in cats:
                os.replace(tmp / cat, root / cat)
            _write_json(root / MANIFEST_NAME, manifest)
            (root / _PENDING_NAME).unlink()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root
