"""Numerical parity of our MuSc with the official release (xrli-U/MuSc).

``python -m bench.parity musc --official <checkout of xrli-U/MuSc>``
(``make parity-musc MUSC_DIR=<checkout>``)

The official code is imported from the folder given at run time (never copied into this repository).
Both sides get the same random weights of a shrunk ViT-L-14-336 (the official depth 24, taps
6/12/18/24, patch 14, native 336 px, a narrower width so it runs on a CPU) and run it at 518 px, so the
positional embedding is resized 24 -> 37 on both sides the way each loads pretrained weights. The
same images (already normalised) go into the official ``MuSc.make_category_data`` (its own LNAMD,
MSM, interpolation and RsCIN; only the dataset loader, metrics and the missing ``openpyxl`` are
replaced here) and into our ``MuSc.score_set``. Printed: max |delta| of the tapped tokens and image
embeddings, the per-block per-degree patch scores, the final maps, the image scores before and after
RsCIN (MVTec's k list, then VisA's), and the same with ``divide_num=2``. Exit 1 when any exceeds 1e-4.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from bench import REPO_ROOT
from bench.parity.official import OfficialCode, official_imports
from bench.report import ParityReport

OFFICIAL = OfficialCode("https://github.com/xrli-U/MuSc", "MUSC_DIR", "models/musc.py")
MODEL = "musc-parity-vit-l-14-336"
TAPS = (6, 12, 18, 24)


def shrunk_config(width: int) -> dict:
    """ViT-L-14-336's layout (24 blocks, patch 14, 336 px, no QuickGELU) at a CPU-friendly width."""
    return {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 336, "layers": 24, "width": width, "head_width": 64, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
    }


