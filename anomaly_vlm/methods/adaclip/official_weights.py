"""AdaCLIP's released weights (``pretrained_{all,mvtec_colondb,visa_clinicdb}.pth``) as ``ckpt_path``.

The official ``AdaCLIP_Trainer.save`` writes, flat, every entry of the trainer's state dict whose name
contains one of its learnable module names (``clip_model.<module>...``):

* ``text_prompter`` / ``visual_prompter.static_prompts.<i>`` ``[length, width]`` per prompted block: our
  ``text_static[i]`` / ``visual_static[i]``;
* ``patch_token_layer.head.<i>`` (one ``Linear`` per tap), ``cls_token_layer.head.0``,
  ``dynamic_visual_prompt_generator`` / ``dynamic_text_prompt_generator.head.<i>`` (one ``Linear`` per
  prompt token): our ``patch_projections``, ``cls_projection``, ``visual_generator``, ``text_generator``.

The official ``load`` uses ``strict=False``, so a file of another method or setting loads nothing there
without a word; here every key and shape is checked.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from anomaly_vlm.methods.official_weights import Entry, OfficialWeights, ReleaseFile

#: Byte-identical Hugging Face mirror of the Google Drive files; the SHA-256 values are its model card's.
_MIRROR = "https://huggingface.co/cubert-gmbh/adaclip/resolve/main"
_DRIVE = "https://drive.google.com/file/d"


class AdaCLIPRelease(OfficialWeights):
    release = "AdaCLIP (caoyunkang/AdaCLIP)"
    keys = (
        "clip_model.text_prompter.static_prompts.#",
        "clip_model.visual_prompter.static_prompts.#",
        "clip_model.patch_token_layer.head.#.weight",
        "clip_model.patch_token_layer.head.#.bias",
        "clip_model.cls_token_layer.head.#.weight",
        "clip_model.cls_token_layer.head.#.bias",
        "clip_model.dynamic_visual_prompt_generator.head.#.weight",
        "clip_model.dynamic_visual_prompt_generator.head.#.bias",
        "clip_model.dynamic_text_prompt_generator.head.#.weight",
        "clip_model.dynamic_text_prompt_generator.head.#.bias",
    )
    files = (
        ReleaseFile(
            "pretrained_mvtec_colondb.pth",
            trained_on="MVTec AD and ColonDB (the README's table says 'MVTec AD & ClinicDB' for this id)",
            tests=("visa",),
            url=f"{_MIRROR}/pretrained_mvtec_colondb.pth",
            sha256="be51a42c052bd4cf060e54f503a1f5d0b2a3b899bc8dc2e243042f18b215427e",
            manual=f"{_DRIVE}/1xVXANHGuJBRx59rqPRir7iqbkYzq45W0",
        ),
        ReleaseFile(
            "pretrained_visa_clinicdb.pth",
            trained_on="VisA and ClinicDB (the README's table says 'VisA & ColonDB' for this id)",
            tests=("mvtec",),
            url=f"{_MIRROR}/pretrained_visa_clinicdb.pth",
            sha256="3deabbbaf1e412cfdfcb42923a500b986f4b9ee96ccbc7a735d89dbc87df44c8",
            manual=f"{_DRIVE}/1QGmPB0ByPZQ7FucvGODMSz7r5Ke5wx9W",
        ),
        ReleaseFile(
            "pretrained_all.pth",
            trained_on="all 14 datasets of the paper (MVTec AD and VisA included: not a zero-shot test)",
            url=f"{_MIRROR}/pretrained_all.pth",
            sha256="33e8d3db1cb4aab030866b8b70a46e10aa27ebf2c23b5463cb07f2574addd98c",
            manual=f"{_DRIVE}/1Cgkfx3GAaSYnXPLolx-P7pFqYV0IVzZF",
        ),
    )

    def entries(self, method: Any) -> list[Entry]:
        model, found = method.model, []
        for ours, theirs in (("visual_static", "visual_prompter"), ("text_static", "text_prompter")):
            stacked = getattr(model, ours, None)
            if isinstance(stacked, nn.Parameter):
                found += [
                    Entry(f"clip_model.{theirs}.static_prompts.{index}", f"model.{ours}", index=index)
                    for index in range(stacked.shape[0])
                ]
        linears = [("patch_projections", "patch_token_layer"), ("cls_projection", "cls_token_layer")]
        linears += [
            ("visual_generator", "dynamic_visual_prompt_generator"),
            ("text_generator", "dynamic_text_prompt_generator"),
        ]
        for ours, theirs in linears:
            module = getattr(model, ours, None)
            if module is None:
                continue
            targets = (
                [f"model.{ours}.{index}" for index in range(len(module))]
                if isinstance(module, nn.ModuleList)
                else [f"model.{ours}"]
            )
            found += [
                Entry(f"clip_model.{theirs}.head.{index}.{name}", f"{target}.{name}")
                for index, target in enumerate(targets)
                for name in ("weight", "bias")
            ]
        return found
