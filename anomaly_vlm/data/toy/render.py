"""The renderer: categories, defects and the pixels of every synthetic image."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Bump whenever the rendered pixels change, so cached datasets on disk are regenerated.
GENERATOR_VERSION = 1

TEXTURE_CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel")
OBJECT_CATEGORIES: tuple[str, ...] = ("disc", "nut")
#: All categories, in the fixed order that defines each category's seed index.
SYNTHETIC_CATEGORIES: tuple[str, ...] = TEXTURE_CATEGORIES + OBJECT_CATEGORIES
#: Defect types, in the fixed order that defines each defect's seed (split) code.
DEFECT_TYPES: tuple[str, ...] = ("scratch", "stain", "hole")
#: Inclusive range of the fraction of image pixels a defect mask covers.
DEFECT_AREA_RANGE: tuple[float, float] = (0.005, 0.08)

# Split codes enter the seed; defect ``i`` uses ``_DEFECT_SPLIT_BASE + i``.
_SPLIT_CODES = {"train": 0, "test": 1}
_DEFECT_SPLIT_BASE = 2

# Dark and bright end of the colour ramp applied to each grayscale texture photo (RGB in [0, 1]).
_TEXTURE_RAMPS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "brick": ((0.17, 0.06, 0.04), (0.96, 0.66, 0.50)),
    "grass": ((0.05, 0.15, 0.02), (0.70, 0.92, 0.40)),
    "gravel": ((0.12, 0.10, 0.08), (0.93, 0.87, 0.74)),
}

# Stain colours (RGB); ``None`` means a water mark, i.e. a darker version of the surface itself.
_STAIN_COLOURS: tuple[tuple[float, float, float] | None, ...] = (
    (0.45, 0.22, 0.07),  # rust
    (0.07, 0.06, 0.05),  # oil
    (0.85, 0.80, 0.15),  # yellow paint
    (0.15, 0.35, 0.80),  # blue ink
    None,  # water
)


@dataclass(frozen=True)
class _Scene:
    """A defect-free rendering plus what a defect needs to know about it.

    Attributes:
        image: ``(H, W, 3)`` float32 RGB in [0, 1].
        background: What a missing part reveals (objects only; ``None`` for textures).
        support: ``(H, W)`` float32 coverage in [0, 1] of the surface that can be defective (the
            object; everywhere for textures).
    """

    image: np.ndarray
    background: np.ndarray | None
    support: np.ndarray


def render_sample(
    category: str,
    defect: str | None = None,
    image_size: int | tuple[int, int] = 128,
    seed: int = 0,
    index: int = 0,
    split: str = "test",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Render one image in memory, exactly as :func:`generate_synthetic_dataset` writes it.

    Args:
        category: One of :data:`SYNTHETIC_CATEGORIES`.
        defect: One of :data:`DEFECT_TYPES`, or ``None`` for a normal image.
        image_size: Side length in pixels, or ``(height, width)``.
        seed: Base seed.
        index: Image index within its folder (the ``000`` in ``000.png``).
        split: ``"train"`` or ``"test"``; ignored for defective images, which are test-only.

    Returns:
        ``(image, mask)``: ``(H, W, 3)`` uint8 RGB and, for a defect, an ``(H, W)`` uint8 mask with
        values 0/255 (``None`` for a normal image).
    """
    (cat,) = _check_categories([category])
    height, width = _check_size(image_size)
    if defect is None:
        if split not in _SPLIT_CODES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        split_code = _SPLIT_CODES[split]
    elif defect in DEFECT_TYPES:
        split_code = _DEFECT_SPLIT_BASE + DEFECT_TYPES.index(defect)
    else:
        raise ValueError(f"unknown defect {defect!r}; choose from {DEFECT_TYPES}")
    return _render(cat, defect, height, width, seed, split_code, index)


def _check_categories(categories: Sequence[str]) -> tuple[str, ...]:
    if isinstance(categories, str):
        categories = [categories]
    cats = tuple(categories)
    if not cats:
        raise ValueError("categories must not be empty")
    unknown = [c for c in cats if c not in SYNTHETIC_CATEGORIES]
    if unknown:
        raise ValueError(f"unknown synthetic categories {unknown}; choose from {SYNTHETIC_CATEGORIES}")
    if len(set(cats)) != len(cats):
        raise ValueError(f"duplicate categories in {cats}")
    return cats


def _check_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int | np.integer):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(v) for v in image_size)
        if len(size) != 2:
            raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    # Below this the thinnest defects no longer fit the area range reliably.
    if min(size) < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size!r}")
    return size


