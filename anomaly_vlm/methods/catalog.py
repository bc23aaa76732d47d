"""What is known about each method without running it: the one place the analyses, the docs and the
contract test read method facts from.

A method's facts live where they belong and are only gathered here:

* its config, ``conf/method/<name>.yaml``: the class it builds and its published backbone;
* its class (:class:`~anomaly_vlm.methods.base.AnomalyMethod` attributes): zero-/few-shot, whether it
  trains on auxiliary data, which options name blocks and which of them are its taps;
* its torch model: transductive or not, exportable or not;
* the published backbone's model config: the patch size.

``conf/experiment/<name>_synthetic.yaml`` and ``<name>_mvtec.yaml``, where they exist, are its offline
and published settings.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from pathlib import Path

import yaml

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """The facts of one ``method=<name>``.

    Attributes:
        name: the ``method=`` value.
        target: the Lightning wrapper class path.
        paper: the ``Paper:`` line of the wrapper's docstring ("" when absent).
        zero_shot: runs with ``shots=0``.
        few_shot: runs with reference images.
        trains: learns parameters on an auxiliary dataset (``train_data``).
        transductive: scores a whole category at once.
        exportable: has an ONNX graph (``python -m anomaly_vlm.export``).
        uses_prompts: reads a text prompt set.
        tap_option: the ``method.<key>`` that chooses its tap blocks, None without one.
        published_taps: ``"scaled"`` (its default blocks, scaled to the depth) or ``"last"`` (the last
            block alone) -- what the published setting taps.
        backbone: the ``backbone=`` value of its published setting.
        patch_size: that backbone's patch size in pixels.
        experiments: the ``experiment=`` files named after it (``<name>_synthetic``, ``<name>_mvtec``, ...).
    """

    name: str
    target: str
    paper: str
    zero_shot: bool
    few_shot: bool
    trains: bool
    transductive: bool
    exportable: bool
    uses_prompts: bool
    tap_option: str | None
    published_taps: str
    backbone: str
    patch_size: int
    experiments: tuple[str, ...]


def method_names() -> list[str]:
    """Every ``method=`` value (``conf/method/*.yaml``)."""
    return sorted(path.stem for path in (CONF_DIR / "method").glob("*.yaml"))


@functools.cache
def method_info(name: str) -> MethodInfo:
    """The facts of ``method=<name>``.

    Raises:
        ValueError: no such method.
    """
    path = CONF_DIR / "method" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"method={name} is not one of {method_names()}")
    node = yaml.safe_load(path.read_text())
    target = node["method"]["_target_"]
    module_name, _, class_name = target.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    model_cls = _torch_model_class(cls)
    # The model class states it (the wrapper's ``transductive`` is a property that asks its model).
    transductive = getattr(model_cls, "transductive", False) is True
    backbone = _published_backbone(node)
    experiments = tuple(sorted(path.stem for path in (CONF_DIR / "experiment").glob(f"{name}_*.yaml")))
    return MethodInfo(
        name=name,
        target=target,
        paper=_paper_line(cls),
        zero_shot=not cls.requires_few_shot,
        few_shot=bool(cls.supports_few_shot),
        trains=bool(cls.trains_on_auxiliary_data),
        transductive=transductive,
        exportable=callable(getattr(model_cls, "export_module", None))
        and not getattr(model_cls, "export_unsupported", None)
        and not transductive,
        uses_prompts=bool(getattr(cls, "uses_prompts", True)),
        tap_option=cls.tap_option,
        published_taps=cls.published_taps,
        backbone=backbone,
        patch_size=backbone_patch_size(backbone),
        experiments=experiments,
    )


def _published_backbone(method_node: dict) -> str:
    for entry in method_node.get("defaults") or []:
        if isinstance(entry, dict) and "override /backbone" in entry:
            return str(entry["override /backbone"])
    for entry in yaml.safe_load((CONF_DIR / "train.yaml").read_text())["defaults"]:
        if isinstance(entry, dict) and "backbone" in entry:
            return str(entry["backbone"])
    raise ValueError("conf/train.yaml names no default backbone")


@functools.cache
def backbone_patch_size(backbone: str) -> int:
    """Patch size of ``backbone=<backbone>``, from its model config (no weights are read): the backbone
    class's ``config_patch_size`` where it has one (DINOv2), else open_clip's."""
    import open_clip

    from anomaly_vlm.backbones.clip import register_package_model_configs

    node = yaml.safe_load((CONF_DIR / "backbone" / f"{backbone}.yaml").read_text())
    module_name, _, class_name = str(node["_target_"]).rpartition(".")
    patch_size_of = getattr(
        getattr(importlib.import_module(module_name), class_name), "config_patch_size", None
    )
    if patch_size_of is not None:
        return int(patch_size_of(node))
    register_package_model_configs()
    model = node["model"]
    return int(open_clip.get_model_config(model)["vision_cfg"]["patch_size"])


def _torch_model_class(cls: type) -> type:
    """The pure torch model class in the method's ``torch_model.py`` (the one with ``frozen_features``)."""
    module = importlib.import_module(cls.__module__.rpartition(".")[0] + ".torch_model")
    candidates = [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and value.__module__ == module.__name__
        and hasattr(value, "frozen_features")
    ]
    if len(candidates) != 1:
        raise ValueError(f"{module.__name__} defines {len(candidates)} models with frozen_features, not one")
    return candidates[0]


def _paper_line(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    lines = doc.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("Paper:"):
            text = [line.strip().removeprefix("Paper:").strip()]
            for following in lines[index + 1 :]:
                if not following.strip() or following.strip().endswith(":"):
                    break
                text.append(following.strip())
            return " ".join(text)
    return ""
