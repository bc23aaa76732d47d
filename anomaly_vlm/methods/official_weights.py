"""The weights a method's authors released, loaded with ``ckpt_path=<their file>``.

A trained method states how its authors' files look by giving its Lightning wrapper the class attribute
``official_weights``, an :class:`OfficialWeights` (usually defined in ``<method>/official_weights.py``).
It says three things:

* which keys a release file holds (:attr:`OfficialWeights.keys`, patterns where ``#`` stands for an
  index), so a file is recognised as this method's and a file of another method is refused by name;
* which of them carry no trained value this project uses (:attr:`OfficialWeights.ignored`, with the
  reason), for example buffers the official code derives from the frozen CLIP;
* where each of the run's trainable parameters comes from (:meth:`OfficialWeights.entries`, one
  :class:`Entry` per official tensor), computed from the run's own settings.

Everything else is shared, in :func:`load_official_state`: the file's nested dicts are flattened to dotted
keys, every entry's official tensor is checked against the shape the run needs, every trainable
parameter must be filled once, and every key must be used or ignored. Each failure is one message that
names the file, the official key and both shapes. :func:`release_of` tells which method's release a file
is, so ``ckpt_path=<AnomalyCLIP's epoch_15.pth> method=aprillab`` says so instead of failing on keys.

Files are read by :func:`anomaly_vlm.untrusted.load_torch_file` (``weights_only``): the three releases
handled so far are plain dicts of tensors and need no allow-list.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from torch import Tensor


class OfficialWeightsError(ValueError):
    """A release file that does not fit this run: another method's, or trained with other settings."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One official tensor and the trainable parameter of this project it fills.

    Attributes:
        key: the dotted key in the release file (nested dicts joined with ``.``).
        target: the name in the method's ``trainable_state_dict()``.
        index: the slot of a stacked parameter (``target[index]``); None fills the whole parameter.
        leading: singleton axes the official tensor has in front of ours (AnomalyCLIP's ``ctx_pos`` is
            ``[1, 1, n, width]`` where ours is ``[n, width]``).
    """

    key: str
    target: str
    index: int | None = None
    leading: int = 0

    def official_shape(self, target_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the release's tensor must have for a parameter of ``target_shape``."""
        inner = target_shape[1:] if self.index is not None else target_shape
        return (1,) * self.leading + tuple(inner)


@dataclasses.dataclass(frozen=True)
class ReleaseFile:
    """One file the authors released, where to get it and what it was trained on.

    Attributes:
        name: the file name as released (``mvtec_pretrained.pth``).
        trained_on: the auxiliary data it was trained on, in words.
        tests: the ``data=`` values it is the published cross-dataset weights for (what
            ``CKPT=official`` picks for ``reproduce-<method>-<data>``).
        url: a stable download address (a commit-pinned repository file or a Hugging Face mirror);
            None when the file only lives on Google Drive or Baidu.
        sha256: its pinned SHA-256, where one is published; None otherwise.
        git_blob: its git blob id (SHA-1 of the content as git stores it) where the file sits in a git
            repository at a pinned commit: as good a pin as the SHA-256 where no SHA-256 is published.
        manual: where a person gets it by hand (Google Drive / Baidu links), for the docs table.
    """

    name: str
    trained_on: str
    tests: tuple[str, ...] = ()
    url: str | None = None
    sha256: str | None = None
    git_blob: str | None = None
    manual: str = ""


class OfficialWeights:
    """How a method reads its authors' released files (subclass it once per method).

    Attributes:
        release: the official code, in words (``"APRIL-GAN (ByChelsea/VAND-APRIL-GAN)"``).
        keys: patterns of every key a release file holds (``#`` matches an index); a file is this
            method's when each of its keys matches a pattern and each non-ignored pattern has a key.
        ignored: patterns of keys that are read past, each with the reason (shown in the docs).
        files: the released files.
    """

    release: ClassVar[str] = ""
    keys: ClassVar[tuple[str, ...]] = ()
    ignored: ClassVar[Mapping[str, str]] = {}
    files: ClassVar[tuple[ReleaseFile, ...]] = ()

    def entries(self, method: Any) -> list[Entry]:
        """Where each trainable parameter of ``method`` (as configured) comes from in a release file."""
        raise NotImplementedError

    # ----- shared logic: not overridden ----------------------------------------------------------
    @classmethod
    def recognises(cls, flat: Mapping[str, Any]) -> bool:
        """Whether a flattened file has exactly this release's key layout (shapes are not looked at)."""
        if not flat or not cls.keys:
            return False
        patterns = [_pattern(key) for key in cls.keys]
        if not all(any(pattern.fullmatch(key) for pattern in patterns) for key in flat):
            return False
        required = [_pattern(key) for key in cls.keys if key not in cls.ignored]
        return all(any(pattern.fullmatch(key) for key in flat) for pattern in required)

    def file_named(self, name: str) -> ReleaseFile | None:
        return next((file for file in self.files if file.name == name), None)


