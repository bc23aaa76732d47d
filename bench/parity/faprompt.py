"""Numerical parity of our FAPrompt (``method=faprompt``) with the official code (mala-lab/FAPrompt).

``python -m bench.parity faprompt --official <checkout of mala-lab/FAPrompt>``
(``make parity-faprompt FAPROMPT_DIR=<checkout>``)

Both sides get the same random weights of a shrunk ViT-L-14-336 with QuickGELU (24 vision blocks, DPAM on
blocks 6-24 as ``DPAM_layer = 20``, a narrow vision tower) at 518 px, so the 24 -> 37 positional-embedding
resize is exercised: ours resizes with the backbone config's setting (``backbone=vit_l14_336_quickgelu``:
bilinear, no antialias), the official side inside its own forward. The text tower keeps ViT-L's width 768
and the joint embedding 768, because the official prompt learner hard-codes both (``patch_meta_net``
``Linear(768 * 10, 480)``, ``torch.zeros(768)`` in ``train.py``).

The official model is loaded by ``AnomalyCLIP_lib.load("ViT-L/14@336px", device="cpu", design_details=...)``
itself, its download step pointed at the saved random weights (it then fails ``torch.jit.load`` and reads the
state dict as for any non-JIT file). ``iopath``, through which that fallback opens the file, is replaced by
the built-in ``open`` when it is not installed. The prompt learner is the official ``FAPrompt`` and its random
parameters are copied into ours.

The per-image arithmetic of ``test.py`` / ``train.py`` lives inline in their ``test()`` / ``train()``
functions; the harness restates those lines (batch of one image at test, as ``test.py``; one training batch
of all images, as ``train.py``) and calls the official modules for everything else: ``AnomalyCLIP_lib``
(model, DPAM, ``encode_text_learn``, ``compute_similarity_ori``, ``compute_similarity``,
``get_similarity_map``), ``FAPrompt.FAPrompt``, ``loss.FocalLoss`` / ``BinaryDiceLoss`` /
``BinaryFocalLoss``, ``metrics.cal_pro_score`` and SciPy's ``gaussian_filter``. The official prior's bug (it
reads patches 0-9, not the top-10 it computes) is reproduced by our default ``prior_patches=first``.

Printed: max |delta| of the static text features, map 1 (static prompts), map 2 (per-image prompts), the
final blurred map, the image score (also after loading the official learner's saved file, as ``train.py``
writes it, with ``ckpt_path``), the training loss of one batch and the gradient of every learnable
parameter; exits 1 if any misses its target (1e-4 absolute; gradients 1e-4 relative to their largest entry,
the deep prompt tokens 1e-3 because the official code rounds them through float16 on purpose, and so the
gradient that reaches them).
"""

from __future__ import annotations

import argparse
import builtins
import sys
import tempfile
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from anomaly_vlm.methods.faprompt import FAPromptModule
from anomaly_vlm.prompts.faprompt import FAPromptSet
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
from bench.parity.release import release_file_rows
from bench.report import TARGET_REL, ParityReport

OFFICIAL = OfficialCode("https://github.com/mala-lab/FAPrompt", "FAPROMPT_DIR", "FAPrompt.py")
MODEL = "parity-faprompt-ViT-L-14-336-small"
SIZE = 518
DPAM_LAYER = 20
FEATURES_LIST = [6, 12, 18, 24]  # train.sh / test.sh; computed and discarded by the official forward
TEXT_WIDTH = 768  # hard-coded by the official prompt learner
DEEP_PROMPT_TARGET = 1e-3


def _iopath_stand_in() -> None:
    """``iopath.common.file_io.PathManagerFactory`` opening files with ``open`` (only if not installed)."""
    try:
        import iopath.common.file_io  # noqa: F401
    except ModuleNotFoundError:
        manager = types.SimpleNamespace(open=builtins.open)
        file_io = types.ModuleType("iopath.common.file_io")
        file_io.PathManagerFactory = types.SimpleNamespace(get=lambda key=None: manager)
        common = types.ModuleType("iopath.common")
        common.file_io = file_io
        package = types.ModuleType("iopath")
        package.common = common
        sys.modules.update({"iopath": package, "iopath.common": common, "iopath.common.file_io": file_io})


