"""Numerical parity of our PromptAD with the official code (FuNz-0/PromptAD).

``python -m bench.parity promptad --official <checkout of FuNz-0/PromptAD>``
(``make parity-promptad PROMPTAD_DIR=<checkout>``)

The official code is imported from ``--official`` / ``$PROMPTAD_DIR`` at run time, never vendored. Both
sides get the same random weights of a shrunk ViT-B-16-plus-240-like CLIP with the official depth (12
vision and 12 text blocks, 240 px, 15x15 grid; narrower layers), the same initial
prompt vectors and the same images. Compared, as max |delta|:

- the four image features (CLS, V-V patches, the two memory blocks) and the text features of the prompts;
- the loss and the prompt gradients of the first training step of each branch (the official ``fit`` of
  ``train_cls.py`` / ``train_seg.py`` runs one epoch; its loss and gradients are recorded at backward),
  relative to their magnitude, and the prompts after that SGD step;
- the image scores (``train_cls.py``: harmonic combination of the CLS text score and the max of the
  400 px visual map, the formula of its ``metric_cal_img``) and the blurred 400 px maps (``train_seg.py``).

Harness-only patches: the official ``PromptAD`` hard-codes fp16; ``--precision`` (default fp32) sets both
sides to the same precision, and the official model factory returns the shared random model instead of
downloading weights; in fp32 the release's misspelt ``logit_scalef`` is aliased to ``logit_scale``
(its fp32 branch cannot run otherwise). Packages its training scripts import only for logging and plots
(loguru, pandas, seaborn) are stubbed while they are imported, when absent.
Exits 1 when a figure misses 1e-4 or a prompt token id differs, 2 without the official code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.promptad.torch_model import PromptADModel
from anomaly_vlm.prompts.promptad import PromptADPromptSet
from bench import REPO_ROOT
from bench.parity.official import OfficialCode, logging_stub, official_imports
from bench.report import ParityReport

OFFICIAL = OfficialCode("https://github.com/FuNz-0/PromptAD", "PROMPTAD_DIR", "PromptAD/model.py")
TARGET = 1e-4
MODEL_NAME = "promptad-parity-vit"
#: ViT-B-16-plus-240 has width 896 / 14 heads and a 640-wide text tower; depths, patch and input size kept.
ARCHITECTURE = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 240, "layers": 12, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 12},
}
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
#: Packages the official training scripts import only for logging, CSV files and plots.
LOGGING_PACKAGES = ("loguru", "pandas", "seaborn")


def load_prompt_set() -> PromptADPromptSet:
    data = yaml.safe_load((REPO_ROOT / "conf" / "prompts" / "promptad.yaml").read_text())
    data.pop("_target_")
    return PromptADPromptSet(**data)


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - MEAN) / STD


def delta(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return (ours.detach().double().cpu() - theirs.detach().double().cpu()).abs().max().item()


def relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    scale = theirs.detach().double().abs().max().item()
    return delta(ours, theirs) / max(scale, 1e-30)


def token_delta(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |Δ| of two token id tensors (0 when identical); infinite when their shapes differ."""
    if ours.shape != theirs.shape:
        return math.inf
    return delta(ours, theirs)


@contextlib.contextmanager
def record_backward(parameters: dict[str, torch.nn.Parameter], records: list):
    """Record the loss and the gradients of ``parameters`` at every ``backward`` (before the step)."""
    original = torch.Tensor.backward

    def recording(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        grads = {name: p.grad.detach().clone() for name, p in parameters.items()}
        records.append((self.detach().clone(), grads))
        return result

    torch.Tensor.backward = recording
    try:
        yield
    finally:
        torch.Tensor.backward = original


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"], help="both sides")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--category", default="bottle")


def import_official(folder: Path) -> dict:
    """``train_cls``, ``train_seg``, ``CLIPAD`` and ``PromptAD.model`` from the checkout."""
    # Its tokenizer and scripts resolve files relative to the checkout: imported from inside it.
    stubs = {name: logging_stub(name) for name in LOGGING_PACKAGES}
    with official_imports(folder, chdir=True, stubs=stubs):
        import train_cls  # type: ignore[import-not-found]
        import train_seg  # type: ignore[import-not-found]
        from PromptAD import CLIPAD  # type: ignore[import-not-found]
        from PromptAD import model as official_model  # type: ignore[import-not-found]
    return {"train_cls": train_cls, "train_seg": train_seg, "CLIPAD": CLIPAD, "model": official_model}


def shared_state(official: dict, work: Path, architecture: dict) -> dict:
    """Random weights of ``architecture`` (registered as ``MODEL_NAME`` on both sides), made by the
    official factory; biases and LayerNorms perturbed so that no zero init hides an index error."""
    import open_clip

    (work / "configs").mkdir(exist_ok=True)
    (work / "configs" / f"{MODEL_NAME}.json").write_text(json.dumps(architecture))
    official["CLIPAD"].add_model_config(work / "configs")
    open_clip.add_model_config(work / "configs")
    reference = official["CLIPAD"].create_model(MODEL_NAME, precision="fp32")
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.endswith("bias") or "ln" in name:
                parameter.add_(torch.randn_like(parameter) * 0.05)
        reference.logit_scale.fill_(math.log(100.0))  # trained CLIP's stored value (used raw as temperature)
    return {key: value.clone() for key, value in reference.state_dict().items()}


