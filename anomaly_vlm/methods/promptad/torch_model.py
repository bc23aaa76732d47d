"""PromptAD: one-class prompt learning from the k normal shots of a category (pure torch).

Paper: Li et al., "PromptAD: Learning Prompts with only Normal Samples for Few-Shot Anomaly Detection",
CVPR 2024. Where the paper and the official code (FuNz-0/PromptAD) differ, this follows the code, which
produced the published numbers; each such point is stated where it is implemented.

The image side is frozen: CLIP with a V-V attention stream beside the original one in every block
(CLIP surgery, no MLP on the V-V stream), read through :meth:`FrozenCLIP.encode_dual_path`. What is
learned, per category, are the prompt vectors; nothing learned touches the image features, so they are
cacheable (:meth:`PromptADModel.frozen_features`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction, ScoringGraph
from anomaly_vlm.methods.export_ops import resize_matrices, resize_with_matrices
from anomaly_vlm.methods.ops import gaussian_blur
from anomaly_vlm.prompts.promptad import ANOMALY_PLACEHOLDER, NORMAL_PLACEHOLDER, PromptADPromptSet

log = logging.getLogger(__name__)

#: Blocks (1-based) of the official visual memory, on the 12-block ViT-B-16-plus-240 (hooks on
#: ``resblocks[2]`` and ``resblocks[7]``).
REFERENCE_DEPTH = 12
REFERENCE_MEMORY_BLOCKS = (3, 8)
BRANCHES = ("image", "pixel")


def default_memory_blocks(num_layers: int) -> list[int]:
    """The official blocks 3 and 8 of 12, scaled to a backbone of ``num_layers`` blocks."""
    if num_layers == REFERENCE_DEPTH:
        return list(REFERENCE_MEMORY_BLOCKS)
    return [
        max(1, min(num_layers, round(block * num_layers / REFERENCE_DEPTH)))
        for block in REFERENCE_MEMORY_BLOCKS
    ]


def _unit(x: Tensor) -> Tensor:
    # x / ||x|| as the official code writes it (no epsilon), so fp16 rounding follows the same path.
    return x / x.norm(dim=-1, keepdim=True)


class PromptLearner(nn.Module):
    """The learnable vectors of one category and one branch, and the sentences they sit in.

    ``normal_context`` ``[n_pro, n_ctx, W]`` and ``anomaly_context`` ``[n_pro_ab, n_ctx_ab, W]`` replace
    the placeholder tokens of the sentences of :meth:`PromptADPromptSet.sentences`. Sentence ``i`` of the
    hand-written anomaly prompts uses normal context ``i mod n_pro`` (state-major order); learned anomaly
    sentence ``i`` uses normal context ``i mod n_pro`` and anomaly context ``i mod n_pro_ab``, the index
    pattern of the official ``expand``/``reshape`` (every pair appears when the two counts are coprime,
    as with the defaults 3 and 4).

    Args:
        backbone: frozen CLIP (token embeddings and text encoder).
        prompt_set: sentences and shapes.
        category: dataset category (folder name).
        normal_prompts: ``n_pro`` of this branch.
        generator: random source of the N(0, init_std) initialisation (normal context first).
    """

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompt_set: PromptADPromptSet,
        category: str,
        normal_prompts: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self._backbone = [backbone]  # a list keeps the frozen backbone out of this module's parameters
        n_ctx, n_ctx_ab = int(prompt_set.context_length), int(prompt_set.anomaly_context_length)
        self.n_ctx, self.n_ctx_ab = n_ctx, n_ctx_ab
        self.normal_prompts, self.anomaly_prompts = int(normal_prompts), int(prompt_set.anomaly_prompts)
        normal, handcrafted, learned = prompt_set.sentences(category, self.normal_prompts)
        self.num_states = len(handcrafted) // self.normal_prompts
        tokens = {
            name: backbone.tokenize(sentences)
            for name, sentences in (("normal", normal), ("handcrafted", handcrafted), ("learned", learned))
        }
        self._check_tokens(backbone, prompt_set, tokens)
        dtype = backbone.dtype
        with torch.no_grad():
            for name, ids in tokens.items():
                embedded = backbone.token_embeddings(ids).to(dtype)
                skip = 1 + n_ctx + (n_ctx_ab if name == "learned" else 0)
                # Fixed parts of the sentences, derived from the frozen backbone (not checkpointed).
                self.register_buffer(f"{name}_prefix", embedded[:, :1].clone(), persistent=False)
                self.register_buffer(f"{name}_suffix", embedded[:, skip:].clone(), persistent=False)
                self.register_buffer(f"{name}_ids", ids.to(embedded.device), persistent=False)
        width = int(backbone.clip.token_embedding.weight.shape[1])
        std = float(prompt_set.init_std)
        device = self.normal_prefix.device
        normal_context = torch.randn(self.normal_prompts, n_ctx, width, generator=generator) * std
        anomaly_context = torch.randn(self.anomaly_prompts, n_ctx_ab, width, generator=generator) * std
        self.normal_context = nn.Parameter(normal_context.to(device=device, dtype=dtype))
        self.anomaly_context = nn.Parameter(anomaly_context.to(device=device, dtype=dtype))

    @staticmethod
    def _check_tokens(backbone: FrozenCLIP, prompt_set: PromptADPromptSet, tokens: dict[str, Tensor]) -> None:
        normal_id = backbone.tokenize([NORMAL_PLACEHOLDER])[0, 1]
        anomaly_id = backbone.tokenize([ANOMALY_PLACEHOLDER])[0, 1]
        n_ctx, n_ctx_ab = int(prompt_set.context_length), int(prompt_set.anomaly_context_length)
        ok = all(bool((ids[:, 1 : 1 + n_ctx] == normal_id).all()) for ids in tokens.values())
        ok = ok and bool((tokens["learned"][:, 1 + n_ctx : 1 + n_ctx + n_ctx_ab] == anomaly_id).all())
        if not ok:
            raise ValueError(
                f"prompt set '{prompt_set.name}': the placeholders did not tokenise one token each"
            )
        if any(bool((ids[:, -1] != 0).any()) for ids in tokens.values()):
            raise ValueError(f"prompt set '{prompt_set.name}': a sentence exceeds the text context length")

    @property
    def backbone(self) -> FrozenCLIP:
        return self._backbone[0]

    def sentence_embeddings(self) -> tuple[Tensor, Tensor, Tensor]:
        """Input token embeddings of the normal, hand-written anomaly and learned anomaly sentences."""
        normal_ctx = self.normal_context
        normal = torch.cat([self.normal_prefix, normal_ctx, self.normal_suffix], dim=1)
        repeats = self.num_states
        handcrafted_ctx = (
            normal_ctx.unsqueeze(0).expand(repeats, -1, -1, -1).reshape(-1, *normal_ctx.shape[1:])
        )
        handcrafted = torch.cat([self.handcrafted_prefix, handcrafted_ctx, self.handcrafted_suffix], dim=1)
        count = self.normal_prompts * self.anomaly_prompts
        index = torch.arange(count, device=normal_ctx.device)
        learned = torch.cat(
            [
                self.learned_prefix,
                normal_ctx[index % self.normal_prompts],
                self.anomaly_context[index % self.anomaly_prompts],
                self.learned_suffix,
            ],
            dim=1,
        )
        return normal, handcrafted, learned

    def forward(self) -> tuple[Tensor, Tensor, Tensor]:
        """Un-normalised text features ``(normal [n_pro, D], handcrafted [S*n_pro, D], learned [..., D])``."""
        normal, handcrafted, learned = self.sentence_embeddings()
        encode = self.backbone.encode_text_embeddings
        return (
            encode(normal, self.normal_ids),
            encode(handcrafted, self.handcrafted_ids),
            encode(learned, self.learned_ids),
        )

    @torch.no_grad()
    def text_classifier(self) -> Tensor:
        """``[2, D]`` unit-norm (normal, anomalous) text features used at test time.

        As the official ``build_text_feature_gallery`` (version "V1"): the mean of the UN-normalised
        normal features and the mean of the un-normalised anomaly features (hand-written and learned
        together), each then normalised.
        """
        normal, handcrafted, learned = self()
        anomalous = torch.cat([handcrafted, learned])
        return _unit(torch.stack([normal.mean(dim=0), anomalous.mean(dim=0)]))


class PromptADModel(nn.Module):
    """Frozen V-V CLIP + per-category prompt learning + visual memory.

    Args:
        backbone: frozen CLIP (published: ViT-B-16-plus-240, ``laion400m_e32``, 240 px, fp16).
        prompt_set: PromptAD's prompt lists and shapes.
        vv_start: first block (1-based) of the V-V stream; the official surgery covers all blocks (1).
        memory_blocks: blocks (1-based) whose patch tokens form the visual memory; None = blocks 3 and 8
            of 12, scaled to other depths.
        memory_after_next_attention: the official memory features are views of the block outputs that
            the NEXT block modifies in place with its attention residual (``x_ori += attn``), so what is
            stored is ``block output + next block's attention residual`` (the state inside the next block,
            before its MLP). True (default) reproduces that; False uses the plain block outputs.
        test_channel_order: ``bgr`` (default): test images reach CLIP with their channels reversed, as
            in the official test loop (OpenCV's BGR array handed to PIL as RGB); the references (the
            prompt-training images and the memory) are RGB there and here. ``rgb`` feeds RGB everywhere.
        map_size: side of the official output maps (400); the image score takes the max of the visual map
            at this size and the blur acts at this size. None = the input size.
        blur_sigma, blur_truncate: Gaussian blur of the final map (SciPy ``gaussian_filter``, σ = 4).
        epochs, lr, momentum, weight_decay, min_lr: per-branch training, one full batch of the k shots per
            epoch: SGD(lr 0.002, momentum 0.9, weight decay 5e-4), cosine annealing to 1e-5 over 100 epochs.
        margin: explicit anomaly margin of the triplet loss (the official code uses 0).
        match_weight: weight of the squared distance between the mean hand-written and mean learned
            anomaly features (``--lambda1`` 0.001).
        seed: seed of the prompt initialisation (the same for every category and both branches).
        progress: show a progress bar per branch while training.
    """

    cacheable = True

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompt_set: PromptADPromptSet,
        vv_start: int = 1,
        memory_blocks: Sequence[int] | None = None,
        memory_after_next_attention: bool = True,
        test_channel_order: str = "bgr",
        map_size: int | None = 400,
        blur_sigma: float = 4.0,
        blur_truncate: float = 4.0,
        epochs: int = 100,
        lr: float = 0.002,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        min_lr: float = 1e-5,
        margin: float = 0.0,
        match_weight: float = 0.001,
        seed: int = 111,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.prompt_set = prompt_set
        try:
            self.vv_start = backbone.check_layers([vv_start])[0]
            blocks = default_memory_blocks(backbone.num_layers) if memory_blocks is None else memory_blocks
            self.memory_blocks = backbone.check_layers(blocks)
        except ValueError as error:
            raise ValueError(f"method.vv_start / method.memory_blocks: {error}") from None
        if not self.memory_blocks:
            raise ValueError(
                "method.memory_blocks is empty; PromptAD's visual memory needs at least one block"
            )
        if test_channel_order not in ("bgr", "rgb"):
            raise ValueError(f"method.test_channel_order={test_channel_order!r} must be 'bgr' or 'rgb'")
        self.memory_after_next_attention = bool(memory_after_next_attention)
        self.test_channel_order = test_channel_order
        self.map_size = int(map_size) if map_size else None
        self.blur_sigma, self.blur_truncate = float(blur_sigma), float(blur_truncate)
        if int(epochs) < 1 or float(lr) <= 0:
            raise ValueError(f"method.epochs={epochs} and method.lr={lr} must be positive")
        self.epochs, self.lr, self.momentum = int(epochs), float(lr), float(momentum)
        self.weight_decay, self.min_lr = float(weight_decay), float(min_lr)
        self.margin, self.match_weight = float(margin), float(match_weight)
        self.seed, self.progress = int(seed), bool(progress)
        self.learners = nn.ModuleDict()
        self.category: str | None = None
        self.register_buffer("text_image", torch.zeros(0), persistent=False)
        self.register_buffer("text_pixel", torch.zeros(0), persistent=False)
        self.memory: list[Tensor] = []

    # ----- frozen image features ---------------------------------------------------------------------
    def feature_spec(self) -> dict[str, Any]:
        return {
            "kind": "promptad",
            "vv_start": self.vv_start,
            "memory_blocks": list(self.memory_blocks),
            "memory_after_next_attention": self.memory_after_next_attention,
            "test_channel_order": self.test_channel_order,
        }

    def _memory_sources(self) -> tuple[list[int], list[int]]:
        """Blocks whose outputs, and blocks whose post-attention states, the memory reads."""
        depth = self.backbone.num_layers
        outputs, inside = [], []
        for block in self.memory_blocks:
            if self.memory_after_next_attention and block < depth:
                inside.append(block + 1)
            else:
                outputs.append(block)
        return outputs, inside

    @torch.no_grad()
    def encode(self, images: Tensor, normalized: bool = False) -> FrozenFeatures:
        """Unit-norm features of ``[B, 3, H, W]`` images in ``[0, 1]``, channels as given.

        ``global`` ``[B, D]``: original stream CLS -> ``ln_post`` -> ``proj``; ``patch`` ``[B, N, D]``: V-V
        stream patches -> ``ln_post`` -> ``proj``; ``memory_<i>`` ``[B, N, W]``: raw patch tokens of memory
        block i (no ``ln_post``, no ``proj``), all L2-normalised as the official ``encode_image`` does.
        """
        outputs, inside = self._memory_sources()
        dual = self.backbone.encode_dual_path(
            images,
            vv_start=self.vv_start,
            layers=outputs,
            post_attention_layers=inside,
            normalized=normalized,
        )
        features = {"global": _unit(dual.global_embedding), "patch": _unit(dual.vv_patch_embeddings)}
        depth = self.backbone.num_layers
        for position, block in enumerate(self.memory_blocks):
            if self.memory_after_next_attention and block < depth:
                tokens = dual.post_attention_tokens[block + 1]
            else:
                tokens = dual.layer_tokens[block]
            features[f"memory_{position}"] = _unit(tokens[:, 1:])
        return features

    def frozen_features(self, images: Tensor, normalized: bool = False) -> FrozenFeatures:
        """Features of TEST images: :meth:`encode` after the test-time channel order.

        ``normalized``: the images are already normalised (RGB); the BGR order is one of the ``[0, 1]``
        pixels, and mean and std differ per channel, so they are undone before the channels swap.
        """
        if self.test_channel_order == "bgr":
            if normalized:
                backbone = self.backbone
                images = backbone.normalize(backbone.denormalize(images).flip(1))
            else:
                images = images.flip(1)
        return self.encode(images, normalized=normalized)

    def reference_features(self, images: Tensor) -> FrozenFeatures:
        """Features of the k normal references (RGB, as the official training and memory code)."""
        return self.encode(images)

    # ----- training (per category) ----------------------------------------------------------------------
    def branch_prompts(self, branch: str) -> int:
        return int(self.prompt_set.image_prompts if branch == "image" else self.prompt_set.pixel_prompts)

    def new_learner(self, category: str, branch: str) -> PromptLearner:
        """A freshly initialised learner (seeded by ``seed`` alone: every category starts alike)."""
        generator = torch.Generator().manual_seed(self.seed)
        return PromptLearner(self.backbone, self.prompt_set, category, self.branch_prompts(branch), generator)

    def prompt_loss(self, learner: PromptLearner, features: Tensor) -> dict[str, Tensor]:
        """PromptAD's loss for one branch, as ``train_cls.py`` / ``train_seg.py``.

        ``features`` are unit-norm image features: ``[k, D]`` CLS embeddings (image branch) or ``[k, N, D]``
        V-V patch embeddings (pixel branch). Terms:

        - contrast: cross-entropy of ``logit_scale · [cos(f, normal anchor), cos(f, each anomaly prompt)]``
          with target 0, ``logit_scale`` the model's RAW stored value (≈ 4.6 for trained CLIP, not its exp);
          the normal anchor is the normalised mean of the un-normalised normal features.
        - explicit anomaly margin: ``relu(Σ (f - normal anchor)² - Σ (f - anomaly anchor)² + margin)``,
          mean; the sum runs over ``dim=1``: the feature axis for CLS features, but the TOKEN axis for
          patch features (``[k, N, D]``), exactly as the official code computes it.
        - match: ``|mean normalised hand-written - mean normalised learned anomaly features|²``, weighted.
        """
        normal, handcrafted, learned = learner()
        anomalous = torch.cat([handcrafted, learned])
        match = (_unit(handcrafted).mean(dim=0) - _unit(learned).mean(dim=0)).norm(dim=0) ** 2.0
        normal_anchor = _unit(normal.mean(dim=0, keepdim=True))
        anomaly_anchor = _unit(anomalous.mean(dim=0, keepdim=True))
        anomalous = _unit(anomalous)
        scale = self.backbone.logit_scale.to(features.dtype)
        if features.ndim == 2:
            logits = torch.cat([features @ normal_anchor.T, features @ anomalous.T], dim=-1) * scale
            target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            contrast = F.cross_entropy(logits, target)
        else:
            logits = torch.cat([features @ normal_anchor.T, features @ anomalous.T], dim=-1) * scale
            target = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
            contrast = F.cross_entropy(logits.transpose(1, 2), target)
        positive = (features - normal_anchor).pow(2).sum(dim=1)
        negative = (features - anomaly_anchor).pow(2).sum(dim=1)
        margin = torch.relu(positive - negative + self.margin).mean()
        total = contrast + margin + match * self.match_weight
        return {"loss": total, "contrast_loss": contrast, "margin_loss": margin, "match_loss": match}

    def train_branch(self, category: str, branch: str, features: Tensor) -> tuple[PromptLearner, list[float]]:
        """Train one branch's prompts on the k shots: one step per epoch on all shots (batch 400 > k)."""
        learner = self.new_learner(category, branch)
        optimizer = torch.optim.SGD(
            learner.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.epochs, eta_min=self.min_lr
        )
        history: list[float] = []
        bar = tqdm(
            range(self.epochs), desc=f"PromptAD {category} [{branch}]", disable=not self.progress, leave=False
        )
        for _ in bar:
            optimizer.zero_grad()
            losses = self.prompt_loss(learner, features)
            losses["loss"].backward()
            optimizer.step()
            schedule.step()
            value = float(losses["loss"].detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"PromptAD loss became {value} for category '{category}' ({branch})")
            history.append(value)
            bar.set_postfix(loss=f"{value:.4f}")
        return learner, history

    def fit_category(self, category: str, references: FrozenFeatures) -> dict[str, list[float]]:
        """Learn both branches' prompts from the references' features and build the visual memory.

        ``references`` are :meth:`reference_features` of the k normal shots (RGB). The official code
        trains two separate prompt learners per category (``train_cls.py``: 3 normal prompts, loss on the
        CLS embedding, used for image scores; ``train_seg.py``: 1 normal prompt, loss on the V-V patch
        embeddings, used for maps), each for 100 epochs, and keeps the epoch whose TEST-set AUROC is best.
        That selection uses test labels; here the last epoch is kept.

        Returns:
            The loss of every epoch, per branch.
        """
        if not references or references["global"].shape[0] == 0:
            raise ValueError(f"PromptAD needs normal reference images for category '{category}' (shots >= 1)")
        references = {key: value.detach().clone() for key, value in references.items()}
        self.memory = [
            references[f"memory_{i}"].reshape(-1, references[f"memory_{i}"].shape[-1])
            for i in range(len(self.memory_blocks))
        ]
        histories = {}
        for branch in BRANCHES:
            inputs = references["global"] if branch == "image" else references["patch"]
            learner, histories[branch] = self.train_branch(category, branch, inputs)
            self.learners[branch] = learner
            setattr(self, f"text_{branch}", learner.text_classifier())
        self.category = category
        return histories

    def prepare_category(self, category: str) -> None:
        """Untrained learners of both branches for ``category``: the structure a saved detector's learned
        prompts, text classifiers and memory are loaded into."""
        for branch in BRANCHES:
            self.learners[branch] = self.new_learner(category, branch)
        self.category = category

    # ----- scoring ------------------------------------------------------------------------------------
    def _grid(self, values: Tensor) -> Tensor:
        side_h, side_w = self.backbone.grid_size
        return values.float().reshape(values.shape[0], 1, side_h, side_w)

    def visual_grid(self, features: FrozenFeatures) -> Tensor:
        """``[B, 1, h, w]``: mean over memory blocks of min over the memory of ``(1 - cos) / 2``."""
        scores = []
        for position, memory in enumerate(self.memory):
            distance, _ = (1.0 - features[f"memory_{position}"] @ memory.T).min(dim=-1)
            scores.append(distance / 2.0)
        return self._grid(sum(scores) / len(scores))

    def textual_grid(self, features: FrozenFeatures) -> Tensor:
        """``[B, 1, h, w]`` anomalous probability of the V-V patches against the pixel-branch prompts."""
        scale = self.backbone.logit_scale
        probabilities = ((scale * features["patch"]) @ self.text_pixel.T).softmax(dim=-1)[..., 1]
        return self._grid(probabilities)

    def textual_image_score(self, features: FrozenFeatures) -> Tensor:
        """``[B]`` anomalous probability of the CLS embedding against the image-branch prompts."""
        scale = self.backbone.logit_scale
        return ((scale * features["global"]) @ self.text_image.T).softmax(dim=-1)[:, 1].float()

    def _upsample(self, grid: Tensor) -> Tensor:
        size = self.map_size or self.backbone.image_size
        return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def score_full(self, features: FrozenFeatures) -> tuple[Tensor, Tensor]:
        """``([B] image scores, [B, S, S] maps at map_size)``, the official outputs.

        Map (``train_seg.py``): ``1 / (1/textual + 1/visual)`` on the patch grid (half the harmonic mean),
        bilinear to ``map_size``, Gaussian blur. Image score (``train_cls.py``): ``1 / (1/max(visual map at
        map_size) + 1/textual CLS score)``; the visual map here is not blurred.
        """
        if self.category is None:
            raise RuntimeError("PromptADModel.fit_category(category, references) must run before scoring")
        visual = self.visual_grid(features)
        combined = 1.0 / (1.0 / self.textual_grid(features) + 1.0 / visual)
        maps = gaussian_blur(self._upsample(combined)[:, 0], self.blur_sigma, self.blur_truncate)
        visual_max = self._upsample(visual).flatten(1).max(dim=1).values
        image_score = 1.0 / (1.0 / visual_max + 1.0 / self.textual_image_score(features))
        return image_score, maps

    def score(self, features: FrozenFeatures, resize: tuple[Tensor, Tensor] | None = None) -> Prediction:
        """:meth:`score_full` with the map resized (bilinear, antialiased) to the evaluation size.

        ``resize``: that resize as ``(rows, columns)`` matrices
        (:func:`~anomaly_vlm.methods.export_ops.resize_matrices`), applied as two matrix products, the
        form an exported graph can hold.
        """
        image_score, maps = self.score_full(features)
        size = self.backbone.image_size
        if maps.shape[-1] != size and resize is not None:
            maps = resize_with_matrices(maps, *resize)
        elif maps.shape[-1] != size:
            maps = F.interpolate(
                maps[:, None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )[:, 0]
        return Prediction(image_score=image_score, anomaly_map=maps)

    def predict(self, images: Tensor) -> Prediction:
        """Score ``[B, 3, H, W]`` test images in ``[0, 1]`` (RGB) after :meth:`fit_category`."""
        return self.score(self.frozen_features(images))

    def export_module(self) -> PromptADGraph:
        """The export graph: normalised RGB images -> (image score, map) with both branches' learned
        text features and the visual memory baked in (call after :meth:`fit_category`)."""
        if self.category is None:
            raise RuntimeError("PromptADModel.fit_category(category, references) must run before export")
        return PromptADGraph(self)

    def extra_repr(self) -> str:
        return (
            f"vv_start={self.vv_start}, memory_blocks={self.memory_blocks}, "
            f"memory_after_next_attention={self.memory_after_next_attention}, "
            f"test_channel_order={self.test_channel_order}, map_size={self.map_size}, epochs={self.epochs}"
        )


class PromptADGraph(ScoringGraph):
    """:class:`ScoringGraph` of PromptAD: the antialiased resize as products with a constant matrix."""

    def __init__(self, model: PromptADModel) -> None:
        super().__init__(model)
        size = model.backbone.image_size
        rows, columns = resize_matrices(model.map_size or size, size, antialias=True)
        device = model.backbone.pixel_mean.device
        self.register_buffer("resize_rows", rows.to(device))
        self.register_buffer("resize_columns", columns.to(device))

    def score(self, features: FrozenFeatures) -> Prediction:
        return self.model.score(features, resize=(self.resize_rows, self.resize_columns))


__all__ = ["PromptADGraph", "PromptADModel", "PromptLearner", "default_memory_blocks"]
