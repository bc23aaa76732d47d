"""Tiny copies of each benchmark's release layout, with the quirks of the real files.

Each ``make_*`` writes a few images and masks exactly where and how the release puts them (BMP and JPEG
images, instance-valued or grey-valued masks, all-black masks for normal images, several masks per image,
JSON split files) and returns the dataset root. Images are 32x24 random noise; a defect is a bright square
whose mask marks the same pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 32, 24


def image(path: Path, seed: int, defect: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 120, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    if defect:
        pixels[4:12, 4:12] = 250
    Image.fromarray(pixels).save(path)
    return path


def mask(path: Path, value: int = 255, empty: bool = False, region=(slice(4, 12), slice(4, 12))) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((HEIGHT, WIDTH), np.uint8)
    if not empty:
        array[region] = value
    Image.fromarray(array).save(path)
    return path


def make_mvtec_like(root: Path, categories, normal="good", image_ext=".png", mask_name="{stem}_mask.png"):
    """MVTec-like layout: train/<normal>, test/<normal>, test/<defect>, ground_truth/<defect>."""
    for c, category in enumerate(categories):
        base = root / category
        for i in range(3):
            image(base / "train" / normal / f"{i:03d}{image_ext}", seed=100 * c + i)
        for i in range(2):
            image(base / "test" / normal / f"{i:03d}{image_ext}", seed=100 * c + 10 + i)
        for i in range(2):
            stem = f"{i:03d}"
            image(base / "test" / "crack" / f"{stem}{image_ext}", seed=100 * c + 20 + i, defect=True)
            mask(base / "ground_truth" / "crack" / mask_name.format(stem=stem), value=255)
    return root


def make_mpdd(root: Path) -> Path:
    return make_mvtec_like(root, ["connector", "tubes"])


def make_btad(root: Path) -> Path:
    """BTAD: ok/ko folders; 01 and 03 are BMP images, 02 PNG; 03's masks are BMP."""
    for c, category in enumerate(("01", "02", "03")):
        ext = ".png" if category == "02" else ".bmp"
        base = root / category
        for i in range(3):
            image(base / "train" / "ok" / f"{i:04d}{ext}", seed=10 * c + i)
        image(base / "test" / "ok" / f"0100{ext}", seed=10 * c + 5)
        for i in range(2):
            image(base / "test" / "ko" / f"{i:04d}{ext}", seed=10 * c + 7 + i, defect=True)
            mask(base / "ground_truth" / "ko" / f"{i:04d}{'.bmp' if category == '03' else '.png'}")
    return root


def make_dtd_synthetic(root: Path) -> Path:
    """DTD-Synthetic: MVTec-like; masks named unlike the images (paired by sorted position)."""
    make_mvtec_like(root, ["Woven_001", "Blotchy_099"], image_ext=".png", mask_name="gt_{stem}.png")
    return root


def make_ksdd_release(root: Path) -> Path:
    """KolektorSDD release: kosNN/Part<k>.jpg with Part<k>_label.bmp, all-black for normal images."""
    for folder in ("kos01", "kos02"):
        for k in range(3):
            defect = folder == "kos01" and k == 1 or folder == "kos02" and k == 2
            image(root / folder / f"Part{k}.jpg", seed=k + (10 if folder == "kos02" else 0), defect=defect)
            mask(root / folder / f"Part{k}_label.bmp", empty=not defect)
    return root


def make_ksdd2(root: Path) -> Path:
    """KolektorSDD2: {train,test}/<id>.png + <id>_GT.png (all-black for normal images)."""
    counter = 10000
    for split, (normal, defective) in (("train", (3, 1)), ("test", (3, 2))):
        for i in range(normal + defective):
            defect = i >= normal
            image(root / split / f"{counter}.png", seed=counter, defect=defect)
            mask(root / split / f"{counter}_GT.png", empty=not defect)
            counter += 1
    return root


def make_dagm(root: Path) -> Path:
    """DAGM 2007: Class<k>/{Train,Test}/<id>.PNG, Label/<id>_label.PNG for defective images only."""
    for c, category in enumerate(("Class1", "Class2")):
        for split in ("Train", "Test"):
            for i in range(4):
                defect = i >= 2
                image(
                    root / category / split / f"{i:04d}.PNG",
                    seed=50 * c + i + (20 if split == "Test" else 0),
                    defect=defect,
                )
                if defect:
                    mask(root / category / split / "Label" / f"{i:04d}_label.PNG")
            (root / category / split / "Label" / "Labels.txt").write_text("1\n")
    return root


