"""The benchmark readers on tiny copies of each release layout (tests/benchmark_layouts.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_vlm.data import DataError
from anomaly_vlm.data.checks import preflight
from anomaly_vlm.data.datamodule import AnomalyDataModule
from anomaly_vlm.data.dataset import AnomalyImageDataset
from anomaly_vlm.data.datasets import (
    BTAD,
    DAGM,
    MPDD,
    DTDSynthetic,
    KolektorSDD,
    KolektorSDD2,
    MetaJSON,
    MVTecAD2,
    MVTecLOCO,
    RealIAD,
)
from anomaly_vlm.data.image_io import load_mask


def _counts(source, category, split="test"):
    samples = source.samples(category, split)
    return sum(s.label == 0 for s in samples), sum(s.label == 1 for s in samples)


def _read_all(source, size=16):
    """Every test item of every category through the one torch dataset (images and masks decode)."""
    for category in source.categories:
        samples = source.samples(category, "test")
        dataset = AnomalyImageDataset(samples, size, with_masks=source.has_masks(category))
        for index, sample in enumerate(samples):
            item = dataset[index]
            assert item["image"].shape == (3, size, size)
            if sample.label == 1 and sample.mask_path:
                assert item["mask"].sum() > 0, sample.mask_path
            if sample.label == 0 and item["mask"] is not None:
                assert item["mask"].sum() == 0


def test_mpdd(layouts, tmp_path):
    source = MPDD(layouts.make_mpdd(tmp_path / "mpdd"))
    assert source.categories == ["connector", "tubes"]
    assert _counts(source, "tubes") == (2, 2)
    assert _counts(source, "tubes", "train") == (3, 0)
    assert source.class_names == {}
    _read_all(source)


def test_mpdd_unknown_category_lists_the_valid_ones(layouts, tmp_path):
    with pytest.raises(DataError, match=r"\['connector', 'tubes'\]"):
        _ = MPDD(layouts.make_mpdd(tmp_path / "mpdd"), categories=["bracket_black"]).categories


def test_btad_reads_ok_ko_folders_with_bmp_and_png(layouts, tmp_path):
    source = BTAD(layouts.make_btad(tmp_path / "btad"))
    assert source.categories == ["01", "02", "03"]
    for category in source.categories:
        assert _counts(source, category) == (1, 2)
        assert _counts(source, category, "train") == (3, 0)
    anomalous = [s for s in source.samples("03", "test") if s.label == 1]
    assert all(s.path.endswith(".bmp") and s.mask_path.endswith(".bmp") for s in anomalous)
    assert [Path(s.mask_path).name for s in source.samples("02", "test") if s.label] == [
        "0000.png",
        "0001.png",
    ]
    _read_all(source)


def test_btad_missing_mask_names_the_image(layouts, tmp_path):
    root = layouts.make_btad(tmp_path / "btad")
    (root / "01" / "ground_truth" / "ko" / "0001.png").unlink()
    with pytest.raises(DataError, match=r"0001\.bmp has no mask"):
        BTAD(root).samples("01", "test")


def test_dtd_synthetic_pairs_masks_by_position_when_names_differ(layouts, tmp_path):
    source = DTDSynthetic(layouts.make_dtd_synthetic(tmp_path / "dtd"))
    assert source.categories == ["Woven_001", "Blotchy_099"]  # the release order
    anomalous = [s for s in source.samples("Woven_001", "test") if s.label == 1]
    assert [Path(s.mask_path).name for s in anomalous] == ["gt_000.png", "gt_001.png"]
    _read_all(source)


def test_ksdd_release_labels_by_mask_content(layouts, tmp_path):
    source = KolektorSDD(layouts.make_ksdd_release(tmp_path / "ksdd"))
    assert source.layout == "release"
    assert source.categories == ["electrical_commutators"]
    assert _counts(source, "electrical_commutators") == (4, 2)
    assert source.class_names == {"electrical_commutators": "electrical commutators"}
    assert KolektorSDD(tmp_path / "ksdd", class_names={"electrical_commutators": "x"}).class_names == {
        "electrical_commutators": "x"
    }
    with pytest.raises(DataError, match="no training split"):
        source.samples("electrical_commutators", "train")
    _read_all(source)


def test_ksdd_prepared_layout_is_detected(layouts, tmp_path):
    root = layouts.make_mvtec_like(tmp_path / "sdd", ["electrical_commutators"])
    source = KolektorSDD(root)
    assert source.layout == "prepared"
    assert _counts(source, "electrical_commutators", "train") == (3, 0)


def test_ksdd_neither_layout(tmp_path):
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="neither the KolektorSDD release"):
        _ = KolektorSDD(tmp_path).categories


def test_ksdd2(layouts, tmp_path):
    source = KolektorSDD2(layouts.make_ksdd2(tmp_path / "ksdd2"))
    assert source.categories == ["ksdd2"]
    assert _counts(source, "ksdd2") == (3, 2)
    assert _counts(source, "ksdd2", "train") == (3, 0)  # defective training images are not references
    assert all(s.mask_path.endswith("_GT.png") for s in source.samples("ksdd2", "test") if s.label)
    _read_all(source)


def test_dagm_label_file_marks_the_defect(layouts, tmp_path):
    source = DAGM(layouts.make_dagm(tmp_path / "dagm"))
    assert source.categories == ["Class1", "Class2"]
    assert _counts(source, "Class2") == (2, 2)
    assert _counts(source, "Class2", "train") == (2, 0)
    assert all(s.mask_path.endswith("_label.PNG") for s in source.samples("Class1", "test") if s.label)
    _read_all(source)


def test_mvtec_ad2_public_test_split(layouts, tmp_path):
    source = MVTecAD2(layouts.make_mvtec_ad2(tmp_path / "ad2"))
    assert source.categories == ["can", "vial"]
    assert _counts(source, "can") == (2, 2)
    assert _counts(source, "can", "train") == (3, 0)
    _read_all(source)


def test_mvtec_ad2_private_split_is_refused(tmp_path):
    with pytest.raises(DataError, match="no public ground truth"):
        MVTecAD2(tmp_path, test_split="test_private")


def test_mvtec_loco_fuses_the_masks_of_an_image(layouts, tmp_path):
    root = layouts.make_mvtec_loco(tmp_path / "loco")
    source = MVTecLOCO(root)
    assert source.categories == ["juice_bottle", "pushpins"]
    assert _counts(source, "pushpins") == (3, 4)
    anomalous = next(s for s in source.samples("pushpins", "test") if s.label == 1)
    assert Path(anomalous.mask_path).is_dir()
    fused, size = load_mask(anomalous.mask_path, 24)
    assert size == (32, 24)
    one, _ = load_mask(str(Path(anomalous.mask_path) / "000.png"), 24)
    assert fused.sum() == 2 * one.sum() > 0  # the two regions, each half of the defect
    _read_all(source)


def test_mvtec_loco_logical_and_structural_subsets(layouts, tmp_path):
    root = layouts.make_mvtec_loco(tmp_path / "loco")
    logical = MVTecLOCO(root, anomaly_types="logical").samples("juice_bottle", "test")
    structural = MVTecLOCO(root, anomaly_types="structural").samples("juice_bottle", "test")
    assert {s.defect_type for s in logical} == {"good", "logical_anomalies"}
    assert {s.defect_type for s in structural} == {"good", "structural_anomalies"}
    assert len(logical) == len(structural) == 5
    with pytest.raises(DataError, match="anomaly_types"):
        MVTecLOCO(root, anomaly_types="both")


def test_mvtec_loco_preflight_checks_every_mask_of_a_folder(layouts, tmp_path):
    root = layouts.make_mvtec_loco(tmp_path / "loco")
    broken = root / "pushpins" / "ground_truth" / "structural_anomalies" / "001" / "001.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    datamodule = AnomalyDataModule(MVTecLOCO(root), image_size=16)
    with pytest.raises(DataError, match="001/001.png"):
        preflight(datamodule, datamodule.categories, {})


def test_realiad_single_view_split_files(layouts, tmp_path):
    source = RealIAD(layouts.make_realiad(tmp_path / "realiad"))
    assert source.categories == ["audiojack", "toy"]
    # Test: 2 OK + the defect-invisible view (null mask) are normal; 2 NG views with masks are anomalous.
    assert _counts(source, "toy") == (3, 2)
    assert _counts(source, "toy", "train") == (2, 0)
    assert {s.defect_type for s in source.samples("toy", "test") if s.label} == {"AK"}
    _read_all(source)


def test_realiad_view_filter_and_nested_json_folder(layouts, tmp_path):
    root = tmp_path / "realiad"
    layouts.make_realiad(root, json_dir="realiad_jsons/realiad_jsons")
    source = RealIAD(root, json_dir="realiad_jsons", view=2)
    samples = source.samples("audiojack", "test")
    assert samples and all("_C2_" in Path(s.path).name for s in samples)
    with pytest.raises(DataError, match="split folder not found"):
        _ = RealIAD(root).categories
    with pytest.raises(DataError, match="views 1..5"):
        RealIAD(root, view=7)


def test_realiad_bad_entry_is_named(layouts, tmp_path):
    root = layouts.make_realiad(tmp_path / "realiad")
    path = root / "realiad_jsons_sv" / "toy.json"
    payload = json.loads(path.read_text())
    del payload["test"][1]["mask_path"]
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match=r"toy\.json: test\[1\] must have the keys"):
        RealIAD(root).samples("toy", "test")


def test_meta_json_reads_the_official_format(layouts, tmp_path):
    root = layouts.make_meta_json(tmp_path / "mvtec_like")
    source = MetaJSON(root)
    assert source.categories == ["bottle", "wood"]
    assert _counts(source, "wood") == (2, 2)
    assert _counts(source, "wood", "train") == (3, 0)
    assert {s.defect_type for s in source.samples("wood", "test")} == {"good", "crack"}
    _read_all(source)


def test_meta_json_capitalised_split_keys(layouts, tmp_path):
    source = MetaJSON(layouts.make_meta_json(tmp_path / "dagm_like", split_keys=("Train", "Test")))
    assert _counts(source, "bottle") == (2, 2)


def test_meta_json_errors_name_file_and_entry(layouts, tmp_path):
    with pytest.raises(DataError, match="meta.json not found"):
        _ = MetaJSON(tmp_path / "nowhere").categories
    root = layouts.make_meta_json(tmp_path / "m")
    meta = root / "meta.json"
    payload = json.loads(meta.read_text())
    payload["test"]["wood"][3]["anomaly"] = 2
    meta.write_text(json.dumps(payload))
    with pytest.raises(DataError, match=r"test/wood\[3\]: anomaly must be 0 or 1"):
        MetaJSON(root).samples("wood", "test")
    payload["test"]["wood"][3]["anomaly"] = 1
    payload["test"]["wood"][3]["img_path"] = "wood/test/crack/404.png"
    meta.write_text(json.dumps(payload))
    with pytest.raises(DataError, match=r"test/wood\[3\]: image not found: .*404\.png"):
        MetaJSON(root).samples("wood", "test")
    payload["test"]["wood"][3]["img_path"] = "wood/test/crack/001.png"
    payload["test"]["wood"][3]["mask_path"] = "wood/ground_truth/crack/missing.png"
    meta.write_text(json.dumps(payload))
    with pytest.raises(DataError, match=r"test/wood\[3\]: mask not found: .*missing\.png"):
        MetaJSON(root).samples("wood", "test")
    del payload["test"]["wood"][0]["cls_name"]
    meta.write_text(json.dumps(payload))
    with pytest.raises(DataError, match=r"test/wood\[0\] must have the keys"):
        MetaJSON(root).samples("wood", "test")


def test_meta_json_classification_only_entries(layouts, tmp_path):
    """An empty mask path on an anomalous entry means no mask (AnomalyCLIP: classification only)."""
    root = layouts.make_meta_json(tmp_path / "m")
    meta = root / "meta.json"
    payload = json.loads(meta.read_text())
    for entry in payload["test"]["wood"]:
        entry["mask_path"] = "" if entry["anomaly"] else entry["mask_path"]
    payload["test"]["bottle"][1]["mask_path"] = ""  # only one of two anomalous bottle entries
    meta.write_text(json.dumps(payload))
    source = MetaJSON(root)
    assert source.has_masks("wood") is False
    with pytest.raises(DataError, match=r"test/bottle\[1\].*anomalous without a mask"):
        source.has_masks("bottle")
    with pytest.raises(DataError, match="anomalous entry without a mask file"):
        MetaJSON(root, require_masks=True).samples("wood", "test")


def test_instance_valued_masks_are_binarised(layouts, tmp_path):
    """Masks holding small instance ids (not 255) still mark their pixels."""
    root = layouts.make_mpdd(tmp_path / "mpdd")
    path = root / "tubes" / "ground_truth" / "crack" / "000_mask.png"
    array = np.zeros((24, 32), np.uint8)
    array[2:6, 2:6], array[10:14, 10:14] = 1, 2
    Image.fromarray(array).save(path)
    mask, _ = load_mask(str(path), 24)
    Image.fromarray((array > 0).astype(np.uint8) * 255).save(path)
    reference, _ = load_mask(str(path), 24)
    assert mask.sum() > 0 and bool((mask == reference).all())
