"""The benchmark datasets through the entry points (tiny CLIP): meta.json, named datasets, the suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anomaly_vlm.reporting.tables import make_tables
from anomaly_vlm.tasks.preflight import main as preflight_main

# 64 px: the assertions read which datasets, categories and metrics a job gives, not the map size.
TINY = ("backbone=tiny", "backbone.image_size=64", "logger=none", "datamodule.num_workers=0")


@pytest.fixture(scope="module")
def data_root(layouts, tmp_path_factory) -> Path:
    """A DATA_ROOT holding tiny copies of some benchmarks under their config names."""
    root = tmp_path_factory.mktemp("benchmarks")
    layouts.make_meta_json(root / "converted")
    layouts.make_btad(root / "btad")
    layouts.make_mvtec_loco(root / "mvtec_loco")
    layouts.make_mpdd(root / "mpdd")
    return root


def _results(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.rglob("results.json"))]


def test_meta_json_through_evaluate(run_entry_point, data_root, tmp_path):
    run_entry_point(
        "evaluate.py",
        "method=clip",
        *TINY,
        "data=meta_json",
        f"data.root={data_root / 'converted'}",
        "data.name=mvtec_converted",
        f"hydra.run.dir={tmp_path}",
    )
    (payload,) = _results(tmp_path)
    assert payload["dataset"] == "mvtec_converted"  # data.name keeps converted datasets apart in tables
    assert payload["config"]["task_name"] == "evaluate"
    assert set(payload["metrics"]["per_category"]) == {"bottle", "wood"}
    assert payload["metrics"]["mean"]["pixel_auroc"] is not None


def test_btad_and_loco_through_evaluate(run_entry_point, data_root, tmp_path):
    result = run_entry_point(
        "evaluate.py",
        "-m",
        "method=clip",
        *TINY,
        "data=btad,mvtec_loco_structural",
        f"paths.data_dir={data_root}",
        f"paths.output_root={tmp_path}",
    )
    jobs = {job["dataset"]: job for job in _results(tmp_path)}
    assert set(jobs) == {"btad", "mvtec_loco_structural"}
    assert set(jobs["btad"]["metrics"]["per_category"]) == {"01", "02", "03"}
    loco = jobs["mvtec_loco_structural"]["metrics"]["per_category"]
    assert set(loco) == {"juice_bottle", "pushpins"}
    assert all(metrics["pixel_aupro"] is not None for metrics in loco.values())
    # one process ran both jobs: the second reused the backbone the first built
    assert (result.stdout + result.stderr).count("reusing the one built by an earlier job") == 1


def test_missing_meta_json_is_one_error_line(run_entry_point, tmp_path):
    result = run_entry_point(
        "evaluate.py", "method=clip", *TINY, "data=meta_json", f"data.root={tmp_path}", expect_ok=False
    )
    assert result.returncode == 1
    assert f"error: meta.json not found: {tmp_path / 'meta.json'}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_zeroshot_suite_trains_once_and_tables_group_per_dataset(run_entry_point, data_root, tmp_path):
    """The suite with a trained method: any train_data/data pair, one training run, a table per dataset."""
    result = run_entry_point(
        "train.py",
        "-m",
        "experiment=aprillab_zeroshot_suite",
        *TINY,
        "train_data=meta_json",
        f"train_data.root={data_root / 'converted'}",
        "data=btad,mvtec_loco_logical",
        f"paths.data_dir={data_root}",
        "trainer.max_epochs=1",
        "datamodule.train_mosaic_probability=0",
        f"paths.output_root={tmp_path / 'out'}",
        "sweep_name=suite",
    )
    jobs = _results(tmp_path / "out")
    assert sorted(job["dataset"] for job in jobs) == ["btad", "mvtec_loco_logical"]
    assert {job["train_dataset"] for job in jobs} == {"meta_json"}
    assert "identical training already done by another job" in result.stdout + result.stderr
    written = make_tables(
        [tmp_path / "out" / "train" / "multiruns" / "suite"], tmp_path / "reports", plots=False
    )
    names = {path.name for path in written}
    assert {"btad_summary.md", "mvtec_loco_logical_summary.md"} <= names


def test_preflight_checks_every_dataset_of_a_suite(data_root, capsys):
    # The tiny backbone has 8 vision and 4 text blocks: the suite's published layers=[24] and prompt depth 9
    # would be refused by the config check.
    common = ["experiment=anomalyclip_zeroshot_suite", "backbone=tiny", "method.layers=[8]"]
    common += ["prompts.deep_prompt_depth=4"]
    common += [f"paths.data_dir={data_root}"]
    common += ["train_data=meta_json", f"train_data.root={data_root / 'converted'}"]
    assert preflight_main([*common, "data=btad,mpdd,mvtec_loco"]) == 0
    out = capsys.readouterr().out
    for name in ("btad with 3", "mpdd with 2", "mvtec_loco with 2"):
        assert name in out
    # The suite's own list: VisA (its first dataset) is absent here, so nothing may start.
    assert preflight_main(common) == 2
    assert str(data_root / "visa") in capsys.readouterr().err