def make_mvtec_ad2(root: Path) -> Path:
    """MVTec AD 2: train/good, validation/good, test_public/{good,bad,ground_truth/bad}, test_private."""
    for c, category in enumerate(("can", "vial")):
        base = root / category
        for i in range(3):
            image(base / "train" / "good" / f"{i:03d}_regular.png", seed=30 * c + i)
            image(base / "validation" / "good" / f"{i:03d}_regular.png", seed=30 * c + 5 + i)
        for i in range(2):
            image(base / "test_public" / "good" / f"{i:03d}_regular.png", seed=30 * c + 10 + i)
            image(base / "test_public" / "bad" / f"{i:03d}_regular.png", seed=30 * c + 12 + i, defect=True)
            mask(base / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png")
            image(base / "test_private" / f"{i:03d}.png", seed=30 * c + 20 + i)
    return root


def make_mvtec_loco(root: Path) -> Path:
    """MVTec LOCO: test/{good,logical_anomalies,structural_anomalies}; several grey-valued masks per image."""
    for c, category in enumerate(("juice_bottle", "pushpins")):
        base = root / category
        for i in range(3):
            image(base / "train" / "good" / f"{i:03d}.png", seed=40 * c + i)
            image(base / "validation" / "good" / f"{i:03d}.png", seed=40 * c + 3 + i)
            image(base / "test" / "good" / f"{i:03d}.png", seed=40 * c + 6 + i)
        for kind, value in (("logical_anomalies", 254), ("structural_anomalies", 255)):
            for i in range(2):
                image(base / "test" / kind / f"{i:03d}.png", seed=40 * c + 20 + i, defect=True)
                gt = base / "ground_truth" / kind / f"{i:03d}"
                mask(gt / "000.png", value=value, region=(slice(4, 8), slice(4, 12)))
                mask(gt / "001.png", value=value, region=(slice(8, 12), slice(4, 12)))
    return root


def make_realiad(root: Path, json_dir: str = "realiad_jsons_sv") -> Path:
    """Real-IAD: realiad_1024/<object>/{OK,NG}/..., JSON split files with meta.prefix, five views."""
    for c, category in enumerate(("audiojack", "toy")):
        prefix = f"{category}/"
        train, test = [], []
        for s, sample in enumerate(("S0001", "S0002")):
            for view in (1, 2):
                rel = f"OK/{sample}/{category}_{s:04d}_OK_C{view}_20231021.jpg"
                image(root / "realiad_1024" / prefix / rel, seed=60 * c + 10 * s + view)
                entry = {"category": category, "anomaly_class": "OK", "image_path": rel, "mask_path": None}
                (train if s == 0 else test).append(entry)
        for view in (1, 2):
            rel = f"NG/AK/S0100/{category}_0100_NG_C{view}_20231021.jpg"
            image(root / "realiad_1024" / prefix / rel, seed=60 * c + 40 + view, defect=True)
            mask_rel = rel.replace(".jpg", ".png")
            mask(root / "realiad_1024" / prefix / mask_rel)
            test.append(
                {"category": category, "anomaly_class": "AK", "image_path": rel, "mask_path": mask_rel}
            )
        # A defective part seen from a view that does not show the defect: listed with a null mask.
        rel = f"NG/AK/S0100/{category}_0100_NG_C3_20231021.jpg"
        image(root / "realiad_1024" / prefix / rel, seed=60 * c + 50)
        test.append({"category": category, "anomaly_class": "AK", "image_path": rel, "mask_path": None})
        payload = {"meta": {"prefix": prefix, "normal_class": "OK"}, "train": train, "test": test}
        folder = root / json_dir
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{category}.json").write_text(json.dumps(payload))
    return root


def make_meta_json(root: Path, split_keys=("train", "test")) -> Path:
    """A dataset in MVTec layout plus the meta.json AnomalyCLIP's generate_dataset_json/mvtec.py writes."""
    make_mvtec_like(root, ["bottle", "wood"])
    info = {split_keys[0]: {}, split_keys[1]: {}}
    for category in ("bottle", "wood"):
        for phase, key in zip(("train", "test"), split_keys, strict=True):
            entries = []
            for specie in sorted(p.name for p in (root / category / phase).iterdir()):
                abnormal = specie != "good"
                for name in sorted(p.name for p in (root / category / phase / specie).iterdir()):
                    stem = Path(name).stem
                    entries.append(
                        {
                            "img_path": f"{category}/{phase}/{specie}/{name}",
                            "mask_path": f"{category}/ground_truth/{specie}/{stem}_mask.png"
                            if abnormal
                            else "",
                            "cls_name": category,
                            "specie_name": specie,
                            "anomaly": 1 if abnormal else 0,
                        }
                    )
            info[key][category] = entries
    (root / "meta.json").write_text(json.dumps(info, indent=4) + "\n")
    return root
