"""Heatmap overlays: image | anomaly map blended on the image | ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw
from torch import Tensor

_JET = colormaps["jet"]


def colorize(anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """``[H, W]`` scores to ``[H, W, 3]`` uint8 jet colours (min-max scaled unless limits given)."""
    low = float(anomaly_map.min()) if vmin is None else vmin
    high = float(anomaly_map.max()) if vmax is None else vmax
    scaled = (anomaly_map - low) / max(high - low, 1e-12)
    return (_JET(np.clip(scaled, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)


def overlay_panel(
    image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None, alpha: float = 0.5
) -> np.ndarray:
    """Side-by-side panel as a uint8 array: image | blended heatmap | mask (when given).

    A map at another resolution than the image (maps at the files' resolution) gets the image resized to it.
    """
    if image.shape[:2] != anomaly_map.shape[-2:]:
        height, width = anomaly_map.shape[-2:]
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    heat = colorize(anomaly_map)
    blended = (alpha * heat + (1 - alpha) * image).astype(np.uint8)
    panels = [image, blended]
    if mask is not None:
        panels.append(np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=-1))
    return np.concatenate(panels, axis=1)


def save_overlay(
    image: Tensor | np.ndarray,
    anomaly_map: np.ndarray,
    mask: np.ndarray | None,
    target: Path,
    title: str | None = None,
) -> Path:
    """Write an overlay PNG. ``image`` is ``[3, H, W]`` in ``[0, 1]`` (or ``[H, W, 3]`` uint8)."""
    if isinstance(image, Tensor):
        image = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    panel = Image.fromarray(overlay_panel(image, anomaly_map, mask))
    if title:
        canvas = Image.new("RGB", (panel.width, panel.height + 14), "white")
        canvas.paste(panel, (0, 14))
        ImageDraw.Draw(canvas).text((2, 1), title, fill="black")
        panel = canvas
    target.parent.mkdir(parents=True, exist_ok=True)
    panel.save(target)
    return target
