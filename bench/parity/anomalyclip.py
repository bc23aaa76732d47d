"""Numerical parity of our AnomalyCLIP (``method=anomalyclip``) with the official code (zqhang/AnomalyCLIP).

``python -m bench.parity anomalyclip --official <checkout of zqhang/AnomalyCLIP>``
(``make parity-anomalyclip ANOMALYCLIP_DIR=<checkout>``)

Both sides get the same random weights of a shrunk ViT-L-14-336 with QuickGELU (24 vision blocks, DPAM
on blocks 6-24 as ``DPAM_layer = 20``, 12 text blocks, narrow widths) at 518 px, so the 24 -> 37
positional-embedding resize is exercised: ours resizes with the backbone config's setting
(``backbone=vit_l14_336_quickgelu``: bilinear, no antialias), the official side inside its own forward.
The official model is built by ``AnomalyCLIP_lib.build_model`` from the state dict (CPU, float32), as
``AnomalyCLIP_lib.load`` does for a state-dict checkpoint;
the prompt learner is the official ``AnomalyCLIP_PromptLearner`` (n_ctx 12, depth 9, t_n_ctx 4) and its
random parameters are copied into ours. Layers 6/12/18/24 (the official argparse default) so every tap
is compared; the published runs use 24 alone, one of them.

The per-image arithmetic of ``test.py`` / ``train.py`` lives inline in their ``test()`` / ``train()``
functions; the harness restates those lines (batch of one image at test, as ``test.py``) and calls the
official modules for everything else: ``AnomalyCLIP_lib`` (model, DPAM, ``encode_text_learn``,
``compute_similarity``, ``get_similarity_map``), ``prompt_ensemble.AnomalyCLIP_PromptLearner``,
``loss.FocalLoss`` / ``BinaryDiceLoss``, ``metrics.cal_pro_score`` and SciPy's ``gaussian_filter``.

Printed: max |delta| of the text features, per-layer maps, final map, image score, the training loss
and the gradients of the learnable prompts; exits 1 if any misses its target (1e-4 absolute; gradients
1e-4 relative to their largest entry, the deep prompt tokens 1e-3 because the official code rounds them
through float16, and so the gradient that reaches them).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from anomaly_vlm.methods.anomalyclip import AnomalyCLIPModule
from anomaly_vlm.prompts.learnable import LearnablePromptSet
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
from bench.parity.release import refusal_rows, release_file_rows, run_official_statements
from bench.report import TARGET_REL, ParityReport

OFFICIAL = OfficialCode(
    "https://github.com/zqhang/AnomalyCLIP", "ANOMALYCLIP_DIR", "AnomalyCLIP_lib/AnomalyCLIP.py"
)
MODEL = "parity-ViT-L-14-336-small"
LAYERS = [6, 12, 18, 24]
SIZE = 518
DPAM_LAYER = 20
DEEP_PROMPT_TARGET = 1e-3


def import_official(folder: Path) -> dict:
    """Import the official modules from ``folder`` (their top-level names do not clash with ours)."""
    with official_imports(folder):
        import AnomalyCLIP_lib
        import loss as official_loss
        import metrics as official_metrics
        import prompt_ensemble
        from AnomalyCLIP_lib.build_model import build_model
    return {
        "lib": AnomalyCLIP_lib,
        "build_model": build_model,
        "PromptLearner": prompt_ensemble.AnomalyCLIP_PromptLearner,
        "FocalLoss": official_loss.FocalLoss,
        "BinaryDiceLoss": official_loss.BinaryDiceLoss,
        "cal_pro_score": official_metrics.cal_pro_score,
    }


def load_settings() -> tuple[dict, LearnablePromptSet, dict]:
    backbone = OmegaConf.load(REPO_ROOT / "conf" / "backbone" / "vit_l14_336_quickgelu.yaml")
    prompts = OmegaConf.to_container(
        OmegaConf.load(REPO_ROOT / "conf" / "prompts" / "anomalyclip_learned.yaml")
    )
    prompts.pop("_target_")
    method = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "method" / "anomalyclip.yaml"))[
        "method"
    ]
    settings = {
        "quick_gelu": bool(backbone.quick_gelu),
        "pos_embed_interpolation": str(backbone.pos_embed_interpolation),
        "pos_embed_antialias": bool(backbone.pos_embed_antialias),
    }
    return settings, LearnablePromptSet(**prompts), method


def official_text(official, model, learner) -> torch.Tensor:
    """test.py / train.py: ``[1, 2, D]`` unit text features from the prompt learner."""
    prompts, tokenized, deep = learner(cls_id=None)
    text = model.encode_text_learn(prompts, tokenized, deep).float()
    text = torch.stack(torch.chunk(text, dim=0, chunks=2), dim=1)
    return text / text.norm(dim=-1, keepdim=True)


def official_layer_maps(official, patch_features, text) -> list[torch.Tensor]:
    """Per layer ``[B, H, W, 2]`` class probabilities at the input size (compute/get_similarity_map)."""
    lib = official["lib"]
    maps = []
    for patch_feature in patch_features:
        patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
        similarity, _ = lib.compute_similarity(patch_feature, text[0])
        maps.append(lib.get_similarity_map(similarity[:, 1:, :], SIZE))
    return maps


def official_test(official, theirs, their_text, normalized, layers=LAYERS):
    """test.py, one image per batch: image scores, final maps (blurred) and ``[B, layers, H, W]`` maps."""
    from scipy.ndimage import gaussian_filter

    their_scores, their_maps, their_layers = [], [], []
    with torch.no_grad(), cpu_device_moves():
        for image in normalized:
            features, patches = theirs.encode_image(image[None], layers, DPAM_layer=DPAM_LAYER)
            features = features / features.norm(dim=-1, keepdim=True)
            probs = (features @ their_text.permute(0, 2, 1) / 0.07).softmax(-1)
            their_scores.append(probs[:, 0, 1])
            layer_maps = [
                (m[..., 1] + 1 - m[..., 0]) / 2.0 for m in official_layer_maps(official, patches, their_text)
            ]
            their_layers.append(torch.cat(layer_maps))
            summed = torch.stack(layer_maps).sum(dim=0)
            blurred = [torch.from_numpy(gaussian_filter(m, sigma=4)) for m in summed.cpu()]
            their_maps.append(torch.stack(blurred))
    return torch.cat(their_scores), torch.cat(their_maps), torch.stack(their_layers)


def build_models(official, tmp: Path, config: dict, layers, precision: str = "fp32"):
    """Both sides on the same random weights and prompts: the official model (``build_model`` from the
    state dict, DPAM from block 6) and prompt learner, our backbone in ``precision`` and a factory of our
    module with the learner's random prompts copied in.

    Returns:
        ``(backbone, theirs, learner, design, make_module, with_official_prompts)``: ``make_module()``
        is a fresh module on its own random prompts (the release check loads a file into it),
        ``with_official_prompts()`` one holding the learner's.
    """
    settings, prompt_set, method = load_settings()
    backbone, _ = shrunk_backbone(MODEL, config, tmp, SIZE, settings, precision)
    design = {
        "Prompt_length": prompt_set.context_length,
        "learnabel_text_embedding_depth": prompt_set.deep_prompt_depth,
        "learnabel_text_embedding_length": prompt_set.deep_prompt_length,
    }
    with cpu_device_moves():
        # What AnomalyCLIP_lib.load does with a state-dict checkpoint on the CPU (load itself re-reads
        # the file object after a failed torch.jit.load without rewinding, which current torch rejects).
        official_state = torch.load(tmp / "weights.pt", map_location="cpu", weights_only=True)
        theirs = official["build_model"](MODEL, official_state, design).to("cpu").float().eval()
        learner = official["PromptLearner"](theirs.to("cpu"), design)
        theirs.visual.DAPM_replace(DPAM_layer=DPAM_LAYER)

    keep = ("temperature", "local_loss_weight", "global_ln_post", "blur_sigma", "blur_truncate", "dpam")

    def make_module() -> AnomalyCLIPModule:
        return AnomalyCLIPModule(
            backbone, prompt_set, layers=layers, **{key: method[key] for key in keep}, dpam_start=None
        )

    def with_official_prompts() -> AnomalyCLIPModule:
        module = make_module()
        encoder = module.model.prompt_encoder
        with torch.no_grad():
            encoder.context_normal.copy_(learner.ctx_pos[0, 0])
            encoder.context_anomalous.copy_(learner.ctx_neg[0, 0])
            for index, deep in enumerate(learner.compound_prompts_text):
                encoder.deep_prompts[index].copy_(deep)
        return module

    return backbone, theirs, learner, design, make_module, with_official_prompts


def release_check(folder, official, theirs, design, make_module, backbone, images, tmp, report) -> None:
    """Official ``train.py`` saves a random prompt learner; official ``test.py`` and ours load that file and
    score the same images; a file with one wrong shape and this file given to another method are refused."""
    torch.manual_seed(7)
    with cpu_device_moves():
        trained = official["PromptLearner"](theirs, design)
    path = tmp / "epoch_15.pth"
    namespace = {"torch": torch, "prompt_learner": trained, "ckp_path": str(path)}
    run_official_statements(folder / "train.py", "torch.save(", namespace)
    torch.manual_seed(8)  # test.py builds its own prompt learner (another random init), then loads the file
    with cpu_device_moves():
        learner = official["PromptLearner"](theirs, design)
    namespace = {
        "torch": torch,
        "args": argparse.Namespace(checkpoint_path=str(path)),
        "prompt_learner": learner,
    }
    run_official_statements(folder / "test.py", "torch.load(args.checkpoint_path)", namespace, count=2)
    with torch.no_grad(), cpu_device_moves():
        their_text = official_text(official, theirs, learner)
    their_scores, their_maps, _ = official_test(official, theirs, their_text, backbone.normalize(images))

    torch.manual_seed(9)  # ours starts from other random prompts too
    release_file_rows(
        report,
        path,
        make_module,
        "object",
        images,
        their_maps,
        their_scores,
        written_by="the official train.py",
    )
    refusal_rows(report, path, make_module, backbone, "AnomalyCLIP (zqhang/AnomalyCLIP)", "anomalyclip", tmp)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--width", type=int, default=128, help="vision and text width (multiple of 64)")


def run(args: argparse.Namespace, folder: Path, report: ParityReport) -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    official = import_official(folder)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = small_vit_l14_336(args.width, text_width=args.width, text_layers=12, embed_dim=96)
        backbone, theirs, learner, design, make_module, with_official_prompts = build_models(
            official, tmp, config, LAYERS
        )
        settings, prompt_set, _ = load_settings()
        report.note(
            f"shrunk ViT-L-14-336 (QuickGELU): 24 blocks, width {args.width}, {SIZE} px, grid "
            f"{backbone.grid_size}; ours resizes pos-embed {settings['pos_embed_interpolation']}"
            f"{' with antialias' if settings['pos_embed_antialias'] else ''}; deep prompts "
            f"{'rounded through fp16' if prompt_set.deep_prompt_fp16 else 'kept fp32'}"
        )
        module = with_official_prompts()
        encoder = module.model.prompt_encoder

        images = smooth_images(args.images, SIZE, seed=1)
        normalized = backbone.normalize(images)
        masks = blob_masks(args.images, SIZE, seed=3)
        labels = (masks.flatten(1).amax(dim=1) > 0).long()

        # ----- text features ---------------------------------------------------------------------
        with torch.no_grad(), cpu_device_moves():
            their_text = official_text(official, theirs, learner)
        our_text = module.model.text_features().detach()
        report.add("text features [normal, anomalous]", max_abs(our_text, their_text[0]))

        # ----- test: one image per batch, as test.py ------------------------------------------------
        their_scores, their_maps, their_layers = official_test(official, theirs, their_text, normalized)
        module.setup_category("object", None)
        with torch.no_grad():
            prediction = module.predict_images(images)
            our_scores, our_maps = prediction.image_score, prediction.anomaly_map
            features = module.model.encode_image(images)
            our_layers = module.model.patch_probabilities(features, our_text, (SIZE, SIZE))
        for index, layer in enumerate(LAYERS):
            report.add(f"map, block {layer}", max_abs(our_layers[layer][:, 1], their_layers[:, index]))
        report.add("final map (sum of layers, blur sigma 4)", max_abs(our_maps, their_maps))
        report.add("image score", max_abs(our_scores, their_scores))

        # ----- one training step (train.py) -------------------------------------------------------------
        learner.zero_grad()
        with cpu_device_moves():
            with torch.no_grad():
                features, patches = theirs.encode_image(normalized, LAYERS, DPAM_layer=DPAM_LAYER)
                features = features / features.norm(dim=-1, keepdim=True)
            text = official_text(official, theirs, learner)
            logits = (features.unsqueeze(1) @ text.permute(0, 2, 1))[:, 0, ...] / 0.07
            image_loss = F.cross_entropy(logits.squeeze(), labels.long().cuda())
            gt = masks.clone()
            gt[gt > 0.5], gt[gt <= 0.5] = 1, 0
            focal, dice = official["FocalLoss"](), official["BinaryDiceLoss"]()
            local = 0
            for similarity_map in official_layer_maps(official, patches, text):
                similarity_map = similarity_map.permute(0, 3, 1, 2)
                local += focal(similarity_map, gt)
                local += dice(similarity_map[:, 1, :, :], gt)
                local += dice(similarity_map[:, 0, :, :], 1 - gt)
            their_loss = 4 * local + image_loss
            their_loss.backward()
        module.zero_grad()
        our_loss = module.model.loss(images, masks, labels)["loss"]
        our_loss.backward()
        report.note(f"  (training loss: ours {float(our_loss):.6f}, official {float(their_loss):.6f})")
        report.add("training loss (glocal)", abs(float(our_loss) - float(their_loss)))
        pairs = [
            ("context vectors, normal", encoder.context_normal.grad, learner.ctx_pos.grad[0, 0], TARGET_REL),
            (
                "context vectors, anomalous",
                encoder.context_anomalous.grad,
                learner.ctx_neg.grad[0, 0],
                TARGET_REL,
            ),
        ]
        for index, deep in enumerate(learner.compound_prompts_text):
            pairs.append(
                (
                    f"deep prompt tokens, text block {index + 2}",
                    encoder.deep_prompts.grad[index],
                    deep.grad,
                    DEEP_PROMPT_TARGET,
                )
            )
        for name, ours, theirs_grad, target in pairs:
            report.add(f"gradient {name}", max_rel(ours, theirs_grad), target, "rel")

        # ----- the papers' AUPRO on the same maps ----------------------------------------------------
        official_aupro_line(
            report, official["cal_pro_score"], their_maps.numpy(), masks.numpy(), "final maps"
        )

        # ----- the authors' release format: ckpt_path=<file written by the official train.py> ---------
        release_check(folder, official, theirs, design, make_module, backbone, images, tmp, report)
