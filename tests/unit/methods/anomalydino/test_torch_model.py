"""AnomalyDINO's operations, each against what the official code computes (cv2, scikit-learn, faiss's
definition of the distance, its mean_top1p and batched scoring)."""

from __future__ import annotations

import copy
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from sklearn.decomposition import PCA

from anomaly_vlm.methods.anomalydino import (
    AnomalyDINO,
    AnomalyDINOError,
    background_mask,
    mean_top_percent,
    nearest_distances,
    preprocess_table,
    rotate_references,
    torch_model,
)
from anomaly_vlm.methods.anomalydino.torch_model import (
    dilate_and_close,
    faiss_index,
    first_principal_component,
    mutual_patch_scores,
)


@pytest.mark.parametrize(
    ("dataset", "category", "preprocess", "expected"),
    [
        ("anomaly_vlm.data.datasets.MVTecAD", "capsule", "agnostic", (True, True)),
        ("anomaly_vlm.data.datasets.MVTecAD", "bottle", "agnostic", (False, True)),
        ("MVTecAD", "screw", "informed", (True, True)),
        ("MVTecAD", "pill", "informed", (True, False)),
        ("MVTecAD", "hazelnut", "informed_no_mask", (False, True)),
        ("MVTecAD", "toothbrush", "masking_only", (True, False)),
        ("MVTecAD", "toothbrush", "agnostic_no_mask", (False, True)),
        ("anomaly_vlm.data.datasets.VisA", "pcb1", "agnostic", (True, True)),
        ("VisA", "pcb1", "informed", (True, False)),
        ("VisA", "pcb1", "masking_only", (True, False)),
        ("SyntheticAD", "disc", "agnostic", (False, True)),
        ("SyntheticAD", "disc", "force_mask_no_rotation", (True, False)),
        ("MVTecAD", "bottle", "force_mask_rotation", (True, True)),
        ("MVTecAD", "capsule", "force_no_mask_no_rotation", (False, False)),
    ],
)
def test_preprocess_table_is_the_official_one(dataset, category, preprocess, expected):
    assert preprocess_table(dataset, category, preprocess) == expected


def test_unknown_preprocess_is_one_line():
    with pytest.raises(AnomalyDINOError, match="method.preprocess='nope' is not one of"):
        preprocess_table("MVTecAD", "bottle", "nope")


