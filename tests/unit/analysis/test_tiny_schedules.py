"""The tiny analyses' training schedules are ones the methods accept (a sweep that composes can still refuse
its schedule when training starts, after its backbone is built)."""

from __future__ import annotations

from types import SimpleNamespace

from composed import compose_config, first_job
from hydra.core.override_parser.overrides_parser import OverridesParser

from anomaly_vlm.analysis.analyses import ANALYSES
from anomaly_vlm.methods.aaclip.lightning_module import AAClipModule


def _first_jobs(scale: str):
    """The overrides of the first job of every sweep of every analysis (each sweep once)."""
    seen = set()
    for analysis in ANALYSES.values():
        for sweep in analysis.sweeps(scale):
            if sweep.part not in seen:
                seen.add(sweep.part)
                yield sweep.part, first_job(sweep.overrides)


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


def test_every_tiny_reference_draw_exists_in_the_synthetic_categories():
    """Each few-shot job of the tiny sweeps draws its references from a synthetic category's normal
    training images with the job's own draw rule (AnomalyDINO's experiments take disjoint sorted slices)."""
    from anomaly_vlm.data.batch import Sample
    from anomaly_vlm.data.sampling import draw_references

    parser = OverridesParser.create()
    checked = 0
    for analysis in ANALYSES.values():
        for sweep in analysis.sweeps("tiny"):
            parsed = parser.parse_overrides(list(sweep.overrides))
            values = {
                o.get_key_element(): list(o.sweep_string_iterator()) for o in parsed if o.is_sweep_override()
            }
            shots = [int(v) for v in values.get("shots", [])] or [
                int(o.value()) for o in parsed if o.get_key_element() == "shots"
            ]
            if not any(shots):
                continue
            fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
            cfg = compose_config("train", fixed)
            normal = [Sample(f"{index:03d}.png", "disc", 0) for index in range(cfg.data.get("num_train", 8))]
            seeds = [int(v) for v in values.get("reference_seed", [cfg.reference_seed])]
            for count in shots:
                for seed in seeds:
                    draw_references(normal, count, seed, "disc", cfg.datamodule.reference_draw)
                    checked += 1
    assert checked >= 20
