"""Numerical parity of our Bayes-PFL (``method=bayespfl``) with the official code (xiaozhen228/Bayes-PFL).

``python -m bench.parity bayespfl --official <checkout of xiaozhen228/Bayes-PFL>``
(``make parity-bayespfl BAYESPFL_DIR=<checkout>``)

Both sides get the same random weights of a ViT-L-14-336-shaped CLIP (24 vision blocks, patch 14, taps
6/12/18/24, 12 text blocks; narrow widths by default, ``--width 1024 --text-width 768`` for the full size)
at 518 px. The weights go through the official loader's own path: an OpenAI-layout state dict file read by
the official ``Load_CLIP`` (``torch.jit.load`` falls back to ``torch.load``, ``build_model`` rounds to fp16
and back, a new 518 px ``CLIP`` gets the bicubic + antialias ``resize_pos_embed`` and the extra token
row). The file holds values already rounded to fp16, so ours (``backbone=vit_l14_336``: plain GELU,
bicubic with antialias) loads the same numbers. The official ``Context_Prompting`` is built with the
official defaults (``B = 3``, ``P = Q = 5``, ``K = 10``) and its random parameters are copied into ours.

The official sampling draws ``torch.randn_like`` inside ``PFL.reparameterize``; the harness replaces that
method, while the official code runs, by the same arithmetic (``eps * sqrt(var) + mu``) on noise it drew
beforehand, and gives ours the same noise. Everything else runs as released.

Harness-only settings, the official code itself is used unmodified:

* ``.cuda()`` / ``.to("cuda")`` (the visual forward's unused attention sum, the KL's ``logvar``) go to the
  CPU, and ``is_cuda`` is set to False on the three flow modules (they call ``.cuda()`` otherwise);
* the checkout is the working directory while it imports (its tokenizer opens ``./models/...``);
* test.py's and train.py's loop bodies are restated (score aggregation; the loss lines of one batch, with
  the bank index the harness chooses instead of ``torch.randint``) around the official modules and losses;
  the set-level image score restates ``calcuate_metric_pixel``'s lines.

Compared: the frozen features (pooled embedding, the four taps), the test-time image score and maps of
every image (``sample_num`` samples, official order), the top-k pixel means and the set-level image score,
the stage-2 image score, the training loss of one batch (stage 1) and the gradient of every learnable
parameter (relative to the largest official entry; ``temperature_image``'s, a sum of nearly cancelling
terms, relative to the sum of their magnitudes, its plain figure shown unchecked), the stage-2 loss of
one batch (CE of the ``image_mapping(g + fuse(taps))`` logits) and the gradient of every stage-2 parameter
(``lr_group5``), and a file saved as ``train.py`` saves (``{"MyModel": state_dict}``) loaded by
``ckpt_path``. Everything runs in float32 (the official code casts
to fp16 only its weights, at load); target 1e-4. Exits 1 when a figure misses its target, 2 without the
official code.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from anomaly_vlm.methods.bayespfl import BayesPFLModule
from anomaly_vlm.methods.bayespfl.official_weights import official_name
from anomaly_vlm.methods.bayespfl.torch_model import class_sentence
from anomaly_vlm.prompts import PromptSet
from bench import REPO_ROOT
from bench.parity.official import (
    OfficialCode,
    blob_masks,
    cpu_device_moves,
    max_abs,
    max_rel,
    official_imports,
    register_config,
    small_vit_l14_336,
    smooth_images,
)
from bench.report import TARGET_REL, ParityReport

OFFICIAL = OfficialCode("https://github.com/xiaozhen228/Bayes-PFL", "BAYESPFL_DIR", "models/VPB.py")
MODEL = "parity-bayespfl-ViT-L-14-336"
LAYERS = [6, 12, 18, 24]
SIZE = 518
#: Test categories: one with the official top-20 rule, one renamed in the sentence (top 2000), one plain.
CATEGORIES = ("screw", "pcb1", "bottle")


def import_official(folder: Path) -> dict:
    with official_imports(folder, chdir=True):
        import loss as official_loss
        import models.PFL as pfl
        import models.VPB as vpb
        from models.model_CLIP import Load_CLIP, tokenize
    return {
        "Context_Prompting": vpb.Context_Prompting,
        "TextEncoder": vpb.TextEncoder,
        "PFL": pfl.PFL,
        "Load_CLIP": Load_CLIP,
        "tokenize": tokenize,
        "FocalLoss": official_loss.FocalLoss,
        "DiceLoss": official_loss.DiceLoss,
        "Orthogonal_Loss": official_loss.Orthogonal_Loss,
    }


class InjectedNoise:
    """``PFL.reparameterize`` with noise drawn beforehand (the official arithmetic, another source of eps).

    ``queue`` holds, in call order, ``eps`` of the shape of ``var`` (training) or ``[L, *var.shape]``.
    """

    def __init__(self) -> None:
        self.queue: list[torch.Tensor] = []

    def __call__(self, module, mu, var, mode=None):
        eps = self.queue.pop(0)
        std = var.sqrt()
        if mode == "train":
            return eps * std + mu
        return torch.stack([eps[i] * std + mu for i in range(module.L)], dim=0)

    @contextlib.contextmanager
    def installed(self, pfl_class):
        original = pfl_class.reparameterize
        pfl_class.reparameterize = lambda module, mu, var, mode=None: self(module, mu, var, mode)
        try:
            yield
        finally:
            pfl_class.reparameterize = original
        if self.queue:
            raise RuntimeError(f"{len(self.queue)} injected noise tensors were not used")


def load_settings() -> tuple[dict, dict]:
    backbone = OmegaConf.load(REPO_ROOT / "conf" / "backbone" / "vit_l14_336.yaml")
    method = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "method" / "bayespfl.yaml"))["method"]
    method.pop("_target_")
    method["sample_seed"] = 0
    method["augment_seed"] = 0  # the file's ${seed}; the harness feeds features, not augmented batches
    settings = {
        "quick_gelu": bool(backbone.quick_gelu),
        "pos_embed_interpolation": str(backbone.pos_embed_interpolation),
        "pos_embed_antialias": bool(backbone.pos_embed_antialias),
    }
    return settings, method


def fp16_rounded_backbone(config: dict, folder: Path, settings: dict):
    """Our backbone and the OpenAI-layout weight file the official ``Load_CLIP`` reads (values rounded to
    fp16, which ``build_model``'s ``convert_weights`` would do to its weights anyway)."""
    from anomaly_vlm.backbones.clip import FrozenCLIP

    register_config(MODEL, config, folder)
    native = FrozenCLIP(MODEL, None, image_size=336, quick_gelu=settings["quick_gelu"], seed=0)
    state = {key: value.detach().half().float() for key, value in native.clip.state_dict().items()}
    path = folder / "ViT-L-14-336px.pt"
    torch.save(state, path)
    return FrozenCLIP(MODEL, str(path), image_size=SIZE, **settings), path


def official_args(config: dict, sample_num: int) -> argparse.Namespace:
    return argparse.Namespace(
        prompt_context_len=5,
        prompt_num=3,
        prompt_state_len=5,
        num_flows=10,
        sample_num=sample_num,
        features_list=LAYERS,
        image_size=SIZE,
        vision_width=config["vision_cfg"]["width"],
        text_width=config["text_cfg"]["width"],
        embed_dim=config["embed_dim"],
    )


def copy_parameters(theirs, ours) -> list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]]:
    """Copy the official parameters into ours; returns (our name, ours, theirs) for every learnable one."""
    official = dict(theirs.named_parameters())
    pairs = []
    with torch.no_grad():
        for name, parameter in ours.named_parameters():
            if name.startswith("backbone."):
                continue
            source = official[official_name(name)]
            parameter.copy_(source)
            pairs.append((name, parameter, source))
    return pairs


