"""Numerical parity of our APRIL-GAN (``method=aprillab``) with the official VAND-APRIL-GAN code.

``python -m bench.parity aprillab --official <checkout of ByChelsea/VAND-APRIL-GAN>``
(``make parity-aprillab APRILGAN_DIR=<checkout>``)

Both sides get the same random weights of a shrunk ViT-L-14-336 (24 blocks, taps 6/12/18/24, plain
GELU, narrow widths) run at 518 px, so the 24 -> 37 positional-embedding resize is exercised: ours
resizes with the backbone config's setting (``backbone=vit_l14_336``: bicubic with antialias), the
official side with its bundled open_clip's ``resize_pos_embed`` at load time, as its ``create_model``
does. Same linear projections, same images, class name "bottle".

The official per-image arithmetic of ``test.py`` / ``train.py`` lives inline in their ``test()`` /
``train()`` functions (which also read datasets from disk); the harness restates those few lines and
calls the official modules for everything else: the bundled ``open_clip`` (model, resize, tokenizer),
``prompt_ensemble.encode_text_with_prompt_ensemble``, ``model.LinearLayer``, ``loss.FocalLoss`` /
``BinaryDiceLoss`` and ``test.cal_pro_score``. The official code runs under CUDA fp16 autocast; on the
CPU that autocast is off, so both sides compare in float32.

Printed: max |delta| of the text features, the per-stage maps, the final map and image score,
zero-shot and few-shot, the training loss and the gradients of the projections; exits 1 if any misses
its target (1e-4 absolute, gradients 1e-4 relative to their largest entry).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from anomaly_vlm.data.batch import AnomalyBatch
from anomaly_vlm.methods.anomalyclip import AnomalyCLIPModule
from anomaly_vlm.methods.aprillab import AprilGANModule
from anomaly_vlm.prompts import LearnablePromptSet, PromptSet
from bench import REPO_ROOT
from bench.parity.official import (
    OfficialCode,
    blob_masks,
    cpu_device_moves,
    max_abs,
    max_rel,
    official_aupro_line,
    official_imports,
    shrunk_backbone,
    small_vit_l14_336,
    smooth_images,
)
from bench.parity.release import expect_refusal, run_official_statements, with_one_wrong_shape
from bench.report import TARGET_REL, ParityReport

OFFICIAL = OfficialCode("https://github.com/ByChelsea/VAND-APRIL-GAN", "APRILGAN_DIR", "open_clip/model.py")
MODEL = "parity-ViT-L-14-336-small"
CLASS_NAME = "bottle"
STAGES = [6, 12, 18, 24]
SIZE = 518


def import_official(folder: Path) -> dict:
    """Import the official modules from ``folder``; its bundled package is also called ``open_clip``.

    Ours (already imported) is set aside while the official one loads and put back afterwards; each
    side keeps the module objects it was imported with.
    """
    ours = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "open_clip"}
    for name in ours:
        del sys.modules[name]
    try:
        with official_imports(folder):
            import loss as official_loss
            import model as official_model
            import open_clip as official_open_clip
            import prompt_ensemble
            import test as official_test
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == "open_clip"]:
            del sys.modules[name]
        sys.modules.update(ours)
    return {
        "open_clip": official_open_clip,
        "LinearLayer": official_model.LinearLayer,
        "prompt_ensemble": prompt_ensemble,
        "FocalLoss": official_loss.FocalLoss,
        "BinaryDiceLoss": official_loss.BinaryDiceLoss,
        "cal_pro_score": official_test.cal_pro_score,
    }


def official_model(official: dict, config: dict, state: dict):
    """The official CLIP at 518 px, the 336-px state dict resized by its own load-time resize."""
    oc = official["open_clip"]
    theirs = oc.model.CLIP(**{**config, "vision_cfg": {**config["vision_cfg"], "image_size": SIZE}})
    official_state = {key: value.clone() for key, value in state.items()}
    oc.model.resize_pos_embed(official_state, theirs)
    missing, unexpected = theirs.load_state_dict(official_state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"state dict keys differ: missing {missing}, unexpected {unexpected}")
    return theirs.eval()


def load_prompts() -> PromptSet:
    node = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "prompts" / "aprilgan.yaml"))
    node.pop("_target_")
    return PromptSet(**node)


def backbone_settings() -> dict:
    node = OmegaConf.load(REPO_ROOT / "conf" / "backbone" / "vit_l14_336.yaml")
    return {
        "quick_gelu": bool(node.quick_gelu),
        "pos_embed_interpolation": str(node.pos_embed_interpolation),
        "pos_embed_antialias": bool(node.pos_embed_antialias),
    }


def official_stage_maps(official, model, linear, images, text, features):
    """test.py / train.py: per stage softmax(upsampled 100 * tokens @ text) -> [B, 2, H, W]."""
    _, patch_tokens = model.encode_image(images, features)
    return official_maps_of_tokens(linear, patch_tokens, text)


def official_maps_of_tokens(linear, patch_tokens, text):
    """The maps of :func:`official_stage_maps` from tapped tokens already encoded (test.py encodes each
    image once for the image score and the maps)."""
    patch_tokens = linear(patch_tokens)
    maps = []
    for layer in range(len(patch_tokens)):
        tokens = patch_tokens[layer] / patch_tokens[layer].norm(dim=-1, keepdim=True)
        logits = 100.0 * tokens @ text
        batch, length, _ = logits.shape
        side = int(np.sqrt(length))
        logits = F.interpolate(
            logits.permute(0, 2, 1).view(batch, 2, side, side), size=SIZE, mode="bilinear", align_corners=True
        )
        maps.append(torch.softmax(logits, dim=1))
    return maps


def memory_map_of_stage(model, layer_tokens: dict, index: int) -> torch.Tensor:
    """Our few-shot map of one stage alone (the model sums the stages)."""
    memory, stages = model.memory, model.few_shot_stages
    model.memory, model.few_shot_stages = [memory[index]], (stages[index],)
    try:
        return model.few_shot_map(layer_tokens, (SIZE, SIZE))
    finally:
        model.memory, model.few_shot_stages = memory, stages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=3, help="query images (>= 3: few-shot min-max)")
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--width", type=int, default=128, help="vision width of the shrunk ViT-L-14-336")


def run(args: argparse.Namespace, folder: Path, report: ParityReport) -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    official = import_official(folder)
    oc = official["open_clip"]
    settings = backbone_settings()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = small_vit_l14_336(args.width, text_width=128, text_layers=12, embed_dim=96)
        backbone, state = shrunk_backbone(MODEL, config, tmp, SIZE, settings)
        report.note(
            f"shrunk ViT-L-14-336: 24 blocks, width {args.width}, {SIZE} px, grid {backbone.grid_size}; "
            f"ours resizes pos-embed {settings['pos_embed_interpolation']}"
            f"{' with antialias' if settings['pos_embed_antialias'] else ''}"
        )

        theirs = official_model(official, config, state)
        pos_delta = max_abs(backbone.positional_embedding, theirs.visual.positional_embedding)
        report.add("positional embedding after 24->37 resize", pos_delta)

        module = AprilGANModule(backbone, load_prompts(), shots=args.shots, text_cache_dir=str(tmp / "text"))
        linear = official["LinearLayer"](args.width, config["embed_dim"], len(STAGES), "ViT-L-14-336")
        with torch.no_grad():
            for ours_fc, their_fc in zip(module.model.projections, linear.fc, strict=True):
                ours_fc.weight.copy_(their_fc.weight)
                ours_fc.bias.copy_(their_fc.bias)

        images = smooth_images(args.images, SIZE, seed=1)
        references = smooth_images(args.shots, SIZE, seed=2)
        normalized = backbone.normalize(images)
        tokenizer = oc.get_tokenizer("ViT-L-14-336")

        # ----- text features ---------------------------------------------------------------------
        with torch.no_grad(), cpu_device_moves():
            prompts = official["prompt_ensemble"].encode_text_with_prompt_ensemble(
                theirs, [CLASS_NAME], tokenizer, "cpu"
            )
        their_text = prompts[CLASS_NAME]  # [D, 2]
        module.setup_category(CLASS_NAME, None)
        report.add("text features [normal, abnormal]", max_abs(module.model.text_classifier, their_text.T))

        # ----- zero-shot ---------------------------------------------------------------------------
        with torch.no_grad(), cpu_device_moves():
            image_features, _ = theirs.encode_image(normalized, STAGES)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            their_scores = (100.0 * image_features @ their_text).softmax(dim=-1)[:, 1]
            their_stages = official_stage_maps(official, theirs, linear, normalized, their_text, STAGES)
        their_map = torch.stack([stage[:, 1] for stage in their_stages]).sum(dim=0)
        with torch.no_grad():
            layer_tokens = module.model.layer_tokens(module.frozen_features(images))
            our_stages = module.model.stage_probabilities(
                layer_tokens, module.model.text_classifier, (SIZE, SIZE)
            )
            prediction = module.predict_images(images)
            our_scores, our_map = prediction.image_score, prediction.anomaly_map
        for stage, ours_stage, their_stage in zip(STAGES, our_stages, their_stages, strict=True):
            report.add(f"zero-shot map, block {stage}", max_abs(ours_stage[:, 1], their_stage[:, 1]))
        report.add("zero-shot final map", max_abs(our_map, their_map))
        report.add("zero-shot image score", max_abs(our_scores, their_scores))
        zero_shot_map = their_map.numpy()

        # ----- few-shot ----------------------------------------------------------------------------
        from sklearn.metrics import pairwise

        module.setup_category(CLASS_NAME, references)
        with torch.no_grad(), cpu_device_moves():
            banks = [[] for _ in STAGES]
            for reference in backbone.normalize(references):  # few_shot.memory: one image per batch
                _, tokens = theirs.encode_image(reference[None], STAGES)
                for index, token in enumerate(tokens):
                    banks[index].append(token[0, 1:, :])
            memory = [torch.cat(bank, dim=0) for bank in banks]
            few_maps, per_stage_few = [], []
            for image in normalized:
                _, tokens = theirs.encode_image(image[None], STAGES)
                stages = []
                for index, token in enumerate(tokens):
                    cos = pairwise.cosine_similarity(memory[index].cpu(), token[0, 1:, :].cpu())
                    side = int(np.sqrt(cos.shape[1]))
                    nearest = np.min(1 - cos, 0).reshape(1, 1, side, side)
                    upsampled = F.interpolate(
                        torch.tensor(nearest), size=SIZE, mode="bilinear", align_corners=True
                    )
                    stages.append(upsampled[0].numpy())
                per_stage_few.append(stages)
                few_maps.append(np.sum(stages, axis=0))
        their_few_map = their_map.numpy() + np.concatenate(few_maps)  # [B, H, W]
        maxima = their_few_map.reshape(len(images), -1).max(axis=1)
        their_few_scores = 0.5 * (
            their_scores.numpy() + (maxima - maxima.min()) / (maxima.max() - maxima.min())
        )
        with torch.no_grad():
            layer_tokens = module.model.layer_tokens(module.frozen_features(images))
            # the whole query set is one category: the set-level min-max runs over all of it
            prediction = module.postprocess_set(module.predict_images(images))
            our_few_map, our_few_scores = prediction.anomaly_map, prediction.image_score
            for index, stage in enumerate(STAGES):
                theirs_stage = np.stack([per_image[index][0] for per_image in per_stage_few])
                ours_stage = memory_map_of_stage(module.model, layer_tokens, index)
                report.add(
                    f"few-shot ({args.shots}) memory map, block {stage}", max_abs(ours_stage, theirs_stage)
                )
        report.add(f"few-shot ({args.shots}) final map", max_abs(our_few_map, their_few_map))
        report.add(f"few-shot ({args.shots}) image score", max_abs(our_few_scores, their_few_scores))

        # ----- training step -----------------------------------------------------------------------
        masks = blob_masks(args.images, SIZE, seed=3)
        batch = AnomalyBatch(
            image=images,
            label=(masks.flatten(1).amax(dim=1) > 0).long(),
            category=[CLASS_NAME] * len(images),
            path=[f"image{i}.png" for i in range(len(images))],
            defect_type=["blob"] * len(images),
            mask=masks,
        )
        module.zero_grad()
        our_loss, _ = module.segmentation_loss(batch)
        our_loss.backward()
        linear.zero_grad()
        with cpu_device_moves():
            text = torch.stack([their_text for _ in range(len(images))], dim=0)
            maps = official_stage_maps(official, theirs, linear, normalized, text, STAGES)
            gt = masks.clone()  # train.py: items['img_mask'].squeeze(), binarised at 0.5
            gt[gt > 0.5], gt[gt <= 0.5] = 1, 0
            focal, dice = official["FocalLoss"](), official["BinaryDiceLoss"]()
            their_loss = 0
            for stage_map in maps:
                their_loss += focal(stage_map, gt)
                their_loss += dice(stage_map[:, 1, :, :], gt)
            their_loss.backward()
        report.add("training loss", abs(float(our_loss) - float(their_loss)))
        for index, (ours_fc, their_fc) in enumerate(zip(module.model.projections, linear.fc, strict=True)):
            for name in ("weight", "bias"):
                delta = max_rel(getattr(ours_fc, name).grad, getattr(their_fc, name).grad)
                report.add(f"gradient projection {STAGES[index]}.{name}", delta, TARGET_REL, "rel")

        # ----- the papers' AUPRO on the same maps ----------------------------------------------------
        official_aupro_line(report, official["cal_pro_score"], zero_shot_map, masks.numpy(), "zero-shot maps")
        official_aupro_line(report, official["cal_pro_score"], their_few_map, masks.numpy(), "few-shot maps")

        # ----- the authors' release format: ckpt_path=<file written by the official train.py> ---------
        release_check(folder, official, theirs, backbone, config, images, their_text, tmp, args, report)


def release_check(folder, official, theirs, backbone, config, images, their_text, tmp, args, report) -> None:
    """Official ``train.py`` saves random projections; official ``test.py`` and ours load that file and
    score the same images; a file with one wrong shape and this file given to another method are refused."""
    torch.manual_seed(7)
    trained = official["LinearLayer"](args.width, config["embed_dim"], len(STAGES), "ViT-L-14-336")
    path = tmp / "epoch_3.pth"
    namespace = {"torch": torch, "trainable_layer": trained, "ckp_path": str(path)}
    run_official_statements(folder / "train.py", "torch.save(", namespace)
    torch.manual_seed(8)  # test.py builds its own LinearLayer (another random init), then loads the file
    linearlayer = official["LinearLayer"](args.width, config["embed_dim"], len(STAGES), "ViT-L-14-336")
    namespace = {
        "torch": torch,
        "args": argparse.Namespace(checkpoint_path=str(path)),
        "linearlayer": linearlayer,
    }
    run_official_statements(folder / "test.py", "torch.load(args.checkpoint_path)", namespace, count=2)
    normalized = backbone.normalize(images)
    with torch.no_grad(), cpu_device_moves():
        features, _ = theirs.encode_image(normalized, STAGES)
        features = features / features.norm(dim=-1, keepdim=True)
        their_scores = (100.0 * features @ their_text).softmax(dim=-1)[:, 1]
        stages = official_stage_maps(official, theirs, linearlayer, normalized, their_text, STAGES)
    their_map = torch.stack([stage[:, 1] for stage in stages]).sum(dim=0)

    torch.manual_seed(9)  # ours starts from other random projections too
    module = AprilGANModule(backbone, load_prompts(), shots=0, text_cache_dir=str(tmp / "text"))
    module.load_trainable_checkpoint(str(path))
    module.setup_category(CLASS_NAME, None)
    with torch.no_grad():
        prediction = module.predict_images(images)
    report.note(
        f"release file written by the official train.py ({path.stat().st_size} bytes), origin "
        f"{module.checkpoint_origin}"
    )
    report.add("release file: zero-shot final map", max_abs(prediction.anomaly_map, their_map))
    report.add("release file: image score", max_abs(prediction.image_score, their_scores))

    wrong, key = with_one_wrong_shape(path, tmp / "wrong_shape.pth")
    fresh = AprilGANModule(backbone, load_prompts(), shots=0)
    expect_refusal(
        report,
        "release file with one wrong shape refused",
        lambda: fresh.load_trainable_checkpoint(str(wrong)),
        f"key '{key}' has shape ",
    )
    other = AnomalyCLIPModule(backbone, LearnablePromptSet("anomalyclip_learned"), layers=[24])
    expect_refusal(
        report,
        "this release given to method=anomalyclip refused",
        lambda: other.load_trainable_checkpoint(str(path)),
        "is the authors' release of APRIL-GAN (ByChelsea/VAND-APRIL-GAN), made for method=aprillab",
    )
