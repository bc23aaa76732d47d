"""Bad input fails fast with one clear message; datasets and prediction run end to end (tiny CLIP)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from composed import compose_config
from PIL import Image

from anomaly_vlm.data import DataError
from anomaly_vlm.data.sampling import ShotsError
from anomaly_vlm.prompts import PromptSet
from anomaly_vlm.tasks import evaluate
from anomaly_vlm.tasks.construction import with_class_names
from anomaly_vlm.tasks.errors import CheckpointError, FinishedRunError, MissingValueError, report_user_errors
from anomaly_vlm.tasks.runner import run

RNG = np.random.default_rng(0)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _noise() -> np.ndarray:
    return RNG.integers(0, 255, (24, 24, 3), np.uint8)


def make_dataset(root: Path, categories=("widget", "gadget"), masked=("widget",)) -> Path:
    for category in categories:
        for i in range(3):
            _save(root / category / "train" / "good" / f"{i}.png", _noise())
        for i in range(2):
            _save(root / category / "test" / "good" / f"{i}.png", _noise())
            _save(root / category / "test" / "dent" / f"{i}.png", _noise())
            if category in masked:
                mask = np.zeros((24, 24), np.uint8)
                mask[4 + i : 12, 4:12] = 255
                _save(root / category / "ground_truth" / "dent" / f"{i}_mask.png", mask)
    return root


def config(output_dir: Path, *overrides: str, name: str = "train"):
    base = [
        "backbone=tiny",
        "logger=none",
        "trainer=cpu",
        "datamodule.num_workers=0",
        f"paths.output_dir={output_dir}",
        f"paths.cache_dir={output_dir.parent / 'cache'}",
        "+trainer.enable_progress_bar=false",
    ]
    # compose_config: the paths and values are value overrides, so configs with the same group choices share
    # one composition.
    return compose_config(name, [*base, *overrides])


@pytest.fixture
def folder_data(tmp_path):
    return make_dataset(tmp_path / "data")


@pytest.fixture
def no_weights(monkeypatch):
    """Any attempt to build the backbone fails: proves a check ran before weights load."""

    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was built before the input was checked")

    monkeypatch.setattr("anomaly_vlm.backbones.FrozenCLIP.__init__", refuse)


def test_folder_run_reports_pixel_metrics_only_where_masks_exist(tmp_path, folder_data, monkeypatch):
    seen: list[str] = []
    original = PromptSet.sentences

    def spy(self, category):
        seen.append(self.class_name(category))
        return original(self, category)

    monkeypatch.setattr(PromptSet, "sentences", spy)
    out = tmp_path / "run"
    cfg = config(out, "data=folder", f"data.root={folder_data}", "data.class_names={gadget: tiny gadget}")
    run(cfg, fit=False)
    results = json.loads((out / "results.json").read_text())
    per_category = results["metrics"]["per_category"]
    assert per_category["widget"]["pixel_auroc"] is not None
    assert per_category["gadget"]["pixel_auroc"] is None  # no masks: pixel metrics absent
    assert per_category["gadget"]["image_auroc"] is not None
    assert "tiny gadget" in seen and "widget" in seen  # data.class_names reached the prompts


def test_shots_are_checked_before_weights_load(tmp_path, folder_data, no_weights):
    # winclip takes references: the only problem of this config is the data's (clip would be refused for
    # shots=5 first, a config problem).
    with pytest.raises(ShotsError, match="shots=5 but category 'gadget' has only 3 normal training images"):
        run(
            config(tmp_path / "a", "data=folder", f"data.root={folder_data}", "method=winclip", "shots=5"),
            fit=False,
        )
    with pytest.raises(ShotsError, match="shots=-1 is negative"):
        run(config(tmp_path / "b", "data=folder", f"data.root={folder_data}", "shots=-1"), fit=False)


def test_data_mistakes_fail_before_weights_load(tmp_path, folder_data, no_weights):
    with pytest.raises(MissingValueError, match="data.root must be set"):
        run(config(tmp_path / "a", "data=folder"), fit=False)
    valid = r"\['gizmo'\] not in dataset 'folder'. Valid categories: \['gadget', 'widget'\]"
    with pytest.raises(DataError, match=valid):
        cfg = config(tmp_path / "b", "data=folder", f"data.root={folder_data}", "data.categories=[gizmo]")
        run(cfg, fit=False)
    with pytest.raises(DataError, match="MVTec AD category folder missing: .*bottle"):
        run(config(tmp_path / "c", "data=mvtec", f"data.root={folder_data}"), fit=False)
    broken = folder_data / "widget" / "test" / "dent" / "1.png"
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(DataError, match=f"cannot read image {broken}"):
        run(config(tmp_path / "d", "data=folder", f"data.root={folder_data}"), fit=False)


def test_a_lowered_image_limit_refuses_the_dataset_before_weights_load(tmp_path, folder_data, no_weights):
    refused = r"is 24x24 = 576 pixels, over the limit of 500 \(data\.max_image_pixels\)"
    with pytest.raises(DataError, match=refused):
        run(
            config(tmp_path / "a", "data=folder", f"data.root={folder_data}", "data.max_image_pixels=500"),
            fit=False,
        )


def test_checkpoint_mistakes(tmp_path, folder_data):
    data = ["data=folder", f"data.root={folder_data}"]
    with pytest.raises(CheckpointError, match="ckpt_path does not exist: .*nope.ckpt"):
        run(config(tmp_path / "a", *data, f"ckpt_path={tmp_path / 'nope.ckpt'}"), fit=False)
    foreign = tmp_path / "foreign.ckpt"
    metadata = {"method": "winclip", "backbone_model": "ViT-B-16-plus-240"}
    torch.save({"anomaly_vlm": metadata, "state_dict": {}}, foreign)
    mismatch = "method: checkpoint has 'winclip', this run has 'clip'"
    with pytest.raises(CheckpointError, match=mismatch) as error:
        run(config(tmp_path / "b", *data, f"ckpt_path={foreign}"), fit=False)
    assert "backbone_model: checkpoint has 'ViT-B-16-plus-240'" in str(error.value)


def test_finished_result_is_never_overwritten(tmp_path, folder_data, no_weights, capsys):
    out = tmp_path / "done"
    out.mkdir()
    finished = json.dumps({"status": "complete", "metrics": {"mean": {"image_auroc": 0.9}}})
    (out / "results.json").write_text(finished)
    cfg = config(out, "data=folder", f"data.root={folder_data}")
    with pytest.raises(FinishedRunError, match="already holds a finished result; refusing to overwrite"):
        run(cfg, fit=False)
    # Through the task entry: one line on stderr, exit status 1, the file untouched.
    with pytest.raises(SystemExit) as exit_info:
        report_user_errors(lambda c: run(c, fit=False))(cfg)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out / 'results.json'} already holds")
    assert (out / "results.json").read_text() == finished


def test_predict_scores_unlabelled_images_with_heatmaps(tmp_path, folder_data):
    images = folder_data / "widget" / "test"
    out = tmp_path / "pred"
    cfg = config(out, "mode=predict", f"data.path={images}", "data.category=widget", name="evaluate")
    evaluate(cfg)
    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {row["category"] for row in rows} == {"widget"}
    assert all(0.0 <= float(row["score"]) <= 1.0 for row in rows)
    overlay = Image.open(out / "heatmaps" / "dent__0.png.png")
    assert overlay.size[0] == 3 * 128  # image | blended | map at the model input size
    raw = np.asarray(Image.open(out / "heatmaps" / "dent__0.png_map.tiff"))
    assert raw.shape == (128, 128) and raw.dtype == np.float32
    before = (out / "scores.csv").read_text()
    with pytest.raises(SystemExit):
        evaluate(cfg)  # a second run into the same folder refuses
    assert (out / "scores.csv").read_text() == before


def test_predict_on_one_image_says_one_image(tmp_path, folder_data, capsys):
    images = tmp_path / "one"
    images.mkdir()
    (images / "0.png").write_bytes((folder_data / "widget" / "test" / "dent" / "0.png").read_bytes())
    out = tmp_path / "pred"
    cfg = config(out, "mode=predict", f"data.path={images}", "data.category=widget", name="evaluate")
    evaluate(cfg)
    assert "scored 1 image: " in capsys.readouterr().out


def test_predict_few_shot_needs_reference_dir(tmp_path, folder_data, no_weights, capsys):
    cfg = config(
        tmp_path / "p",
        "mode=predict",
        f"data.path={folder_data}",
        "method=winclip",
        "shots=1",
        name="evaluate",
    )
    with pytest.raises(SystemExit):
        evaluate(cfg)
    assert "set data.reference_dir" in capsys.readouterr().err


def test_with_class_names_merges_and_data_wins():
    prompts = PromptSet("p", ["{}"], ["bad {}"], ["a {}."], class_name_overrides={"a": "x", "b": "y"})
    merged = with_class_names(prompts, {"b": "z"})
    assert merged.class_name("a") == "x" and merged.class_name("b") == "z"
    assert merged.fingerprint() != prompts.fingerprint()  # the text cache sees the new names
    assert with_class_names(prompts, {}) is prompts


def test_few_shot_on_a_zero_shot_method_is_rejected_before_building():
    from omegaconf import OmegaConf

    from anomaly_vlm.tasks.config_checks import check_shots_supported

    node = OmegaConf.create({"_target_": "anomaly_vlm.methods.clip.CLIPBaselineModule"})
    with pytest.raises(ShotsError, match="method 'clip' is zero-shot only; shots=2"):
        check_shots_supported(node, 2, "clip")
    check_shots_supported(node, 0, "clip")
