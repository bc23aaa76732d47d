"""backbone.precision=auto is resolved once per job and written into the job's config."""

from omegaconf import OmegaConf

from anomaly_vlm.backbones import precision
from anomaly_vlm.tasks.construction import resolve_job_precision


def job(value, accelerator="auto"):
    return OmegaConf.create(
        {"backbone": {"model": "m", "precision": value}, "trainer": {"accelerator": accelerator}}
    )


def test_auto_becomes_the_concrete_precision_in_the_job_config(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    cfg = job("auto", "cpu")
    requested, reason = resolve_job_precision(cfg, "winclip")
    assert requested == "auto" and cfg.backbone.precision == "amp-bf16"
    assert "native bf16" in reason


def test_auto_on_a_gpu_takes_the_methods_release_precision():
    cfg = job("auto", "gpu")
    resolve_job_precision(cfg, "promptad")
    assert cfg.backbone.precision == "fp16"
    cfg = job("auto", "gpu")
    resolve_job_precision(cfg, "aprillab")
    assert cfg.backbone.precision == "amp-fp16"


def test_a_concrete_precision_and_a_backbone_without_one_are_left_alone():
    cfg = job("fp32", "cpu")
    assert resolve_job_precision(cfg, "winclip") == ("fp32", "configured")
    assert cfg.backbone.precision == "fp32"
    cfg = OmegaConf.create({"backbone": {"model": "dinov2"}, "trainer": {}})
    assert resolve_job_precision(cfg, "anomalydino") == (None, "")


def test_an_unknown_precision_is_a_config_error_before_weights_load():
    import pytest

    from anomaly_vlm.tasks.config_checks import check_backbone_precision
    from anomaly_vlm.tasks.errors import ConfigError

    with pytest.raises(ConfigError, match="backbone.precision=half is not one of auto, fp32, amp-bf16"):
        check_backbone_precision(job("half"))
    check_backbone_precision(job("amp-bf16"))
