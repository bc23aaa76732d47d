"""AA-CLIP's own save format (``train.py`` of Mwxinnn/AA-CLIP) as ``ckpt_path``.

The authors release no trained weights, but their training writes two files into its ``--save_path``:

* ``text_adapter.pth`` = ``{"epoch", "text_adapter", "text_optimizer"}``: ``text_adapter.<i>.fc.0.weight``
  for the ``text_adapt_until`` adapters (our ``text_adapters.<i>.fc.weight``) and, last, the text head
  (our ``text_head.weight``);
* ``image_adapter.pth`` / ``image_adapter_<epoch>.pth`` = ``{"epoch", "image_adapter", "image_optimizer"}``:
  ``layer_adapters.<i>.fc.0.weight``, ``seg_proj.<i>.fc.weight`` and ``det_proj.fc.weight`` (the
  released ``--relu`` off; a ``--relu`` file has ``fc.0`` there and is not read).

``ckpt_path`` names the image file; the text file is read from the same folder, where the official test
script looks for it. The epochs and optimiser states are read past.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomaly_vlm.methods.official_weights import Entry, OfficialWeights, OfficialWeightsError
from anomaly_vlm.untrusted import load_torch_file

_OPTIMIZER = "an optimiser state of the official training, not a trained value"
TEXT_FILE = "text_adapter.pth"


class AAClipRelease(OfficialWeights):
    release = "AA-CLIP (Mwxinnn/AA-CLIP)"
    keys = (
        "epoch",
        "image_adapter.layer_adapters.#.fc.0.weight",
        "image_adapter.seg_proj.#.fc.weight",
        "image_adapter.det_proj.fc.weight",
        "image_optimizer.state.#.step",
        "image_optimizer.state.#.exp_avg",
        "image_optimizer.state.#.exp_avg_sq",
        "image_optimizer.param_groups",
        "text_adapter.#.fc.0.weight",
    )
    ignored = {
        "epoch": "the epoch the official training saved the file after",
        "image_optimizer.state.#.step": _OPTIMIZER,
        "image_optimizer.state.#.exp_avg": _OPTIMIZER,
        "image_optimizer.state.#.exp_avg_sq": _OPTIMIZER,
        "image_optimizer.param_groups": _OPTIMIZER,
    }
    files = ()  # the authors release no trained weights

    def entries(self, method: Any) -> list[Entry]:
        model = method.model
        found = [
            Entry(
                f"image_adapter.layer_adapters.{index}.fc.0.weight", f"model.image_adapters.{index}.fc.weight"
            )
            for index in range(len(model.image_adapters))
        ]
        found += [
            Entry(f"image_adapter.seg_proj.{index}.fc.weight", f"model.seg_projections.{index}.weight")
            for index in range(len(model.seg_projections))
        ]
        found.append(Entry("image_adapter.det_proj.fc.weight", "model.det_projection.weight"))
        found += [
            Entry(f"text_adapter.{index}.fc.0.weight", f"model.text_adapters.{index}.fc.weight")
            for index in range(len(model.text_adapters))
        ]
        found.append(Entry(f"text_adapter.{len(model.text_adapters)}.fc.0.weight", "model.text_head.weight"))
        return found


def with_text_file(payload: dict[str, Any], path: str) -> dict[str, Any]:
    """The image file's payload with the text adapters of ``text_adapter.pth`` beside it added.

    Raises:
        OfficialWeightsError: the image file has no ``image_adapter`` entry, or its folder no text file.
    """
    if "image_adapter" not in payload or "text_adapter" in payload:
        return payload
    text_path = Path(path).with_name(TEXT_FILE)
    if not text_path.is_file():
        raise OfficialWeightsError(
            f"ckpt_path={path} is an AA-CLIP image-adapter file; its text adapters are read from "
            f"{TEXT_FILE} in the same folder (where the official training saves them), which is missing"
        )
    text = load_torch_file(str(text_path), what=f"{TEXT_FILE} beside ckpt_path={path}")
    if not isinstance(text, dict) or "text_adapter" not in text:
        raise OfficialWeightsError(
            f"{text_path} holds no 'text_adapter' entry (not an AA-CLIP text-adapter file)"
        )
    return {**payload, "text_adapter": text["text_adapter"]}
