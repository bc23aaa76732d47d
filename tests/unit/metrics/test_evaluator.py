"""The per-category Evaluator: accumulation, absent metrics, overrides and macro means."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from anomaly_vlm.metrics import METRIC_NAMES, Evaluator, image_metrics, pixel_metrics


def make_category(seed, n=24, size=16):
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    labels[n // 4 :] = 1
    rng.shuffle(labels)
    masks = np.zeros((n, size, size), dtype=bool)
    for b in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, size - 4, 2)
            h, w = rng.integers(1, 5, 2)
            masks[b, y : y + h, x : x + w] = True
    maps = ndimage.gaussian_filter(rng.normal(size=masks.shape) + 1.5 * masks, sigma=(0, 1, 1))
    maps = np.round(maps, 1).astype(np.float32)  # ties on purpose
    scores = maps.reshape(n, -1).max(axis=1) + rng.normal(scale=0.5, size=n)
    return scores, labels, maps, masks


def feed(ev, category, data, batch=5, as_tensor=False):
    scores, labels, maps, masks = data
    for i in range(0, len(scores), batch):
        sl = slice(i, i + batch)
        args = [scores[sl], labels[sl], maps[sl], None if masks is None else masks[sl]]
        if as_tensor:
            args = [None if a is None else torch.from_numpy(np.asarray(a)) for a in args]
        ev.update(category, *args)


def expected(data):
    scores, labels, maps, masks = data
    return {**image_metrics(scores, labels), **pixel_metrics(maps, masks)}


def test_two_categories_match_functional_and_macro_mean():
    a, b = make_category(0), make_category(1, n=30, size=20)
    ev = Evaluator()
    feed(ev, "bottle", a, as_tensor=True)
    feed(ev, "cable", b, batch=7)
    assert ev.categories == ["bottle", "cable"]
    res_a = ev.compute_category("bottle")
    ev.release("bottle")
    res_b = ev.compute_category("cable")
    ev.release("cable")
    assert set(res_a) == set(METRIC_NAMES)
    assert res_a == pytest.approx(expected(a), abs=1e-12)
    assert res_b == pytest.approx(expected(b), abs=1e-12)
    assert ev.results == {"bottle": res_a, "cable": res_b}
    mean = ev.macro_mean()
    for name in METRIC_NAMES:
        assert mean[name] == pytest.approx((res_a[name] + res_b[name]) / 2, abs=1e-15)
    np.testing.assert_array_equal(ev.stored_labels("cable"), b[1])
    np.testing.assert_allclose(ev.stored_image_scores("bottle"), a[0])


def test_absent_pixel_metrics_and_macro_mean_skips_them():
    a, b = make_category(2), make_category(3)
    ev = Evaluator()
    feed(ev, "with_masks", a)
    scores, labels, maps, _ = b
    feed(ev, "no_masks", (scores, labels, maps, None))
    ev.compute_category("with_masks")
    res = ev.compute_category("no_masks")
    assert all(res[k] is None for k in METRIC_NAMES if k.startswith("pixel_"))
    assert res["image_auroc"] is not None
    mean = ev.macro_mean()
    assert mean["pixel_aupro"] == ev.results["with_masks"]["pixel_aupro"]
    assert mean["image_auroc"] == pytest.approx(
        (ev.results["with_masks"]["image_auroc"] + res["image_auroc"]) / 2
    )


def test_all_empty_masks_and_no_maps_give_absent_pixel_metrics():
    scores, labels, maps, masks = make_category(4)
    ev = Evaluator()
    ev.update("empty", scores, labels, maps, np.zeros_like(masks))
    ev.update("image_only", scores, labels)
    for cat in ("empty", "image_only"):
        res = ev.compute_category(cat)
        assert res["pixel_auroc"] is None and res["pixel_aupro"] is None
        assert res["image_ap"] is not None
    ev_off = Evaluator(compute_pixel=False)
    ev_off.update("c", scores, labels, maps, masks)
    assert ev_off.compute_category("c")["pixel_ap"] is None


def test_mixed_pixel_availability_warns_and_reports_absent():
    scores, labels, maps, masks = make_category(5)
    ev = Evaluator()
    ev.update("c", scores[:10], labels[:10], maps[:10], masks[:10])
    with pytest.warns(UserWarning, match="only some images"):
        ev.update("c", scores[10:], labels[10:], maps[10:], None)
    assert ev.compute_category("c")["pixel_aupro"] is None


def test_single_class_image_metrics_absent_with_warning():
    scores, labels, maps, masks = make_category(6)
    normal = labels == 0
    ev = Evaluator()
    ev.update("good_only", scores[normal], labels[normal], maps[normal], masks[normal])
    with pytest.warns(UserWarning, match="one image class"):
        res = ev.compute_category("good_only")
    assert all(v is None for v in res.values())
    assert ev.macro_mean() == dict.fromkeys(METRIC_NAMES)


def test_override_scores_and_recompute_after_release():
    data = make_category(7)
    scores, labels = data[0], data[1]
    ev = Evaluator()
    feed(ev, "c", data)
    first = ev.compute_category("c")
    ev.release("c")
    rescaled = 1.0 - (scores - scores.min()) / (scores.max() - scores.min())  # inverts the ranking
    second = ev.compute_category("c", image_scores=rescaled)
    assert second["image_auroc"] == pytest.approx(1.0 - first["image_auroc"], abs=1e-12)
    assert second["pixel_aupro"] == first["pixel_aupro"]
    with pytest.raises(ValueError, match="override"):
        ev.compute_category("c", image_scores=rescaled[:-1])
    with pytest.raises(ValueError, match="released"):
        ev.update("c", scores[:2], labels[:2], data[2][:2], data[3][:2])


def test_repeated_compute_is_stable_and_channel_dim_accepted():
    scores, labels, maps, masks = make_category(8)
    ev = Evaluator(pro_fpr_limit=0.1)
    ev.update("c", torch.from_numpy(scores).half(), labels, torch.from_numpy(maps)[:, None], masks[:, None])
    r1 = ev.compute_category("c")
    r2 = ev.compute_category("c")
    assert r1 == r2
    assert r1["pixel_aupro"] == pytest.approx(pixel_metrics(maps, masks, 0.1)["pixel_aupro"], abs=1e-12)


def test_update_validation():
    ev = Evaluator()
    with pytest.raises(ValueError, match="labels"):
        ev.update("c", np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="0/1"):
        ev.update("c", np.zeros(3), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        ev.update("c", np.zeros(2), np.array([0, 1]), np.zeros((3, 4, 4)), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="no data"):
        ev.compute_category("unknown")
    with pytest.raises(ValueError, match="pro_fpr_limit"):
        Evaluator(pro_fpr_limit=0.0)


def test_macro_mean_skips_absent_values():
    ev = Evaluator()
    ev.results.update(
        {
            "a": {**dict.fromkeys(METRIC_NAMES, 0.5), "pixel_aupro": None},
            "b": dict.fromkeys(METRIC_NAMES, 1.0),
        }
    )
    mean = ev.macro_mean()
    assert mean["pixel_aupro"] == 1.0
    assert math.isclose(mean["image_auroc"], 0.75)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Evaluator().macro_mean() == dict.fromkeys(METRIC_NAMES)


def test_failed_update_stores_nothing():
    scores, labels, maps, masks = make_category(9)
    ev = Evaluator()
    with pytest.raises(ValueError, match="NaN"):
        bad = maps[:4].copy()
        bad[0, 0, 0] = np.nan
        ev.update("c", scores[:4], labels[:4], bad, masks[:4])
    assert ev.categories == []
    feed(ev, "c", (scores, labels, maps, masks))
    assert ev.compute_category("c") == pytest.approx(expected((scores, labels, maps, masks)), abs=1e-12)
