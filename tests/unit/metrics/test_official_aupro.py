"""``metrics.aupro=official``: the thresholds-grid AUPRO of the APRIL-GAN / AnomalyCLIP evaluation code."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import measure

from anomaly_vlm.metrics import Evaluator, ScoreSplit, official_aupro, pixel_metrics


def straightforward_official_aupro(maps: np.ndarray, masks: np.ndarray, steps: int = 200, limit: float = 0.3):
    """The definition written out: one binary map per threshold, regions labelled per image."""
    low, high = maps.min(), maps.max()
    step = (high - low) / steps
    regions = []
    for image, mask in enumerate(masks):
        labelled = measure.label(mask.astype(np.uint8), connectivity=2)
        regions += [(image, labelled == index) for index in range(1, labelled.max() + 1)]
    normal = masks == 0
    fprs, pros = [], []
    for threshold in np.arange(low, high, step):
        detected = maps > threshold
        pros.append(np.mean([detected[image][region].sum() / region.sum() for image, region in regions]))
        fprs.append((detected & normal).sum() / normal.sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < limit
    fprs, pros = fprs[keep], pros[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    area = 0.0
    for i in range(1, len(fprs)):  # trapezoids along the curve, whichever way FPR runs
        area += abs(fprs[i] - fprs[i - 1]) * (pros[i] + pros[i - 1]) / 2.0
    return area


def generated(seed: int, count: int = 4, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((count, size, size), dtype=np.uint8)
    for image in range(1, count):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(5, size - 5, 2)
            ry, rx = rng.uniform(2, 8, 2)
            masks[image][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    maps = rng.normal(size=masks.shape) + 1.5 * masks + 0.5 * rng.random(masks.shape)
    return maps.astype(np.float32), masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_straightforward_definition(seed: int) -> None:
    maps, masks = generated(seed)
    ours = official_aupro(ScoreSplit.from_maps(maps, masks))
    assert ours == pytest.approx(straightforward_official_aupro(maps, masks), abs=1e-6)


def test_differs_from_the_exact_aupro() -> None:
    maps, masks = generated(5)
    exact = pixel_metrics(maps, masks)["pixel_aupro"]
    official = official_aupro(ScoreSplit.from_maps(maps, masks))
    # The rescaling of the kept FPRs to [0, 1] makes the variant a different number.
    assert abs(exact - official) > 1e-3


def test_evaluator_reports_the_chosen_variant() -> None:
    maps, masks = generated(3)
    results = {}
    for variant in ("exact", "official"):
        evaluator = Evaluator(aupro=variant)
        evaluator.update(
            "part",
            image_scores=maps.reshape(len(maps), -1).max(1),
            labels=masks.reshape(len(masks), -1).max(1),
            anomaly_maps=maps,
            masks=masks,
        )
        results[variant] = evaluator.compute_category("part")["pixel_aupro"]
    assert results["official"] == pytest.approx(straightforward_official_aupro(maps, masks), abs=1e-6)
    assert results["exact"] == pytest.approx(pixel_metrics(maps, masks)["pixel_aupro"], abs=1e-9)


def test_constant_maps_are_absent_not_a_crash() -> None:
    maps, masks = generated(4)
    evaluator = Evaluator(aupro="official")
    evaluator.update(
        "part",
        image_scores=np.arange(len(maps)),
        labels=[0, 1, 1, 1],
        anomaly_maps=np.zeros_like(maps),
        masks=masks,
    )
    with pytest.warns(UserWarning, match="official AUPRO is undefined"):
        assert evaluator.compute_category("part")["pixel_aupro"] is None


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="metrics.aupro='mvtec'"):
        Evaluator(aupro="mvtec")
