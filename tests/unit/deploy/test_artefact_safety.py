"""Opening a detector, checkpoint or weight file someone sent never runs code hidden in it.

Each test builds the malicious artefact, opens it the way a user would, and asserts two things: the
documented error, and that the payload's marker file does not exist afterwards.
"""

import json
import os
import shutil

import pytest
import torch

import anomaly_vlm
from anomaly_vlm.deploy import DetectorError
from anomaly_vlm.deploy.convert import convert_detector
from anomaly_vlm.deploy.convert import main as convert_main
from anomaly_vlm.deploy.detector import CONFIG_FILE, DETECTOR_FILE, DETECTOR_FORMAT
from anomaly_vlm.deploy.state import (
    LEGACY_STATE_FILE,
    STATE_INDEX_FILE,
    STATE_TENSORS_FILE,
    read_category_state,
)
from anomaly_vlm.tasks.errors import CheckpointError, report_user_errors
from anomaly_vlm.tasks.runner import run
from anomaly_vlm.untrusted import sha256_file

from ..tasks.test_inputs import config, make_dataset


class Payload:
    """Unpickling this runs ``touch <marker>``: what a hostile file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(run folder, a saved detector folder, the data) of a tiny zero-shot run with save_detector=true."""
    root = tmp_path_factory.mktemp("saved")
    data = make_dataset(root / "data")
    out = root / "run"
    run(config(out, "data=folder", f"data.root={data}", "save_detector=true"), fit=False)
    return out, out / "detectors" / "widget", data


@pytest.fixture
def detector(saved, tmp_path):
    """A private copy of the saved detector, free to tamper with."""
    copy = tmp_path / "detector"
    shutil.copytree(saved[1], copy)
    return copy


def _reseal(folder):
    """Recompute the recorded checksums, as an attacker who crafted the whole folder would."""
    meta = json.loads((folder / DETECTOR_FILE).read_text())
    meta["files"] = {name: sha256_file(folder / name) for name in meta["files"]}
    (folder / DETECTOR_FILE).write_text(json.dumps(meta))


def _images(size=128):
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_saved_detector_holds_no_pickle_and_records_checksums(detector):
    files = sorted(path.name for path in detector.iterdir())
    assert files == sorted([CONFIG_FILE, DETECTOR_FILE, STATE_INDEX_FILE, STATE_TENSORS_FILE])
    meta = json.loads((detector / DETECTOR_FILE).read_text())
    assert meta["format"] == DETECTOR_FORMAT
    assert set(meta["files"]) == {CONFIG_FILE, STATE_INDEX_FILE, STATE_TENSORS_FILE}
    assert all(meta["files"][name] == sha256_file(detector / name) for name in meta["files"])


def test_a_pickle_in_place_of_the_state_is_refused_and_never_run(detector, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"evil": Payload(marker)}, detector / STATE_TENSORS_FILE)
    _reseal(detector)
    with pytest.raises(DetectorError, match="not a readable safetensors file"):
        anomaly_vlm.Detector.load(detector)
    # A state.pt dropped into a format-2 folder is never opened.
    torch.save({"evil": Payload(marker)}, detector / LEGACY_STATE_FILE)
    with pytest.raises(DetectorError):
        anomaly_vlm.Detector.load(detector)
    assert not marker.exists()


def test_an_old_pickled_detector_needs_an_explicit_opt_in(detector, tmp_path):
    marker = tmp_path / "ran"
    meta = json.loads((detector / DETECTOR_FILE).read_text())
    meta["format"] = 1
    del meta["files"]
    (detector / DETECTOR_FILE).write_text(json.dumps(meta))
    torch.save({"evil": Payload(marker)}, detector / LEGACY_STATE_FILE)
    with pytest.raises(DetectorError, match="deploy.convert detector=") as error:
        anomaly_vlm.Detector.load(detector)
    assert len(str(error.value).splitlines()) == 1 and "trust_pickle=True" in str(error.value)
    # Conversion reads only data: the payload is named and refused, not run.
    with pytest.raises(DetectorError, match="holds posix.system, which is not data"):
        convert_detector(detector)
    assert convert_main([f"detector={detector}"]) == 1
    assert not marker.exists()
    # The documented unsafe opt-in does run it: that is what trust_pickle means.
    with pytest.raises(Exception):  # noqa: B017 - the payload's return value is not a state dict
        anomaly_vlm.Detector.load(detector, trust_pickle=True)
    assert marker.exists()


