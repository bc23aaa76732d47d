"""Bayes-PFL's official checkpoint format (``train.py``'s ``epoch_post_<e>_<stage>.pth`` and the released
``train_visa.pth`` / ``train_mvtec.pth``) as ``ckpt_path``.

The official ``train.py`` saves ``{"MyModel": Context_Prompting.state_dict()}``; names map one to one onto
ours (``PFL_context`` -> ``context_flow``, ``PFL_normal`` / ``PFL_abnormal`` -> ``normal_flow`` /
``abnormal_flow``, ``RCA`` -> ``rca``, the rest unchanged). Read past:

* ``context_decoder``, ``state_decoder`` and every ``PFL_*.p_mu``: the reconstruction branch, computed but
  dropped from the loss, so never trained and never used at test time;
* ``PFL_*.encoder`` / ``PFL_*.decoder``: the same modules again (``PFL_context`` holds ``context_encoder``,
  both state flows hold the one shared ``state_encoder``), which ``state_dict`` lists under each owner.

The released files were tested in stage 2 (``test.py`` takes the stage from an ``epoch_post`` file name and
defaults to 2), so with a release file ``method.test_stage=null`` scores with the stage-2 image branch.
"""

from __future__ import annotations

from typing import Any

from anomaly_vlm.methods.official_weights import Entry, OfficialWeights, ReleaseFile

_DRIVE = "https://drive.google.com/file/d"
_UNUSED = "the reconstruction branch: computed, dropped from the loss (never trained), unused at test time"
_DUPLICATE = "the same module as context_encoder / state_encoder, listed again under the flow that holds it"
_FLOWS = {"context_flow.": "PFL_context.", "normal_flow.": "PFL_normal.", "abnormal_flow.": "PFL_abnormal."}


def official_name(name: str) -> str:
    """The official ``Context_Prompting`` parameter name of our model parameter ``name``."""
    for ours, theirs in {**_FLOWS, "rca.": "RCA."}.items():
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    return name


class BayesPFLRelease(OfficialWeights):
    release = "Bayes-PFL (xiaozhen228/Bayes-PFL)"
    keys = tuple(
        f"MyModel.{key}"
        for key in (
            "prompt_context", "prompt_state_normal", "prompt_state_abnormal",
            "temperature_pixel", "temperature_image",
            *(f"{part}.{kind}.module.#.{p}" for part in ("context_encoder", "state_encoder")
              for kind in ("weight_mean", "weight_log_variance") for p in ("weight", "bias")),
            *(f"{part}.weight_mean.module.#.{p}" for part in ("context_decoder", "state_decoder")
              for p in ("weight", "bias")),
            *(f"PFL_context.amor_{x}.{p}" for x in "uwb" for p in ("weight", "bias")),
            *(f"PFL_{flow}.{x}" for flow in ("normal", "abnormal")
              for x in ("amor_u", "amor_w", "amor_b", "state")),
            *(f"PFL_{flow}.p_mu.#.{p}" for flow in ("context", "normal", "abnormal")
              for p in ("weight", "bias")),
            *(f"PFL_{flow}.{part}.{kind}.module.#.{p}" for flow in ("context", "normal", "abnormal")
              for part, kind in (("encoder", "weight_mean"), ("encoder", "weight_log_variance"),
                                 ("decoder", "weight_mean"))
              for p in ("weight", "bias")),
            *(f"fuse.{layer}.{p}" for layer in ("fuse_modules", "compress", "post_process")
              for p in ("weight", "bias")),
            "RCA.q_proj_pre.weight", "RCA.q_proj_pre.bias", "RCA.linear_proj.#.weight",
            "class_mapping.weight", "class_mapping.bias", "image_mapping.weight", "image_mapping.bias",
        )
    )  # fmt: skip
    ignored = {
        **{f"MyModel.{part}.weight_mean.module.#.{p}": _UNUSED
           for part in ("context_decoder", "state_decoder") for p in ("weight", "bias")},
        **{f"MyModel.PFL_{flow}.p_mu.#.{p}": _UNUSED
           for flow in ("context", "normal", "abnormal") for p in ("weight", "bias")},
        **{f"MyModel.PFL_{flow}.{part}.{kind}.module.#.{p}": _DUPLICATE
           for flow in ("context", "normal", "abnormal")
           for part, kind in (("encoder", "weight_mean"), ("encoder", "weight_log_variance"),
                              ("decoder", "weight_mean"))
           for p in ("weight", "bias")},
    }  # fmt: skip
    files = (
        ReleaseFile(
            name="train_visa.pth",
            trained_on="VisA (test split)",
            tests=("mvtec",),
            manual=f"{_DRIVE}/1rNs_rdTmrg4JshmKHotq6AN1gqTpPjvm (Google Drive, README)",
        ),
        ReleaseFile(
            name="train_mvtec.pth",
            trained_on="MVTec AD (test split)",
            tests=("visa",),
            manual=f"{_DRIVE}/1EHa4jPi7r8jmRVURoZ4yH2-jqDt6K1Ni (Google Drive, README)",
        ),
    )

    def entries(self, method: Any) -> list[Entry]:
        return [
            Entry(f"MyModel.{official_name(name)}", f"model.{name}")
            for name, parameter in method.model.named_parameters()
            if parameter.requires_grad and not name.startswith("backbone.")
        ]
