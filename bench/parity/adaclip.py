"""Numerical parity of our AdaCLIP (``method=adaclip``) with the official code (caoyunkang/AdaCLIP).

``python -m bench.parity adaclip --official <checkout of caoyunkang/AdaCLIP>``
(``make parity-adaclip ADACLIP_DIR=<checkout>``)

Both sides get the same random weights of a shrunk ViT-L-14-336 with plain GELU (24 vision blocks, taps
6/12/18/24, 12 text blocks, narrow widths, ``embed_dim`` equal to the text width as the official prompt
layers require) at 518 px, so the 24 -> 37 positional-embedding resize is exercised: ours with the backbone
config's setting (``backbone=vit_l14_336_adaclip``: bicubic, no antialias), the official side with its own
``resize_pos_embed`` on the state dict, as its ``create_model`` does after building ``CLIP`` for 518 px.
The official ``AdaCLIP`` module is built with the official defaults (prompt length 5, depth 4, ``SD`` /
``VL``, HSF with 20 clusters) and its random learnable parameters are copied into ours.

Harness-only settings, the official code itself is used unmodified:

* ``method/__init__.py`` imports the trainer, which imports logging and plotting packages (tensorboard,
  seaborn) the forward pass does not need; the ``method`` package is registered without running it, and
  ``method.adaclip`` / ``method.clip_model`` are imported as they are.
* the official KMeans is unseeded; its ``random_state`` is set to our ``kmeans_seed`` so both sides
  cluster the same way.
* in the training step the official in-place L2 normalisations (``x /= x.norm()``) run out of place: the
  same values, but float32 autograd on a CPU refuses the in-place version (on the official GPU run, fp16
  autocast normalises an fp32 copy, which is why it trains there).
* the BPE merges file of the official tokenizer is stored with Git LFS; in a clone without ``git lfs`` it is a
  pointer, and the official tokenizer then reads open_clip's copy of the same file (checked by sha256).
* ``train_one_batch`` lives in the trainer; the harness restates its loss lines (batch of one image, as the
  official script requires) and calls the official ``FocalLoss`` / ``BinaryDiceLoss``.

Printed: max |delta| of the text features, per-tap training maps, final test map (blurred), image score,
training loss and the gradients of every learnable parameter (relative to the largest official entry).
Gradients that pass through the official ``.half()`` casts of the prompt tokens (static prompts and the
dynamic-prompt generators) are rounded to float16 on both sides, so a gradient element one float16 step
apart is a legitimate outcome: they are held to 1e-3, the rest to 1e-4. ``--no-fp16-rounding`` turns the
casts off on both sides (ours ``prompt_fp16=false``; ``Tensor.half`` is the identity while the official
code runs) and holds every gradient to 1e-4. Exits 1 when a figure misses its target, 2 without the
official code.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf

from anomaly_vlm.methods.adaclip import AdaCLIPModule
from anomaly_vlm.prompts import PromptSet
from bench import REPO_ROOT
from bench.parity.official import (
    OfficialCode,
    blob_masks,
    max_abs,
    max_rel,
    official_imports,
    shrunk_backbone,
    small_vit_l14_336,
    smooth_images,
)
from bench.parity.release import (
    official_constructor_literal,
    official_methods,
    refusal_rows,
    release_file_rows,
)
from bench.report import TARGET_REL, ParityReport

OFFICIAL = OfficialCode("https://github.com/caoyunkang/AdaCLIP", "ADACLIP_DIR", "method/adaclip.py")
MODEL = "parity-adaclip-ViT-L-14-336-small"
LAYERS = [6, 12, 18, 24]
SIZE = 518
ROUNDED_TARGET = 1e-3
EXACT = 1e-12  # quantities that must agree exactly (token ids, a gradient that must be zero)
#: sha256 of CLIP's BPE merges file, the same in the official checkout (as a Git LFS object) and in open_clip.
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def import_official(folder: Path) -> dict:
    """``method.adaclip``, ``method.clip_model`` and ``loss`` from ``folder``, without ``method/__init__``."""
    package = types.ModuleType("method")
    package.__path__ = [str(folder / "method")]
    sys.modules["method"] = package
    with official_imports(folder):
        import loss as official_loss
        import method.adaclip as adaclip
        import method.clip_model as clip_model
        import method.simple_tokenizer as simple_tokenizer
    use_open_clip_bpe_if_lfs_pointer(simple_tokenizer)
    return {
        "AdaCLIP": adaclip.AdaCLIP,
        "CLIP": clip_model.CLIP,
        "resize_pos_embed": clip_model.resize_pos_embed,
        "FocalLoss": official_loss.FocalLoss,
        "BinaryDiceLoss": official_loss.BinaryDiceLoss,
    }


def use_open_clip_bpe_if_lfs_pointer(simple_tokenizer) -> None:
    """Point the official tokenizer at open_clip's copy of the BPE merges when the checkout holds only the
    Git LFS pointer of that file (a clone without ``git lfs``); the two files are the same bytes."""
    import hashlib

    import open_clip

    bundled = Path(simple_tokenizer.default_bpe())
    if bundled.read_bytes()[:2] == b"\x1f\x8b":  # a real gzip file: use it as it is
        return
    copy = Path(open_clip.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    if hashlib.sha256(copy.read_bytes()).hexdigest() != BPE_SHA256:
        print(
            f"error: {bundled} is a Git LFS pointer and open_clip's copy differs; run git lfs pull there",
            file=sys.stderr,
        )
        raise SystemExit(2)
    print(f"  ({bundled.name} of the checkout is a Git LFS pointer; using open_clip's identical copy)")
    simple_tokenizer.SimpleTokenizer.__init__.__defaults__ = (str(copy),)


@contextlib.contextmanager
def out_of_place_division():
    """``x /= y`` computes ``x / y`` into a new tensor while the official training forward runs.

    The official forward L2-normalises features in place (``tokens /= tokens.norm(...)``). On its GPU, under
    fp16 autocast, the norm reads an fp32 copy, so the in-place division does not touch what autograd
    saved; in float32 on a CPU it does, and ``backward`` refuses. The values are the same either way
    (augmented assignment rebinds the name or list slot to the result).
    """
    original = torch.Tensor.__itruediv__
    torch.Tensor.__itruediv__ = lambda self, other: self / other
    try:
        yield
    finally:
        torch.Tensor.__itruediv__ = original


@contextlib.contextmanager
def half_is_identity(enabled: bool):
    """``Tensor.half`` returns the tensor unchanged while the official code runs (``--no-fp16-rounding``)."""
    if not enabled:
        yield
        return
    original = torch.Tensor.half
    torch.Tensor.half = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.half = original


def load_settings() -> tuple[dict, PromptSet, dict]:
    backbone = OmegaConf.load(REPO_ROOT / "conf" / "backbone" / "vit_l14_336_adaclip.yaml")
    prompts = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "prompts" / "adaclip.yaml"))
    prompts.pop("_target_")
    method = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "method" / "adaclip.yaml"))["method"]
    method.pop("_target_")
    settings = {
        "quick_gelu": bool(backbone.quick_gelu),
        "pos_embed_interpolation": str(backbone.pos_embed_interpolation),
        "pos_embed_antialias": bool(backbone.pos_embed_antialias),
    }
    return settings, PromptSet(**prompts), method


def copy_parameters(theirs, ours) -> list[tuple[str, torch.nn.Parameter, torch.nn.Parameter, bool]]:
    """Copy the official learnable parameters into ours; returns (name, ours, theirs, fp16-rounded grad)."""
    pairs = []
    for index in range(theirs.prompting_depth):
        pairs.append(
            (
                f"visual static prompts, block {index + 1}",
                ours.visual_static,
                index,
                theirs.visual_prompter.static_prompts[index],
                True,
            )
        )
        pairs.append(
            (
                f"text static prompts, set {index + 1}",
                ours.text_static,
                index,
                theirs.text_prompter.static_prompts[index],
                True,
            )
        )
    linears = []
    for index, layer in enumerate(LAYERS):
        linears.append(
            (
                f"patch projection, block {layer}",
                ours.patch_projections[index],
                theirs.patch_token_layer.head[index],
                False,
            )
        )
    linears.append(("CLS projection", ours.cls_projection, theirs.cls_token_layer.head[0], False))
    for index in range(theirs.prompting_length):
        linears.append(
            (
                f"visual generator, token {index + 1}",
                ours.visual_generator[index],
                theirs.dynamic_visual_prompt_generator.head[index],
                True,
            )
        )
        linears.append(
            (
                f"text generator, token {index + 1}",
                ours.text_generator[index],
                theirs.dynamic_text_prompt_generator.head[index],
                True,
            )
        )
    out = []
    with torch.no_grad():
        for name, stacked, index, official, rounded in pairs:
            stacked[index].copy_(official)
            out.append((name, (stacked, index), official, rounded))
        for name, mine, official, rounded in linears:
            mine.weight.copy_(official.weight)
            mine.bias.copy_(official.bias)
            out.append((f"{name} (weight)", (mine.weight, None), official.weight, rounded))
            out.append((f"{name} (bias)", (mine.bias, None), official.bias, rounded))
    return out


def official_test(theirs, normalized, category: str, rounding: bool):
    """test.py / evaluation(): one image per forward; image scores and blurred maps."""
    from scipy.ndimage import gaussian_filter

    their_scores, their_maps = [], []
    with torch.no_grad(), half_is_identity(not rounding):
        for image in normalized:
            anomaly_map, score = theirs(image[None], [category], aggregation=True)
            their_scores.append(score)
            their_maps.append(torch.from_numpy(gaussian_filter(anomaly_map[0].numpy(), sigma=4)))
    return torch.cat(their_scores), torch.stack(their_maps)


def official_trainer(folder: Path, theirs):
    """An object with the official ``AdaCLIP_Trainer.save`` / ``load`` (compiled from the checkout) around
    ``theirs``: the trainer's constructor needs the pretrained CLIP download, its save and load do not."""
    source = folder / "method" / "trainer.py"
    methods = official_methods(source, "AdaCLIP_Trainer", ("save", "load"), {"torch": torch})
    trainer = type("AdaCLIP_Trainer", (torch.nn.Module,), methods)()
    trainer.clip_model = theirs
    trainer.learnable_paramter_list = official_constructor_literal(
        source, "AdaCLIP_Trainer", "learnable_paramter_list"
    )
    trainer.device = "cpu"
    return trainer