def import_official(folder: Path) -> dict:
    """Import the official modules from ``folder`` (their top-level names do not clash with ours)."""
    _iopath_stand_in()
    with official_imports(folder):
        import AnomalyCLIP_lib
        import AnomalyCLIP_lib.model_load as model_load
        import loss as official_loss
        import metrics as official_metrics
        from FAPrompt import FAPrompt
    return {
        "lib": AnomalyCLIP_lib,
        "model_load": model_load,
        "FAPrompt": FAPrompt,
        "FocalLoss": official_loss.FocalLoss,
        "BinaryDiceLoss": official_loss.BinaryDiceLoss,
        "BinaryFocalLoss": official_loss.BinaryFocalLoss,
        "cal_pro_score": official_metrics.cal_pro_score,
    }


def load_settings() -> tuple[dict, FAPromptSet, dict]:
    backbone = OmegaConf.load(REPO_ROOT / "conf" / "backbone" / "vit_l14_336_quickgelu.yaml")
    prompts = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "prompts" / "faprompt.yaml"))
    prompts.pop("_target_")
    method = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "method" / "faprompt.yaml"))["method"]
    settings = {
        "quick_gelu": bool(backbone.quick_gelu),
        "pos_embed_interpolation": str(backbone.pos_embed_interpolation),
        "pos_embed_antialias": bool(backbone.pos_embed_antialias),
    }
    return settings, FAPromptSet(**prompts), method


def load_official_model(official: dict, weights: Path, design: dict):
    """``AnomalyCLIP_lib.load`` on the saved random weights (its download step returns that file)."""
    model_load = official["model_load"]
    original = model_load._download
    model_load._download = lambda url, cache_dir=None: str(weights)
    try:
        model, _ = model_load.load("ViT-L/14@336px", device="cpu", design_details=design)
    finally:
        model_load._download = original
    return model.eval()


def official_text(model, learner, selected=None):
    """(raw positive ``[1, D]``, raw negatives ``[10, D]``, bias) as train.py / test.py encode them."""
    pos, neg, ids_pos, ids_neg, deep, bias = learner.forward(selected_tokens=selected)
    text_pos = model.encode_text_learn(pos, ids_pos, deep).float()
    text_neg = model.encode_text_learn(neg, ids_neg, deep).float()
    return text_pos, text_neg, bias


def aggregate(text_pos, text_neg):
    """train.py:93-96 / test.py:100-104 without the batch stacking."""
    text = torch.cat([text_pos, torch.mean(text_neg, dim=0, keepdim=True)])
    return text / text.norm(dim=-1, keepdim=True)


def official_select(patch_features):
    """The prior's tokens (train.py:103-113): the top-k is computed, then patches 0..9 are read."""
    tokens = []
    for i in range(patch_features.shape[1]):
        tokens.append(torch.stack([patch_features[1:, :, :].permute(1, 0, 2)[i, k, :] for k in range(10)]))
    return torch.stack(tokens)


def official_test(official, model, learner, normalized):
    """test.py (one image per batch): scores, map 1, map 2 (abnormal channels) and the blurred final maps."""
    from scipy.ndimage import gaussian_filter

    lib = official["lib"]
    scores, maps1, maps2, finals = [], [], [], []
    with torch.no_grad(), cpu_device_moves():
        for image in normalized:
            image_features, patch_features = model.encode_image(
                image[None], FEATURES_LIST, DPAM_layer=DPAM_LAYER
            )
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            text = aggregate(*official_text(model, learner)[:2])[None]
            patch_features = patch_features / patch_features.norm(dim=-1, keepdim=True)
            similarity, _ = lib.compute_similarity_ori(patch_features, text[0])
            map1 = lib.get_similarity_map(similarity[1:, :], SIZE).squeeze(0)
            max1 = similarity[1:, :, 1].max(dim=0).values
            selected = official_select(patch_features)
            per_image = [
                aggregate(*official_text(model, learner, selected[i])[:2]) for i in range(len(selected))
            ]
            text = torch.stack(per_image)
            probs = ((image_features @ text.permute(0, 2, 1)) / 0.07).softmax(-1)[:, 0, 1]
            similarity, _ = lib.compute_similarity(patch_features, text)
            max2 = similarity[1:, :, 1].max(dim=0).values
            map2 = lib.get_similarity_map(similarity[1:, :], SIZE).squeeze(0)
            final = (map1[1, :] + 1 - map1[0, :] + map2[1, :] + 1 - map2[0, :]) / 4.0
            scores.append(0.5 * (probs + (2 * max1 + max2) / 3))
            maps1.append(map1[1])
            maps2.append(map2[1])
            finals.append(torch.Tensor(gaussian_filter(final[None, None].cpu(), sigma=10))[0])
    return torch.cat(scores), torch.stack(maps1), torch.stack(maps2), torch.cat(finals)


