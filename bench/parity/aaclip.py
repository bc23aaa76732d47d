"""Numerical parity of our AA-CLIP (``method=aaclip``) with the official code (Mwxinnn/AA-CLIP).

``python -m bench.parity aaclip --official <checkout of Mwxinnn/AA-CLIP>``
(``make parity-aaclip AACLIP_DIR=<checkout>``)

The official adapters hard-code ViT-L-14-336's widths (1024 / 768) and depths (24 / 12), so both sides run a
full-size ViT-L-14-336 with random weights at 518 px (37 x 37 grid). The weights travel the official
loader's own path: our random ViT-L-14-336 (seed 0) is saved as the file the official ``create_model``
opens for ``pretrained="openai"``; it rebuilds the model from the state dict (fp16 round trip of the
linear, convolution and attention weights: ``build_model_from_openai_state_dict``), copies it into a plain
GELU ``CLIP`` at 518 px and resizes the positional embedding (bicubic, antialias). Our backbone loads the
state dict after that fp16 round trip (what ``load_openai_model`` returns) at 518 px with the backbone
config's resize (``backbone=vit_l14_336``). The official ``AdaptedCLIP`` is built with the released
defaults (``--relu`` off, adapters after 6 vision / 3 text blocks, weights 0.1) and its random adapters are
copied into ours; the stage-1 target CLIP gets the official ``DAPM_replace(20)``.

Compared: token ids, text features, test maps per level and their sum, raw image scores, the set step of
``metrics_eval`` (restated: per-category min-max, ``0.5 * max(map) + 0.5 * score``), the stage-1 targets per
level, and for one batch of each stage the training loss and the gradient of every learnable parameter.
The two training steps run the official ``train_text_adapter`` and ``train_image_adapter`` themselves on a
one-batch loader with an SGD of learning rate 0 (so nothing moves), the loss read from their log line.

Harness-only settings, the official code itself is used unmodified:

* ``model.clip._MODEL_CKPT_PATHS`` points at the saved random weights instead of ``model/ViT-L-14-336px.pt``;
* ``ipdb`` and ``pandas`` (imported, unused by the functions called) are empty modules when not installed;
* ``train.py`` sets four torch threads on import; the harness restores its own count afterwards.

``--batch`` sets the stage-1 batch (the official 16 is slow on a CPU; its V-V attention mixes the batch,
so a batch of more than one image is what exercises that bug); ``--corrected`` runs ours with the corrected
options (per-image V-V attention, all levels in stage 1) and shows how far they move from the official
code (expected: misses). Exits 1 when a figure misses its target, 2 without the official code.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.aaclip import AAClipModule
from anomaly_vlm.prompts import PromptSet
from bench import REPO_ROOT
from bench.parity.official import (
    OfficialCode,
    blob_masks,
    max_abs,
    max_rel,
    official_imports,
    smooth_images,
)
from bench.report import TARGET_REL, ParityReport

OFFICIAL = OfficialCode("https://github.com/Mwxinnn/AA-CLIP", "AACLIP_DIR", "model/adapter.py")
MODEL = "ViT-L-14-336"
SIZE = 518
LEVELS = [6, 12, 18, 24]
EXACT = 1e-12
STUBS = {"ipdb": {"set_trace": lambda *args, **kwargs: None}, "pandas": {}}


class _LossLog(logging.Handler):
    """Collects the ``loss: <mean>`` lines the official training loops log after each epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("loss: "):
            self.losses.append(float(message.removeprefix("loss: ")))


def import_official(folder: Path) -> dict:
    threads = torch.get_num_threads()
    with official_imports(folder, stubs=STUBS):
        import forward_utils
        import model.clip as official_clip
        from model.adapter import AdaptedCLIP
        from model.openai import load_openai_model
        from model.tokenizer import tokenize

        import train as official_train
    torch.set_num_threads(threads)
    return {
        "AdaptedCLIP": AdaptedCLIP,
        "clip": official_clip,
        "load_openai_model": load_openai_model,
        "tokenize": tokenize,
        "forward_utils": forward_utils,
        "train": official_train,
    }


def load_settings() -> tuple[dict, PromptSet, dict]:
    backbone = OmegaConf.load(REPO_ROOT / "conf" / "backbone" / "vit_l14_336.yaml")
    prompts = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "prompts" / "aaclip.yaml"))
    prompts.pop("_target_")
    method = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "method" / "aaclip.yaml"))["method"]
    method.pop("_target_")
    method["augment_seed"] = 0  # ${seed} in the config; the augmentation does not run here
    settings = {
        "quick_gelu": bool(backbone.quick_gelu),
        "pos_embed_interpolation": str(backbone.pos_embed_interpolation),
        "pos_embed_antialias": bool(backbone.pos_embed_antialias),
    }
    return settings, PromptSet(**prompts), method