def randomize_learnable(trainer, seed: int) -> None:
    """New random values for every parameter the official trainer saves (as if trained)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in trainer.named_parameters():
            if any(part in name for part in trainer.learnable_paramter_list):
                parameter.normal_(0.0, 0.02)


def build_models(official, tmp: Path, config: dict, width: int, method: dict, precision: str = "fp32"):
    """Both sides on the same random weights: the official model as ``create_model`` and the trainer
    build it (CPU, float32) with its default prompting options, our backbone in ``precision``, and a
    factory of our module.

    Returns:
        ``(backbone, theirs, make_module)``; ``make_module()`` gives a fresh module on its own random
        learnable parameters (:func:`copy_parameters` copies the official ones in).
    """
    settings, prompt_set, _ = load_settings()
    backbone, state = shrunk_backbone(MODEL, config, tmp, SIZE, settings, precision)
    official_cfg = {**config, "vision_cfg": {**config["vision_cfg"], "image_size": SIZE}}
    clip = official["CLIP"](**official_cfg, cast_dtype=None)
    their_state = {key: value.clone() for key, value in state.items()}
    official["resize_pos_embed"](their_state, clip)
    missing, unexpected = clip.load_state_dict(their_state, strict=False)
    if [key for key in missing if "attn_mask" not in key] or unexpected:
        print(f"error: state dicts disagree: missing {missing}, unexpected {unexpected}", file=sys.stderr)
        raise SystemExit(2)
    clip.eval().requires_grad_(False)  # frozen, as in the official optimiser (only the prompt side trains)
    torch.manual_seed(0)
    theirs = official["AdaCLIP"](
        freeze_clip=clip,
        text_channel=config["embed_dim"],
        visual_channel=width,
        prompting_length=method["prompt_length"],
        prompting_depth=method["prompt_depth"],
        prompting_branch="VL",
        prompting_type="SD",
        use_hsf=method["use_hsf"],
        k_clusters=method["k_clusters"],
        output_layers=LAYERS,
        device="cpu",
        image_size=SIZE,
    )
    theirs.HSF.cluster_performer.random_state = method["kmeans_seed"]

    def make_module() -> AdaCLIPModule:
        return AdaCLIPModule(backbone, prompt_set, **method)

    return backbone, theirs, make_module


def release_check(folder, theirs, make_module, backbone, images, category, rounding, tmp, report) -> None:
    """The official ``AdaCLIP_Trainer.save`` writes random learnable parameters; its ``load`` and ours read
    the file and score the same images; a file with one wrong shape and this file given to another method
    are refused."""
    trainer = official_trainer(folder, theirs)
    randomize_learnable(trainer, seed=7)
    path = tmp / "pretrained_all.pth"
    trainer.save(str(path))
    randomize_learnable(trainer, seed=8)  # the official test loads into a model with other values
    trainer.load(str(path))
    their_scores, their_maps = official_test(theirs, backbone.normalize(images), category, rounding)

    torch.manual_seed(9)
    release_file_rows(
        report,
        path,
        make_module,
        category,
        images,
        their_maps,
        their_scores,
        score_name="image score (HSF-fused)",
        written_by="the official AdaCLIP_Trainer.save",
        details=f", {len(torch.load(path, weights_only=True))} tensors",
    )
    refusal_rows(report, path, make_module, backbone, "AdaCLIP (caoyunkang/AdaCLIP)", "adaclip", tmp)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=2, help="test images (one forward each, as test.py)")
    parser.add_argument("--width", type=int, default=128, help="vision width (multiple of 64)")
    parser.add_argument("--text-width", type=int, default=64, help="text width = embed_dim (multiple of 64)")
    parser.add_argument(
        "--no-fp16-rounding",
        action="store_true",
        help="turn the .half() casts of the prompts off on both sides",
    )


def run(args: argparse.Namespace, folder: Path, report: ParityReport) -> None:
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    official = import_official(folder)

    settings, prompt_set, method = load_settings()
    rounding = not args.no_fp16_rounding
    method["prompt_fp16"] = rounding
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = small_vit_l14_336(
            args.width, text_width=args.text_width, text_layers=12, embed_dim=args.text_width
        )
        backbone, theirs, make_module = build_models(official, tmp, config, args.width, method)
        report.note(
            f"shrunk ViT-L-14-336 (plain GELU): 24 blocks, width {args.width}, text width {args.text_width}, "
            f"{SIZE} px, grid {backbone.grid_size}; pos-embed {settings['pos_embed_interpolation']}"
            f"{' with antialias' if settings['pos_embed_antialias'] else ''}; prompt tokens "
            f"{'rounded through fp16' if rounding else 'kept fp32 (both sides)'}"
        )

        module = make_module()
        ours = module.model
        parameters = copy_parameters(theirs, ours)

        images = smooth_images(args.images, SIZE, seed=1)
        normalized = backbone.normalize(images)
        category = "bottle"

        # ----- tokens and text features ------------------------------------------------------------
        normal, anomalous = prompt_set.sentences(category)
        their_tokens = theirs.text_embedding_layer.tokenize(normal + anomalous).long()
        our_tokens = backbone.tokenize(normal + anomalous).long()
        report.add("token ids of the 48 sentences", max_abs(our_tokens, their_tokens), EXACT)
        with torch.no_grad(), half_is_identity(not rounding):
            _, _, their_text = theirs.extract_feat(normalized[:1], [category])
        module.setup_category(category, None)
        with torch.no_grad():
            features = module.frozen_features(images[:1])
            our_text = ours.encode_text(ours.category_text, features["global_embedding"])
        report.add("text features [normal, anomalous]", max_abs(our_text, their_text.transpose(1, 2)))

        # ----- test: one image per forward, as test.py / evaluation() ----------------------------------
        their_scores, their_maps = official_test(theirs, normalized, category, rounding)
        with torch.no_grad():
            prediction = module.predict_images(images)
        report.add(
            "final map (mean tap logits, softmax, blur 4)", max_abs(prediction.anomaly_map, their_maps)
        )
        report.add("image score (HSF-fused)", max_abs(prediction.image_score, their_scores))

        # ----- one training step, batch of one anomalous image (train_one_batch) ----------------------
        masks = blob_masks(2, SIZE, seed=3)[1:]
        labels = torch.ones(1)
        image = normalized[-1:]
        train_category = "candle"
        with half_is_identity(not rounding), out_of_place_division():
            maps, score = theirs(image, [train_category], aggregation=False)
            gt = masks.clone().squeeze()
            gt[gt > 0.5], gt[gt <= 0.5] = 1, 0
            is_anomaly = labels.clone()
            focal, dice = official["FocalLoss"](), official["BinaryDiceLoss"]()
            their_loss = focal(score, is_anomaly.unsqueeze(1))
            for tap in maps:
                their_loss = (
                    their_loss + focal(tap, gt) + dice(tap[:, 1, :, :], gt) + dice(tap[:, 0, :, :], 1 - gt)
                )
            their_loss.backward()
        module.zero_grad()
        features = module.frozen_features(images[-1:])
        text = module.category_text(train_category)
        cls, patches, logits, our_text = ours._forward(features, [text])
        for index, layer in enumerate(LAYERS):
            ours_tap = ours._grid_to_image(logits[index], (SIZE, SIZE)).softmax(dim=1)
            report.add(f"training map, block {layer}", max_abs(ours_tap.detach(), maps[index].detach()))
        our_loss = ours.loss(features, masks, labels, [text])["loss"]
        our_loss.backward()
        report.note(f"  (training loss: ours {float(our_loss):.6f}, official {float(their_loss):.6f})")
        report.add("training loss", abs(float(our_loss) - float(their_loss)))
        for name, (mine, index), official_parameter, rounded in parameters:
            grad = mine.grad if index is None else mine.grad[index]
            target = ROUNDED_TARGET if (rounded and rounding) else TARGET_REL
            if official_parameter.grad is None:
                # A parameter the official forward never uses (the text static prompts of block 1).
                report.add(f"gradient {name} (unused: zero)", float(grad.abs().max()), EXACT)
                continue
            report.add(f"gradient {name}", max_rel(grad, official_parameter.grad), target, "rel")

        # ----- the authors' release format: ckpt_path=<file written by AdaCLIP_Trainer.save> ----------
        release_check(folder, theirs, make_module, backbone, images, category, rounding, tmp, report)
    report.note(f"  ({time.perf_counter() - started:.0f} s)")
