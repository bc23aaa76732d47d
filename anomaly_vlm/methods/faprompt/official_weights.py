"""FAPrompt's official checkpoint format (``epoch_<e>.pth`` of its ``train.py``) as ``ckpt_path``.

The official ``train.py`` saves ``{"prompt_learner": FAPrompt.state_dict()}``:

* ``ctx_pos`` ``[1, 1, 5, width]`` (one class "object"): our ``ctx_pos``;
* ``ctx_neg`` ``[1, 10, 2, width]``: our ``ctx_neg``;
* ``compound_prompts_text.<i>`` ``[t_n_ctx, width]`` for the text blocks 2 .. depth: our ``deep_prompts[i]``;
* ``patch_meta_net.linear1`` / ``linear2`` (weight, bias): our prior network, same names;
* read past: ``compound_prompt_projections`` (built, never used by the official forward) and the
  registered buffers ``token_prefix_*`` / ``token_suffix_*`` / ``tokenized_prompts_*`` (token embeddings
  and ids of the fixed words, which this project derives from the frozen CLIP it runs).

The authors released no trained file (the README's link is empty), so :attr:`FAPromptRelease.files` is
empty: a file trained with the official code loads, none is pinned.
"""

from __future__ import annotations

from typing import Any

from anomaly_vlm.methods.official_weights import Entry, PromptLearnerRelease

_NET = "prompt_learner.patch_meta_net"
_NET_KEYS = tuple(f"{layer}.{kind}" for layer in ("linear1", "linear2") for kind in ("weight", "bias"))


class FAPromptRelease(PromptLearnerRelease):
    """AnomalyCLIP's prompt-learner layout (FAPrompt's learner is built on it) plus the prior network."""

    release = "FAPrompt (mala-lab/FAPrompt)"
    keys = (*PromptLearnerRelease.keys, *(f"{_NET}.{key}" for key in _NET_KEYS))
    files = ()  # the authors released no trained prompts

    def entries(self, method: Any) -> list[Entry]:
        learner = method.model.prompt_learner
        prefix = "model.prompt_learner"
        found = self.prompt_learner_entries(
            prefix, "ctx_pos", "ctx_neg", learner.deep_prompts.shape[0], anomalous_leading=1
        )
        found += [Entry(f"{_NET}.{key}", f"{prefix}.patch_meta_net.{key}") for key in _NET_KEYS]
        return found
