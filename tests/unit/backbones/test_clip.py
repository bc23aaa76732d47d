import pytest
import torch

from anomaly_vlm.backbones import FrozenCLIP, interpolate_positional_embedding


def test_encode_image_shapes_and_taps(tiny_backbone):
    images = torch.rand(2, 3, 128, 128)
    features = tiny_backbone.encode_image(images, layers=[2, 8])
    assert tiny_backbone.grid_size == (8, 8)
    assert features.global_embedding.shape == (2, tiny_backbone.embed_dim)
    assert features.patch_tokens.shape == (2, 64, tiny_backbone.width)
    assert sorted(features.layer_tokens) == [2, 8]
    assert features.layer_tokens[2].shape == (2, 65, tiny_backbone.width)


def test_global_embedding_matches_open_clip(tiny_backbone):
    images = torch.rand(3, 3, 128, 128)
    ours = tiny_backbone.encode_image(images).global_embedding
    reference = tiny_backbone.clip.encode_image(tiny_backbone.normalize(images))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_layer_taps_match_open_clip_intermediates(tiny_backbone):
    images = torch.rand(2, 3, 128, 128)
    ours = tiny_backbone.encode_image(images, layers=[3, 8])
    reference = tiny_backbone.visual.forward_intermediates(
        tiny_backbone.normalize(images), indices=[2, 7], output_fmt="NLC", output_extra_tokens=True
    )
    for ours_index, theirs in zip([3, 8], range(2), strict=True):
        torch.testing.assert_close(
            ours.layer_tokens[ours_index][:, 1:], reference["image_intermediates"][theirs]
        )
        torch.testing.assert_close(
            ours.layer_tokens[ours_index][:, :1], reference["image_intermediates_prefix"][theirs]
        )


def test_final_patch_tokens_are_ln_post_of_last_block(tiny_backbone):
    images = torch.rand(1, 3, 128, 128)
    features = tiny_backbone.encode_image(images, layers=[tiny_backbone.num_layers])
    last = features.layer_tokens[tiny_backbone.num_layers]
    torch.testing.assert_close(features.patch_tokens, tiny_backbone.visual.ln_post(last)[:, 1:])


def test_random_init_is_seeded():
    a = FrozenCLIP("anomaly-vlm-tiny", None, seed=1)
    b = FrozenCLIP("anomaly-vlm-tiny", None, seed=1)
    c = FrozenCLIP("anomaly-vlm-tiny", None, seed=2)
    assert torch.equal(a.visual.conv1.weight, b.visual.conv1.weight)
    assert not torch.equal(a.visual.conv1.weight, c.visual.conv1.weight)
    assert a.identity == b.identity != c.identity


def test_backbone_is_frozen_and_stays_in_eval(tiny_backbone):
    assert not any(parameter.requires_grad for parameter in tiny_backbone.parameters())
    tiny_backbone.train()
    assert not tiny_backbone.training


def test_positional_embedding_interpolation_to_other_size():
    native = FrozenCLIP("anomaly-vlm-tiny", None, seed=0)
    resized = FrozenCLIP("anomaly-vlm-tiny", None, image_size=160, seed=0)
    assert resized.grid_size == (10, 10)
    assert resized.visual.positional_embedding.shape == (101, native.width)
    # The CLS entry is kept; the grid is a smooth resize of the native one.
    torch.testing.assert_close(resized.visual.positional_embedding[0], native.visual.positional_embedding[0])
    features = resized.encode_image(torch.rand(1, 3, 160, 160))
    assert features.patch_tokens.shape == (1, 100, native.width)


def test_interpolation_of_a_constant_grid_is_constant_and_mode_matters():
    pos = torch.ones(1 + 16, 4)
    out = interpolate_positional_embedding(pos, (6, 6), mode="bicubic")
    assert out.shape == (37, 4)
    torch.testing.assert_close(out, torch.ones(37, 4))
    ramp = torch.cat([torch.zeros(1, 1), torch.arange(16.0).reshape(16, 1) ** 2])
    bicubic = interpolate_positional_embedding(ramp, (7, 7), mode="bicubic")
    bilinear = interpolate_positional_embedding(ramp, (7, 7), mode="bilinear")
    assert not torch.allclose(bicubic, bilinear)


def test_wrong_input_size_and_bad_layers_fail_clearly(tiny_backbone):
    with pytest.raises(ValueError, match="128x128"):
        tiny_backbone.encode_image(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match="outside 1..8"):
        tiny_backbone.encode_image(torch.rand(1, 3, 128, 128), layers=[9])


def test_unknown_model_and_bad_image_size():
    with pytest.raises(ValueError, match="not an open_clip model"):
        FrozenCLIP("no-such-model", None)
    with pytest.raises(ValueError, match="multiple of patch size"):
        FrozenCLIP("anomaly-vlm-tiny", None, image_size=130)


def test_encode_text_counts_forward_passes(tiny_backbone):
    before = tiny_backbone.text_forward_passes
    embeddings = tiny_backbone.encode_text(["a photo of a flawless disc.", "a photo of a damaged disc."])
    assert embeddings.shape == (2, tiny_backbone.embed_dim)
    assert tiny_backbone.text_forward_passes == before + 1


def test_text_encoding_cut_at_the_last_end_token_equals_open_clips_full_context(tiny_backbone):
    """The causal mask lets the text tower stop at the last end token of a batch (~7x fewer positions
    for short prompts); the embeddings are open_clip's own, up to float summation order."""
    sentences = [
        "a photo of a flawless disc.",
        "a cropped photo of the small damaged metal disc with a scratch.",
        "x",
    ]
    ours = tiny_backbone.encode_text(sentences)
    with torch.no_grad():
        theirs = tiny_backbone.clip.encode_text(tiny_backbone.tokenize(sentences))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "image_size", "grid", "quick_gelu"),
    [
        ("ViT-B-16-plus-240", 240, 15, False),
        ("ViT-L-14-336", 518, 37, False),
        ("ViT-L-14-336", 518, 37, True),
    ],
)
def test_real_architectures_random_weights(model, image_size, grid, quick_gelu):
    backbone = FrozenCLIP(model, None, image_size=image_size, quick_gelu=quick_gelu)
    assert backbone.grid_size == (grid, grid)
    assert backbone.visual.positional_embedding.shape[0] == grid * grid + 1
    layers = [backbone.num_layers // 4 * k for k in range(1, 5)]
    features = backbone.encode_image(torch.rand(1, 3, image_size, image_size), layers=layers)
    assert features.patch_tokens.shape == (1, grid * grid, backbone.width)
    assert all(features.layer_tokens[layer].shape == (1, grid * grid + 1, backbone.width) for layer in layers)


def test_building_a_backbone_leaves_logging_as_it_was():
    """open_clip's warning is dropped by a filter held only while the model is built, never by
    disabling logging for the whole process."""
    import logging

    from anomaly_vlm.backbones import FrozenCLIP

    before = (logging.root.manager.disable, list(logging.root.filters))
    FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=1)
    assert (logging.root.manager.disable, list(logging.root.filters)) == before
