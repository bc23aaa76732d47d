"""`method=musc` through the entry points, offline: the transductive protocol end to end."""

from __future__ import annotations

import json
import shutil

import pytest


def test_musc_synthetic_run_is_marked_transductive(run_entry_point, tmp_path):
    run_dir = tmp_path / "run"
    run_entry_point(
        "train.py",
        "experiment=musc_synthetic",
        "logger=none",
        "data.categories=[brick,disc]",
        # 64 px (4x4 patches of the tiny CLIP): the assertions read the protocol, categories and metric ranges
        "backbone.image_size=64",
        # six test images per category (three good, one per defect type): a set MuSc scores mutually;
        # the eight train images are the held-out normal set of the thresholds, scored together too
        "+data.num_test_good=3",
        "+data.num_test_per_defect=1",
        f"hydra.run.dir={run_dir}",
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete"
    assert (results["method"], results["backbone"], results["shots"]) == ("musc", "tiny", 0)
    assert results["transductive"] is True
    assert set(results["metrics"]["per_category"]) == {"brick", "disc"}
    for metrics in results["metrics"]["per_category"].values():
        assert 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["pixel_auroc"] <= 1.0
    # Nothing trains, and RsCIN uses the release's default list for a non-VisA dataset.
    assert results["config"]["method"]["rscin_k"] is None
    assert results["config"]["method"]["dataset"].endswith("SyntheticAD")


def test_musc_on_a_single_image_explains_that_it_needs_a_set(run_entry_point, tmp_path, synthetic_source):
    image = next(iter(synthetic_source.samples("brick", "test"))).path
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(image, folder / "only.png")
    result = run_entry_point(
        "evaluate.py",
        "mode=predict",
        "method=musc",
        "backbone=tiny",
        f"data.path={folder}",
        f"hydra.run.dir={tmp_path / 'predict'}",
        expect_ok=False,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: MuSc is transductive")
    assert "at least 5 images" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_musc_sweeps_beside_inductive_methods(run_entry_point, tmp_path):
    root = tmp_path / "outputs"
    run_entry_point(
        "train.py",
        "-m",
        "experiment=demo",
        "method=clip,winclip,musc",
        "logger=none",
        "data.categories=[brick,disc]",
        f"paths.output_root={root}",
        timeout=900,
    )
    runs = {
        json.loads(path.read_text())["method"]: json.loads(path.read_text())
        for path in root.rglob("results.json")
    }
    assert set(runs) == {"clip", "winclip", "musc"}
    assert runs["musc"]["transductive"] is True
    assert not runs["clip"].get("transductive") and not runs["winclip"].get("transductive")