def official_test_image(official, clip, theirs, encoder, image, category, args, noise, stages):
    """test.py's loop body for one image (batch 1): per stage the image score and the unblurred map."""
    out = {}
    with torch.no_grad():
        image_features, _, patch_tokens = clip.encode_image(image, args.features_list)
        text, _ = theirs.forward_ensemble(
            encoder, image_features, patch_tokens, [category], "cpu", official["tokenize"], mode="test"
        )
        pairs = args.prompt_num * args.sample_num
        for stage in stages:
            pro_img, maps_list = theirs(text, image_features, patch_tokens, stage=stage, mode="test")
            pro_img = pro_img.squeeze(2)
            temp_cls = 0
            for i in range(pairs):
                probs = torch.cat([pro_img[:, i].unsqueeze(0), pro_img[:, i + pairs].unsqueeze(0)], dim=1)
                temp_cls = temp_cls + probs.softmax(dim=-1)[0, 1]
            temp_cls = temp_cls / pairs
            maps = []
            for anomaly_map in maps_list:
                for i in range(pairs):
                    pair = torch.stack([anomaly_map[:, i, :, :], anomaly_map[:, i + pairs, :, :]], dim=1)
                    maps.append(torch.softmax(pair, dim=1)[:, 1, :, :].cpu().numpy())
            out[stage] = (float(temp_cls), np.mean(maps, axis=0)[0])
    return out, image_features, patch_tokens