_DERIVED = "derived from the frozen CLIP's token embedding, which this project computes itself"
_UNUSED = "built but never used by the official forward"


class PromptLearnerRelease(OfficialWeights):
    """A file in the layout of AnomalyCLIP's ``train.py``: ``{"prompt_learner": <prompt learner state>}``.

    AnomalyCLIP's ``AnomalyCLIP_PromptLearner`` saves the two learned contexts ``ctx_pos`` / ``ctx_neg``,
    the deep text prompts ``compound_prompts_text.<i>`` (text blocks 2 .. depth), the projections it builds
    but never uses, and buffers of the fixed words' tokens. Methods built on it (FAPrompt) save the same
    keys and their own: a subclass adds those to :attr:`keys` and its entries to :meth:`entries`.
    """

    keys = (
        "prompt_learner.ctx_pos",
        "prompt_learner.ctx_neg",
        "prompt_learner.compound_prompts_text.#",
        "prompt_learner.compound_prompt_projections.#.weight",
        "prompt_learner.compound_prompt_projections.#.bias",
        "prompt_learner.token_prefix_pos",
        "prompt_learner.token_suffix_pos",
        "prompt_learner.token_prefix_neg",
        "prompt_learner.token_suffix_neg",
        "prompt_learner.tokenized_prompts_pos",
        "prompt_learner.tokenized_prompts_neg",
    )
    ignored = {
        "prompt_learner.compound_prompt_projections.#.weight": _UNUSED,
        "prompt_learner.compound_prompt_projections.#.bias": _UNUSED,
        "prompt_learner.token_prefix_pos": _DERIVED,
        "prompt_learner.token_suffix_pos": _DERIVED,
        "prompt_learner.token_prefix_neg": _DERIVED,
        "prompt_learner.token_suffix_neg": _DERIVED,
        "prompt_learner.tokenized_prompts_pos": "token ids of the fixed words",
        "prompt_learner.tokenized_prompts_neg": "token ids of the fixed words",
    }

    @staticmethod
    def prompt_learner_entries(
        prefix: str, normal: str, anomalous: str, deep_prompts: int, anomalous_leading: int = 2
    ) -> list[Entry]:
        """The entries of the shared keys: the two contexts and the deep prompts.

        Args:
            prefix: the prompt module's name in the trainable state dict (``model.prompt_encoder``).
            normal, anomalous: its parameters filled by ``ctx_pos`` and ``ctx_neg``.
            deep_prompts: how many deep prompts its stacked ``deep_prompts`` parameter holds.
            anomalous_leading: singleton axes ``ctx_neg`` has in front of ours (``ctx_pos`` has two).
        """
        found = [
            Entry("prompt_learner.ctx_pos", f"{prefix}.{normal}", leading=2),
            Entry("prompt_learner.ctx_neg", f"{prefix}.{anomalous}", leading=anomalous_leading),
        ]
        found += [
            Entry(f"prompt_learner.compound_prompts_text.{index}", f"{prefix}.deep_prompts", index=index)
            for index in range(deep_prompts)
        ]
        return found


def _pattern(key: str) -> re.Pattern[str]:
    return re.compile(re.escape(key).replace("\\#", r"\d+").replace("#", r"\d+"))


def flatten(payload: Any, prefix: str = "") -> dict[str, Any]:
    """A release file's nested dicts as one dict of dotted keys (``{"a": {"b": t}}`` -> ``{"a.b": t}``)."""
    if not isinstance(payload, Mapping):
        return {prefix.rstrip("."): payload} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, Tensor) else None