def test_rotation_is_cv2_about_w_over_2():
    generator = torch.Generator().manual_seed(0)
    images = (torch.randint(0, 256, (2, 3, 20, 20), generator=generator) / 255).float()
    turned = rotate_references(images)
    assert turned.shape == (16, 3, 20, 20)
    torch.testing.assert_close(turned[0], images[0], rtol=0, atol=0)  # 0 degrees first, image-major
    torch.testing.assert_close(turned[8], images[1], rtol=0, atol=0)
    # 180 degrees about (w/2, h/2), not ((w-1)/2, (h-1)/2): dst(x, y) = src(w - x, h - y).
    torch.testing.assert_close(turned[4][:, 1:, 1:], images[0].flip(-1).flip(-2)[:, :-1, :-1], rtol=0, atol=0)
    pixels = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    matrix = cv2.getRotationMatrix2D((10.0, 10.0), 45, 1.0)
    expected = cv2.warpAffine(
        pixels, matrix, (20, 20), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    torch.testing.assert_close(turned[1], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)


def test_first_principal_component_is_sklearns_with_its_sign():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 64, 16, generator=generator) * torch.linspace(3, 0.1, 16)
    ours = first_principal_component(features)
    for index in range(3):
        theirs = PCA(n_components=1, svd_solver="full").fit_transform(features[index].numpy())[:, 0]
        torch.testing.assert_close(ours[index], torch.from_numpy(theirs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_morphology_is_cv2s_on_the_column_or_the_grid(seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((4, 6 * 5)) > 0.7
    kernel = np.ones((3, 3), np.uint8)

    def official(mask: np.ndarray, shape) -> np.ndarray:
        grown = cv2.dilate(mask.reshape(shape).astype(np.uint8), kernel).astype(bool)
        return cv2.morphologyEx(grown.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool).reshape(-1)

    column = dilate_and_close(torch.from_numpy(masks), (6, 5), "1d").numpy()
    grid = dilate_and_close(torch.from_numpy(masks), (6, 5), "2d").numpy()
    for index, mask in enumerate(masks):
        np.testing.assert_array_equal(column[index], official(mask, (-1, 1)))
        np.testing.assert_array_equal(grid[index], official(mask, (6, 5)))


def test_one_dimensional_morphology_wraps_across_rows():
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [3, 5]] = True  # the facts' example: seeds {3, 5} -> {2..6} in raster order
    assert dilate_and_close(mask, (4, 4), "1d")[0].nonzero().flatten().tolist() == [2, 3, 4, 5, 6]
    corner = torch.zeros(1, 36, dtype=torch.bool)
    corner[0, 5] = True  # row 0, last column of a 6x6 grid
    assert dilate_and_close(corner, (6, 6), "1d")[0].nonzero().flatten().tolist() == [4, 5, 6]  # 6: row 1
    assert dilate_and_close(corner, (6, 6), "2d")[0].nonzero().flatten().tolist() == [4, 5, 10, 11]


def test_mask_flips_when_the_centre_is_background():
    # 5x5 grid: the centre 3x3 is the object (PC1 -64), the border the background (PC1 +36).
    values = torch.full((25,), 100.0)
    centre = [6, 7, 8, 11, 12, 13, 16, 17, 18]
    values[centre] = 0.0
    features = torch.stack([values, torch.zeros(25)], dim=1).unsqueeze(0)
    mask = background_mask(features, (5, 5), morphology="1d")[0]
    assert mask.nonzero().flatten().tolist() == list(range(5, 20))  # flipped to the centre, then grown
    values = torch.zeros(25)
    values[centre] = 100.0  # now the centre is the object on the positive side of PC1: no flip
    kept = background_mask(
        torch.stack([values, torch.zeros(25)], dim=1).unsqueeze(0), (5, 5), morphology="2d"
    )
    assert kept[0, 12] and kept.sum() == 25


def test_mean_top_percent_is_the_official_mean_top1p():
    distances = torch.rand(2, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = [np.mean(sorted(row.numpy(), reverse=True)[:10]) for row in distances]
    torch.testing.assert_close(mean_top_percent(distances), torch.tensor(expected, dtype=torch.float64))
    small = torch.rand(2, 64)
    assert torch.equal(mean_top_percent(small), small.max(dim=1).values)  # int(0.64) == 0: the maximum
    assert mean_top_percent(small, fallback_max=False).isnan().all()  # the batched script: no fallback


def test_nearest_distances_are_faiss_halved_squared_l2_of_unit_vectors():
    generator = torch.Generator().manual_seed(0)
    queries, memory = torch.randn(50, 8, generator=generator), torch.randn(70, 8, generator=generator)
    q, m = F.normalize(queries, dim=-1), F.normalize(memory, dim=-1)
    squared = torch.cdist(q, m) ** 2
    torch.testing.assert_close(
        nearest_distances(queries, memory), squared.min(dim=1).values / 2, atol=1e-6, rtol=0
    )
    two = squared.topk(2, dim=1, largest=False).values.mean(dim=1) / 2
    torch.testing.assert_close(
        nearest_distances(queries, memory, k=2, block_bytes=64), two, atol=1e-6, rtol=0
    )
    plain = torch.cdist(queries, memory) ** 2
    l2 = plain.topk(3, dim=1, largest=False).values.mean(dim=1).sqrt()
    torch.testing.assert_close(nearest_distances(queries, memory, k=3, metric="l2"), l2, atol=1e-5, rtol=1e-5)
    with pytest.raises(AnomalyDINOError, match="knn_neighbors=71"):
        nearest_distances(queries, memory, k=71)


@pytest.mark.parametrize(("k", "metric"), [(1, "cosine"), (2, "cosine"), (3, "l2")])
def test_faiss_and_torch_searches_give_the_same_distances(k, metric):
    generator = torch.Generator().manual_seed(1)
    queries, memory = torch.randn(300, 16, generator=generator), torch.randn(500, 16, generator=generator)
    memory[:10] = queries[:10]  # exact matches: both give 0 up to rounding
    by_faiss = nearest_distances(queries, memory, k=k, metric=metric, knn="faiss")
    by_torch = nearest_distances(queries, memory, k=k, metric=metric, knn="torch", block_bytes=4 * 500 * 64)
    assert by_faiss.shape == by_torch.shape == (300,) and by_faiss.dtype == torch.float32
    torch.testing.assert_close(by_faiss, by_torch, atol=2e-6, rtol=1e-6)
    index = faiss_index(memory, metric)  # a prebuilt index gives the same
    torch.testing.assert_close(
        nearest_distances(queries, memory, k, metric, knn="faiss", index=index), by_faiss
    )


def test_knn_library_errors_are_one_line(monkeypatch):
    with pytest.raises(AnomalyDINOError, match=r"method.knn='annoy' is not one of \['faiss', 'torch'\]"):
        nearest_distances(torch.randn(2, 4), torch.randn(3, 4), knn="annoy")
    with pytest.raises(AnomalyDINOError, match="method.knn='annoy'"):
        AnomalyDINO(_Grid(), knn="annoy")
    monkeypatch.setitem(sys.modules, "faiss", None)  # faiss-cpu not installed
    with pytest.raises(
        AnomalyDINOError, match="method.knn=faiss needs the faiss-cpu package.*method.knn=torch"
    ):
        AnomalyDINO(_Grid())
    AnomalyDINO(_Grid(), knn="torch")  # searches without it


def test_model_searches_with_faiss_by_default_and_follows_a_replaced_memory(monkeypatch):
    model = AnomalyDINO(_Grid())
    assert model.knn == "faiss"
    generator = torch.Generator().manual_seed(2)
    model.set_memory(torch.randn(2, 100, 8, generator=generator))
    tokens = torch.randn(3, 100, 8, generator=generator)
    everything = torch.ones(3, 100, dtype=torch.bool)
    first = model.patch_distances(tokens, everything)
    torch.testing.assert_close(
        first, model.patch_distances(tokens, everything, knn="torch"), atol=2e-6, rtol=0
    )
    index = model.memory_index()
    assert model.memory_index() is index  # built once per memory
    with torch.inference_mode():  # as the test loop runs it: inference tensors have no version counter
        inferred = AnomalyDINO(_Grid())
        inferred.set_memory(model.memory.clone().view(2, 100, 8))
        torch.testing.assert_close(inferred.patch_distances(tokens, everything), first)
    copied = copy.deepcopy(model)  # the index is no Python state: a copy rebuilds it
    assert copied._index is None
    torch.testing.assert_close(copied.patch_distances(tokens, everything), first)
    # A detector's state replaces the buffer without set_memory: the index follows it.
    model._buffers["memory"] = tokens[0].clone()
    second = model.patch_distances(tokens, everything)
    assert model.memory_index() is not index
    assert second[0].abs().max() < 1e-5 and not torch.allclose(first, second)
    # The export graph searches with torch: no faiss call is traced into it.
    monkeypatch.setattr(torch_model, "faiss_distances", lambda *a, **k: pytest.fail("faiss in the graph"))
    graph = model.export_module()
    torch.testing.assert_close(
        graph.score({"patch_tokens": tokens}).image_score,
        model.score({"patch_tokens": tokens}, knn="torch").image_score,
    )


def test_mutual_patch_scores_are_the_batched_scripts():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(5, 600, 8, generator=generator)
    ours = mutual_patch_scores(tokens, 2, block_bytes=4 * 2400 * 64)  # blocks of 64 rows
    others = F.normalize(torch.cat([tokens[:2], tokens[3:]]).flatten(0, 1), dim=-1)
    distance = 1 - F.normalize(tokens[2], dim=-1) @ others.T
    kth = distance.kthvalue(int(0.001 * others.shape[0]), dim=1, keepdim=True).values
    below = distance < kth
    torch.testing.assert_close(ours, (distance * below).sum(dim=1) / below.sum(dim=1))
    flat = torch.ones(4, 600, 8)  # every distance ties: the k-th smallest, not the official 0 / 0
    assert torch.isfinite(mutual_patch_scores(flat, 0)).all()
    with pytest.raises(AnomalyDINOError, match="at least 1000 patches"):
        mutual_patch_scores(tokens[:2], 0)


class _Grid(torch.nn.Module):
    """A stand-in backbone: the grid and sizes only (scoring never runs it)."""

    grid_size = (10, 10)
    image_size = 140
    num_layers = 1


def test_score_zeroes_the_background_and_blurs_the_resized_grid():
    model = AnomalyDINO(_Grid())
    generator = torch.Generator().manual_seed(0)
    model.set_memory(torch.randn(2, 100, 8, generator=generator))
    tokens = torch.randn(3, 100, 8, generator=generator)
    model.set_masking(True)
    mask = model.foreground(tokens)
    prediction = model.score({"patch_tokens": tokens})
    grid = model.patch_distances(tokens, mask)
    assert (grid[~mask] == 0).all()
    torch.testing.assert_close(prediction.image_score, grid.max(dim=1).values)  # 100 patches: top 1
    resized = cv2.resize(
        grid[0].view(10, 10).numpy().astype(np.float64), (140, 140), interpolation=cv2.INTER_LINEAR
    )
    expected = gaussian_filter(resized, sigma=4)
    torch.testing.assert_close(
        prediction.anomaly_map[0].double(), torch.from_numpy(expected), atol=1e-5, rtol=0
    )
    assert model.export_unsupported and "PCA" in model.export_unsupported
    model.set_masking(False)
    assert model.export_unsupported is None and model.foreground(tokens).all()


def test_score_needs_a_memory():
    with pytest.raises(AnomalyDINOError, match="no reference memory"):
        AnomalyDINO(_Grid()).score({"patch_tokens": torch.randn(1, 100, 8)})
