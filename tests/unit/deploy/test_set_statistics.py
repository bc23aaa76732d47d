"""A saved detector scores an image the same alone or in any batch: set statistics are frozen into it."""

import csv
import json

import pytest
import torch
from omegaconf import OmegaConf

import anomaly_vlm
from anomaly_vlm.decisions import normal_fpr_threshold
from anomaly_vlm.deploy import DetectorError
from anomaly_vlm.deploy.detector import save_detector
from anomaly_vlm.deploy.state import SET_STATISTICS_PREFIX
from anomaly_vlm.methods.contract import NotExportableError, Prediction, export_module
from anomaly_vlm.tasks.instantiate import build
from anomaly_vlm.tasks.runner import run

from ..tasks.test_inputs import config, make_dataset

TWO = "prompts=two_prompt"
#: 64 px on the tiny CLIP: the assertions compare scores of the same images and read sizes from the detector.
PX64 = "backbone.image_size=64"


@pytest.fixture(scope="module")
def aprillab_run(tmp_path_factory):
    """A few-shot APRIL-GAN test run that saved its detectors (and its predictions)."""
    root = tmp_path_factory.mktemp("aprillab")
    data = make_dataset(root / "data")
    out = root / "run"
    overrides = ["data=folder", f"data.root={data}", "method=aprillab", "shots=1", TWO, PX64]
    run(config(out, *overrides, "save_predictions=true", "save_detector=true"), fit=False)
    return out, data


def _run_scores(out, category: str) -> dict[str, float]:
    with (out / "predictions" / "scores.csv").open() as handle:
        return {
            row["path"]: float(row["score"]) for row in csv.DictReader(handle) if row["category"] == category
        }


def test_an_image_scores_the_same_alone_in_a_pair_and_among_13(aprillab_run):
    out, _ = aprillab_run
    expected = _run_scores(out, "widget")
    paths = sorted(expected)
    detector = anomaly_vlm.Detector.load(out / "detectors" / "widget")
    assert detector.set_dependence is None
    images = detector.load_images(paths)
    others = torch.rand(
        13 - len(paths),
        3,
        detector.image_size,
        detector.image_size,
        generator=torch.Generator().manual_seed(0),
    )
    batch_of_13 = detector.predict(torch.cat([images, others])).image_score
    for index, path in enumerate(paths):
        alone = detector.predict([path]).image_score[0]
        beside = detector.predict(images[[index, (index + 1) % len(paths)]]).image_score[0]
        torch.testing.assert_close(alone, beside, atol=1e-6, rtol=0)
        torch.testing.assert_close(alone, batch_of_13[index], atol=1e-6, rtol=0)
        assert float(alone) == pytest.approx(expected[path], abs=1e-6)  # the run's own score


def test_the_saved_statistics_are_the_test_sets_and_the_threshold_is_on_their_scale(aprillab_run):
    out, data = aprillab_run
    folder = out / "detectors" / "widget"
    meta = json.loads((folder / "detector.json").read_text())
    assert meta["set_statistics"]["names"] == ["map_max_max", "map_max_min"]
    assert meta["set_statistics"]["scored_images"] == 4 and meta["set_dependence"] is None
    # The threshold the run decided with, and that the detector holds, is the normal_fpr threshold of the
    # held-out normals as the detector scores them (each on its own), not as a set of their own.
    references = set(json.loads((out / "references.json").read_text())["references"]["widget"])
    good = sorted((data / "widget" / "train" / "good").glob("*.png"))
    heldout = [str(path) for path in good if str(path) not in references]
    assert len(heldout) == 2
    detector = anomaly_vlm.Detector.load(folder)
    scores = torch.cat([detector.predict([path]).image_score for path in heldout])
    chosen = json.loads((out / "results.json").read_text())["decisions"]["thresholds"]["widget"]
    assert meta["thresholds"] == chosen
    assert chosen["image"] == pytest.approx(
        normal_fpr_threshold(scores.numpy(), chosen["target_fpr"]), abs=1e-6
    )


