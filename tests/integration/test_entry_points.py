"""The entry points on the demo configuration: results.json, predictions, overlays, multirun."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from anomaly_vlm.metrics import METRIC_NAMES, Evaluator

DEMO = ("experiment=demo", "logger=none", "data.categories=[disc,nut]")
# Two train and five test images per category (two good, one per defect type): every step of a job runs,
# on the smallest set that has each defect kind.
SMALL = ("+data.num_train=2", "+data.num_test_good=2", "+data.num_test_per_defect=1")
# For the jobs whose assertions do not read map sizes: a quarter of the pixels.
PX64 = ("backbone.image_size=64",)


@pytest.fixture(scope="module")
def demo_run(run_entry_point, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo_run")
    # train_data too: a sweep over methods shares it, and this training-free method must not claim it
    # (test_training_free_method_ignores_train_data).
    result = run_entry_point(
        "train.py",
        *DEMO,
        *SMALL,
        "train_data=synthetic",
        f"hydra.run.dir={run_dir}",
        "save_predictions=true",
        "num_overlays=2",
    )
    return run_dir, result


def test_results_json_schema(demo_run):
    run_dir, result = demo_run
    payload = json.loads((run_dir / "results.json").read_text())
    assert payload["status"] == "complete"
    assert (payload["method"], payload["backbone"], payload["dataset"], payload["prompts"]) == (
        "clip",
        "tiny",
        "synthetic",
        "two_prompt",
    )
    assert payload["shots"] == 0 and payload["seed"] == 0
    assert set(payload["metrics"]["per_category"]) == {"disc", "nut"}
    for metrics in [payload["metrics"]["mean"], *payload["metrics"]["per_category"].values()]:
        assert set(metrics) == set(METRIC_NAMES)
        assert all(0.0 <= value <= 1.0 for value in metrics.values())
    efficiency = payload["efficiency"]
    assert efficiency["ms_per_image"] > 0 and efficiency["images_per_s"] > 0
    assert efficiency["total_parameters"] > efficiency["trainable_parameters"] == 0
    assert efficiency["train_seconds"] is None  # nothing was trained in this job
    assert efficiency["peak_cpu_memory_mb"] > 0
    assert payload["versions"]["torch"] and payload["versions"]["open_clip_torch"]
    assert "commit" in payload["git"]
    assert payload["config"]["backbone"]["model"] == "anomaly-vlm-tiny"
    # The console ends with the per-category table.
    assert "mean" in result.stdout and "I-AUROC" in result.stdout


def test_saved_predictions_reproduce_every_metric(demo_run):
    run_dir, _ = demo_run
    payload = json.loads((run_dir / "results.json").read_text())
    with (run_dir / "predictions" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    evaluator = Evaluator()
    for category in ("disc", "nut"):
        maps = np.load(run_dir / "predictions" / category / "anomaly_maps.npz")
        masks = np.load(run_dir / "predictions" / category / "masks.npz")
        category_rows = [row for row in rows if row["category"] == category]
        keys = ["/".join(row["path"].split("/")[-3:]) for row in category_rows]
        assert sorted(keys) == sorted(maps.files) == sorted(masks.files)
        assert maps[keys[0]].shape == (128, 128)
        evaluator.update(
            category,
            np.array([float(row["score"]) for row in category_rows]),
            np.array([int(row["label"]) for row in category_rows]),
            np.stack([maps[key] for key in keys]),
            np.stack([masks[key] for key in keys]),
        )
        recomputed = evaluator.compute_category(category)
        for name in METRIC_NAMES:
            assert recomputed[name] == pytest.approx(
                payload["metrics"]["per_category"][category][name], abs=1e-6
            )


def test_overlays_are_written(demo_run):
    run_dir, _ = demo_run
    for category in ("disc", "nut"):
        pngs = list((run_dir / "overlays" / category).glob("*.png"))
        assert len(pngs) == 2
        # <defect>_<image>.png: two defect kinds of the category, not the first defect folder twice
        assert len({png.name.split("_")[0] for png in pngs}) == 2


# Slow: the same refusal (tasks/outputs.py, shared by both entry points) is
# test_entry_point_errors.py::test_finished_run_is_refused_with_one_clean_line's, with its full line.
@pytest.mark.slow
def test_finished_result_is_never_overwritten(demo_run, run_entry_point):
    run_dir, _ = demo_run
    before = (run_dir / "results.json").read_text()
    refused = run_entry_point("train.py", *DEMO, *SMALL, f"hydra.run.dir={run_dir}", expect_ok=False)
    assert refused.returncode != 0
    assert "already holds a finished result" in refused.stderr + refused.stdout
    assert (run_dir / "results.json").read_text() == before


# Slow: evaluate.py's task name is also checked on test_meta_json_through_evaluate's default-suite run.
@pytest.mark.slow
def test_evaluate_entry_point_tests_only(run_entry_point, tmp_path):
    run_entry_point(
        "evaluate.py", *DEMO, *SMALL, *PX64, "data.categories=[gravel]", f"hydra.run.dir={tmp_path}"
    )
    payload = json.loads((tmp_path / "results.json").read_text())
    assert list(payload["metrics"]["per_category"]) == ["gravel"]
    assert payload["config"]["task_name"] == "evaluate"


def test_multirun_two_seeds_two_folders(run_entry_point, tmp_path):
    run_entry_point(
        "train.py",
        "-m",
        "seed=0,1",
        *DEMO,
        *SMALL,
        *PX64,
        "data.categories=[brick]",
        f"hydra.sweep.dir={tmp_path}",
    )
    results = sorted(tmp_path.rglob("results.json"))
    assert len(results) == 2
    assert results[0].parent != results[1].parent
    seeds = sorted(json.loads(path.read_text())["seed"] for path in results)
    assert seeds == [0, 1]
    # different random tiny CLIPs: the pixel metrics too (five test images give few image-AUROC values)
    means = [json.loads(path.read_text())["metrics"]["mean"] for path in results]
    assert means[0]["pixel_auroc"] != means[1]["pixel_auroc"] and means[0] != means[1]


def test_training_free_method_ignores_train_data(demo_run):
    """A sweep over methods shares train_data; a method that does not train must not claim it."""
    run_dir, _ = demo_run
    payload = json.loads((run_dir / "results.json").read_text())
    assert payload["config"]["train_data"] is not None  # the job was given train data
    assert payload["train_dataset"] is None