def load_official_state(
    method: Any, payload: Mapping[str, Any], source: str, weights: OfficialWeights | None = None
) -> dict[str, Tensor]:
    """The method's trainable state dict filled from a release file, every shape checked.

    Args:
        method: the configured Lightning wrapper (its ``trainable_state_dict()`` gives names and shapes).
        payload: what ``torch.load`` returned for the file.
        source: how messages name the file (``"ckpt_path=<path>"``).
        weights: the format (default ``type(method).official_weights``).

    Raises:
        OfficialWeightsError: a key is missing, has a shape this run cannot take, has no place in this
            run, or a trainable parameter is left unfilled (one line, naming the key and both shapes).
    """
    weights = weights or type(method).official_weights
    flat = flatten(payload)
    current = method.trainable_state_dict()
    state = {name: tensor.detach().clone() for name, tensor in current.items()}
    filled: dict[str, set[int | None]] = {name: set() for name in current}
    used: set[str] = set()
    for entry in weights.entries(method):
        if entry.target not in current:
            raise OfficialWeightsError(f"{source}: {entry.target} is not a trainable parameter of this run")
        expected = entry.official_shape(tuple(current[entry.target].shape))
        if entry.key not in flat:
            raise OfficialWeightsError(
                f"{source}: key '{entry.key}' is missing; this run needs it with shape {expected} "
                f"for {entry.target} (the file was trained with other settings, or is not a "
                f"{weights.release} release file)"
            )
        value, used_key = flat[entry.key], entry.key
        if _shape(value) != expected:
            raise OfficialWeightsError(
                f"{source}: key '{used_key}' has shape {_shape(value)}, this run needs {expected} for "
                f"{entry.target} (the file was trained with another backbone or method setting)"
            )
        tensor = value.reshape(expected[entry.leading :]).to(state[entry.target].dtype)
        if entry.index is None:
            state[entry.target] = tensor.clone()
        else:
            state[entry.target][entry.index] = tensor
        filled[entry.target].add(entry.index)
        used.add(used_key)
    ignored = [_pattern(key) for key in weights.ignored]
    extra = sorted(key for key in flat if key not in used and not any(p.fullmatch(key) for p in ignored))
    if extra:
        raise OfficialWeightsError(
            f"{source}: key '{extra[0]}' (shape {_shape(flat[extra[0]])}) has no place in this run"
            f"{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}: the file was trained with "
            "other settings (more blocks, longer prompts)"
        )
    for name, slots in filled.items():
        rows = current[name].shape[0] if current[name].dim() else 0
        complete = None in slots or (slots and slots == set(range(rows)))
        if not complete:
            raise OfficialWeightsError(
                f"{source}: nothing in the file fills {name} (shape {tuple(current[name].shape)}); "
                f"the {weights.release} format does not cover this run's settings"
            )
    return state


def release_of(flat: Mapping[str, Any], classes: Iterable[type] | None = None) -> list[tuple[str, str]]:
    """``(method name, release)`` of every method whose official format has this file's key layout.

    Args:
        flat: the flattened file (:func:`flatten`).
        classes: the Lightning wrapper classes to ask (default: every ``method=`` of the catalog).
    """
    if classes is None:
        classes = list(method_classes().values())
    found = []
    for cls in classes:
        weights = getattr(cls, "official_weights", None)
        if weights is not None and weights.recognises(flat):
            found.append((cls.method_name, weights.release))
    return found


def method_classes() -> dict[str, type]:
    """The Lightning wrapper class of every ``conf/method/*.yaml`` (its ``method._target_``), by name.

    A method whose class cannot be imported is left out: it has no release to recognise.
    """
    # The catalog is read lazily: a method module imports this one.
    import yaml

    from anomaly_vlm.methods import catalog

    classes = {}
    for name in catalog.method_names():
        node = yaml.safe_load((catalog.CONF_DIR / "method" / f"{name}.yaml").read_text()) or {}
        target = str((node.get("method") or {}).get("_target_", ""))
        module_name, _, class_name = target.rpartition(".")
        try:
            classes[name] = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError):
            continue
    return classes


def not_this_release_message(method: Any, flat: Mapping[str, Any], source: str) -> str:
    """Why a file is neither this project's checkpoint nor this method's release (one line).

    ``method``: the method's Lightning wrapper, or its class (the config check asks before building).
    """
    cls = method if isinstance(method, type) else type(method)  # the class, before it is built, too
    own = cls.official_weights
    others = [(name, release) for name, release in release_of(flat) if name != cls.method_name]
    if others:
        name, release = others[0]
        return (
            f"{source} is the authors' release of {release}, made for method={name}, not for "
            f"method={cls.method_name}: run it with method={name}"
        )
    wanted = f", nor a release file of {own.release} (keys {', '.join(own.keys[:2])}, ...)" if own else ""
    first = ", ".join(sorted(flat)[:3]) or "none"
    return (
        f"{source} is not an anomaly-vlm checkpoint (no 'anomaly_vlm' metadata){wanted}; "
        f"its first keys: {first}"
    )
