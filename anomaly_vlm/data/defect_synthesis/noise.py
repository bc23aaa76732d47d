"""Perlin gradient noise: the smooth random fields that shape DRAEM-style texture defects."""

from __future__ import annotations

import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    # Perlin's quintic interpolant: zero first and second derivatives at the lattice, so no grid seams.
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(height: int, width: int, cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A ``[height, width]`` field of 2D Perlin noise with ``cells`` lattice cells per axis.

    Unit gradients of random direction sit on the ``(cells_y + 1) x (cells_x + 1)`` lattice; every pixel
    blends the dot products of its four corners' gradients with its offsets to them. Values lie in
    about ``[-0.71, 0.71]``, zero on the lattice points. Any size works (the image side need not be a
    multiple of the cell count).

    Args:
        height, width: size of the field in pixels.
        cells: lattice cells along (y, x); more cells = smaller blobs.
        rng: the source of the gradient directions.
    """
    cells_y, cells_x = (int(value) for value in cells)
    if cells_y < 1 or cells_x < 1:
        raise ValueError(f"perlin noise needs at least one cell per axis, got {cells}")
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(cells_y + 1, cells_x + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    # Pixel centres in lattice coordinates.
    y = (np.arange(height) + 0.5) * cells_y / height
    x = (np.arange(width) + 0.5) * cells_x / width
    y0 = np.minimum(np.floor(y).astype(int), cells_y - 1)
    x0 = np.minimum(np.floor(x).astype(int), cells_x - 1)
    fy = (y - y0)[:, None]
    fx = (x - x0)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[(y0 + dy)[:, None], (x0 + dx)[None, :]]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    uy, ux = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1.0 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1.0 - ux) + corner(1, 1) * ux
    return (top * (1.0 - uy) + bottom * uy).astype(np.float32)
