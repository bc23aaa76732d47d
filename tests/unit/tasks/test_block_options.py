"""Every method option that names backbone blocks is checked before weights load, from one place.

The methods declare those options (``AnomalyMethod.block_options``); ``check_backbone_depths`` reads the
declarations, so the single-run path and the sweep check (``sweep_check.check_job``) refuse the same
configs with one ``error:`` line.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from composed import compose_config, method_file
from hydra.utils import get_class
from PIL import Image

from anomaly_vlm.tasks.config_checks import check_backbone_depths
from anomaly_vlm.tasks.errors import ConfigError
from anomaly_vlm.tasks.runner import run

CONF = Path(__file__).resolve().parents[3] / "conf"
METHODS = sorted(path.stem for path in (CONF / "method").glob("*.yaml"))
#: Names of method options that hold block numbers or depths, whatever the method.
BLOCK_NAME = re.compile(r"(^|_)(layers|stages|blocks|start|depth)$")


def _compose(*overrides: str):
    return compose_config("train", ["backbone=tiny", *overrides])


#: Overrides that make a method's defaults fit the tiny backbone (its files are written for ViT-L).
FIT_TINY = {
    "anomalyclip": ("method.layers=[8]", "prompts.deep_prompt_depth=4"),
    "faprompt": ("prompts.deep_prompt_depth=4",),
}


def _method_class(method: str) -> type:
    # Read from the method's file without composing: parametrize lists are built at collection.
    # test_every_block_option_of_a_method_is_declared holds it to the composed config's class.
    return get_class(method_file(method)["method"]["_target_"])


def _declared(method: str) -> dict:
    return dict(_method_class(method).block_options)


@pytest.mark.parametrize("method", METHODS)
def test_every_block_option_of_a_method_is_declared(method):
    cfg = _compose(f"method={method}")
    assert get_class(cfg.method._target_) is _method_class(method)
    named = {key for key in cfg.method if BLOCK_NAME.search(key)}
    declared = set(_declared(method))
    assert named <= declared, f"method={method} does not declare {named - declared}"


@pytest.mark.parametrize("method", [method for method in METHODS if _declared(method)])
def test_a_block_the_tiny_backbone_lacks_is_one_config_error(method):
    """tiny: 8 vision blocks, 4 text blocks."""
    for key, option in _declared(method).items():
        limit = min({"vision": 8, "text": 4}[encoder] for encoder in option.encoders)
        value = f"[2,{limit + 12}]" if option.many else str(limit + 12)
        base = [f"method={method}", *FIT_TINY.get(method, ())]
        with pytest.raises(ConfigError, match=rf"^method\.{key}=.*{limit + 12}.* outside 1\.\.{limit}"):
            check_backbone_depths(_compose(*base, f"method.{key}={value}"), "tiny")
        good = f"[{limit}]" if option.many else str(limit)
        check_backbone_depths(_compose(*base, f"method.{key}={good}"), "tiny")


def test_block_lists_are_lists_of_distinct_numbers():
    for value, expected in (
        ("[]", r"method\.stages=\[\] names no block; give at least one, e\.g\. method\.stages=\[8\]"),
        ("[2,2,4]", r"method\.stages=\[2, 2, 4\] repeats blocks \[2\]"),
        ("4", r"method\.stages=4: expected a list of block numbers, e\.g\. method\.stages=\[2,4\]"),
        ("[a]", r"method\.stages=\['a'\]: expected a list of block numbers"),
    ):
        with pytest.raises(ConfigError, match=expected):
            check_backbone_depths(_compose("method=aprillab", f"method.stages={value}"), "tiny")
    with pytest.raises(ConfigError, match=r"method\.dpam_start=\[2\]: expected one block number"):
        check_backbone_depths(
            _compose("method=anomalyclip", *FIT_TINY["anomalyclip"], "method.dpam_start=[2]"), "tiny"
        )


def test_aprillab_stages_fail_before_weights_load(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was built before the input was checked")

    monkeypatch.setattr("anomaly_vlm.backbones.FrozenCLIP.__init__", refuse)
    root = tmp_path / "data"
    for name in ("train/good/0.png", "test/good/0.png"):
        (root / "widget" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(root / "widget" / name)
    common = [
        "method=aprillab",
        "data=folder",
        f"data.root={root}",
        "logger=none",
        f"paths.output_dir={tmp_path / 'out'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    with pytest.raises(ConfigError, match=r"method\.stages=\[2, 20\]: blocks \[20\] outside 1\.\.8"):
        run(_compose(*common, "method.stages=[2,20]"), fit=False)
    with pytest.raises(ConfigError, match=r"method\.few_shot_stages=\[20\]: blocks \[20\] outside 1\.\.8"):
        run(_compose(*common, "method.few_shot_stages=[20]", "shots=1"), fit=False)