def official_models(official: dict, state: dict, precision: str, category: str, shots: int, device):
    """The official image (``train_cls.py``: 3 normal prompts) and pixel (``train_seg.py``: 1) models on
    ``state``, and their initial prompt vectors: ``({"image": ..., "pixel": ...}, initial)``."""
    official_model, clipad = official["model"], official["CLIPAD"]

    def official_clip(model_name=None, pretrained=None, precision="fp16"):
        model = clipad.create_model(MODEL_NAME, precision=chosen)
        model.load_state_dict(state)
        return model, None, None

    chosen = precision
    official_model.CLIPAD.create_model_and_transforms = official_clip

    def build(n_pro: int):
        model = official_model.PromptAD(
            out_size_h=400,
            out_size_w=400,
            device=device,
            backbone="ViT-B-16-plus-240",
            pretrained_dataset="laion400m_e32",
            n_ctx=4,
            n_pro=n_pro,
            n_ctx_ab=1,
            n_pro_ab=4,
            class_name=category,
            k_shot=shots,
            img_resize=240,
            img_cropsize=240,
        )
        model.precision = precision
        if precision == "fp32":  # rebuild what the hard-coded fp16 made in half precision
            model.prompt_learner = official_model.PromptLearner(4, n_pro, 1, 4, category, model.model, "fp32")
            model.feature_gallery1 = model.feature_gallery1.float()
            model.feature_gallery2 = model.feature_gallery2.float()
            model.text_features = model.text_features.float()
            # The release's fp32 branch reads `logit_scalef`, an attribute CLIP does not have (so the
            # release can only run in fp16); alias it to the raw logit_scale the fp16 branch reads.
            model.model.logit_scalef = model.model.logit_scale
        return model.to(device)

    theirs = {"image": build(3), "pixel": build(1)}
    initial = {
        branch: {k: v.detach().clone() for k, v in m.prompt_learner.named_parameters()}
        for branch, m in theirs.items()
    }
    return theirs, initial


def our_model(state: dict, precision: str, device, initial: dict) -> PromptADModel:
    """Our PromptAD on ``state`` in ``precision`` (one training epoch), its learners starting from the
    official ``initial`` prompt vectors."""
    backbone = FrozenCLIP(MODEL_NAME, image_size=240, precision=precision)
    missing, unexpected = backbone.clip.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"state dicts differ: missing {missing}, unexpected {unexpected}")
    ours = PromptADModel(backbone.to(device), load_prompt_set(), epochs=1, progress=False, map_size=400).to(
        device
    )
    new_learner = ours.new_learner

    def learner_from_official(category, branch):
        learner = new_learner(category, branch)
        with torch.no_grad():
            learner.normal_context.copy_(initial[branch]["normal_ctx"])
            learner.anomaly_context.copy_(initial[branch]["abnormal_ctx"])
        return learner

    ours.new_learner = learner_from_official
    return ours


