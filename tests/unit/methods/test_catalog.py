"""The method catalog gathers each method's facts from its config, class and model, consistently."""

import pytest

from anomaly_vlm.methods.catalog import method_info, method_names

METHODS = method_names()


def test_every_method_config_is_in_the_catalog():
    assert set(METHODS) >= {"clip", "winclip", "aprillab", "anomalyclip", "adaclip", "musc", "promptad"}


@pytest.mark.parametrize("name", METHODS)
def test_facts_agree_with_the_method_class(name):
    info = method_info(name)
    module, _, cls_name = info.target.rpartition(".")
    cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
    assert cls.method_name == name  # one name per method
    assert info.zero_shot or info.few_shot
    assert info.tap_option is None or info.tap_option in cls.block_options
    assert info.published_taps in ("scaled", "last")
    assert info.patch_size in (14, 16)
    assert info.paper, f"{cls.__name__} has no 'Paper:' line"


def test_known_facts():
    assert method_info("promptad").zero_shot is False and method_info("promptad").few_shot
    assert method_info("musc").transductive and not method_info("musc").uses_prompts
    assert method_info("musc").exportable is False
    assert not method_info("winclip").transductive and not method_info("aprillab").transductive
    assert method_info("clip").exportable and method_info("winclip").exportable
    assert not method_info("anomalyclip").few_shot and method_info("anomalyclip").zero_shot
    assert method_info("aprillab").trains and method_info("aprillab").tap_option == "stages"
    assert method_info("anomalyclip").published_taps == "last"
    assert method_info("winclip").patch_size == 16 and method_info("aprillab").patch_size == 14
    assert "aprillab_mvtec" in method_info("aprillab").experiments
    bayespfl = method_info("bayespfl")
    assert bayespfl.trains and bayespfl.zero_shot and not bayespfl.few_shot and not bayespfl.uses_prompts
    assert bayespfl.exportable and not bayespfl.transductive and bayespfl.tap_option == "layers"
    assert {"bayespfl_mvtec", "bayespfl_visa", "bayespfl_synthetic"} <= set(bayespfl.experiments)
    with pytest.raises(ValueError, match="method=nope is not one of"):
        method_info("nope")
