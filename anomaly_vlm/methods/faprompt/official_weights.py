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

from anomaly_vlm.methods.official_weights import Entry, OfficialWeights

_DERIVED = "derived from the frozen CLIP's token embedding, which this project computes itself"
_NET = "prompt_learner.patch_meta_net"


class FAPromptRelease(OfficialWeights):
    release = "FAPrompt (mala-lab/FAPrompt)"
    keys = (
        "prompt_learner.ctx_pos",
        "prompt_learner.ctx_neg",
        "prompt_learner.compound_prompts_text.#",
        "prompt_learner.compound_prompt_projections.#.weight",
        "prompt_learner.compound_prompt_projections.#.bias",
        f"{_NET}.linear1.weight",
        f"{_NET}.linear1.bias",
        f"{_NET}.linear2.weight",
        f"{_NET}.linear2.bias",
        "prompt_learner.token_prefix_pos",
        "prompt_learner.token_suffix_pos",
        "prompt_learner.token_prefix_neg",
        "prompt_learner.token_suffix_neg",
        "prompt_learner.tokenized_prompts_pos",
        "prompt_learner.tokenized_prompts_neg",
    )
    ignored = {
        "prompt_learner.compound_prompt_projections.#.weight": "built but never used by the official forward",
        "prompt_learner.compound_prompt_projections.#.bias": "built but never used by the official forward",
        "prompt_learner.token_prefix_pos": _DERIVED,
        "prompt_learner.token_suffix_pos": _DERIVED,
        "prompt_learner.token_prefix_neg": _DERIVED,
        "prompt_learner.token_suffix_neg": _DERIVED,
        "prompt_learner.tokenized_prompts_pos": "token ids of the fixed words",
        "prompt_learner.tokenized_prompts_neg": "token ids of the fixed words",
    }
    files = ()  # the authors released no trained prompts

    def entries(self, method: Any) -> list[Entry]:
        learner = method.model.prompt_learner
        prefix = "model.prompt_learner"
        found = [
            Entry("prompt_learner.ctx_pos", f"{prefix}.ctx_pos", leading=2),
            Entry("prompt_learner.ctx_neg", f"{prefix}.ctx_neg", leading=1),
        ]
        found += [
            Entry(f"prompt_learner.compound_prompts_text.{index}", f"{prefix}.deep_prompts", index=index)
            for index in range(learner.deep_prompts.shape[0])
        ]
        found += [
            Entry(f"{_NET}.{layer}.{kind}", f"{prefix}.patch_meta_net.{layer}.{kind}")
            for layer in ("linear1", "linear2")
            for kind in ("weight", "bias")
        ]
        return found
