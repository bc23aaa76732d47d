"""Numerical parity of our AnomalyDINO with the official code (dammsi/AnomalyDINO).

``python -m bench.parity anomalydino --official <checkout of dammsi/AnomalyDINO> --dinov2 <checkout of
facebookresearch/dinov2>`` (``make parity-anomalydino ANOMALYDINO_DIR=<checkout> DINOV2_DIR=<checkout>``)

Both checkouts are imported at run time, never copied here, and run unmodified. The official code loads
its backbone with ``torch.hub.load('facebookresearch/dinov2', name)``; here that call is answered from
the local DINOv2 checkout (``source='local'``, no network) with random weights that are first written
to a ``.pth`` file, which both sides load: the official model by ``load_state_dict``, ours through
``backbone.pretrained=<file>``. XFormers is disabled, so both run ``scaled_dot_product_attention`` in
fp32. The images are PNG files at ``--source-size`` (default: the model resolution ``--image-size``, 224 by
default for a CPU, the published 448 as an option; ``WxH`` for non-square files, as VisA's). With a larger
source (MVTec AD's files are 1024 px) the official code turns each reference at the file's resolution and
then resizes every copy, and so do we (``method.rotate_before_resize``, references loaded at the files'
resolution); the test images are resized by both sides' loaders: the shorter side to ``--image-size``
keeping the aspect ratio, the bottom and right cropped to multiples of 14 (``datamodule.geometry=
shorter_side``), so a non-square file gives a non-square patch grid on both sides. Both sides resize each
map to its file's resolution and blur it there (``datamodule.evaluation_resolution=file``): the map row
compares ours with the official full-resolution tiffs.

The official ``run_anomaly_detection`` runs as published (masking and rotation as its agnostic table sets
them for ``capsule``, 1-NN ``L2_normalized``, faiss on the CPU), with two changes that only remove
randomness: its randomized PCA is run with ``svd_solver='full'`` (it draws from the unseeded global
NumPy generator otherwise), and ``torch.cuda.synchronize`` is a no-op on a CPU. Compared: the rotated
reference images, the reference memory (after masking, augmentation and normalisation), the test
masks, the patch distances, the full-resolution maps (the official tiffs) and the image scores; then the
batched zero-shot scores (its ``calculate_cosine_distances`` and ``dists_to_score``) on the same features.
Exit 1 when any exceeds 1e-4 (masks: 0 patches differ).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.parity.official import OfficialCode, max_abs, official_imports
from bench.report import ParityReport

OFFICIAL = OfficialCode("https://github.com/dammsi/AnomalyDINO", "ANOMALYDINO_DIR", "src/detection.py")
DINOV2 = OfficialCode("https://github.com/facebookresearch/dinov2", "DINOV2_DIR", "hubconf.py")
OBJECT = "capsule"  # masked and rotated under the published agnostic table


def object_images(count: int, size: int | tuple[int, int], seed: int, defects: int = 0) -> np.ndarray:
    """``[count, H, W, 3]`` uint8 RGB (``size``: a side, or ``(H, W)``): a textured ellipse on a darker,
    slightly noisy background, the last ``defects`` images with a bright scratch on the object."""
    rng = np.random.default_rng(seed)
    height, width = (size, size) if isinstance(size, int) else size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    out = []
    for index in range(count):
        cy, cx = 0.5 + rng.normal(0, 0.02, 2)
        ry, rx = 0.28 + rng.normal(0, 0.01), 0.18 + rng.normal(0, 0.01)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        texture = 0.5 + 0.25 * np.sin(18 * xx + 7 * yy + rng.uniform(0, 6.28))
        image = np.empty((height, width, 3), np.float32)
        image[...] = 0.15 + 0.03 * rng.standard_normal((height, width, 1))
        for channel, tint in enumerate((0.9, 0.35, 0.2)):
            image[..., channel] = np.where(inside, tint * texture + 0.1, image[..., channel])
        if index >= count - defects:
            top, left = int(height * 0.45), int(width * 0.45)
            image[top : top + height // 12, left : left + width // 40] = 1.0
        out.append((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    return np.stack(out)


def write_dataset(
    root: Path, shots: int, good: int, bad: int, size: int | tuple[int, int], seed: int
) -> None:
    """An MVTec-layout folder ``root/capsule/{train/good,test/good,test/crack}`` of PNG files."""
    import cv2

    layout = {
        "train/good": object_images(shots, size, seed),
        "test/good": object_images(good, size, seed + 1),
        "test/crack": object_images(bad, size, seed + 2, defects=bad),
    }
    for folder, images in layout.items():
        target = root / OBJECT / folder
        target.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            cv2.imwrite(str(target / f"{index:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


class RecordingIndex:
    """A faiss index that keeps what is added to it (the official reference memory)."""

    def __init__(self, index):
        self.index = index
        self.added: list[np.ndarray] = []

    def add(self, vectors):
        self.added.append(np.array(vectors, copy=True))
        return self.index.add(vectors)

    def search(self, *args, **kwargs):
        return self.index.search(*args, **kwargs)


@contextlib.contextmanager
def local_hub(dinov2_dir: Path, weights: Path):
    """``torch.hub.load('facebookresearch/dinov2', name)`` answered from the local checkout, random
    weights replaced by the shared file (no network)."""
    original = torch.hub.load

    def load(repo, model, *args, **kwargs):
        module = original(str(dinov2_dir), model, source="local", pretrained=False)
        module.load_state_dict(torch.load(weights, weights_only=True), strict=True)
        return module

    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = original


def batched_functions(script: Path) -> dict:
    """The batched script's two scoring functions, unmodified, without running its module-level imports
    (pandas, plotting) or its argument parsing: their definitions are compiled from its source."""
    tree = ast.parse(script.read_text())
    wanted = {"calculate_cosine_distances", "dists_to_score"}
    nodes = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    if {node.name for node in nodes} != wanted:
        raise SystemExit(f"error: {script} no longer defines {sorted(wanted)}")
    namespace: dict = {"torch": torch, "np": np}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(script), "exec"), namespace)  # noqa: S102
    return namespace


def source_size(text: str) -> tuple[int, int]:
    """``--source-size``: ``N`` (square) or ``WxH``, as ``(H, W)``."""
    try:
        if "x" in text.lower():
            width, height = (int(part) for part in text.lower().split("x"))
        else:
            width = height = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither N nor WxH") from None
    return height, width


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dinov2", metavar="DIR", help=DINOV2.help)
    parser.add_argument("--model", default="dinov2_vits14", help="DINOv2 hub name (published dinov2_vits14)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="image side = the resolution (published 448; slow on a CPU)",
    )
    parser.add_argument(
        "--source-size",
        type=source_size,
        default=None,
        help="side of the image files, or WxH for non-square files (default: --image-size; e.g. 1024 as "
        "MVTec AD's files, 1500x1000 as VisA's capsules)",
    )
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--good", type=int, default=2, help="normal test images")
    parser.add_argument("--bad", type=int, default=2, help="anomalous test images")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace, folder: Path, report: ParityReport) -> None:
    os.environ["XFORMERS_DISABLED"] = "1"
    if not (args.dinov2 or os.environ.get(DINOV2.variable)):
        print(
            "error: no DINOv2 reference checkout (the official code's torch.hub source): pass --dinov2 DIR "
            f"(make parity-anomalydino DINOV2_DIR=DIR); git clone {DINOV2.url}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    dinov2_dir, described = DINOV2.resolve(args.dinov2, "anomalydino")
    report.official["dinov2"] = described
    torch.set_grad_enabled(False)
    from anomaly_vlm.backbones.dinov2 import DinoViT, architecture
    from anomaly_vlm.data.image_io import load_image
    from anomaly_vlm.methods.anomalydino import AnomalyDINOModule, rotate_references
    from anomaly_vlm.methods.anomalydino.torch_model import mean_top_percent, mutual_patch_scores

    size = args.image_size
    source = args.source_size or (size, size)
    report.note(
        f"AnomalyDINO parity: {args.model} (random weights), {size} px (shorter side) from "
        f"{source[1]}x{source[0]} px files, "
        f"{args.shots}-shot, {args.good}+{args.bad} test images, object '{OBJECT}' (agnostic: masking + "
        "rotation)"
    )
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        torch.manual_seed(args.seed)
        weights = work / f"{args.model}_random.pth"
        torch.save(DinoViT(architecture(args.model)).state_dict(), weights)
        root = work / "data"
        write_dataset(root, args.shots, args.good, args.bad, source, args.seed)

        # ----- the official side ------------------------------------------------------------------
        with official_imports(folder), local_hub(dinov2_dir, weights):
            import sklearn.decomposition

            backbones = importlib.import_module("src.backbones")
            detection = importlib.import_module("src.detection")
            full_pca = lambda n_components, svd_solver=None: sklearn.decomposition.PCA(  # noqa: E731
                n_components=n_components, svd_solver="full"
            )
            backbones.PCA = full_pca
            official = backbones.get_model(args.model, "cpu", smaller_edge_size=size)
            masks_recorded: list[np.ndarray] = []
            compute_mask = official.compute_background_mask

            def recording_mask(*a, **k):
                mask = compute_mask(*a, **k)
                masks_recorded.append(np.array(mask, copy=True))
                return mask

            official.compute_background_mask = recording_mask
            rotated: list[np.ndarray] = []
            augment = detection.augment_image

            def recording_augment(image, *a, **k):
                images = augment(image, *a, **k)
                rotated.extend(np.array(item, copy=True) for item in images)
                return images

            detection.augment_image = recording_augment
            indices: list[RecordingIndex] = []
            flat_index = detection.faiss.IndexFlatL2

            class Faiss:
                def __getattr__(self, name):
                    return getattr(detection_faiss, name)

                @staticmethod
                def IndexFlatL2(dimension):  # noqa: N802 (faiss's name)
                    indices.append(RecordingIndex(flat_index(dimension)))
                    return indices[-1]

            detection_faiss = detection.faiss
            detection.faiss = Faiss()
            synchronize = torch.cuda.synchronize
            torch.cuda.synchronize = lambda *a, **k: None
            plots = work / "plots"
            try:
                scores_official, _, _ = detection.run_anomaly_detection(
                    official,
                    OBJECT,
                    str(root),
                    args.shots,
                    {OBJECT: ["crack"]},
                    str(plots),
                    save_examples=False,
                    masking=True,
                    mask_ref_images=False,
                    rotation=True,
                    knn_metric="L2_normalized",
                    knn_neighbors=1,
                    faiss_on_cpu=True,
                    seed=0,
                    save_patch_dists=True,
                    save_tiffs=True,
                )
                # The batched zero-shot scoring on the official features of the test images.
                test_files = [
                    (kind, name)
                    for kind in ("crack", "good")
                    for name in sorted(os.listdir(root / OBJECT / "test" / kind))
                ]
                features_all = []
                for kind, name in test_files:
                    tensor, _ = official.prepare_image(str(root / OBJECT / "test" / kind / name))
                    features_all.append(official.extract_features(tensor))
                # The set is the test images and the turned references (the function takes any list of
                # feature arrays; at CPU sizes the test images alone have too few patches for its k >= 2).
                for image in rotated:
                    tensor, _ = official.prepare_image(image)
                    features_all.append(official.extract_features(tensor))
                batched = batched_functions(folder / "run_anomalydino_batched.py")
                batched_dists = [
                    batched["calculate_cosine_distances"](features_all, index, "cpu")
                    for index in range(len(features_all))
                ]
                batched_scores = [batched["dists_to_score"](d) for d in batched_dists]
            finally:
                torch.cuda.synchronize = synchronize
                detection.faiss = detection_faiss
            import tifffile

            maps_dir = plots / "anomaly_maps" / "seed=0" / OBJECT / "test"
            official_grids = {key: np.load(maps_dir / key[0] / f"{key[1][:-4]}.npy") for key in test_files}
            official_maps = {
                key: tifffile.imread(maps_dir / key[0] / f"{key[1][:-4]}.tiff") for key in test_files
            }

        # ----- our side ---------------------------------------------------------------------------
        from anomaly_vlm.backbones.dinov2 import FrozenDINOv2

        backbone = FrozenDINOv2(args.model, pretrained=str(weights), image_size=size)
        # The official geometry: method=anomalydino's datamodule.geometry=shorter_side, crop_multiple=14.
        geometry = ("shorter_side", backbone.patch_size)
        method = AnomalyDINOModule(
            backbone,
            None,
            shots=args.shots,
            preprocess="agnostic",
            dataset="MVTecAD",
            geometry=geometry[0],
            crop_multiple=geometry[1],
        )
        ref_files = sorted(os.listdir(root / OBJECT / "train" / "good"))
        # At the files' resolution, as the job loads them for this method (references_at_file_resolution).
        assert method.references_at_file_resolution
        references = torch.stack(
            [load_image(str(root / OBJECT / "train" / "good" / f), None) for f in ref_files]
        )
        method.setup_category(OBJECT, references)

        # Rotated references: official order is image-major, angle-minor.
        ours_rotated = rotate_references(references)
        theirs_rotated = torch.from_numpy(np.stack(rotated)).permute(0, 3, 1, 2).float() / 255
        report.add("rotated references (pixels in [0, 1])", max_abs(ours_rotated, theirs_rotated))

        # Reference memory: ours holds the originals first, then each image's 7 turned copies.
        shots = len(ref_files)
        patches = method.model.memory.shape[0] // (shots * 8)
        ours_blocks = method.model.memory.view(-1, patches, backbone.width)
        order = []
        for image in range(shots):
            order.append(image)
            order.extend(shots + image * 7 + turn for turn in range(7))
        ours_memory = F.normalize(ours_blocks[order].flatten(0, 1), dim=-1)
        theirs_memory = torch.from_numpy(np.concatenate(indices[0].added))
        report.add("reference memory (normalised, augmented)", max_abs(ours_memory, theirs_memory))
        report.note(f"memory: {tuple(theirs_memory.shape)} patches x width (k x 8 rotations x N)")

        test_images = torch.stack(
            [
                load_image(str(root / OBJECT / "test" / kind / name), size, None, *geometry)
                for kind, name in test_files
            ]
        )
        features = method.frozen_features(test_images)
        tokens = features["patch_tokens"]
        grid = method.model.feature_grid(features)
        theirs_tokens = torch.from_numpy(np.stack(features_all[: len(test_files)]))
        report.add("test patch tokens (last block, normed)", max_abs(tokens, theirs_tokens))
        report.note(f"inputs {tuple(test_images.shape[-2:])} px, patch grid {grid} (h, w)")
        ours_masks = method.model.foreground(tokens, grid=grid)
        # The official masks: one per reference copy (unmasked), then one per test image, types in the
        # order the official code iterates them (a set of ["crack", "good"] in this process), files sorted.
        official_order = [
            (kind, name)
            for kind in list(set(["crack", "good"]))
            for name in sorted(os.listdir(root / OBJECT / "test" / kind))
        ]
        theirs_masks = dict(zip(official_order, masks_recorded[shots * 8 :], strict=True))
        # Maps at the files' resolution, as datamodule.evaluation_resolution=file asks for them.
        prediction = method.score_at(features, source)
        ours_grids = method.model.patch_distances(tokens, ours_masks)
        grid_delta = map_delta = score_delta = 0.0
        mask_errors = 0
        for index, key in enumerate(test_files):
            mask_errors += int((torch.from_numpy(theirs_masks[key]) != ours_masks[index]).sum())
            theirs_grid = torch.from_numpy(official_grids[key]).flatten()
            grid_delta = max(grid_delta, max_abs(ours_grids[index].double(), theirs_grid))
            assert official_grids[key].shape == grid, (official_grids[key].shape, grid)
            theirs_map = torch.from_numpy(official_maps[key].astype(np.float64))
            map_delta = max(map_delta, max_abs(prediction.anomaly_map[index].double(), theirs_map))
            theirs_score = float(scores_official[f"{key[0]}/{key[1]}"])
            score_delta = max(score_delta, abs(float(prediction.image_score[index]) - theirs_score))
        report.add("test masks (patches that differ)", float(mask_errors), target=0.0)
        report.note(f"test foreground patches: {ours_masks.sum(dim=1).tolist()} of {patches}")
        report.add("patch distances (grid, 1 - cos)", grid_delta)
        report.add(f"anomaly maps ({source[1]}x{source[0]} px, the files' resolution, blurred)", map_delta)
        report.add("image scores (mean top 1 %)", score_delta)

        batched_set = torch.cat([tokens, ours_blocks[order]])
        ours_batched = torch.stack(
            [
                mutual_patch_scores(batched_set, index, method.model.quantile)
                for index in range(len(batched_set))
            ]
        )
        theirs_batched = torch.from_numpy(np.stack(batched_dists))
        # Where no distance lies strictly below the k-th smallest (ties), the official code divides 0 by 0;
        # ours scores the k-th smallest distance there (a documented difference): compared elsewhere.
        finite = torch.isfinite(theirs_batched)
        report.add("batched zero-shot patch scores", max_abs(ours_batched[finite], theirs_batched[finite]))
        ties = int((~finite).sum())
        if ties:
            report.note(
                f"batched zero-shot: {ties} official patch scores are NaN (0/0 on ties); ours are finite "
                f"there: {bool(torch.isfinite(ours_batched[~finite]).all())}"
            )
        report.add(
            "batched zero-shot image scores",
            max_abs(mean_top_percent(ours_batched, fallback_max=False), torch.tensor(batched_scores)),
        )