def _write_category(
    folder: Path,
    category: str,
    height: int,
    width: int,
    num_train: int,
    num_test_good: int,
    num_test_per_defect: int,
    seed: int,
) -> None:
    def name(i: int, count: int) -> str:
        return f"{i:0{max(3, len(str(count - 1)))}d}"

    jobs: list[tuple[Path, str | None, int, int]] = [
        (folder / "train" / "good", None, _SPLIT_CODES["train"], num_train),
        (folder / "test" / "good", None, _SPLIT_CODES["test"], num_test_good),
    ]
    jobs += [
        (folder / "test" / defect, defect, _DEFECT_SPLIT_BASE + k, num_test_per_defect)
        for k, defect in enumerate(DEFECT_TYPES)
    ]
    for out_dir, defect, split_code, count in jobs:
        out_dir.mkdir(parents=True)
        mask_dir = folder / "ground_truth" / defect if defect else None
        if mask_dir is not None:
            mask_dir.mkdir(parents=True)
        for i in range(count):
            image, mask = _render(category, defect, height, width, seed, split_code, i)
            stem = name(i, count)
            Image.fromarray(image).save(out_dir / f"{stem}.png", format="PNG")
            if mask_dir is not None:
                Image.fromarray(mask).save(mask_dir / f"{stem}_mask.png", format="PNG")


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _render(
    category: str, defect: str | None, height: int, width: int, seed: int, split_code: int, index: int
) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng([seed, SYNTHETIC_CATEGORIES.index(category), split_code, index])
    scene = _render_scene(category, rng, height, width)
    image, mask = scene.image, None
    if defect is not None:
        image, mask = _apply_defect(defect, rng, scene)
    # Sensor noise, so that flat backgrounds are not perfectly constant.
    image = image + rng.normal(0.0, 0.006, image.shape).astype(np.float32)
    image8 = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    mask8 = None if mask is None else mask.astype(np.uint8) * 255
    return image8, mask8


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)``, each ``(H, W)`` float32."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return yy, xx


def _render_scene(category: str, rng: np.random.Generator, height: int, width: int) -> _Scene:
    if category in TEXTURE_CATEGORIES:
        return _render_texture(category, rng, height, width)
    if category == "disc":
        return _render_disc(rng, height, width)
    if category == "nut":
        return _render_nut(rng, height, width)
    raise ValueError(f"unknown synthetic category {category!r}")  # pragma: no cover


@functools.cache
def _texture_photo(name: str) -> np.ndarray:
    """The grayscale 512x512 texture photo ``skimage.data.<name>()`` (bundled, no download)."""
    from skimage import data

    photo = np.asarray(getattr(data, name)())
    if photo.ndim == 3:
        photo = photo[..., :3].mean(axis=-1).astype(np.uint8)
    if name == "brick":
        # The photo shows bricks laid on end; turned a quarter they read as an ordinary wall.
        photo = photo.T
    photo = np.ascontiguousarray(photo)
    photo.setflags(write=False)
    return photo