def test_the_frozen_step_is_the_run_step_on_the_run_set_and_per_image_elsewhere(tmp_path):
    cfg = config(tmp_path / "run", "method=aprillab", "shots=1", TWO, PX64)
    method = build(cfg.method, backbone=build(cfg.backbone), prompts=build(cfg.prompts), shots=1)
    size = method.backbone.image_size
    generator = torch.Generator().manual_seed(0)
    method.setup_category("widget", torch.rand(1, 3, size, size, generator=generator))
    raw = method.predict_images(torch.rand(6, 3, size, size, generator=generator))
    run_scores = method.postprocess_set(raw)  # min-max over the scored set, as the official code
    statistics = method.set_statistics(raw)
    method.freeze_set_statistics(statistics)
    assert method.set_dependence is None
    torch.testing.assert_close(
        method.postprocess_set(raw).image_score, run_scores.image_score, atol=0, rtol=0
    )
    for index in range(6):
        alone = Prediction(raw.image_score[index : index + 1], raw.anomaly_map[index : index + 1])
        alone.extras = {name: value[index : index + 1] for name, value in raw.extras.items()}
        assert torch.equal(method.postprocess_set(alone).image_score[0], run_scores.image_score[index])
    method.freeze_set_statistics(None)
    assert "not frozen" in method.set_dependence or "no frozen" in method.set_dependence


def _musc(tmp_path):
    cfg = config(tmp_path / "run", "method=musc", PX64)
    method = build(cfg.method, backbone=build(cfg.backbone), prompts=build(cfg.prompts), shots=0)
    method.setup_category("widget", None)
    return method, OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def test_musc_is_saved_and_served_only_when_set_dependence_is_accepted(tmp_path):
    method, run_config = _musc(tmp_path)
    size = method.backbone.image_size
    scored = method.predict_images(torch.rand(5, 3, size, size, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(
        DetectorError, match="method musc: it is transductive.*detector_set_dependence=accept"
    ):
        save_detector(tmp_path / "refused", method, "widget", run_config, None, "musc", scored=scored)
    assert not (tmp_path / "refused").exists()
    folder = save_detector(
        tmp_path / "musc", method, "widget", run_config, None, "musc", scored=scored, set_dependence="accept"
    )
    assert json.loads((folder / "detector.json").read_text())["set_dependence"].startswith(
        "it is transductive"
    )
    with pytest.raises(DetectorError, match="set_dependence='accept'"):
        anomaly_vlm.Detector.load(folder)
    detector = anomaly_vlm.Detector.load(folder, set_dependence="accept")
    assert detector.set_dependence.startswith("it is transductive")
    with pytest.raises(DetectorError, match="set_dependence='sometimes' must be one of"):
        anomaly_vlm.Detector.load(folder, set_dependence="sometimes")


def test_a_musc_run_with_save_detector_stops_before_weights_load(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was built before the setting was checked")

    monkeypatch.setattr("anomaly_vlm.backbones.FrozenCLIP.__init__", refuse)
    data = make_dataset(tmp_path / "data")
    cfg = config(tmp_path / "run", "data=folder", f"data.root={data}", "method=musc", "save_detector=true")
    with pytest.raises(DetectorError, match=r"save_detector=true: method musc: it is transductive"):
        run(cfg, fit=False)
    bad = config(
        tmp_path / "run",
        "data=folder",
        f"data.root={data}",
        "save_detector=true",
        "detector_set_dependence=yes",
    )
    with pytest.raises(
        DetectorError, match=r"detector_set_dependence='yes' must be one of \['refuse', 'accept'\]"
    ):
        run(bad, fit=False)


def test_a_few_shot_aprillab_detector_without_frozen_statistics_is_refused(aprillab_run, tmp_path):
    # As saved before set statistics were frozen: format 2, the min-max over whatever batch is given.
    import shutil

    from anomaly_vlm.deploy.state import read_category_state, write_category_state
    from anomaly_vlm.untrusted import sha256_file

    out, _ = aprillab_run
    folder = tmp_path / "old"
    shutil.copytree(out / "detectors" / "widget", folder)
    state = {k: v for k, v in read_category_state(folder).items() if not k.startswith(SET_STATISTICS_PREFIX)}
    write_category_state(state, folder)
    meta = json.loads((folder / "detector.json").read_text())
    for key in ("set_statistics", "set_dependence"):
        meta.pop(key)
    meta["format"] = 2
    meta["files"] = {name: sha256_file(folder / name) for name in meta["files"]}
    (folder / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(
        DetectorError, match="normalised over the images scored together.*no frozen set statistics"
    ):
        anomaly_vlm.Detector.load(folder)
    detector = anomaly_vlm.Detector.load(folder, set_dependence="accept")
    with pytest.raises(
        NotExportableError, match="aprillab cannot be exported: its image score is normalised"
    ):
        export_module(detector.method.model, "aprillab")