def copy_parameters(theirs, ours) -> list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]]:
    """Copy the official adapters into ours; returns (name, ours, theirs) per learnable parameter."""
    image, text = theirs.image_adapter, theirs.text_adapter
    pairs = [
        (f"image adapter, block {index + 1}", ours.image_adapters[index].fc.weight, adapter.fc[0].weight)
        for index, adapter in enumerate(image["layer_adapters"])
    ]
    pairs += [
        (
            f"segmentation projection, block {LEVELS[index]}",
            ours.seg_projections[index].weight,
            proj.fc.weight,
        )
        for index, proj in enumerate(image["seg_proj"])
    ]
    pairs.append(("detection projection", ours.det_projection.weight, image["det_proj"].fc.weight))
    pairs += [
        (f"text adapter, block {index + 1}", ours.text_adapters[index].fc.weight, adapter.fc[0].weight)
        for index, adapter in enumerate(text[:-1])
    ]
    pairs.append(("text head", ours.text_head.weight, text[-1].fc[0].weight))
    with torch.no_grad():
        for _, mine, official in pairs:
            mine.copy_(official)
    return pairs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=2, help="test images (one batch)")
    parser.add_argument("--batch", type=int, default=2, help="stage-1 batch (official 16); stage 2 uses 2")
    parser.add_argument(
        "--size", type=int, default=SIZE, help="input size (518 published; small for a smoke run)"
    )
    parser.add_argument(
        "--parts",
        default="test,train",
        help="what to compare: test (text, maps, scores, set step) and/or train (both stages, save format)",
    )
    parser.add_argument(
        "--corrected",
        action="store_true",
        help="ours with surgery_mix_batch=false, text_loss_levels=all (shows the bugs' effect; misses)",
    )


def run(args: argparse.Namespace, folder: Path, report: ParityReport) -> None:
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    official = import_official(folder)
    fu, official_train = official["forward_utils"], official["train"]
    settings, prompt_set, method = load_settings()
    if args.corrected:
        method.update(surgery_mix_batch=False, text_loss_levels="all")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # ----- the same random weights through the official loader ------------------------------------
        native = FrozenCLIP(MODEL, None, image_size=336, quick_gelu=False, seed=0)
        torch.save({key: value.clone() for key, value in native.clip.state_dict().items()}, tmp / "random.pt")
        del native
        official["clip"]._MODEL_CKPT_PATHS[MODEL] = tmp / "random.pt"
        rounded = official["load_openai_model"](
            str(tmp / "random.pt"), precision="fp32", device="cpu", jit=False
        )
        torch.save(rounded.state_dict(), tmp / "rounded.pt")
        del rounded
        backbone = FrozenCLIP(MODEL, str(tmp / "rounded.pt"), image_size=args.size, seed=0, **settings)

        def create():
            model = official["clip"].create_model(
                model_name=MODEL,
                img_size=args.size,
                device="cpu",
                pretrained="openai",
                require_pretrained=True,
            )
            return model.eval()

        surgery = create()
        surgery.visual.DAPM_replace(DPAM_layer=20)
        torch.manual_seed(0)
        theirs = official["AdaptedCLIP"](
            clip_model=create(),
            text_adapt_weight=0.1,
            image_adapt_weight=0.1,
            text_adapt_until=3,
            image_adapt_until=6,
            relu=False,
        ).eval()
        module = AAClipModule(backbone, prompt_set, **method)
        ours = module.model
        parameters = copy_parameters(theirs, ours)
        report.note(
            f"ViT-L-14-336 (random, fp16-rounded by the official loader), plain GELU, {args.size} px, grid "
            f"{backbone.grid_size}; stage-1 batch {args.batch}; ours "
            f"{'CORRECTED (expected to miss)' if args.corrected else 'with the official defaults'}"
        )

        # ----- text --------------------------------------------------------------------------------
        category, dataset = "bottle", "MVTec"
        normal, abnormal = prompt_set.sentences(category)
        their_tokens = official["tokenize"](normal + abnormal)
        report.add(
            "token ids of the 16 sentences",
            max_abs(backbone.tokenize(normal + abnormal), their_tokens),
            EXACT,
        )
        with torch.no_grad():
            their_text = fu.get_adapted_single_class_text_embedding(theirs, dataset, category, "cpu")
            module.setup_category(category, None)
        report.add("text features [normal, abnormal]", max_abs(ours.text_classifier, their_text.T))

        parts = {part.strip() for part in args.parts.split(",") if part.strip()}
        if not parts <= {"test", "train"} or not parts:
            print(f"error: --parts {args.parts}: choose test, train or both", file=sys.stderr)
            raise SystemExit(2)
        if "test" in parts:
            compare_test(args, report, fu, theirs, their_text, module, backbone)
        if "train" in parts:
            compare_training(
                args,
                report,
                tmp,
                fu,
                official_train,
                theirs,
                surgery,
                module,
                backbone,
                prompt_set,
                method,
                parameters,
            )
    report.note(f"  ({time.perf_counter() - started:.0f} s)")


