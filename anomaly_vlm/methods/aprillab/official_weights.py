"""APRIL-GAN's released weights (``exps/pretrained/{mvtec,visa}_pretrained.pth``) as ``ckpt_path``.

The official ``train.py`` saves ``{'trainable_linearlayer': LinearLayer.state_dict()}``: one
``Linear(width -> embed_dim)`` per stage in ``fc.<i>``, in the order of ``--features_list``, which are our
projections in the order of ``stages``.
"""

from __future__ import annotations

from typing import Any

from anomaly_vlm.methods.official_weights import Entry, OfficialWeights, ReleaseFile

#: The commit of ByChelsea/VAND-APRIL-GAN whose ``exps/pretrained`` files are pinned (git blob ids).
_COMMIT = "f13b8a634e04f9fde8fa03db125b25af5695d8e1"
_RAW = f"https://raw.githubusercontent.com/ByChelsea/VAND-APRIL-GAN/{_COMMIT}/exps/pretrained"


class AprilGANRelease(OfficialWeights):
    release = "APRIL-GAN (ByChelsea/VAND-APRIL-GAN)"
    keys = ("trainable_linearlayer.fc.#.weight", "trainable_linearlayer.fc.#.bias")
    files = (
        ReleaseFile(
            "mvtec_pretrained.pth",
            trained_on="MVTec AD test split",
            tests=("visa",),
            url=f"{_RAW}/mvtec_pretrained.pth",
            git_blob="a057cec6c2ba5996baa0160a51e155908156813f",
        ),
        ReleaseFile(
            "visa_pretrained.pth",
            trained_on="VisA test split",
            tests=("mvtec",),
            url=f"{_RAW}/visa_pretrained.pth",
            git_blob="86d6848c543f8393663d35c0333498ffb5ce9b68",
        ),
    )

    def entries(self, method: Any) -> list[Entry]:
        return [
            Entry(f"trainable_linearlayer.fc.{index}.{name}", f"model.projections.{index}.{name}")
            for index in range(len(method.model.projections))
            for name in ("weight", "bias")
        ]
