"""The wrapper AnomalyCLIP and FAPrompt share: optimiser settings, the train/test text switch, the step."""

from __future__ import annotations

import pytest
import torch

from anomaly_vlm.backbones import FrozenCLIP
from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.anomalyclip import AnomalyCLIPModule
from anomaly_vlm.methods.faprompt import FAPromptModule
from anomaly_vlm.methods.prompt_training import PromptTrainingMethod
from anomaly_vlm.prompts import LearnablePromptSet
from anomaly_vlm.prompts.faprompt import FAPromptSet

SIZE = 128


def _anomalyclip(backbone: FrozenCLIP, **kwargs) -> AnomalyCLIPModule:
    prompts = LearnablePromptSet("anomalyclip_learned", deep_prompt_depth=4)
    return AnomalyCLIPModule(backbone, prompts, layers=[8], **kwargs)


def _faprompt(backbone: FrozenCLIP, **kwargs) -> FAPromptModule:
    return FAPromptModule(backbone, FAPromptSet("faprompt", deep_prompt_depth=4), **kwargs)


#: name -> (builder, the model attribute holding the scoring text, the name the errors give)
BUILDERS = {
    "anomalyclip": (_anomalyclip, "scoring_text", "AnomalyCLIP"),
    "faprompt": (_faprompt, "static_text", "FAPrompt"),
}


def _batch(mask: bool) -> AnomalyBatch:
    generator = torch.Generator().manual_seed(0)
    return AnomalyBatch(
        image=torch.rand(2, 3, SIZE, SIZE, generator=generator),
        label=torch.tensor([0, 1]),
        category=["widget", "widget"],
        path=["a.png", "b.png"],
        defect_type=["good", "scratch"],
        mask=(torch.rand(2, SIZE, SIZE, generator=generator) > 0.7).float() if mask else None,
    )


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_adam_settings_are_checked_and_used(backbone: FrozenCLIP, name: str) -> None:
    build, _, _ = BUILDERS[name]
    with pytest.raises(ValueError, match=r"method.betas=\[0.5, 0.9, 0.99\] must hold two values"):
        build(backbone, betas=[0.5, 0.9, 0.99])
    module = build(backbone, lr=0.02, betas=[0.4, 0.99])
    assert isinstance(module, PromptTrainingMethod)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["lr"] == 0.02 and optimizer.defaults["betas"] == (0.4, 0.99)
    optimised = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    trainable = {id(parameter) for parameter in module.parameters() if parameter.requires_grad}
    assert optimised == trainable and trainable


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_text_is_set_for_testing_and_dropped_for_training(backbone: FrozenCLIP, name: str) -> None:
    build, attribute, _ = BUILDERS[name]
    module = build(backbone)
    assert getattr(module.model, attribute) is None
    module.setup_category("widget", None)
    text = getattr(module.model, attribute)
    assert isinstance(text, torch.Tensor) and torch.isfinite(text).all()
    module.setup_category("other", None)  # class-agnostic: the same text for another category
    assert torch.equal(getattr(module.model, attribute), text)
    module.on_train_start()
    assert getattr(module.model, attribute) is None


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_training_step_logs_each_loss_and_needs_masks(backbone: FrozenCLIP, name: str) -> None:
    build, _, display = BUILDERS[name]
    module = build(backbone)
    missing = rf"^{display} trains on pixel masks, but the auxiliary training batch has none"
    with pytest.raises(ValueError, match=missing):
        module.training_step(_batch(mask=False), 0)
    logged: dict = {}
    module.log_dict = lambda values, **kwargs: logged.update(values, **kwargs)  # no Trainer attached
    loss = module.training_step(_batch(mask=True), 0)
    assert loss.requires_grad and torch.isfinite(loss)
    assert float(logged["train/loss"]) == float(loss) and not logged["train/loss"].requires_grad
    assert logged["prog_bar"] is True and logged["batch_size"] == 2