def compare_test(args, report, fu, theirs, their_text, module, backbone) -> None:
    """get_predictions of test.py and the set step of metrics_eval (restated)."""
    ours = module.model
    images = smooth_images(args.images, args.size, seed=1)
    pixels = backbone.normalize(images)
    with torch.no_grad():
        their_patches, their_det = theirs(pixels)
        their_scores = (their_det @ their_text)[:, 1]
        their_scores = (their_scores + 1) / 2
        their_levels = [
            fu.calculate_similarity_map(f, their_text, args.size, test=True, domain="Industrial")[:, 0]
            for f in their_patches
        ]
        their_maps = torch.stack(their_levels, dim=1).sum(1)
        features = ours.frozen_features(images)
        our_patches, our_det = ours.encode_image(features["pixels"])
        our_levels = ours.level_maps(our_patches, ours.text_classifier)
        raw = ours.score(features)
    for level, mine, official_map in zip(LEVELS, our_levels, their_levels, strict=True):
        report.add(f"test map, level {level} (blurred on the grid, upsampled)", max_abs(mine, official_map))
    report.add("test map (sum of levels)", max_abs(raw.anomaly_map, their_maps))
    report.add("image score (det . t_abnormal + 1) / 2", max_abs(raw.image_score, their_scores))
    # metrics_eval, restated: per-category min-max of maps and scores, 0.5 * max(map) + 0.5 * score.
    maps, scores = their_maps.numpy(), their_scores.numpy()
    if maps.max() != 1:
        maps = (maps - maps.min()) / (maps.max() - maps.min())
    if scores.max() != 1:
        scores = (scores - scores.min()) / (scores.max() - scores.min())
    final = module.postprocess_set(raw)
    report.add("final map (min-max over the set)", max_abs(final.anomaly_map, maps))
    report.add(
        "final image score (0.5 max map + 0.5 score)",
        max_abs(final.image_score, 0.5 * maps.max(axis=(1, 2)) + 0.5 * scores),
    )