def official_set_score(text_scores: np.ndarray, maps: np.ndarray, categories) -> np.ndarray:
    """calcuate_metric_pixel's image score (alpha 0.5) over one set: min-max text + min-max top-k mean."""
    topk = []
    for anomaly_map, category in zip(maps, categories, strict=True):
        k = (
            -20
            if category
            in ["capsules", "macaroni1", "macaroni2", "pipe_fryum", "screw", "cashew", "chewinggum"]
            else -2000
        )
        topk.append(np.mean(np.partition(anomaly_map.reshape(-1), kth=k)[k:]))
    pr_sp_tmp = np.array(topk)
    pr_sp_tmp = (pr_sp_tmp - pr_sp_tmp.min()) / (pr_sp_tmp.max() - pr_sp_tmp.min() + 1e-8)
    pr_sp = (text_scores - text_scores.min()) / (text_scores.max() - text_scores.min() + 1e-8)
    return 0.5 * pr_sp + 0.5 * pr_sp_tmp, np.array(topk)


def temperature_gradient_terms(logit_grad: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The terms whose sum is the loss's gradient with respect to ``temperature_image``.

    The image logits are ``exp(t) * cos``, so ``dL/dt = sum over logits of dL/dlogit * logit``. With random
    weights the normal and abnormal logits of an image are nearly equal and the CE's ``dL/dlogit`` are
    opposite, so the terms (about 0.1 each at the full width) cancel to a total about a hundred times
    smaller: a rounding-level difference of the text features (1e-7) shows as 1e-4 of that total although
    every term agrees to 1e-6. The gradient is therefore checked relative to the sum of the terms'
    magnitudes (:func:`cancellation_relative`), its plain relative difference shown unchecked.
    """
    return (logit_grad * logits).detach()


def cancellation_relative(ours: torch.Tensor, theirs: torch.Tensor, terms: torch.Tensor) -> float:
    """``|ours - theirs|`` (max over entries) relative to ``sum |terms|``, the magnitude the rounding of a
    sum of ``terms`` scales with (not the sum itself, which cancellation can make arbitrarily small)."""
    scale = float(terms.abs().sum())
    return max_abs(ours, theirs) / (scale if scale > 0 else 1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=3, help="test images (one forward each, as test.py)")
    parser.add_argument("--batch", type=int, default=2, help="training batch (the official loss needs >= 2)")
    parser.add_argument("--samples", type=int, default=10, help="test-time samples per flow (test.py: 10)")
    parser.add_argument("--width", type=int, default=128, help="vision width (multiple of 64; 1024 = ViT-L)")
    parser.add_argument(
        "--text-width", type=int, default=128, help="text width = embed_dim (multiple of 64; 768 = ViT-L)"
    )
    parser.add_argument("--prompt-index", type=int, default=1, help="bank prompt of the training batch")


def run(args: argparse.Namespace, folder: Path, report: ParityReport) -> None:
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    official = import_official(folder)
    settings, method = load_settings()
    method["sample_num"] = args.samples
    categories = [CATEGORIES[index % len(CATEGORIES)] for index in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp, cpu_device_moves():
        tmp = Path(tmp)
        config = small_vit_l14_336(args.width, args.text_width, text_layers=12, embed_dim=args.text_width)
        backbone, weight_file = fp16_rounded_backbone(config, tmp, settings)
        report.note(
            f"ViT-L-14-336-shaped CLIP (plain GELU): 24 blocks, width {args.width}, text width "
            f"{args.text_width}, {SIZE} px, grid {backbone.grid_size}; weights rounded to fp16, read by the "
            f"official Load_CLIP; {args.samples} samples per flow"
        )
        clip, _, _ = official["Load_CLIP"](SIZE, str(weight_file), device="cpu")
        clip.eval().requires_grad_(False)
        oargs = official_args(config, args.samples)
        torch.manual_seed(0)
        theirs = official["Context_Prompting"](oargs)
        for flow in (theirs.PFL_context, theirs.PFL_normal, theirs.PFL_abnormal):
            flow.is_cuda = False
        encoder = official["TextEncoder"](clip, oargs)
        module = BayesPFLModule(backbone, PromptSet("unused", ["{}"], ["{}"], ["{}"]), **method)
        ours = module.model
        pairs = copy_parameters(theirs, ours)
        noise = InjectedNoise()
        dim = args.text_width

        # ----- test: one image per forward, as test.py -------------------------------------------
        images = smooth_images(args.images, SIZE, seed=3)
        normalized = backbone.normalize(images)
        generator = torch.Generator().manual_seed(11)
        eps = [torch.randn(3, args.samples, 1, dim, generator=generator) for _ in range(args.images)]
        their = {1: [], 2: []}
        deltas = {"pooled": 0.0, "taps": 0.0, "map": 0.0, "score": 0.0, "blurred": 0.0, "stage2": 0.0}
        ours_scores, ours_topk = [], []
        theirs.zk_n = theirs.zk_a = None
        from scipy.ndimage import gaussian_filter

        for index in range(args.images):
            category = categories[index]
            noise.queue.extend([eps[index][0], eps[index][1], eps[index][2]])
            with noise.installed(official["PFL"]):
                result, pooled, taps = official_test_image(
                    official,
                    clip,
                    theirs,
                    encoder,
                    normalized[index : index + 1],
                    category,
                    oargs,
                    noise,
                    (1, 2),
                )
            for stage in (1, 2):
                their[stage].append(result[stage])
            features = ours.frozen_features(normalized[index : index + 1], normalized=True)
            deltas["pooled"] = max(deltas["pooled"], max_abs(features["global_embedding"], pooled))
            for layer, tap in zip(LAYERS, taps, strict=True):
                deltas["taps"] = max(deltas["taps"], max_abs(features[f"block_{layer}"][:, 1:], tap))
            ours.set_category(category)
            with torch.no_grad():  # the image-agnostic samples of the first image, reused (official cache)
                first = eps[0]
                ours.state_samples = torch.stack(
                    [
                        ours.state_samples_of(flow, first[i][:, 0])[0]
                        for i, flow in ((1, ours.normal_flow), (2, ours.abnormal_flow))
                    ]
                )
            for stage in (1, 2):
                ours.stage = stage
                prediction = ours.score(features, noise=eps[index][0])
                score, raw = result[stage]
                deltas["score" if stage == 1 else "stage2"] = max(
                    deltas["score" if stage == 1 else "stage2"],
                    abs(float(prediction.extras["text_score"][0]) - score),
                )
                if stage == 1:
                    blurred = gaussian_filter(raw[None], sigma=8, axes=(1, 2))[0]
                    deltas["blurred"] = max(deltas["blurred"], max_abs(prediction.anomaly_map[0], blurred))
                    ours_scores.append(prediction)
                    ours_topk.append(float(prediction.extras["topk_mean"][0]))
        report.add("frozen: pooled embedding (ln_post CLS @ proj)", deltas["pooled"])
        report.add("frozen: raw patch tokens, blocks 6/12/18/24", deltas["taps"])
        report.add(f"test: image text score ({args.samples} samples, stage 1)", deltas["score"])
        report.add("test: image text score (stage 2 branch)", deltas["stage2"])
        report.add("test: final map (sigma 8 blur)", deltas["blurred"])
        text_scores = np.array([score for score, _ in their[1]])
        maps = np.stack([raw for _, raw in their[1]])
        fused, topk = official_set_score(text_scores, maps, categories)
        report.note(
            f"  official text scores {[round(float(x), 5) for x in text_scores]}, top-k means "
            f"{[round(float(x), 5) for x in topk]}, map range [{maps.min():.4f}, {maps.max():.4f}]"
        )
        report.add("test: top-k pixel mean (class rule)", max_abs(torch.tensor(ours_topk), topk))
        # Our set step runs per category; the restated metric code min-maxes per category too, so the
        # images are scored as one set of their own for this comparison.
        from anomaly_vlm.methods.contract import Prediction

        joined = Prediction.concat(ours_scores)
        stats_free = ours.postprocess_set(joined)
        report.add("test: set-level image score (min-max fusion)", max_abs(stats_free.image_score, fused))

        # ----- training: one batch, stage 1, as train.py -----------------------------------------
        batch_images = smooth_images(args.batch, SIZE, seed=5)
        masks = blob_masks(args.batch, SIZE, seed=6)
        labels = (masks.flatten(1).amax(dim=1) > 0).long()
        names = [CATEGORIES[(index + 1) % len(CATEGORIES)] for index in range(args.batch)]
        train_eps = [
            torch.randn(args.batch, dim, generator=generator),
            torch.randn(1, dim, generator=generator),
            torch.randn(1, dim, generator=generator),
        ]
        r = int(args.prompt_index)
        theirs.train()
        theirs.zero_grad()
        noise.queue.extend(train_eps)
        with noise.installed(official["PFL"]):
            image = backbone.normalize(batch_images)
            gt = masks.clone().squeeze()
            gt[gt > 0.5], gt[gt < 0.5] = 1, 0
            with torch.no_grad():
                image_features, _, patch_tokens = clip.encode_image(image, oargs.features_list)
            text_embeddings, loss_reg = theirs.forward_ensemble(
                encoder, image_features, patch_tokens, names, "cpu", official["tokenize"], mode="train"
            )
            pro_img, anomaly_maps_list = theirs(
                text_embeddings, image_features, patch_tokens, stage=1, mode="train"
            )
            pro_img = pro_img.squeeze(2)
            index_prompt = torch.tensor([r])
            pro_img = torch.cat(
                [pro_img[:, index_prompt], pro_img[:, index_prompt + oargs.prompt_num]], dim=1
            )
            loss_class = torch.nn.CrossEntropyLoss()(pro_img, labels)
            loss_dist_reg = loss_reg[1] + loss_reg[2] + loss_reg[3]
            loss_text = official["Orthogonal_Loss"]()(text_embeddings, oargs)
            focal, dice = official["FocalLoss"](), official["DiceLoss"]()
            loss_foc = loss_dic = 0
            for anomaly_map in anomaly_maps_list:
                select = torch.cat(
                    [
                        anomaly_map[:, index_prompt, :, :],
                        anomaly_map[:, index_prompt + oargs.prompt_num, :, :],
                    ],
                    dim=1,
                )
                select = torch.softmax(select, dim=1)
                loss_foc += focal(select.clone(), gt.clone())
                loss_dic += dice(select, gt)
            their_loss = loss_class + loss_foc + loss_dic + loss_dist_reg + loss_text
            pro_img.retain_grad()  # the pair logits: temperature_image's gradient is a sum over them
            their_loss.backward()
        temperature_terms = temperature_gradient_terms(pro_img.grad, pro_img)

        ours.zero_grad()
        features = ours.frozen_features(image, normalized=True)
        ids = backbone.tokenize([class_sentence(name) for name in names])
        losses = ours.loss(features, masks, labels, ids, r, noise=train_eps)
        losses["loss"].backward()
        report.note(
            f"  official loss {float(their_loss):.6f} = CE {float(loss_class):.5f} + focal "
            f"{float(loss_foc):.5f} + dice {float(loss_dic):.5f} + KL {float(loss_dist_reg):.5f} + orth. "
            f"{float(loss_text):.5f}"
        )
        report.add("training: loss of one batch", abs(float(losses["loss"]) - float(their_loss)))
        report.add(
            "training: KL terms (0.01 x sum)", abs(float(losses["distribution_loss"]) - float(loss_dist_reg))
        )
        worst, count = ("", 0.0), 0
        for name, mine, official_parameter in pairs:
            if official_parameter.grad is None or mine.grad is None:
                if (official_parameter.grad is None) != (mine.grad is None):
                    report.add(f"gradient {name} (one side has none)", float("inf"))
                continue
            value = max_rel(mine.grad, official_parameter.grad)
            count += 1
            if name == "temperature_image":
                # A sum of terms of both signs that nearly cancel: shown relative to itself, checked
                # relative to the sum of the terms' magnitudes (see temperature_gradient_terms).
                report.add(f"gradient {name} (rel. to itself)", value, None, "rel")
                terms = temperature_terms
                report.note(
                    f"  temperature_image: official gradient {float(official_parameter.grad):.6e} = sum of "
                    f"{terms.numel()} terms dL/dlogit * logit ({float(terms.sum()):.6e}), sum of their |.| "
                    f"{float(terms.abs().sum()):.6e}"
                )
                value = cancellation_relative(mine.grad, official_parameter.grad, temperature_terms)
                report.add(f"gradient {name} (rel. to sum of |terms|)", value, TARGET_REL, "rel")
            else:
                report.add(f"gradient {name}", value, TARGET_REL, "rel")
            worst = max(worst, (name, value), key=lambda item: item[1])
        report.note(
            f"  {count} learnable tensors with a gradient compared; largest relative |d|: {worst[0]} "
            f"{worst[1]:.2e}"
        )

        # ----- training: one batch, stage 2, as train.py once it has switched ----------------------
        stage_two_eps = [
            torch.randn(args.batch, dim, generator=generator),
            torch.randn(1, dim, generator=generator),
            torch.randn(1, dim, generator=generator),
        ]
        # optimizer_stage2's parameters: train.py's lr_group5, chosen by name.
        group5 = {
            name
            for name, _ in theirs.named_parameters()
            if "class_mapping" in name or "image_mapping" in name or "fuse" in name
        }
        stage_two_pairs = [
            (name, mine, their_p) for name, mine, their_p in pairs if official_name(name) in group5
        ]
        ours_stage_two = {name for name, _ in ours.stage_two_parameters()}
        report.add(
            "stage 2: its parameters (ours vs lr_group5, names differing)",
            float(len(group5 ^ {official_name(name) for name in ours_stage_two})),
            0.0,
        )
        theirs.zero_grad()
        noise.queue.extend(stage_two_eps)
        with noise.installed(official["PFL"]):
            text_embeddings, _ = theirs.forward_ensemble(
                encoder, image_features, patch_tokens, names, "cpu", official["tokenize"], mode="train"
            )
            pro_img, _ = theirs(text_embeddings, image_features, patch_tokens, stage=2, mode="train")
            pro_img = pro_img.squeeze(2)
            pro_img = torch.cat(
                [pro_img[:, index_prompt], pro_img[:, index_prompt + oargs.prompt_num]], dim=1
            )
            their_stage_two = torch.nn.CrossEntropyLoss()(pro_img, labels)
            their_stage_two.backward()
        ours.zero_grad()
        stage_two_losses = ours.stage_two_loss(features, labels, ids, r, noise=stage_two_eps)
        stage_two_losses["loss"].backward()
        report.note(f"  official stage-2 loss (CE only) {float(their_stage_two):.6f}")
        report.add(
            "stage 2: loss of one batch", abs(float(stage_two_losses["loss"]) - float(their_stage_two))
        )
        worst, count = ("", 0.0), 0
        largest = max(float(p.grad.abs().max()) for _, _, p in stage_two_pairs if p.grad is not None)
        for name, mine, official_parameter in stage_two_pairs:
            if official_parameter.grad is None or mine.grad is None:
                report.add(f"stage 2: gradient {name} (one side has none)", float("inf"))
                continue
            if float(official_parameter.grad.abs().max()) < 1e-6 * largest:
                # fuse.compress.bias: a shift shared by every patch leaves the softmax over the patches
                # unchanged, so its gradient is 0 up to rounding on both sides; relative to the largest
                # stage-2 gradient instead of its own rounding noise.
                value = max_abs(mine.grad, official_parameter.grad) / largest
                report.add(
                    f"stage 2: gradient {name} (0 analytically; rel. to the largest)",
                    value,
                    TARGET_REL,
                    "rel",
                )
                continue
            value = max_rel(mine.grad, official_parameter.grad)
            count += 1
            report.add(f"stage 2: gradient {name}", value, TARGET_REL, "rel")
            worst = max(worst, (name, value), key=lambda item: item[1])
        stray = sorted(
            name for name, mine, _ in pairs if mine.grad is not None and name not in ours_stage_two
        )
        if stray:
            report.note(f"  stage 2: our gradients outside its parameters: {stray}")
        report.add("stage 2: our gradients outside its parameters (count)", float(len(stray)), 0.0)
        report.note(
            f"  stage 2: {count} learnable tensors compared; largest relative |d|: {worst[0]} {worst[1]:.2e}"
        )

        # ----- a file saved as train.py saves it, loaded with ckpt_path ----------------------------
        path = tmp / "train_visa.pth"  # a release name: test.py scores it with stage 2
        torch.save({"MyModel": theirs.state_dict()}, path)
        fresh = BayesPFLModule(
            backbone, PromptSet("unused", ["{}"], ["{}"], ["{}"]), **{**method, "test_stage": None}
        )
        fresh.load_trainable_checkpoint(str(path))
        fresh.setup_category(categories[0], None)
        model = fresh.model
        with torch.no_grad():
            model.state_samples = ours.state_samples
            features = model.frozen_features(normalized[:1], normalized=True)
            loaded = model.score(features, noise=eps[0][0])
        report.note(
            f"  official file ({len(theirs.state_dict())} tensors) loaded, origin {fresh.checkpoint_origin}, "
            f"stage {model.stage}"
        )
        report.add(
            "official file: stage-2 image score", abs(float(loaded.extras["text_score"][0]) - their[2][0][0])
        )
    report.note(f"  ({time.perf_counter() - started:.0f} s)")