def run(args: argparse.Namespace, folder: Path, report: ParityReport) -> None:
    official = import_official(folder)
    train_cls, train_seg = official["train_cls"], official["train_seg"]
    device = torch.device(args.device)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="promptad-parity-"))
    state = shared_state(official, work, ARCHITECTURE)
    theirs, initial = official_models(official, state, args.precision, args.category, args.shots, device)
    ours = our_model(state, args.precision, device, initial)

    generator = torch.Generator().manual_seed(1)
    total = args.shots + args.queries
    rgb = (torch.rand(total, 3, 30, 30, generator=generator) * 255).round()
    rgb = torch.nn.functional.interpolate(rgb, size=(240, 240), mode="nearest").to(torch.uint8)
    rgb = rgb.clamp(0, 255)
    references, queries = rgb[: args.shots], rgb[args.shots :]
    as_float = lambda x: x.float() / 255.0  # noqa: E731  (ToTensor)
    hwc_bgr = lambda x: x.permute(0, 2, 3, 1).flip(-1).contiguous()  # noqa: E731  (what cv2.imread gives)
    figures: dict[str, float] = {}

    # Prompt tokens and image features.
    learner = ours.new_learner(args.category, "image")
    token_deltas = [
        token_delta(
            getattr(learner, f"{mine}_ids").cpu(), getattr(theirs["image"], f"tokenized_{their}").cpu()
        )
        for mine, their in (
            ("normal", "normal_prompts"),
            ("handcrafted", "abnormal_prompts_handle"),
            ("learned", "abnormal_prompts_learned"),
        )
    ]
    same_tokens = max(token_deltas) == 0
    report.note(f"prompt token ids identical: {same_tokens}")
    with torch.no_grad():
        their_features = theirs["image"].encode_image(normalize(as_float(references)).to(device))
        theirs["pixel"].encode_image(normalize(as_float(references[:1])).to(device))  # its lazy surgery
        our_features = ours.reference_features(as_float(references).to(device))
        for name, index in (("global", 0), ("patch", 1), ("memory_0", 2), ("memory_1", 3)):
            figures[f"features/{name}"] = delta(our_features[name], their_features[index])
        mine = learner()
        prompts = theirs["image"].prompt_learner()
        encode = theirs["image"].encode_text_embedding
        for (name, tokens), our_text, their_prompt in zip(
            (
                ("normal", "tokenized_normal_prompts"),
                ("handcrafted", "tokenized_abnormal_prompts_handle"),
                ("learned", "tokenized_abnormal_prompts_learned"),
            ),
            mine,
            prompts,
            strict=True,
        ):
            figures[f"text/{name}"] = delta(our_text, encode(their_prompt, getattr(theirs["image"], tokens)))

    # One official training epoch per branch (loss and gradients recorded at backward) and ours.
    train_loader = [
        (
            hwc_bgr(references),
            torch.zeros(args.shots, 240, 240),
            torch.zeros(args.shots),
            [""] * args.shots,
            ["good"] * args.shots,
        )
    ]
    labels = torch.tensor([i % 2 for i in range(args.queries)])
    masks = torch.zeros(args.queries, 240, 240, dtype=torch.uint8)
    masks[labels == 1, 100:140, 90:150] = 255
    test_loader = [
        (hwc_bgr(queries), masks, labels, [f"q{i}" for i in range(args.queries)], ["t"] * args.queries)
    ]
    settings = argparse.Namespace(
        lr=0.002, momentum=0.9, weight_decay=0.0005, Epoch=1, lambda1=0.001, resolution=400, vis=False
    )
    records: dict[str, list] = {}
    for branch, script in (("image", train_cls), ("pixel", train_seg)):
        model = theirs[branch]
        records[branch] = []
        parameters = dict(model.prompt_learner.named_parameters())
        checkpoint = str(work / f"{branch}.pt")
        with record_backward(parameters, records[branch]):
            if branch == "image":
                script.fit(
                    model, settings, test_loader, device, check_path=checkpoint, train_data=train_loader
                )
            else:
                script.fit(
                    model,
                    settings,
                    test_loader,
                    device,
                    img_dir=str(work),
                    check_path=checkpoint,
                    train_data=train_loader,
                )
    with torch.no_grad():
        our_references = {
            k: v.clone() for k, v in ours.reference_features(as_float(references).to(device)).items()
        }
    for branch in ("image", "pixel"):
        learner = ours.new_learner(args.category, branch)
        inputs = our_references["global" if branch == "image" else "patch"]
        losses = ours.prompt_loss(learner, inputs)
        losses["loss"].backward()
        their_loss, their_grads = records[branch][0]
        figures[f"loss/{branch} (relative)"] = relative(losses["loss"], their_loss)
        figures[f"grad/{branch} normal context (relative)"] = relative(
            learner.normal_context.grad, their_grads["normal_ctx"]
        )
        figures[f"grad/{branch} anomaly context (relative)"] = relative(
            learner.anomaly_context.grad, their_grads["abnormal_ctx"]
        )
        report.note(f"{branch:5s} loss ours {losses['loss'].item():.6f} official {their_loss.item():.6f}")
    ours.fit_category(args.category, ours.reference_features(as_float(references).to(device)))
    for branch in ("image", "pixel"):
        stepped = theirs[branch].prompt_learner
        figures[f"after step/{branch} prompts"] = max(
            delta(ours.learners[branch].normal_context, stepped.normal_ctx),
            delta(ours.learners[branch].anomaly_context, stepped.abnormal_ctx),
        )
        figures[f"text classifier/{branch}"] = delta(
            getattr(ours, f"text_{branch}"), theirs[branch].text_features
        )

    # Test-time outputs.
    query_input = normalize(as_float(queries).flip(1)).to(device)  # the official test images are BGR
    with torch.no_grad():
        text_scores, visual_maps = theirs["image"](query_input, "cls")
        visual_max = np.array(visual_maps).reshape(len(visual_maps), -1).max(axis=1)
        their_scores = 1.0 / (1.0 / visual_max + 1.0 / np.array(text_scores))  # metric_cal_img
        their_maps = np.stack(theirs["pixel"](query_input, "seg"))
        our_scores, our_maps = ours.score_full(ours.frozen_features(as_float(queries).to(device)))
    figures["image scores"] = delta(our_scores, torch.from_numpy(np.asarray(their_scores, dtype=np.float64)))
    figures["maps (400 px, blurred)"] = delta(our_maps, torch.from_numpy(their_maps))
    report.note(
        f"image scores ours {our_scores.cpu().numpy().round(5)} official {np.asarray(their_scores).round(5)}"
    )
    report.note(f"maps {our_maps.min():.4f}..{our_maps.max():.4f}")

    report.note(
        f"\nPromptAD parity ({args.precision}, {device}, {args.shots} shots, {args.queries} queries, "
        f"'{args.category}'):"
    )
    # The token ids must agree exactly; every other figure within TARGET (relative where its name says so).
    report.add("prompt token ids", max(token_deltas), 0.0)
    for name, value in figures.items():
        report.add(name, value, TARGET, "rel" if "(relative)" in name else "abs")