def smooth_images(count: int, size: int, seed: int) -> torch.Tensor:
    """``[count, 3, size, size]`` images in [0, 1]: low-frequency noise, plus a bright square on a few."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 12, 12, generator=generator)
    images = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = 0.8 * images + 0.2 * torch.rand(count, 3, size, size, generator=generator)
    for index in range(count - 3, count):  # a local "defect" on the last images
        side, margin = (60, 80) if size >= 120 else (max(4, size // 8), max(4, size // 8))
        top = int(torch.randint(0, size - margin, (1,), generator=generator))
        images[index, :, top : top + side, top : top + side] = 1.0
    return images.clamp(0, 1)


def release_imports(folder: Path):
    """The release importable as it expects: run from its root, ``models/backbone`` on ``sys.path`` (its
    ``models/musc.py`` appends that folder relative to the working directory), ``openpyxl`` (used only by
    its Excel export) stubbed when absent."""
    return official_imports(
        folder, extra_paths=("models/backbone",), chdir=True, stubs={"openpyxl": {"Workbook": None}}
    )


class Recorder:
    """Wraps one official function, keeping its inputs and outputs in call order."""

    def __init__(self, function):
        self.function = function
        self.calls: list[tuple] = []

    def __call__(self, *args, **kwargs):
        result = self.function(*args, **kwargs)
        self.calls.append((args, kwargs, result))
        return result


def run_official(
    musc_module, mvtec_module, model, images, types_, divide_num, k_list_dataset, work, device, taps=True
):
    """Run the release's ``make_category_data`` on in-memory images; return what it computed.

    ``taps=False`` leaves the official ``encode_image`` unwrapped (no copy of the tapped tokens kept:
    the timing benchmark's setting).
    """
    normalised = images

    class InMemory(torch.utils.data.Dataset):
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def __getitem__(self, index):
            _, anomaly, path, _ = self.items[index]
            number = int(Path(path).stem)
            return {
                "image": normalised[number],
                "mask": torch.zeros(1, *normalised.shape[-2:]),
                "is_anomaly": int(anomaly != "good"),
                "image_path": path,
            }

    # The release's file list: sorted by defect type, then by file name.
    items = sorted(
        (["parity", kind, f"/parity/test/{kind}/{index:03d}.png", None] for index, kind in enumerate(types_)),
        key=lambda item: (item[1], item[2]),
    )

    def load_datasets(category, divide_num=1, divide_iter=0):
        chosen = items
        if divide_num > 1:
            chosen = mvtec_module.MVTecDataset.sub_datasets(None, items, divide_num, divide_iter, 42)
        return InMemory(chosen)

    msm = Recorder(musc_module.MSM)
    rscin = Recorder(musc_module.RsCIN)
    captured = {}

    def compute_metrics(gt_sp, pr_sp, gt_px, pr_px):
        captured.update(pr_sp=pr_sp, pr_px=pr_px)
        return (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)

    recorded: list = []
    original_encode = model.encode_image

    def encode_image(image, out_layers, *args, **kwargs):
        pooled, tokens = original_encode(image, out_layers, *args, **kwargs)
        recorded.append((pooled.float().cpu(), [t.float().cpu() for t in tokens]))
        return pooled, tokens

    if taps:
        model.encode_image = encode_image
    instance = object.__new__(musc_module.MuSc)  # its __init__ would load weights by name
    instance.__dict__.update(
        cfg={},
        seed=42,
        device=torch.device(device),
        dataset=k_list_dataset,
        vis=False,
        save_excel=False,
        categories=["parity"],
        model_name=MODEL,
        image_size=images.shape[-1],
        batch_size=4,
        pretrained=None,
        features_list=list(TAPS),
        divide_num=divide_num,
        r_list=[1, 3, 5],
        output_dir=str(work),
        clip_model=model,
        preprocess=None,
    )
    instance.load_datasets = load_datasets
    saved = (musc_module.MSM, musc_module.RsCIN, musc_module.compute_metrics)
    musc_module.MSM, musc_module.RsCIN, musc_module.compute_metrics = msm, rscin, compute_metrics
    try:
        with (
            contextlib.redirect_stdout(open(os.devnull, "w")),
            contextlib.redirect_stderr(open(os.devnull, "w")),
        ):
            instance.make_category_data("parity")
    finally:
        musc_module.MSM, musc_module.RsCIN, musc_module.compute_metrics = saved
        if taps:
            model.encode_image = original_encode
    order = [int(Path(item[2]).stem) for item in _visit_order(items, divide_num, mvtec_module)]
    return {
        "order": order,
        "msm": [call[2].cpu() for call in msm.calls],
        "raw_scores": torch.as_tensor(rscin.calls[0][0][0]),
        "class_tokens": rscin.calls[0][0][1],
        "scores": torch.as_tensor(captured["pr_sp"]),
        "maps": torch.as_tensor(captured["pr_px"])[:, 0],
        "taps": recorded,
        "rscin": rscin.function,
    }


def _visit_order(items, divide_num, mvtec_module):
    if divide_num == 1:
        return items
    visited = []
    for part in range(divide_num):
        visited += mvtec_module.MVTecDataset.sub_datasets(None, items, divide_num, part, 42)
    return visited


def build_models(
    folder: Path, work: Path, config: dict, image_size: int, device: str, precision: str = "fp32"
):
    """Both sides on the same random weights of ``config`` (registered as ``MODEL`` on both sides), made
    at the native 336 px and resized to ``image_size`` the way each side loads pretrained weights.

    Returns:
        ``(backbone, theirs, musc_module, mvtec_module)``: our backbone in ``precision`` (resize and
        activation settings from MuSc's backbone config, so parity covers them), the official model and
        the release's ``models.musc`` / ``datasets.mvtec`` modules.
    """
    import open_clip

    from anomaly_vlm.backbones.clip import FrozenCLIP

    (work / "configs").mkdir(exist_ok=True)
    (work / "configs" / f"{MODEL}.json").write_text(json.dumps(config))
    open_clip.add_model_config(work / "configs")
    # Random weights at the native 336 px (24 x 24 grid), as a pretrained file would hold them.
    native = FrozenCLIP(MODEL, pretrained=None, image_size=336, seed=0)
    weights = work / "weights.pt"
    torch.save(native.clip.state_dict(), weights)
    spec = yaml.safe_load((REPO_ROOT / "conf" / "backbone" / "vit_l14_336_musc.yaml").read_text())
    backbone = FrozenCLIP(
        MODEL,
        pretrained=str(weights),
        image_size=image_size,
        quick_gelu=spec["quick_gelu"],
        pos_embed_interpolation=spec["pos_embed_interpolation"],
        pos_embed_antialias=spec["pos_embed_antialias"],
        precision=precision,
    ).to(device)
    with release_imports(folder):
        musc_module = importlib.import_module("models.musc")
        mvtec_module = importlib.import_module("datasets.mvtec")
        official_clip = importlib.import_module("models.backbone.open_clip")
        official_model_module = importlib.import_module("models.backbone.open_clip.model")
        official_clip.add_model_config(work / "configs")
        theirs = official_clip.create_model(MODEL, image_size, pretrained=None)
        state = torch.load(weights, weights_only=True)
        # What the release does with OpenAI weights at another size: its resize, then a strict load.
        official_model_module.resize_pos_embed(state, theirs)
        theirs.load_state_dict(state, strict=True)
        theirs.eval().to(device)
    return backbone, theirs, musc_module, mvtec_module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=12, help="images of the category (>= 9 for VisA's k)")
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--width", type=int, default=256, help="ViT width of the shrunk architecture")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides in fp32, TF32 off)")


def run(args: argparse.Namespace, folder: Path, report: ParityReport) -> None:
    report.note(
        f"MuSc parity: {args.images} images at {args.image_size} px, shrunk ViT-L-14-336 (24 blocks, width "
        f"{args.width}, taps {list(TAPS)}), positional embedding resized 24->{args.image_size // 14}"
    )
    torch.set_grad_enabled(False)
    if args.device != "cpu":
        # The release wraps its GPU passes in fp16 autocast; parity is checked in fp32 on both sides, so
        # the harness (only) turns that autocast off, and TF32 too.
        torch.cuda.amp.autocast = lambda *a, **k: torch.autocast("cuda", enabled=False)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    from anomaly_vlm.methods.musc.torch_model import IMAGE_EMBEDDING, MuSc, rscin, tokens_key

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        backbone, theirs, musc_module, mvtec_module = build_models(
            folder, work, shrunk_config(args.width), args.image_size, args.device
        )
        ours = MuSc(backbone, layers=TAPS, r_list=(1, 3, 5), rscin_k=(1, 2, 3))

        images = smooth_images(args.images, args.image_size, seed=1)
        normalised = backbone.normalize(images.to(args.device)).cpu()
        kinds = ["good"] * (args.images - 6) + ["crack"] * 4 + ["hole"] * 2
        with release_imports(folder):
            official = run_official(
                musc_module, mvtec_module, theirs, normalised, kinds, 1, "mvtec_ad", work, args.device
            )

        features = {}
        for start in range(0, args.images, 4):
            part = ours.frozen_features(images[start : start + 4].to(args.device))
            for name, value in part.items():
                features.setdefault(name, []).append(value)
        features = {name: torch.cat(values).cpu() for name, values in features.items()}
        order = official["order"]
        official_taps = [torch.cat([t[1][i] for t in official["taps"]]) for i in range(len(TAPS))]
        for index, layer in enumerate(TAPS):
            report.add(
                f"tokens block {layer}",
                (features[tokens_key(layer)][order] - official_taps[index]).abs().max().item(),
            )
        pooled = torch.cat([t[0] for t in official["taps"]])
        embedding_ours = F.normalize(features[IMAGE_EMBEDDING][order], dim=-1)
        report.add(
            "image embedding (unit)", (embedding_ours - F.normalize(pooled, dim=-1)).abs().max().item()
        )

        details: dict = {}
        prediction = ours.score_set(features, groups=kinds, details=details)
        calls = iter(official["msm"])
        for r in (1, 3, 5):
            for layer in TAPS:
                theirs_part = next(calls)
                delta = (details["parts"][(r, layer)][order] - theirs_part).abs().max().item()
                report.add(f"patch scores r={r} block {layer}", delta)
        report.add("final maps", (details["maps64"][order] - official["maps"]).abs().max().item())
        report.add(
            "final maps (float32 output)",
            (prediction.anomaly_map.double()[order] - official["maps"]).abs().max().item(),
        )
        report.add(
            "image scores before RsCIN",
            (details["raw_image_score"][order] - official["raw_scores"]).abs().max().item(),
        )
        report.add(
            "image scores after RsCIN k=[1,2,3]",
            (prediction.image_score.double()[order] - official["scores"]).abs().max().item(),
        )
        visa_theirs = torch.as_tensor(
            official["rscin"](official["raw_scores"].numpy(), official["class_tokens"], k_list=[1, 8, 9])
        )
        visa_ours = rscin(
            details["raw_image_score"], F.normalize(features[IMAGE_EMBEDDING].float(), dim=-1), (1, 8, 9)
        )
        report.add(
            "image scores after RsCIN k=[1,8,9]",
            (visa_ours.double()[order] - visa_theirs.double()).abs().max().item(),
        )

        with release_imports(folder):
            split = run_official(
                musc_module, mvtec_module, theirs, normalised, kinds, 2, "mvtec_ad", work, args.device
            )
        ours_split = MuSc(backbone, layers=TAPS, r_list=(1, 3, 5), rscin_k=(1, 2, 3), divide_num=2)
        split_details: dict = {}
        split_prediction = ours_split.score_set(features, groups=kinds, details=split_details)
        order = split["order"]
        report.add(
            "divide_num=2 final maps", (split_details["maps64"][order] - split["maps"]).abs().max().item()
        )
        report.add(
            "divide_num=2 image scores after RsCIN",
            (split_prediction.image_score.double()[order] - split["scores"]).abs().max().item(),
        )

    report.note(
        f"  (maps {details['maps64'].min():.4f}..{details['maps64'].max():.4f}, scores after RsCIN "
        f"{prediction.image_score.min():.4f}..{prediction.image_score.max():.4f})"
    )
