"""Jobs of one process build an identical backbone once and each get a private copy."""

from __future__ import annotations

import torch

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.backbones.reuse import BackboneReuse


def _tiny(seed: int = 0) -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=seed)


def test_same_key_builds_once_and_every_job_gets_its_own_identical_copy():
    reuse, calls = BackboneReuse(), []

    def build():
        calls.append(1)
        return _tiny()

    first = reuse.get("tiny@128", build)
    second = reuse.get("tiny@128", build)
    assert len(calls) == 1 and reuse.builds == 1
    assert first is not second
    fresh = _tiny().state_dict()
    for name, value in second.state_dict().items():
        assert torch.equal(value, fresh[name]), name
    # what one job does to its copy never reaches the next job
    first.text_forward_passes = 5
    with torch.no_grad():
        first.clip.visual.proj.add_(1.0)
    third = reuse.get("tiny@128", build)
    assert third.text_forward_passes == 0
    assert torch.equal(third.clip.visual.proj, fresh["clip.visual.proj"])


def test_a_new_key_frees_the_previous_backbone_and_builds_again():
    reuse = BackboneReuse()
    reuse.get("seed=0", lambda: _tiny(0))
    other = reuse.get("seed=1", lambda: _tiny(1))
    assert reuse.builds == 2
    assert not torch.equal(other.state_dict()["clip.visual.proj"], _tiny(0).state_dict()["clip.visual.proj"])
