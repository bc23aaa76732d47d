"""AnomalyCLIP's released prompts (``checkpoints/9_12_4_multiscale{,_visa}/epoch_15.pth``) as ``ckpt_path``.

The official ``train.py`` saves ``{"prompt_learner": AnomalyCLIP_PromptLearner.state_dict()}``:

* ``ctx_pos`` / ``ctx_neg`` ``[1, 1, n_ctx, width]`` (one class "object", one state each): our
  ``context_normal`` / ``context_anomalous``;
* ``compound_prompts_text.<i>`` ``[t_n_ctx, width]`` for the text blocks 2 .. depth: our
  ``deep_prompts[i]``;
* read past: ``compound_prompt_projections`` (built, never used by the official forward) and the
  registered buffers ``token_prefix_*`` / ``token_suffix_*`` / ``tokenized_prompts_*`` (token embeddings
  of the fixed words, which this project derives from the frozen CLIP it runs).
"""

from __future__ import annotations

from typing import Any

from anomaly_vlm.methods.official_weights import Entry, PromptLearnerRelease, ReleaseFile

#: The commit of zqhang/AnomalyCLIP whose ``checkpoints`` files are pinned (git blob ids).
_COMMIT = "45ed4dd35c05797d854294b5e8d585c545920089"
_RAW = f"https://raw.githubusercontent.com/zqhang/AnomalyCLIP/{_COMMIT}/checkpoints"


class AnomalyCLIPRelease(PromptLearnerRelease):
    release = "AnomalyCLIP (zqhang/AnomalyCLIP)"
    files = (
        ReleaseFile(
            "9_12_4_multiscale/epoch_15.pth",
            trained_on="MVTec AD test split",
            tests=("visa",),
            url=f"{_RAW}/9_12_4_multiscale/epoch_15.pth",
            git_blob="c90f1d9d92d158b436a8fc193f984d4cec8b1fc8",
        ),
        ReleaseFile(
            "9_12_4_multiscale_visa/epoch_15.pth",
            trained_on="VisA test split",
            tests=("mvtec",),
            url=f"{_RAW}/9_12_4_multiscale_visa/epoch_15.pth",
            git_blob="72adc786e031b49ea288ba5f815f0d38cf158708",
        ),
    )

    def entries(self, method: Any) -> list[Entry]:
        encoder = method.model.prompt_encoder
        return self.prompt_learner_entries(
            "model.prompt_encoder", "context_normal", "context_anomalous", encoder.deep_prompts.shape[0]
        )
