"""ckpt_path=<the official training's image_adapter_<epoch>.pth>, with text_adapter.pth beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.methods.aaclip import AAClipModule
from anomaly_vlm.methods.official_weights import flatten, release_of
from anomaly_vlm.prompts import PromptSet

CONF = Path(__file__).resolve().parents[4] / "conf"


@pytest.fixture(scope="module")
def backbone() -> FrozenCLIP:
    return FrozenCLIP("anomaly-vlm-tiny", None, image_size=128, seed=0)


def _module(backbone: FrozenCLIP) -> AAClipModule:
    values = OmegaConf.to_container(OmegaConf.load(CONF / "prompts" / "aaclip.yaml"))
    values.pop("_target_")
    return AAClipModule(backbone, PromptSet(**values))


def _official_files(folder: Path, width: int = 64, embed: int = 64) -> tuple[dict, dict]:
    """The two files as the official train.py saves them (tiny widths), with Adam states."""
    torch.manual_seed(1)
    image = {f"layer_adapters.{i}.fc.0.weight": torch.randn(width, width) for i in range(2)}
    image.update({f"seg_proj.{i}.fc.weight": torch.randn(embed, width) for i in range(4)})
    image["det_proj.fc.weight"] = torch.randn(embed, width)
    text = {"0.fc.0.weight": torch.randn(64, 64), "1.fc.0.weight": torch.randn(embed, 64)}
    parameters = [torch.nn.Parameter(value.clone()) for value in image.values()]
    optimizer = torch.optim.Adam(parameters, betas=(0.5, 0.999))
    sum(parameter.sum() for parameter in parameters).backward()
    optimizer.step()
    torch.save(
        {"epoch": 15, "image_adapter": image, "image_optimizer": optimizer.state_dict()},
        folder / "image_adapter_15.pth",
    )
    torch.save({"epoch": 5, "text_adapter": text, "text_optimizer": {}}, folder / "text_adapter.pth")
    return image, text


def test_the_official_save_format_fills_every_parameter(backbone: FrozenCLIP, tmp_path: Path) -> None:
    image, text = _official_files(tmp_path)
    module = _module(backbone)
    module.load_trainable_checkpoint(str(tmp_path / "image_adapter_15.pth"))
    model = module.model
    torch.testing.assert_close(model.image_adapters[1].fc.weight, image["layer_adapters.1.fc.0.weight"])
    torch.testing.assert_close(model.seg_projections[3].weight, image["seg_proj.3.fc.weight"])
    torch.testing.assert_close(model.det_projection.weight, image["det_proj.fc.weight"])
    torch.testing.assert_close(model.text_adapters[0].fc.weight, text["0.fc.0.weight"])
    torch.testing.assert_close(model.text_head.weight, text["1.fc.0.weight"])
    assert module.checkpoint_origin == "official"


def test_the_text_file_must_lie_beside_the_image_file(backbone: FrozenCLIP, tmp_path: Path) -> None:
    _official_files(tmp_path)
    (tmp_path / "text_adapter.pth").unlink()
    with pytest.raises(
        ValueError, match=r"its text adapters are read from text_adapter.pth in the same folder"
    ):
        _module(backbone).load_trainable_checkpoint(str(tmp_path / "image_adapter_15.pth"))


def test_the_format_is_recognised_as_aaclip_only(tmp_path: Path) -> None:
    image, text = _official_files(tmp_path)
    payload = torch.load(tmp_path / "image_adapter_15.pth")
    payload["text_adapter"] = text
    assert [name for name, _ in release_of(flatten(payload))] == ["aaclip"]
