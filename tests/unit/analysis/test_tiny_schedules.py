"""The tiny analyses' training schedules are ones the methods accept (a sweep that composes can still refuse
its schedule when training starts, after its backbone is built)."""

from __future__ import annotations

from types import SimpleNamespace

from composed import compose_config
from hydra.core.override_parser.overrides_parser import OverridesParser

from anomaly_vlm.analysis.analyses import ANALYSES
from anomaly_vlm.methods.aaclip.lightning_module import AAClipModule


def _first_jobs(scale: str):
    """The overrides of the first job of every sweep of every analysis (each sweep once)."""
    parser = OverridesParser.create()
    seen = set()
    for analysis in ANALYSES.values():
        for sweep in analysis.sweeps(scale):
            if sweep.part in seen:
                continue
            seen.add(sweep.part)
            overrides = []
            for override in parser.parse_overrides(list(sweep.overrides)):
                if override.is_sweep_override():
                    value = next(iter(override.sweep_string_iterator()))
                    overrides.append(f"{override.get_key_element()}={value}")
                else:
                    overrides.append(override.input_line)
            yield sweep.part, overrides


def test_every_tiny_aaclip_sweep_leaves_aaclip_an_image_adapter_epoch():
    checked = []
    for part, overrides in _first_jobs("tiny"):
        # Only the sweeps that name AA-CLIP are composed (composing every sweep takes a minute).
        if not any(item in ("method=aaclip", "experiment=aaclip_synthetic") for item in overrides):
            continue
        cfg = compose_config("train", overrides)
        assert cfg.method._target_.rpartition(".")[2] == AAClipModule.__name__, part
        # AA-CLIP's own check at the start of training, on the sweep's schedule (no model is built).
        module = SimpleNamespace(
            model=SimpleNamespace(set_text=lambda text: None),
            _frozen_texts={},
            _pending=[],
            trainer=SimpleNamespace(max_epochs=cfg.trainer.max_epochs),
            text_epochs=int(cfg.method.text_epochs),
        )
        AAClipModule.on_train_start(module)
        checked.append(part)
    # Every analysis over the trained methods includes AA-CLIP (layers, shots, efficiency, prompts, ...).
    assert len(checked) >= 3, checked