def official_train_loss(official, model, learner, normalized, masks, labels):
    """train.py:69-161 for one batch: the total loss (backward done by the caller)."""
    lib = official["lib"]
    with torch.no_grad():
        image_features, patch_features = model.encode_image(normalized, FEATURES_LIST, DPAM_layer=DPAM_LAYER)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    gt = masks.clone()
    gt[gt > 0.5] = 1
    gt[gt <= 0.5] = 0
    text_pos, text_neg, _ = official_text(model, learner)
    loss_ab = 0
    for k in range(len(text_neg) - 1):
        for m in range(k + 1, len(text_neg)):
            loss_ab = loss_ab + abs(
                torch.dot(text_neg[k], text_neg[m]) / (torch.norm(text_neg[k]) * torch.norm(text_neg[m]))
            )
    text = aggregate(text_pos, text_neg)[None]
    patch_features = patch_features / patch_features.norm(dim=-1, keepdim=True)
    similarity, _ = lib.compute_similarity_ori(patch_features, text[0])
    map1 = lib.get_similarity_map(similarity[1:, :], SIZE)
    max1 = similarity[1:, :, 1].max(dim=0).values
    selected = official_select(patch_features)
    per_image, loss_bias = [], 0.0
    for i in range(len(selected)):
        pos, neg, bias = official_text(model, learner, selected[i])
        per_image.append(torch.cat([pos, torch.mean(neg, dim=0, keepdim=True)]))
        if labels[i] == 0:
            loss_bias = loss_bias + torch.nn.MSELoss()(bias.squeeze(0), torch.zeros(TEXT_WIDTH))
    text = torch.stack(per_image)
    text = text / text.norm(dim=-1, keepdim=True)
    similarity, _ = lib.compute_similarity(patch_features, text)
    map2 = lib.get_similarity_map(similarity[1:, :], SIZE)
    max2 = similarity[1:, :, 1].max(dim=0).values
    logits = (image_features.unsqueeze(1) @ text.permute(0, 2, 1))[:, 0, ...] / 0.07
    image_loss = F.cross_entropy(logits.squeeze(), labels.long())
    score = 0.5 * (logits.softmax(-1)[:, 1] + (2 * max1 + max2) / 3)
    image_loss2 = official["BinaryFocalLoss"]()(score, labels.float())
    focal, dice = official["FocalLoss"](), official["BinaryDiceLoss"]()
    loss = focal(map1, gt) + dice(map1[:, 1, :, :], gt) + dice(map1[:, 0, :, :], 1 - gt)
    loss += 0.5 * focal(map2, gt) + 0.5 * dice(map2[:, 1, :, :], gt) + 0.5 * dice(map2[:, 0, :, :], 1 - gt)
    return loss + image_loss + image_loss2 + 0.1 * loss_ab + loss_bias


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--width", type=int, default=128, help="vision width (multiple of 64)")