def compare_training(
    args, report, tmp, fu, official_train, theirs, surgery, module, backbone, prompt_set, method, parameters
) -> None:
    """One batch of each stage through the official training functions; the files they save, read back."""
    ours = module.model
    # ----- stage 1: train_text_adapter on one batch ---------------------------------------------------
    log = logging.getLogger("aaclip-parity")
    log.setLevel(logging.INFO)
    log.propagate = False
    losses = _LossLog()
    log.addHandler(losses)
    batch_images = smooth_images(args.batch, args.size, seed=2)
    masks = blob_masks(args.batch, args.size, seed=3)
    labels = (masks.flatten(1).amax(1) > 0).long()
    categories = (["candle", "pcb1"] * args.batch)[: args.batch]
    batch = {
        "image": backbone.normalize(batch_images),
        "mask": masks[:, None],
        "label": labels,
        "class_name": categories,
    }
    text_optimizer = torch.optim.SGD(theirs.text_adapter.parameters(), lr=0.0)
    seen: dict[str, object] = {}
    surgery_encode, plain_encode = surgery.encode_image, theirs.clipmodel.encode_image

    def record(name, encode):
        def wrapper(*args, **kwargs):
            seen[name] = encode(*args, **kwargs)
            return seen[name]

        return wrapper

    # Observers only: the official loop's own forward passes, their outputs kept for the comparison.
    surgery.encode_image = record("surgery", surgery_encode)
    theirs.clipmodel.encode_image = record("plain", plain_encode)
    official_train.train_text_adapter(
        adapted_model=theirs,
        clip_surgery=surgery,
        text_norm_weight=0.1,
        train_loader=[batch],
        optimizer=text_optimizer,
        device="cpu",
        start_epoch=0,
        save_path=str(tmp),
        text_epoch=1,
        dataset_name="VisA",
        img_size=args.size,
        logger=log,
    )
    del surgery.encode_image, theirs.clipmodel.encode_image
    with torch.no_grad():
        their_taps = seen["surgery"][1]
        cls = seen["plain"][0]
        cls = cls / cls.norm(dim=-1, keepdim=True)
        their_targets = [surgery.visual.ln_post(t[:, 1:]) @ surgery.visual.proj for t in their_taps]
        their_targets = [t / t.norm(dim=-1, keepdim=True) + cls[:, None] for t in their_targets]
        our_targets = ours.surgery_targets(batch["image"])
    for level, mine, target in zip(LEVELS, our_targets, their_targets, strict=True):
        report.add(f"stage-1 target (V-V tower + CLS), level {level}", max_abs(mine, target))
    del surgery
    module.zero_grad()
    text = module.texts_of(categories, frozen=False)
    ours.surgery_targets = lambda pixels: our_targets  # computed above from the same pixels
    our_loss = ours.text_stage_loss(batch["image"], masks, text)["loss"]
    del ours.surgery_targets
    our_loss.backward()
    report.note(f"  (stage-1 loss: ours {float(our_loss):.6f}, official {losses.losses[-1]:.6f})")
    report.add("stage-1 training loss", abs(float(our_loss) - losses.losses[-1]))
    for name, mine, official_parameter in parameters:
        if "text" in name:
            report.add(
                f"stage-1 gradient {name}", max_rel(mine.grad, official_parameter.grad), TARGET_REL, "rel"
            )

    # ----- stage 2: train_image_adapter on one batch of two (--image_batch_size 2) ---------------------
    with torch.no_grad():
        their_embeddings = fu.get_adapted_text_embedding(theirs, "VisA", "cpu")
    pair = {key: value[-2:] for key, value in batch.items()}
    image_optimizer = torch.optim.SGD(theirs.image_adapter.parameters(), lr=0.0)
    # The adapters' LeakyReLU has a kink at 0: a pre-activation within float noise of 0 can take the other
    # slope on the other side, which moves that token's gradient by a factor 100. Ours computes the blocks'
    # attention as the official ones do (explicitly, in float32), so the pre-activations should be the same
    # floats; their largest difference and the tokens on opposite sides are shown, not hidden.
    pre = {"theirs": {}, "ours": {}}

    def keep(side, index):
        return lambda module, inputs, output: pre[side].__setitem__(index, output.detach())

    hooks = [
        adapter.fc[0].register_forward_hook(keep("theirs", index))
        for index, adapter in enumerate(theirs.image_adapter["layer_adapters"])
    ]
    hooks += [
        adapter.fc.register_forward_hook(keep("ours", index))
        for index, adapter in enumerate(ours.image_adapters)
    ]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(image_optimizer, milestones=[16000, 32000], gamma=0.5)
    official_train.train_image_adapter(
        model=theirs,
        text_embeddings=their_embeddings,
        train_loader=[pair],
        optimizer=image_optimizer,
        scheduler=scheduler,
        device="cpu",
        start_epoch=0,
        save_path=str(tmp),
        image_epoch=1,
        img_size=args.size,
        logger=log,
    )
    module.zero_grad()
    frozen = module.texts_of(pair["class_name"], frozen=True)
    report.add(
        "stage-2 text features (frozen)",
        max_abs(frozen, torch.stack([their_embeddings[c].T for c in pair["class_name"]])),
    )
    our_loss = ours.image_stage_loss(pair["image"], masks[-2:], pair["label"], frozen)["loss"]
    for hook in hooks:
        hook.remove()
    flips, largest = [], 0.0
    for index, official_pre in pre["theirs"].items():
        # official activations are sequence-first [L, B, C]; ours batch-first [B, L, C]
        mine = pre["ours"][index]
        flipped = int(((official_pre.transpose(0, 1) > 0) != (mine > 0)).sum())
        flips.append(f"block {index + 1}: {flipped}")
        largest = max(largest, max_abs(mine, official_pre.transpose(0, 1)))
    report.note(
        f"  (stage-2 adapter pre-activations: max|d| {largest:.2e}; on opposite sides of the LeakyReLU "
        "kink: " + ", ".join(flips) + ")"
    )
    our_loss.backward()
    report.note(f"  (stage-2 loss: ours {float(our_loss):.6f}, official {losses.losses[-1]:.6f})")
    report.add("stage-2 training loss", abs(float(our_loss) - losses.losses[-1]))
    for name, mine, official_parameter in parameters:
        if "text" not in name:
            report.add(
                f"stage-2 gradient {name}", max_rel(mine.grad, official_parameter.grad), TARGET_REL, "rel"
            )
    # ----- the files the official training saved, read back as ckpt_path --------------------------
    fresh = AAClipModule(backbone, prompt_set, **method)
    fresh.load_trainable_checkpoint(str(tmp / "image_adapter_1.pth"))
    loaded, expected = fresh.trainable_state_dict(), module.trainable_state_dict()
    worst = max(max_abs(loaded[name], expected[name]) for name in expected)
    report.add(
        "ckpt_path=image_adapter_1.pth (+ text_adapter.pth) saved by the official training", worst, EXACT
    )
