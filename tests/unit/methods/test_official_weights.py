"""``ckpt_path=<the authors' release file>``: recognised, mapped, every shape checked, wrong files refused.

The files here are built in the official layouts by hand (the parity harnesses build them with the official
code's own save routines and compare scores against the official test code).
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from anomaly_vlm.methods.adaclip import AdaCLIPModule
from anomaly_vlm.methods.anomalyclip import AnomalyCLIPModule
from anomaly_vlm.methods.aprillab import AprilGANModule
from anomaly_vlm.methods.official_weights import (
    Entry,
    OfficialWeights,
    OfficialWeightsError,
    flatten,
    load_official_state,
    release_of,
)
from anomaly_vlm.prompts import LearnablePromptSet, PromptSet
from anomaly_vlm.untrusted import sha256_file

REPO = __import__("pathlib").Path(__file__).resolve().parents[3]
CLASSES = [AprilGANModule, AnomalyCLIPModule, AdaCLIPModule]


def _prompts(name: str) -> PromptSet:
    node = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "prompts" / f"{name}.yaml"))
    node.pop("_target_")
    return PromptSet(**node)


def _aprillab(backbone, **kwargs):
    return AprilGANModule(backbone, _prompts("aprilgan"), **kwargs)


def _anomalyclip(backbone, depth: int = 4, **kwargs):
    return AnomalyCLIPModule(
        backbone, LearnablePromptSet("anomalyclip_learned", deep_prompt_depth=depth), layers=[8], **kwargs
    )


def _adaclip(backbone, **kwargs):
    return AdaCLIPModule(backbone, _prompts("adaclip"), **kwargs)


def _aprillab_file(width: int = 64, embed: int = 64, stages: int = 4) -> dict:
    """``{'trainable_linearlayer': LinearLayer.state_dict()}`` as the official train.py saves it."""
    torch.manual_seed(1)
    layer = {}
    for index in range(stages):
        layer[f"fc.{index}.weight"] = torch.randn(embed, width)
        layer[f"fc.{index}.bias"] = torch.randn(embed)
    return {"trainable_linearlayer": layer}


def _anomalyclip_file(width: int = 64, n_ctx: int = 12, depth: int = 4) -> dict:
    torch.manual_seed(2)
    learner = {"ctx_pos": torch.randn(1, 1, n_ctx, width), "ctx_neg": torch.randn(1, 1, n_ctx, width)}
    for index in range(depth - 1):
        learner[f"compound_prompts_text.{index}"] = torch.randn(4, width)
        learner[f"compound_prompt_projections.{index}.weight"] = torch.randn(896, width)
        learner[f"compound_prompt_projections.{index}.bias"] = torch.randn(896)
    for name in ("token_prefix_pos", "token_prefix_neg"):
        learner[name] = torch.randn(1, 1, 1, width)
    for name in ("token_suffix_pos", "token_suffix_neg"):
        learner[name] = torch.randn(1, 1, 77 - 1 - n_ctx, width)
    for name in ("tokenized_prompts_pos", "tokenized_prompts_neg"):
        learner[name] = torch.zeros(1, 1, 77, dtype=torch.long)
    return {"prompt_learner": learner}


def _adaclip_file(width: int = 64, text_width: int = 64, embed: int = 64, length: int = 5) -> dict:
    """The flat dict ``AdaCLIP_Trainer.save`` writes (prompt depth 4, taps 4)."""
    torch.manual_seed(3)
    state = {}
    for index in range(4):
        state[f"clip_model.text_prompter.static_prompts.{index}"] = torch.randn(length, text_width)
        state[f"clip_model.visual_prompter.static_prompts.{index}"] = torch.randn(length, width)
        state[f"clip_model.patch_token_layer.head.{index}.weight"] = torch.randn(embed, width)
        state[f"clip_model.patch_token_layer.head.{index}.bias"] = torch.randn(embed)
    state["clip_model.cls_token_layer.head.0.weight"] = torch.randn(embed, embed)
    state["clip_model.cls_token_layer.head.0.bias"] = torch.randn(embed)
    for index in range(length):
        for kind, out in (("visual", width), ("text", text_width)):
            state[f"clip_model.dynamic_{kind}_prompt_generator.head.{index}.weight"] = torch.randn(out, embed)
            state[f"clip_model.dynamic_{kind}_prompt_generator.head.{index}.bias"] = torch.randn(out)
    return state


def _save(tmp_path, payload: dict, name: str = "release.pth") -> str:
    path = tmp_path / name
    torch.save(payload, path)
    return str(path)


def test_aprillab_release_fills_each_projection(tiny_backbone, tmp_path):
    payload = _aprillab_file()
    method = _aprillab(tiny_backbone)
    path = _save(tmp_path, payload)
    method.load_trainable_checkpoint(path)
    for index, projection in enumerate(method.model.projections):
        assert torch.equal(projection.weight, payload["trainable_linearlayer"][f"fc.{index}.weight"])
        assert torch.equal(projection.bias, payload["trainable_linearlayer"][f"fc.{index}.bias"])
    assert method.checkpoint_origin == "official"
    assert method.checkpoint_sha256 == sha256_file(path)


def test_anomalyclip_release_fills_contexts_and_deep_prompts(tiny_backbone, tmp_path):
    payload = _anomalyclip_file()
    method = _anomalyclip(tiny_backbone)
    method.load_trainable_checkpoint(_save(tmp_path, payload))
    encoder, learner = method.model.prompt_encoder, payload["prompt_learner"]
    assert torch.equal(encoder.context_normal, learner["ctx_pos"][0, 0])
    assert torch.equal(encoder.context_anomalous, learner["ctx_neg"][0, 0])
    for index in range(3):
        assert torch.equal(encoder.deep_prompts[index], learner[f"compound_prompts_text.{index}"])


def test_adaclip_release_fills_prompts_generators_and_projections(tiny_backbone, tmp_path):
    payload = _adaclip_file()
    method = _adaclip(tiny_backbone)
    method.load_trainable_checkpoint(_save(tmp_path, payload))
    model = method.model
    for index in range(4):
        assert torch.equal(
            model.text_static[index], payload[f"clip_model.text_prompter.static_prompts.{index}"]
        )
        assert torch.equal(
            model.visual_static[index], payload[f"clip_model.visual_prompter.static_prompts.{index}"]
        )
        assert torch.equal(
            model.patch_projections[index].weight,
            payload[f"clip_model.patch_token_layer.head.{index}.weight"],
        )
    assert torch.equal(model.cls_projection.bias, payload["clip_model.cls_token_layer.head.0.bias"])
    for index in range(5):
        assert torch.equal(
            model.text_generator[index].weight,
            payload[f"clip_model.dynamic_text_prompt_generator.head.{index}.weight"],
        )


def test_a_wrong_shape_names_the_key_and_both_shapes(tiny_backbone, tmp_path):
    # Trained on ViT-L (width 1024 -> 768): this run's tiny backbone needs 64 -> 64.
    path = _save(tmp_path, _aprillab_file(width=1024, embed=768))
    before = _aprillab(tiny_backbone)
    weight = before.model.projections[0].weight.detach().clone()
    with pytest.raises(
        ValueError,
        match=r"key 'trainable_linearlayer\.fc\.0\.weight' has shape \(768, 1024\), this run needs "
        r"\(64, 64\) for model\.projections\.0\.weight",
    ):
        before.load_trainable_checkpoint(path)
    assert torch.equal(before.model.projections[0].weight, weight)  # nothing half-loaded


def test_another_prompt_length_is_refused_by_shape(tiny_backbone, tmp_path):
    path = _save(tmp_path, _anomalyclip_file(n_ctx=8))
    with pytest.raises(
        ValueError, match=r"'prompt_learner\.ctx_pos' has shape \(1, 1, 8, 64\), this run needs "
    ):
        _anomalyclip(tiny_backbone).load_trainable_checkpoint(path)


def test_a_deeper_release_has_keys_without_a_place(tiny_backbone, tmp_path):
    path = _save(tmp_path, _anomalyclip_file(depth=6))
    with pytest.raises(
        ValueError, match=r"key 'prompt_learner\.compound_prompts_text\.3' \(shape \(4, 64\)\) "
    ):
        _anomalyclip(tiny_backbone).load_trainable_checkpoint(path)


def test_fewer_stages_than_the_run_names_the_missing_key(tiny_backbone, tmp_path):
    path = _save(tmp_path, _aprillab_file(stages=2))
    with pytest.raises(
        ValueError, match=r"key 'trainable_linearlayer\.fc\.2\.weight' is missing; .* \(64, 64\)"
    ):
        _aprillab(tiny_backbone).load_trainable_checkpoint(path)


@pytest.mark.parametrize(
    ("build", "payload", "owner"),
    [
        (_aprillab, _anomalyclip_file, "anomalyclip"),
        (_anomalyclip, _adaclip_file, "adaclip"),
        (_adaclip, _aprillab_file, "aprillab"),
    ],
)
def test_another_methods_release_is_refused_by_name(tiny_backbone, tmp_path, build, payload, owner):
    path = _save(tmp_path, payload())
    with pytest.raises(ValueError, match=rf"is the authors' release of .*made for method={owner}, not for "):
        build(tiny_backbone).load_trainable_checkpoint(path)


def test_an_unknown_dict_says_what_it_is_not(tiny_backbone, tmp_path):
    path = _save(tmp_path, {"model": {"weight": torch.zeros(2)}})
    with pytest.raises(ValueError, match=r"not an anomaly-vlm checkpoint .*nor a release file of APRIL-GAN"):
        _aprillab(tiny_backbone).load_trainable_checkpoint(path)


def test_each_release_is_recognised_by_its_own_method_only():
    for payload, owner in ((_aprillab_file, "aprillab"), (_anomalyclip_file, "anomalyclip")):
        assert [name for name, _ in release_of(flatten(payload()), CLASSES)] == [owner]
    assert [name for name, _ in release_of(_adaclip_file(), CLASSES)] == ["adaclip"]


def test_a_format_that_leaves_a_parameter_unfilled_is_reported(tiny_backbone):
    class Partial(OfficialWeights):
        release = "partial"
        keys = ("fc.#.weight",)

        def entries(self, method):
            return [Entry("fc.0.weight", "model.projections.0.weight")]

    method = _aprillab(tiny_backbone)
    with pytest.raises(OfficialWeightsError, match=r"nothing in the file fills model\.projections\.0\.bias"):
        load_official_state(method, {"fc": {"0": {"weight": torch.zeros(64, 64)}}}, "file", Partial())


def test_every_trained_method_declares_its_release_files():
    """A trained method of the catalog either has an official format with released files, or states none."""
    for cls in CLASSES:
        weights = cls.official_weights
        assert weights.release and weights.keys and weights.files
        for file in weights.files:
            assert file.url or file.manual, file.name
            assert file.sha256 or file.git_blob or file.url is None, file.name


def _trained_methods() -> list[str]:
    from anomaly_vlm.methods.official_weights import method_classes

    return sorted(name for name, cls in method_classes().items() if getattr(cls, "official_weights", None))


@pytest.mark.parametrize("name", _trained_methods())
def test_every_declared_release_format_round_trips_on_the_tiny_backbone(name, tmp_path):
    """For each method with ``official_weights`` (added methods included): a file holding exactly its
    entries, at the shapes they state, loads every trainable parameter and is claimed by no other method."""
    from hydra import compose, initialize_config_dir

    from anomaly_vlm.methods.official_weights import release_of
    from anomaly_vlm.tasks.instantiate import build

    # The method's offline setting where it ships one (prompt depths that fit the tiny text encoder).
    offline = REPO / "conf" / "experiment" / f"{name}_synthetic.yaml"
    overrides = [f"experiment={name}_synthetic"] if offline.is_file() else [f"method={name}", "backbone=tiny"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)
    method = build(cfg.method, backbone=build(cfg.backbone), prompts=build(cfg.prompts), shots=0)
    current = method.trainable_state_dict()
    torch.manual_seed(0)
    payload = {
        entry.key: torch.randn(entry.official_shape(tuple(current[entry.target].shape)))
        for entry in method.official_weights.entries(method)
    }
    assert [owner for owner, _ in release_of(flatten(payload))] == [name]
    method.load_trainable_checkpoint(_save(tmp_path, payload))
    loaded = method.trainable_state_dict()
    for entry in method.official_weights.entries(method):
        value = loaded[entry.target] if entry.index is None else loaded[entry.target][entry.index]
        assert torch.equal(value, payload[entry.key].reshape(value.shape)), entry.key


class _NotData:
    """A pickled object: a release file holding one must be refused before anything in it runs."""


def test_a_release_file_with_a_pickled_object_is_refused(tiny_backbone, tmp_path):
    payload = _aprillab_file()
    payload["trainable_linearlayer"]["extra"] = _NotData()
    path = _save(tmp_path, payload)
    with pytest.raises(ValueError, match=r"_NotData, which is not data: refused without running anything"):
        _aprillab(tiny_backbone).load_trainable_checkpoint(path)