def test_an_old_genuine_detector_converts_to_the_same_numbers(detector):
    state = read_category_state(detector)
    meta = json.loads((detector / DETECTOR_FILE).read_text())
    meta["format"] = 1
    del meta["files"]
    (detector / DETECTOR_FILE).write_text(json.dumps(meta))
    (detector / STATE_TENSORS_FILE).unlink()
    (detector / STATE_INDEX_FILE).unlink()
    torch.save(state, detector / LEGACY_STATE_FILE)
    trusted = anomaly_vlm.Detector.load(detector, trust_pickle=True).predict(_images())
    assert convert_detector(detector) is True
    assert not (detector / LEGACY_STATE_FILE).exists()
    converted = anomaly_vlm.Detector.load(detector).predict(_images())
    assert torch.equal(converted.image_score, trusted.image_score)
    assert torch.equal(converted.anomaly_map, trusted.anomaly_map)
    assert convert_detector(detector) is False  # already without pickle


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_tampered_state_file_is_named_before_it_is_read(detector, damage):
    path = detector / STATE_TENSORS_FILE
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-1] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    with pytest.raises(DetectorError, match=f"{STATE_TENSORS_FILE} does not match its recorded SHA-256"):
        anomaly_vlm.Detector.load(detector)


def test_a_config_that_would_call_anything_else_is_refused(detector, tmp_path):
    marker = tmp_path / "ran"
    text = (detector / CONFIG_FILE).read_text()
    hostile = text.replace(
        "_target_: anomaly_vlm.methods.clip.CLIPBaselineModule",
        f"_target_: os.system\n  _args_: ['touch {marker}']",
    )
    assert hostile != text
    (detector / CONFIG_FILE).write_text(hostile)
    _reseal(detector)
    with pytest.raises(
        DetectorError, match="method._target_ is 'os.system'; only anomaly_vlm.methods classes"
    ):
        anomaly_vlm.Detector.load(detector)
    assert not marker.exists()


def test_a_config_with_yaml_aliases_is_refused(detector):
    text = (detector / CONFIG_FILE).read_text()
    (detector / CONFIG_FILE).write_text(text + "bomb: &a [1, 2]\nbombs: [*a, *a]\n")
    _reseal(detector)
    with pytest.raises(DetectorError, match="YAML alias"):
        anomaly_vlm.Detector.load(detector)


def test_a_huge_or_deeply_nested_detector_json_is_refused(detector):
    meta_file = detector / DETECTOR_FILE
    meta_file.write_text("[" * 1000 + "]" * 1000)
    with pytest.raises(DetectorError, match="nests 1000 levels deep"):
        anomaly_vlm.Detector.load(detector)
    with meta_file.open("wb") as handle:
        handle.truncate(3 * 1024**3)  # sparse: 3 GB claimed, nothing written or read
    with pytest.raises(DetectorError, match=r"detector.json .* is 3221.2 MB, over the 4 MB limit"):
        anomaly_vlm.Detector.load(detector)


def test_a_checkpoint_carrying_code_is_refused_with_one_line(saved, tmp_path, capsys):
    marker = tmp_path / "ran"
    checkpoint = tmp_path / "evil.ckpt"
    torch.save({"anomaly_vlm": {"method": "clip"}, "state_dict": {}, "evil": Payload(marker)}, checkpoint)
    cfg = config(tmp_path / "run", "data=folder", f"data.root={saved[2]}", f"ckpt_path={checkpoint}")
    with pytest.raises(
        CheckpointError, match=f"ckpt_path={checkpoint} holds posix.system, which is not data"
    ):
        run(cfg, fit=False)
    with pytest.raises(SystemExit):
        report_user_errors(lambda c: run(c, fit=False))(cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ckpt_path=") and "posix.system" in err[0]
    assert not marker.exists()


def test_backbone_weights_carrying_code_are_refused(tmp_path):
    from anomaly_vlm.backbones.weights import load_weights
    from anomaly_vlm.untrusted import UntrustedFileError

    marker = tmp_path / "ran"
    weights = tmp_path / "weights.pt"
    torch.save({"visual.proj": Payload(marker)}, weights)
    with pytest.raises(UntrustedFileError, match="holds posix.system, which is not data"):
        load_weights(torch.nn.Linear(2, 2), weights)
    assert not marker.exists()


def test_state_files_without_a_recorded_checksum_are_refused(detector):
    meta = json.loads((detector / DETECTOR_FILE).read_text())
    del meta["files"][STATE_TENSORS_FILE]  # a state that would be read unchecked
    (detector / DETECTOR_FILE).write_text(json.dumps(meta))
    with pytest.raises(DetectorError, match=f"records no checksum of {STATE_TENSORS_FILE}"):
        anomaly_vlm.Detector.load(detector)
