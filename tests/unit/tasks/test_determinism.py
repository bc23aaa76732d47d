"""Same config and seed => identical metrics (CPU, tiny CLIP, two synthetic categories)."""

import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from anomaly_vlm.tasks.runner import run

CONF = Path(__file__).resolve().parents[3] / "conf"


def _run(tmp_path: Path, name: str) -> dict:
    out = tmp_path / name
    overrides = [
        "experiment=demo",
        "logger=none",
        "trainer=cpu",
        "num_overlays=0",
        "datamodule.num_workers=0",
        "data.categories=[brick,disc]",
        "+data.num_train=2",
        "+data.num_test_good=2",
        "+data.num_test_per_defect=1",
        f"data.root={tmp_path / 'synthetic'}",
        f"paths.output_dir={out}",
        # Separate caches: the second run recomputes the text embeddings instead of reading them.
        f"paths.cache_dir={tmp_path / ('cache_' + name)}",
        "+trainer.enable_progress_bar=false",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run(cfg, fit=True)
    return json.loads((out / "results.json").read_text())["metrics"]


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    first, second = _run(tmp_path, "first"), _run(tmp_path, "second")
    assert set(first["per_category"]) == {"brick", "disc"}
    assert first == second
    assert first["mean"]["image_auroc"] is not None and first["mean"]["pixel_aupro"] is not None