def run(args: argparse.Namespace, folder: Path, report: ParityReport) -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    official = import_official(folder)
    settings, prompt_set, method = load_settings()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = small_vit_l14_336(args.width, text_width=TEXT_WIDTH, text_layers=12, embed_dim=TEXT_WIDTH)
        backbone, _ = shrunk_backbone(MODEL, config, tmp, SIZE, settings)
        report.note(
            f"shrunk ViT-L-14-336 (QuickGELU): 24 vision blocks of width {args.width}, text 12 x "
            f"{TEXT_WIDTH}, {SIZE} px, grid {backbone.grid_size}; ours resizes pos-embed "
            f"{settings['pos_embed_interpolation']}"
            f"{' with antialias' if settings['pos_embed_antialias'] else ''}; deep prompts "
            f"{'rounded through fp16' if prompt_set.deep_prompt_fp16 else 'kept fp32'}; prior patches "
            f"{method['prior_patches']}"
        )
        design = {
            "Prompt_length": 12,  # train.sh --n_ctx, ignored by the official learner
            "learnabel_text_embedding_depth": prompt_set.deep_prompt_depth,
            "learnabel_text_embedding_length": prompt_set.deep_prompt_length,
        }
        with cpu_device_moves():
            theirs = load_official_model(official, tmp / "weights.pt", design)
            learner = official["FAPrompt"](theirs.to("cpu"), design)
            theirs.visual.DAPM_replace(DPAM_layer=DPAM_LAYER)

        keep = [key for key in method if key not in ("_target_", "lr", "betas")]
        module = FAPromptModule(backbone, prompt_set, **{key: method[key] for key in keep})
        ours = module.model.prompt_learner
        with torch.no_grad():
            ours.ctx_pos.copy_(learner.ctx_pos[0, 0])
            ours.ctx_neg.copy_(learner.ctx_neg[0])
            for index, deep in enumerate(learner.compound_prompts_text):
                ours.deep_prompts[index].copy_(deep)
            ours.patch_meta_net.load_state_dict(learner.patch_meta_net.state_dict())

        images = smooth_images(args.images, SIZE, seed=1)
        normalized = backbone.normalize(images)
        masks = blob_masks(args.images, SIZE, seed=3)
        labels = (masks.flatten(1).amax(dim=1) > 0).long()

        # ----- static text features ----------------------------------------------------------------
        with torch.no_grad(), cpu_device_moves():
            their_pos, their_neg, _ = official_text(theirs, learner)
        our_static = ours().detach()
        report.add("static text features, normal (raw)", max_abs(our_static[0], their_pos[0]))
        report.add("static text features, 10 abnormal (raw)", max_abs(our_static[1:], their_neg))

        # ----- test: one image per batch, as test.py ---------------------------------------------------
        their_scores, their_map1, their_map2, their_maps = official_test(
            official, theirs, learner, normalized
        )
        module.setup_category("object", None)
        with torch.no_grad():
            prediction = module.predict_images(images)
            parts = module.model.forward_features(
                module.model.frozen_features(images), module.model.static_text
            )
            our_map1 = module.model.upsample(parts["p1"], (SIZE, SIZE))[:, 1]
            our_map2 = module.model.upsample(parts["p2"], (SIZE, SIZE))[:, 1]
        report.add("map 1 (static prompts), abnormal probability", max_abs(our_map1, their_map1))
        report.add("map 2 (per-image prompts), abnormal probability", max_abs(our_map2, their_map2))
        report.add(
            "final map ((map1 + map2) / 2, blur sigma 10)", max_abs(prediction.anomaly_map, their_maps)
        )
        report.add("image score", max_abs(prediction.image_score, their_scores))

        # ----- the official save format (train.py:170-173) loaded with ckpt_path ------------------------
        release = tmp / "epoch_1.pth"
        torch.save({"prompt_learner": learner.state_dict()}, release)
        release_file_rows(
            report,
            release,
            lambda: FAPromptModule(backbone, prompt_set, **{key: method[key] for key in keep}),
            "object",
            images,
            their_maps,
            their_scores,
            prefix="official checkpoint file via ckpt_path",
        )

        # ----- one training step (train.py) -------------------------------------------------------------
        learner.zero_grad()
        with cpu_device_moves():
            their_loss = official_train_loss(official, theirs, learner, normalized, masks, labels)
            their_loss.backward()
        module.zero_grad()
        our_loss = module.model.loss(images, masks, labels)["loss"]
        our_loss.backward()
        report.note(f"  (training loss: ours {float(our_loss):.6f}, official {float(their_loss):.6f})")
        report.add("training loss", abs(float(our_loss) - float(their_loss)))
        pairs = [
            ("ctx_pos (shared normal context)", ours.ctx_pos.grad, learner.ctx_pos.grad[0, 0], TARGET_REL),
            ("ctx_neg (abnormality tokens)", ours.ctx_neg.grad, learner.ctx_neg.grad[0], TARGET_REL),
        ]
        for index, deep in enumerate(learner.compound_prompts_text):
            pairs.append(
                (
                    f"deep prompt tokens, text block {index + 2} (fp16 on purpose)",
                    ours.deep_prompts.grad[index],
                    deep.grad,
                    DEEP_PROMPT_TARGET,
                )
            )
        for layer in ("linear1", "linear2"):
            for kind in ("weight", "bias"):
                pairs.append(
                    (
                        f"patch_meta_net.{layer}.{kind}",
                        getattr(getattr(ours.patch_meta_net, layer), kind).grad,
                        getattr(getattr(learner.patch_meta_net, layer), kind).grad,
                        TARGET_REL,
                    )
                )
        for name, our_grad, their_grad, target in pairs:
            report.add(f"gradient {name}", max_rel(our_grad, their_grad), target, "rel")

        # ----- the paper's AUPRO on the same maps -----------------------------------------------------
        official_aupro_line(
            report, official["cal_pro_score"], their_maps.numpy(), masks.numpy(), "final maps"
        )
