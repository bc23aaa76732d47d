"""MuSc torch model: LNAMD, MSM, RsCIN, subsets and whole-set scoring against plain re-derivations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anomaly_vlm.methods.contract import FrozenFeatureExtractor
from anomaly_vlm.methods.musc import MuSc, MuScError, lnamd, mutual_scores, rscin
from anomaly_vlm.methods.musc.torch_model import (
    IMAGE_EMBEDDING,
    check_set_size,
    divide_subsets,
    interval_bounds,
    tokens_key,
)


def _tokens(batch: int, side: int, channels: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1 + side * side, channels, generator=generator) * 3 + 1


def test_lnamd_degree_one_is_a_joint_layer_norm_then_l2():
    tokens = _tokens(2, 4, 6)
    out = lnamd(tokens, 1)
    patches = tokens[:, 1:]
    # One mean and variance over all patches and channels of an image, not per token.
    mean = patches.mean(dim=(1, 2), keepdim=True)
    var = patches.var(dim=(1, 2), unbiased=False, keepdim=True)
    expected = (patches - mean) / torch.sqrt(var + 1e-5)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    # The class token plays no part.
    changed = tokens.clone()
    changed[:, 0] += 100
    torch.testing.assert_close(lnamd(changed, 1), out)


def test_lnamd_averages_r_by_r_windows_counting_the_zero_padding():
    tokens = _tokens(1, 5, 3, seed=1)
    out = lnamd(tokens, 3)
    normed = F.layer_norm(tokens[:, 1:].reshape(1, 5, 5, 3).permute(0, 3, 1, 2), (3, 5, 5))[0]
    for row, col in [(0, 0), (2, 2), (4, 1)]:
        total = torch.zeros(3)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if 0 <= row + dr < 5 and 0 <= col + dc < 5:
                    total += normed[:, row + dr, col + dc]
        expected = total / 9  # always 9: the padded zeros count
        expected = expected / expected.norm()
        torch.testing.assert_close(out[0, row * 5 + col], expected, atol=1e-6, rtol=1e-5)


def test_lnamd_rejects_even_degrees_and_non_square_grids():
    with pytest.raises(MuScError, match="odd"):
        lnamd(_tokens(1, 4, 3), 2)
    with pytest.raises(MuScError, match="square"):
        lnamd(torch.randn(1, 1 + 12, 3), 1)


def _brute_force_msm(features: torch.Tensor, fraction: float = 0.3) -> torch.Tensor:
    count, patches, _ = features.shape
    keep = int((count - 1) * fraction)
    out = torch.zeros(count, patches, dtype=torch.float64)
    for i in range(count):
        for p in range(patches):
            nearest = []
            for j in range(count):
                if j != i:
                    nearest.append(
                        min(float((features[i, p] - features[j, q]).norm()) for q in range(patches))
                    )
            out[i, p] = sum(sorted(nearest)[:keep]) / keep
    return out


def test_mutual_scores_average_the_smallest_thirty_percent_of_nearest_distances():
    features = F.normalize(torch.randn(8, 9, 5, generator=torch.Generator().manual_seed(2)), dim=-1)
    scores = mutual_scores(features)
    assert scores.dtype == torch.float64 and scores.shape == (8, 9)
    torch.testing.assert_close(scores, _brute_force_msm(features), atol=1e-5, rtol=1e-5)
    # Chunking the references (a tiny memory bound) does not change the result.
    torch.testing.assert_close(mutual_scores(features, block_bytes=1), scores, atol=1e-6, rtol=1e-6)


def _release_msm(features: torch.Tensor, topmin_min: float, topmin_max: float) -> torch.Tensor:
    """MSM as the release computes it: per image, cdist to all patches of the other images, the minimum
    within each image, the sorted k_max smallest, the mean of those from k_min on."""
    count, patches, channels = features.shape
    k_min, k_max = interval_bounds(count - 1, topmin_min, topmin_max)
    rows = []
    for i in range(count):
        others = torch.cat([features[:i], features[i + 1 :]]).reshape(-1, channels)
        nearest = torch.cdist(features[i : i + 1], others).reshape(patches, count - 1, patches).amin(-1)
        smallest = torch.topk(nearest, k_max, dim=1, largest=False, sorted=True).values
        rows.append(smallest[:, k_min:k_max].mean(dim=1).double())
    return torch.stack(rows)


@pytest.mark.parametrize(
    ("count", "side", "channels", "interval", "block_bytes"),
    [
        (8, 3, 5, (0.0, 0.3), 256 * 2**20),
        (8, 3, 5, (0.0, 0.3), 1),  # one image per block
        (11, 6, 64, (0.2, 0.6), 3 * 36 * 36 * 4),  # chunks of 3 images that do not divide the set
        (7, 6, 300, (1, 4), 256 * 2**20),  # counts instead of fractions
    ],
)
def test_mutual_scores_equal_the_release_cdist_formulation(count, side, channels, interval, block_bytes):
    generator = torch.Generator().manual_seed(count + channels)
    features = F.normalize(torch.randn(count, side * side, channels, generator=generator), dim=-1)
    features[2] = features[5]  # identical images: distance 0, clamped rounding must not go negative
    expected = _release_msm(features, *interval)
    scores = mutual_scores(features, *interval, block_bytes=block_bytes)
    assert scores.dtype == torch.float64
    torch.testing.assert_close(scores, expected, atol=5e-7, rtol=0)


def test_mutual_scores_multiply_each_pair_of_images_once():
    from torch.utils.flop_counter import FlopCounterMode

    count, patches, channels = 9, 16, 32
    features = F.normalize(torch.randn(count, patches, channels), dim=-1)
    with FlopCounterMode(display=False) as counter:
        mutual_scores(features, block_bytes=2 * patches * patches * 4)
    # One product of [L, C + 2] by [C + 2, L] per unordered pair (cdist's path: norms folded in).
    pairs = count * (count - 1) // 2
    assert counter.get_total_flops() == pairs * 2 * patches * patches * (channels + 2)


def _ranks(values: torch.Tensor) -> torch.Tensor:
    return values.flatten().argsort().argsort().double()


def test_low_precision_mutual_scores_follow_fp32():
    from torch.utils.flop_counter import FlopCounterMode

    generator = torch.Generator().manual_seed(4)
    words = F.normalize(torch.randn(20, 64, generator=generator), dim=-1)
    features = words[torch.randint(0, 20, (8, 36), generator=generator)]
    features = F.normalize(features + 0.05 * torch.randn(8, 36, 64, generator=generator), dim=-1)
    features[3, 5] = F.normalize(torch.randn(64, generator=generator), dim=-1)  # a patch no other image has
    exact = mutual_scores(features)
    assert torch.equal(mutual_scores(features, dtype=torch.float32), exact)  # float32 is the exact path
    with FlopCounterMode(display=False) as counter:
        low = mutual_scores(features, dtype=torch.bfloat16, block_bytes=3 * 36 * 36 * 4)
    assert counter.get_total_flops() == 28 * 2 * 36 * 36 * 96  # each pair once, C + 2 padded to 32s
    assert low.dtype == torch.float64 and low.shape == exact.shape
    assert float((low - exact).abs().max()) < 1e-2
    assert torch.corrcoef(torch.stack([_ranks(low), _ranks(exact)]))[0, 1] > 0.99
    assert low.flatten().argmax() == exact.flatten().argmax() == 3 * 36 + 5


def test_low_precision_mutual_scoring_is_opt_in_and_only_in_mixed_precision(tiny_backbone, monkeypatch):
    from anomaly_vlm.backbones import FrozenCLIP
    from anomaly_vlm.methods.musc import torch_model

    assert MuSc(tiny_backbone, low_precision_msm=True).msm_dtype is None  # fp32: the release's arithmetic
    amp = FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0, precision="amp-bf16")
    assert MuSc(amp).msm_dtype is None  # amp alone keeps float32 mutual scoring
    model = MuSc(amp, rscin_k=(), low_precision_msm=True)
    assert model.msm_dtype == torch.bfloat16
    seen = []
    original = torch_model.mutual_scores

    def spy(*args, **kwargs):
        seen.append(args[4] if len(args) > 4 else kwargs.get("dtype"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch_model, "mutual_scores", spy)
    images = torch.rand(6, 3, 128, 128, generator=torch.Generator().manual_seed(8))
    model.score_set(model.frozen_features(images))
    assert seen == [torch.bfloat16] * (len(model.r_list) * len(model.layers))


def test_mutual_scores_flag_the_patch_that_no_other_image_has():
    generator = torch.Generator().manual_seed(3)
    base = F.normalize(torch.randn(1, 16, 8, generator=generator), dim=-1).repeat(10, 1, 1)
    features = F.normalize(base + 0.01 * torch.randn(10, 16, 8, generator=generator), dim=-1)
    features[4, 7] = F.normalize(torch.randn(8, generator=generator), dim=-1)
    scores = mutual_scores(features)
    assert scores.flatten().argmax().item() == 4 * 16 + 7


def test_too_few_images_for_the_interval_is_a_clear_error():
    assert interval_bounds(4) == (0, 1)
    assert interval_bounds(3) == (0, 0)
    mutual_scores(torch.randn(5, 4, 3))  # 4 references: int(4 * 0.3) = 1 distance averaged
    with pytest.raises(MuScError, match="at least 5 images"):
        mutual_scores(torch.randn(4, 4, 3))


@pytest.mark.parametrize(
    ("count", "options", "says"),
    [
        (
            1,
            {},
            "needs at least 5 images scored together (per subset with divide_num > 1); got 1 image, which "
            "has no other image to be scored against",
        ),
        (
            4,
            {},
            "got 4 images: of the 3 distances of a patch to the other images, MSM averages the smallest "
            "int(3 × 0.3) = 0 (method.topmin_max=0.3), which is none",
        ),
        (
            4,
            {"topmin_max": 6},
            "method.topmin_max=6 averages the 6 smallest distances of a patch to the other "
            "images, but each image has only 3 other images",
        ),
    ],
)
def test_too_small_a_set_is_explained_in_images_and_options(count, options, says):
    with pytest.raises(MuScError) as raised:
        check_set_size(count, **options)
    assert says in str(raised.value) and "interval" not in str(raised.value)


def test_rscin_smooths_min_max_scores_over_the_k_most_similar_images():
    generator = torch.Generator().manual_seed(4)
    scores = torch.rand(6, generator=generator, dtype=torch.float64) * 5
    embeddings = F.normalize(torch.rand(6, 4, generator=generator), dim=-1)
    normalised = (scores - scores.min()) / (scores.max() - scores.min())
    # k = 1 keeps only the image itself (its self-similarity 1 is the row maximum).
    torch.testing.assert_close(rscin(scores, embeddings, [1]).double(), normalised, atol=1e-6, rtol=0)
    similarity = embeddings @ embeddings.T
    expected = []
    for i in range(6):
        neighbours = similarity[i].topk(2).indices
        weights = similarity[i, neighbours]
        expected.append(float((weights * normalised[neighbours].float()).sum() / weights.sum()))
    averaged = (normalised.float() + torch.tensor(expected)) / 2
    torch.testing.assert_close(rscin(scores, embeddings, [1, 2]), averaged, atol=1e-6, rtol=1e-5)
    # A 0 in the list or no embeddings disable it, as in the release.
    assert rscin(scores, embeddings, [0]) is scores
    assert rscin(scores, None, [1, 2, 3]) is scores
    with pytest.raises(MuScError, match="method.rscin_k"):
        rscin(scores, embeddings, [1, 8, 9])


def test_subsets_partition_the_set_and_deal_each_defect_type_round_robin():
    groups = ["good"] * 7 + ["crack"] * 4 + ["hole"] * 3
    subsets = divide_subsets(groups, len(groups), 2)
    assert sorted(i for subset in subsets for i in subset) == list(range(14))
    for kind, size in (("good", 7), ("crack", 4), ("hole", 3)):
        counts = sorted(sum(groups[i] == kind for i in subset) for subset in subsets)
        assert counts == [size // 2, size - size // 2]
    assert divide_subsets(groups, 14, 2) == subsets  # seeded
    assert divide_subsets(None, 5, 1) == [[0, 1, 2, 3, 4]]
    with pytest.raises(MuScError, match="divide_num"):
        divide_subsets(None, 5, 0)


@pytest.fixture(scope="module")
def model(tiny_backbone) -> MuSc:
    return MuSc(tiny_backbone)


def test_frozen_features_are_the_raw_taps_with_class_token_and_the_image_embedding(model, tiny_backbone):
    assert isinstance(model, FrozenFeatureExtractor) and model.cacheable
    assert model.layers == (2, 4, 6, 8)  # 6/12/18/24 scaled to 8 blocks
    images = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    features = model.frozen_features(images)
    reference = tiny_backbone.encode_image(images, layers=model.layers)
    for layer in model.layers:
        assert features[tokens_key(layer)].shape == (3, 65, 64)
        torch.testing.assert_close(features[tokens_key(layer)], reference.layer_tokens[layer])
    torch.testing.assert_close(features[IMAGE_EMBEDDING], reference.global_embedding)
    # Per image: an image's features do not depend on its batch neighbours.
    torch.testing.assert_close(
        model.frozen_features(images[1:2])[tokens_key(2)], features[tokens_key(2)][1:2]
    )
    assert model.feature_spec()["layers"] == [2, 4, 6, 8]


def test_score_set_follows_the_release_arithmetic_and_is_order_equivariant(model):
    images = torch.rand(7, 3, 128, 128, generator=torch.Generator().manual_seed(6))
    features = model.frozen_features(images)
    details: dict = {}
    prediction = model.score_set(features, details=details)
    assert prediction.anomaly_map.shape == (7, 128, 128) and prediction.image_score.shape == (7,)
    # Mean over degrees and blocks of MSM, bilinear with align_corners=True, max, then RsCIN [1, 2, 3].
    patch = torch.stack(
        [mutual_scores(lnamd(features[tokens_key(layer)], r)) for r in (1, 3, 5) for layer in model.layers]
    ).mean(dim=0)
    maps = F.interpolate(patch.reshape(7, 1, 8, 8), size=128, mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(details["maps64"], maps, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(details["raw_image_score"], maps.flatten(1).amax(dim=1))
    embeddings = F.normalize(features[IMAGE_EMBEDDING], dim=-1)
    torch.testing.assert_close(
        prediction.image_score, rscin(maps.flatten(1).amax(1), embeddings, (1, 2, 3)).float()
    )
    # Transductive but order-free: permuting the set permutes the outputs.
    order = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    permuted = model.score_set({name: value[order] for name, value in features.items()})
    torch.testing.assert_close(permuted.anomaly_map, prediction.anomaly_map[order], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(permuted.image_score, prediction.image_score[order], atol=1e-6, rtol=1e-6)


def test_score_set_with_subsets_scores_each_subset_on_its_own(tiny_backbone):
    model = MuSc(tiny_backbone, divide_num=2, rscin_k=())
    images = torch.rand(10, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    features = model.frozen_features(images)
    groups = ["good"] * 6 + ["crack"] * 4
    prediction = model.score_set(features, groups=groups)
    for subset in divide_subsets(groups, 10, 2):
        alone = MuSc(tiny_backbone, rscin_k=()).score_set({k: v[subset] for k, v in features.items()})
        torch.testing.assert_close(prediction.anomaly_map[subset], alone.anomaly_map)
    with pytest.raises(MuScError, match="at least 5 images"):
        MuSc(tiny_backbone, divide_num=3).score_set(features, groups=groups)


def test_options_are_checked(tiny_backbone):
    with pytest.raises(MuScError, match="r_list"):
        MuSc(tiny_backbone, r_list=[1, 2])
    with pytest.raises(MuScError, match="divide_num"):
        MuSc(tiny_backbone, divide_num=0)
    with pytest.raises(ValueError, match="method.layers"):
        MuSc(tiny_backbone, layers=[3, 9])
    assert math.isclose(MuSc(tiny_backbone, topmin_max=0.5).topmin_max, 0.5)


def test_the_minimum_set_size_follows_the_interval():
    from anomaly_vlm.methods.musc.torch_model import minimum_set_size

    assert minimum_set_size() == 5  # int(4 * 0.3) = 1
    assert minimum_set_size(0.0, 0.5) == 3
    assert minimum_set_size(0.0, 2) == 3  # an absolute count of 2 distances
    with pytest.raises(MuScError, match="at least 3 images"):
        mutual_scores(torch.randn(2, 4, 3), topmin_max=0.5)