def _render_texture(category: str, rng: np.random.Generator, height: int, width: int) -> _Scene:
    """A random crop of a texture photo, colourised with the category's colour ramp."""
    photo = _texture_photo(category)
    src_h, src_w = photo.shape
    # Crop scale varies by ~30 % so normal images differ in texture scale as well as position.
    side = rng.uniform(0.55, 0.72) * min(src_h, src_w)
    crop_h = max(8, round(side * min(1.0, height / width)))
    crop_w = max(8, round(side * min(1.0, width / height)))
    y0 = int(rng.integers(0, src_h - crop_h + 1))
    x0 = int(rng.integers(0, src_w - crop_w + 1))
    crop = photo[y0 : y0 + crop_h, x0 : x0 + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize((width, height), Image.Resampling.LANCZOS)
    gray = np.asarray(resized, dtype=np.float32) / 255.0
    gray = np.clip((gray - 0.5) * rng.uniform(0.92, 1.08) + 0.5 + rng.uniform(-0.04, 0.04), 0.0, 1.0)
    dark, bright = (np.asarray(c, dtype=np.float32) for c in _TEXTURE_RAMPS[category])
    tint = 1.0 + rng.normal(0.0, 0.015, 3).astype(np.float32)
    image = (dark + gray[..., None] * (bright - dark)) * tint
    return _Scene(np.clip(image, 0.0, 1.0), None, np.ones((height, width), np.float32))


def _render_disc(rng: np.random.Generator, height: int, width: int) -> _Scene:
    """A shaded blue disc with a concentric groove on a light background."""
    yy, xx = _grid(height, width)
    s = float(min(height, width))
    level = rng.uniform(0.78, 0.84)
    background = level + 0.05 * (yy / height - 0.5)
    background = background[..., None] * np.array([1.0, 0.99, 0.95], np.float32)

    cy = height / 2 + rng.uniform(-0.05, 0.05) * s
    cx = width / 2 + rng.uniform(-0.05, 0.05) * s
    radius = 0.31 * s * rng.uniform(0.95, 1.05)
    # Drop shadow down-right: makes the disc read as an object, and a missing part shows it.
    shadow_d = np.hypot(yy - cy - 0.025 * s, xx - cx - 0.025 * s)
    shadow = np.clip((radius + 0.03 * s - shadow_d) / (0.05 * s), 0.0, 1.0)
    background = background * (1.0 - 0.22 * shadow[..., None])

    d = np.hypot(yy - cy, xx - cx)
    alpha = np.clip(radius - d + 0.5, 0.0, 1.0)
    base = np.array([0.20, 0.42, 0.76], np.float32) + rng.normal(0.0, 0.025, 3).astype(np.float32)
    light_d = np.hypot(yy - (cy - 0.35 * radius), xx - (cx - 0.35 * radius)) / (1.6 * radius)
    shade = 1.2 - 0.5 * np.clip(light_d, 0.0, 1.0)
    groove = np.exp(-(((d - 0.72 * radius) / (0.015 * s)) ** 2))
    rim = np.clip((d - 0.92 * radius) / (0.08 * radius), 0.0, 1.0)
    disc = base * (shade * (1.0 - 0.35 * groove) * (1.0 - 0.25 * rim))[..., None]

    image = background * (1.0 - alpha[..., None]) + disc * alpha[..., None]
    return _Scene(np.clip(image, 0.0, 1.0).astype(np.float32), background.astype(np.float32), alpha)


def _render_nut(rng: np.random.Generator, height: int, width: int) -> _Scene:
    """A metallic hexagon nut with chamfered corners and a threaded hole, on a dark background."""
    yy, xx = _grid(height, width)
    s = float(min(height, width))
    background = (rng.uniform(0.15, 0.19) + 0.04 * (xx / width - 0.5))[..., None]
    background = background * np.array([0.95, 1.0, 1.08], np.float32)

    cy = height / 2 + rng.uniform(-0.04, 0.04) * s
    cx = width / 2 + rng.uniform(-0.04, 0.04) * s
    apothem = 0.29 * s * rng.uniform(0.97, 1.03)
    theta = rng.uniform(0.0, np.pi / 3)
    dy, dx = yy - cy, xx - cx
    # A regular hexagon is the intersection of three slabs |p . n_k| <= apothem.
    slab = np.max(
        [np.abs(dx * np.cos(theta + k * np.pi / 3) + dy * np.sin(theta + k * np.pi / 3)) for k in range(3)],
        axis=0,
    )
    d = np.hypot(dy, dx)
    hole_r = 0.47 * apothem * rng.uniform(0.97, 1.03)
    alpha = np.clip(apothem - slab + 0.5, 0.0, 1.0) * np.clip(d - hole_r + 0.5, 0.0, 1.0)

    steel = np.array([0.97, 1.0, 1.04], np.float32)
    metal = np.float32(rng.uniform(0.58, 0.66)) * steel * (1.0 + rng.normal(0.0, 0.008, 3).astype(np.float32))
    # Fixed light from the upper left, so the highlight moves across the faces as the nut rotates.
    shade = 1.0 + 0.22 * (-(dx + dy) / np.sqrt(2.0)) / apothem
    chamfer = np.clip((d - 0.98 * apothem) / (0.04 * s), 0.0, 1.0)
    thread_zone = (d >= hole_r) & (d <= 1.25 * hole_r)
    thread = np.where(thread_zone, 0.5 + 0.5 * np.cos(2 * np.pi * (d - hole_r) / max(2.0, 0.03 * s)), 0.0)
    face = shade * (1.0 - 0.25 * chamfer) * (1.0 - 0.3 * thread) * (1.0 - 0.15 * thread_zone)
    nut = metal * face[..., None]

    image = background * (1.0 - alpha[..., None]) + nut * alpha[..., None]
    return _Scene(np.clip(image, 0.0, 1.0).astype(np.float32), background.astype(np.float32), alpha)


# --------------------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------------------


def _sample_centre(rng: np.random.Generator, scene: _Scene) -> tuple[float, float]:
    height, width = scene.support.shape
    margin = int(0.1 * min(height, width))
    candidates = scene.support >= 0.999
    # Keep defects off the image border, where part of them would be cropped away.
    candidates[:margin] = candidates[height - margin :] = False
    candidates[:, :margin] = candidates[:, width - margin :] = False
    flat = np.flatnonzero(candidates)
    if flat.size == 0:  # pragma: no cover - every scene has an interior
        flat = np.arange(height * width)
    y, x = divmod(int(flat[rng.integers(flat.size)]), width)
    return y + rng.uniform(-0.5, 0.5), x + rng.uniform(-0.5, 0.5)


def _blob_weight(
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    edge: float,
) -> np.ndarray:
    """An irregular blob: a rotated ellipse whose radius wobbles with a few low harmonics."""
    angle = rng.uniform(0.0, np.pi)
    aspect = rng.uniform(0.6, 1.0)
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / aspect
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    outline = np.ones_like(phi)
    for k in range(2, 6):
        outline += rng.uniform(0.0, 0.14) / np.sqrt(k - 1) * np.cos(k * phi + rng.uniform(0.0, 2 * np.pi))
    return np.clip((radius * outline - rho) / edge + 0.5, 0.0, 1.0)


def _polyline_weight(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, centre: tuple[float, float], s: float
) -> np.ndarray:
    """A thin scratch: 2-4 segments of a gently bending path, anti-aliased."""
    n_seg = int(rng.integers(2, 5))
    length = s * rng.uniform(0.35, 0.6)
    half_width = s * rng.uniform(0.008, 0.014)
    heading = rng.uniform(0.0, 2 * np.pi)
    points = [np.zeros(2)]
    for _ in range(n_seg):
        heading += rng.normal(0.0, 0.35)
        step = length / n_seg * rng.uniform(0.8, 1.2)
        points.append(points[-1] + step * np.array([np.sin(heading), np.cos(heading)]))
    pts = np.array(points)
    pts += np.array(centre) - pts.mean(axis=0)
    dist = np.full(yy.shape, np.inf, np.float32)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:], strict=True):
        vy, vx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * vy + (xx - x0) * vx) / max(vy * vy + vx * vx, 1e-9), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(yy - (y0 + t * vy), xx - (x0 + t * vx)))
    return np.clip(half_width + 0.5 - dist, 0.0, 1.0)


