import time

import pytest
import torch

from anomaly_vlm.backbones import FrozenCLIP, WeightsNotFoundError, resolve_weights
from anomaly_vlm.backbones.weights import weights_identity


def test_missing_weights_offline_fail_fast_with_a_useful_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("anomaly_vlm.backbones.weights.hf_constants.HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as caught:
        FrozenCLIP("ViT-B-16-plus-240", "laion400m_e31", cache_dir=str(tmp_path))
    elapsed = time.perf_counter() - started
    message = str(caught.value)
    assert elapsed < 5.0
    for fragment in (
        "ViT-B-16-plus-240",
        "laion400m_e31",
        str(tmp_path),
        "make weights",
        "backbone.pretrained=",
    ):
        assert fragment in message


def test_unreachable_hub_is_detected_without_the_offline_flag(monkeypatch, tmp_path):
    monkeypatch.setattr("anomaly_vlm.backbones.weights.hf_constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("anomaly_vlm.backbones.weights.hf_constants.ENDPOINT", "https://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="unreachable"):
        resolve_weights("ViT-L-14-336", "openai", cache_dir=tmp_path)
    assert time.perf_counter() - started < 5.0


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ValueError, match="openai"):
        resolve_weights("ViT-L-14-336", "no_such_tag")


def test_missing_local_file_is_named():
    with pytest.raises(WeightsNotFoundError, match="does-not-exist.pt"):
        resolve_weights("ViT-L-14-336", "/nowhere/does-not-exist.pt")


def test_local_weight_file_is_loaded(tmp_path, tiny_backbone):
    target = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.clip.state_dict(), target)
    reloaded = FrozenCLIP("anomaly-vlm-tiny", str(target), seed=123)
    torch.testing.assert_close(reloaded.visual.conv1.weight, tiny_backbone.visual.conv1.weight)
    assert reloaded.identity.startswith("anomaly-vlm-tiny:file:")
    assert reloaded.identity == weights_identity("anomaly-vlm-tiny", str(target))


def test_null_means_random_init():
    assert resolve_weights("ViT-L-14-336", None) is None
