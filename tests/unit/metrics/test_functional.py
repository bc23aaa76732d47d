"""Exact metrics against sklearn and against a slow, direct AUPRO reference."""

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from anomaly_vlm.metrics import (
    ScoreSplit,
    aupro,
    auroc,
    average_precision,
    f1_max,
    image_metrics,
    pixel_metrics,
    ranking_metrics,
    region_sizes,
)

# ---------------------------------------------------------------- references


def sklearn_f1max(scores, labels):
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


def reference_aupro(maps, masks, fpr_limit=0.3):
    """Direct AUPRO: one full thresholding per distinct score, overlaps measured region by region."""
    regions = []  # (image index, region mask), labelled with OpenCV as an independent check
    for b, mask in enumerate(masks):
        n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        regions.extend((b, lab == k) for k in range(1, n))
    background = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append((pred & background).sum() / background.sum())
        pros.append(float(np.mean([(pred[b] & r).sum() / r.sum() for b, r in regions])))
    area = 0.0
    for i in range(len(fprs) - 1):
        x0, y0, x1, y1 = fprs[i], pros[i], fprs[i + 1], pros[i + 1]
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (fpr_limit - x0) / (x1 - x0) * (y1 - y0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def blob_masks(rng, n_images, size, max_blobs=4, p_normal=0.25):
    masks = np.zeros((n_images, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for b in range(n_images):
        if rng.random() < p_normal:
            continue
        for _ in range(rng.integers(1, max_blobs + 1)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.uniform(1, size / 6, 2)
            masks[b] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    if not masks.any():
        masks[0, :3, :3] = True
    return masks


def blob_maps(rng, masks, signal=1.0, decimals=None):
    maps = rng.normal(size=masks.shape) + signal * masks
    maps = ndimage.gaussian_filter(maps, sigma=(0, 1, 1)).astype(np.float32)
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps


# ---------------------------------------------------------------- image level


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [None, 2, 1, 0])
def test_image_metrics_match_sklearn(seed, decimals):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[:2] = [True, False]
    scores = rng.normal(size=n) + labels * rng.uniform(0, 2)
    if decimals is not None:
        scores = np.round(scores, decimals)
    got = image_metrics(scores, labels)
    assert got["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert got["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert got["image_f1max"] == pytest.approx(sklearn_f1max(scores, labels), abs=1e-9)
    assert auroc(scores, labels) == got["image_auroc"]
    assert average_precision(scores, labels) == got["image_ap"]
    assert f1_max(scores, labels) == got["image_f1max"]


def test_image_metrics_all_tied_and_perfect():
    labels = np.array([0, 1, 0, 1, 1])
    tied = np.zeros(5)
    assert auroc(tied, labels) == pytest.approx(0.5)
    assert average_precision(tied, labels) == pytest.approx(average_precision_score(labels, tied))
    perfect = labels.astype(float)
    assert image_metrics(perfect, labels) == {"image_auroc": 1.0, "image_ap": 1.0, "image_f1max": 1.0}
    assert auroc(-perfect, labels) == 0.0


def test_image_metrics_accept_tensors_and_int_labels():
    rng = np.random.default_rng(3)
    scores = rng.random(50)
    labels = (rng.random(50) < 0.5).astype(np.int64)
    ref = image_metrics(scores, labels)
    got = image_metrics(torch.from_numpy(scores), torch.from_numpy(labels))
    assert got == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("labels", [np.zeros(5, int), np.ones(5, int)])
def test_single_class_raises(labels):
    with pytest.raises(ValueError, match="only one class"):
        image_metrics(np.arange(5.0), labels)
    with pytest.raises(ValueError, match="only one class"):
        auroc(np.arange(5.0), labels)


def test_malformed_input_raises():
    with pytest.raises(ValueError, match="labels"):
        auroc(np.arange(4.0), [0, 1, 2, 0])
    with pytest.raises(ValueError, match="3 labels for 4"):
        auroc(np.arange(4.0), [0, 1, 0])
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0.1, np.nan, 0.3]), [0, 1, 1])


# ---------------------------------------------------------------- pixel level


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("decimals", [None, 1])
def test_pixel_auroc_ap_f1_match_sklearn(seed, decimals):
    rng = np.random.default_rng(100 + seed)
    masks = blob_masks(rng, 6, 24)
    maps = blob_maps(rng, masks, decimals=decimals)
    got = pixel_metrics(maps, masks)
    flat_s, flat_l = maps.ravel(), masks.ravel()
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(flat_l, flat_s), abs=1e-9)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(flat_l, flat_s), abs=1e-9)
    assert got["pixel_f1max"] == pytest.approx(sklearn_f1max(flat_s, flat_l), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_reference(seed, decimals, limit):
    rng = np.random.default_rng(200 + seed)
    masks = blob_masks(rng, 5, 20)
    maps = blob_maps(rng, masks, signal=rng.uniform(0.3, 2.0), decimals=decimals)
    assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(reference_aupro(maps, masks, limit), abs=1e-6)


def test_aupro_perfect_and_uninformative():
    rng = np.random.default_rng(7)
    masks = blob_masks(rng, 8, 32)
    assert aupro(masks.astype(np.float32), masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks.astype(np.float32), masks, fpr_limit=1.0) == pytest.approx(1.0, abs=1e-12)
    # A map that ignores the masks: PRO ~ FPR, so the normalised area is ~ 0.3 / 2.
    noise = rng.random(masks.shape).astype(np.float32)
    assert 0.08 < aupro(noise, masks) < 0.22
    assert aupro(-masks.astype(np.float32), masks) == pytest.approx(0.0, abs=1e-12)


def test_aupro_weights_regions_not_pixels():
    # One large region found perfectly, one small region missed: PRO saturates at 0.5, while the
    # pixel-level recall would be ~1.
    masks = np.zeros((1, 40, 40), dtype=bool)
    masks[0, :20, :20] = True
    masks[0, 30, 30] = True
    maps = np.zeros_like(masks, dtype=np.float32)
    maps[0, :20, :20] = 1.0
    maps[0, 30, 30] = -1.0  # ranked below every background pixel
    assert aupro(maps, masks) == pytest.approx(0.5, abs=1e-12)
    # Tied with the background instead: PRO rises linearly from 0.5 to 1 over FPR in [0, 1].
    maps[0, 30, 30] = 0.0
    assert aupro(maps, masks) == pytest.approx((0.5 + 0.65) / 2, abs=1e-12)


def test_regions_are_8_connected_and_per_image():
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region
    masks[0, 4, 4] = True
    masks[1, 0, 0] = True  # same position in the next image: a separate region
    sizes, n = region_sizes(masks)
    assert n == 3
    assert sizes.tolist() == [2, 2, 1, 1]


def test_pixel_metrics_degenerate_masks_raise():
    maps = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="only one class"):
        pixel_metrics(maps, np.zeros((2, 8, 8), bool))
    with pytest.raises(ValueError, match="shape|maps"):
        pixel_metrics(maps, np.zeros((2, 8, 9), bool))


def test_split_concatenation_equals_whole():
    rng = np.random.default_rng(11)
    masks = blob_masks(rng, 6, 16)
    maps = blob_maps(rng, masks, decimals=1)
    whole = ranking_metrics(ScoreSplit.from_maps(maps, masks), pro_fpr_limit=0.3)
    parts = [ScoreSplit.from_maps(maps[i : i + 2], masks[i : i + 2]) for i in range(0, 6, 2)]
    joined = ranking_metrics(ScoreSplit.concatenate(parts), pro_fpr_limit=0.3)
    assert joined == pytest.approx(whole, abs=1e-12)


def test_soft_and_uint8_masks_binarised():
    rng = np.random.default_rng(5)
    masks = blob_masks(rng, 3, 16)
    maps = blob_maps(rng, masks)
    ref = pixel_metrics(maps, masks)
    assert pixel_metrics(maps, masks.astype(np.uint8) * 255) == pytest.approx(ref, abs=1e-12)
    soft = np.where(masks, 0.9, 0.2).astype(np.float32)
    assert pixel_metrics(torch.from_numpy(maps), torch.from_numpy(soft)) == pytest.approx(ref, abs=1e-12)
