"""AnomalyDINO on non-square files, as the official code runs it: the aspect-preserving input gives a
non-square patch grid, the map is resized to the file's resolution and blurred there, the image score
comes from the raw grid; square inputs and the other methods' default path are unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_vlm.backbones import FrozenDINOv2
from anomaly_vlm.data import AnomalyDataModule, MVTecLayout
from anomaly_vlm.methods.anomalydino import AnomalyDINOModule
from anomaly_vlm.methods.anomalydino.torch_model import mean_top_percent
from anomaly_vlm.methods.base import AnomalyMethod
from anomaly_vlm.methods.contract import NotExportableError
from anomaly_vlm.methods.ops import gaussian_blur


@pytest.fixture(scope="module")
def backbone() -> FrozenDINOv2:
    return FrozenDINOv2("anomaly-vlm-tiny-dinov2", None, image_size=140, seed=0)


def _layout(root: Path, width: int = 150, height: int = 100) -> MVTecLayout:
    rng = np.random.default_rng(0)

    def picture(folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{name}.png")

    category = root / "widget"
    for name in ("000", "001"):
        picture(category / "train" / "good", name)
        picture(category / "test" / "good", name)
    picture(category / "test" / "crack", "000")
    mask = np.zeros((height, width), np.uint8)
    mask[20:50, 40:90] = 255
    (category / "ground_truth" / "crack").mkdir(parents=True)
    Image.fromarray(mask).save(category / "ground_truth" / "crack" / "000_mask.png")
    return MVTecLayout(root)


def _official_map(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The official ``dists2map``: cv2 INTER_LINEAR to the file's (W, H), then scipy's sigma-4 blur."""
    cv2 = pytest.importorskip("cv2")
    ndimage = pytest.importorskip("scipy.ndimage")
    resized = cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return ndimage.gaussian_filter(resized, sigma=4)


def test_non_square_files_give_a_non_square_grid_and_maps_at_the_files_resolution(backbone, tmp_path):
    source = _layout(tmp_path)
    data = AnomalyDataModule(
        source, 140, batch_size=8, geometry="shorter_side", crop_multiple=14, evaluation_resolution="file"
    )
    method = AnomalyDINOModule(
        backbone, None, shots=2, dataset="MVTecAD", geometry="shorter_side", crop_multiple=14
    )
    references = data.load_images(source.samples("widget", "train"), file_resolution=True)
    assert references.shape == (2, 3, 100, 150)
    method.setup_category("widget", references)  # not MVTec's table: rotation, no masking
    assert method.model.memory.shape == (2 * 8 * 150, 64)  # 8 copies of a 10x15 grid
    (batch,) = list(data.category_test_dataloader("widget"))
    assert batch.image.shape == (3, 3, 140, 210) and batch.map_size == (100, 150)
    features = method.frozen_features(batch.image)
    assert features["patch_grid"].tolist() == [[10, 15]] * 3
    prediction = method.test_step(batch, 0).prediction
    assert prediction.anomaly_map.shape == (3, 100, 150) and batch.mask.shape == (3, 100, 150)
    # The map: the 10x15 grid resized to the file's 100x150 and blurred there (the official dists2map).
    distances = method.model.patch_distances(features["patch_tokens"], torch.ones(3, 150, dtype=torch.bool))
    for index in range(3):
        official = _official_map(distances[index].view(10, 15).double().numpy(), (100, 150))
        np.testing.assert_allclose(prediction.anomaly_map[index].numpy(), official, atol=1e-6)
    # Blurring at the input's 140x210 and then resizing is another map.
    at_input = gaussian_blur(
        torch.nn.functional.interpolate(distances.view(3, 1, 10, 15), size=(140, 210), mode="bilinear")[:, 0],
        4,
    )
    late = torch.nn.functional.interpolate(at_input.unsqueeze(1), size=(100, 150), mode="bilinear")[:, 0]
    assert (late - prediction.anomaly_map).abs().max() > 1e-4
    # The image score from the raw grid (150 patches: the top int(1.5) = 1, the maximum).
    torch.testing.assert_close(prediction.image_score, mean_top_percent(distances))
    torch.testing.assert_close(prediction.image_score, distances.max(dim=1).values)
    # A non-square detector cannot be one square ONNX graph.
    with pytest.raises(NotExportableError, match="references are 210x140 px"):
        method.export_module()


def test_square_inputs_are_scored_as_before(backbone):
    images = (
        torch.randint(0, 256, (3, 3, 140, 140), generator=torch.Generator().manual_seed(0)) / 255
    ).float()
    method = AnomalyDINOModule(backbone, None, shots=2, dataset="MVTecAD", preprocess="informed")
    method.setup_category("bottle", images[:2])
    features = method.frozen_features(images[2:])
    assert set(features) == {"patch_tokens"}  # no grid for the backbone's own square grid
    prediction = method.score(features)
    distances = method.model.patch_distances(features["patch_tokens"], torch.ones(1, 100, dtype=torch.bool))
    resized = torch.nn.functional.interpolate(distances.view(1, 1, 10, 10), size=(140, 140), mode="bilinear")
    torch.testing.assert_close(prediction.anomaly_map, gaussian_blur(resized[:, 0], 4.0), rtol=0, atol=0)
    method.export_module()  # square references: exportable as before
    # At the files' resolution: blurred at 300x300, the same image score.
    at_file = method.score_at(features, (300, 300))
    assert at_file.anomaly_map.shape == (1, 300, 300)
    torch.testing.assert_close(at_file.image_score, prediction.image_score, rtol=0, atol=0)
    # Another method's maps asked at the files' resolution: its final map resized bilinearly (default).
    generic = AnomalyMethod.score_at(method, features, (300, 300))
    expected = torch.nn.functional.interpolate(
        prediction.anomaly_map.unsqueeze(1), size=(300, 300), mode="bilinear"
    )
    torch.testing.assert_close(generic.anomaly_map, expected[:, 0], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["experiment=anomalydino_visa"], ("shorter_side", 14, "file")),
        (["experiment=anomalydino_mvtec"], ("shorter_side", 14, "file")),
        (["method=anomalydino", "datamodule.geometry=squash"], ("squash", 14, "file")),
        (["method=anomalydino", "backbone=vit_b16"], ("shorter_side", 1, "file")),  # no patch stated: no crop
        (["method=aprillab"], ("squash", 1, "input")),
        (["method=musc"], ("squash", 1, "input")),
    ],
)
def test_anomalydino_turns_the_official_geometry_on_and_the_other_methods_keep_theirs(overrides, expected):
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[4] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    data = cfg.datamodule
    assert (data.geometry, data.crop_multiple, data.evaluation_resolution) == expected


def test_the_batched_zero_shot_mode_finishes_its_maps_at_the_files_resolution(backbone):
    images = (
        torch.randint(0, 256, (12, 3, 140, 210), generator=torch.Generator().manual_seed(2)) / 255
    ).float()
    method = AnomalyDINOModule(backbone, None, shots=0)
    method.setup_category("widget", None)
    features = method.frozen_features(images)
    assert features["patch_grid"].tolist() == [[10, 15]] * 12
    at_input, at_file = method.score_set(features), method.score_set_at(features, (100, 150))
    assert at_input.anomaly_map.shape == (12, 140, 210) and at_file.anomaly_map.shape == (12, 100, 150)
    torch.testing.assert_close(at_file.image_score, at_input.image_score, rtol=0, atol=0)