def _apply_defect(defect: str, rng: np.random.Generator, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``defect`` onto ``scene``; returns the image and its boolean ground-truth mask."""
    height, width = scene.support.shape
    # Geometric mean, so that a defect covers the same fraction of a non-square image.
    s = float(np.sqrt(height * width))
    yy, xx = _grid(height, width)
    image = scene.image
    lo, hi = DEFECT_AREA_RANGE
    # Strength spreads defects from faint to obvious, so a random model cannot ace the test set.
    strength = rng.uniform(0.3, 1.0)

    # Rejection sampling keeps every mask inside the documented area range; a draw can miss it
    # when a scratch leaves the object or a blob is cut by the object's outline.
    for _ in range(50):
        centre = _sample_centre(rng, scene)
        if defect == "scratch":
            weight = _polyline_weight(rng, yy, xx, centre, s)
        elif defect == "stain":
            radius = s * rng.uniform(0.07, 0.13)
            weight = _blob_weight(rng, yy, xx, centre, radius, edge=radius * rng.uniform(0.15, 0.35))
        elif defect == "hole":
            weight = _blob_weight(rng, yy, xx, centre, s * rng.uniform(0.06, 0.11), edge=1.0)
        else:
            raise ValueError(f"unknown defect {defect!r}; choose from {DEFECT_TYPES}")
        # A defect exists only on the object: clip it there, both in the pixels and the mask.
        weight = weight * scene.support
        mask = weight >= 0.5
        if lo <= mask.mean() <= hi:
            break

    w = weight[..., None]
    if defect == "scratch":
        # Either a groove in shadow or a bright scratch that catches the light.
        target = image * 0.25 if rng.random() < 0.5 else 1.0 - (1.0 - image) * 0.2
        out = image + (target - image) * w * strength
    elif defect == "stain":
        colour = _STAIN_COLOURS[int(rng.integers(len(_STAIN_COLOURS)))]
        target = image * 0.55 if colour is None else np.asarray(colour, np.float32)
        out = image + (target - image) * w * (0.85 * strength)
    elif scene.background is not None:
        out = image + (scene.background - image) * w  # a missing part shows what is behind
    else:
        pit = image * rng.uniform(0.08, 0.2)
        out = image + (pit - image) * w * (0.25 + 0.75 * strength)
    return np.clip(out, 0.0, 1.0).astype(np.float32), mask
