"""FAPrompt: compound abnormality prompts and a data-dependent abnormality prior (pure torch).

Paper: Zhu et al., "Fine-grained Abnormality Prompt Learning for Zero-shot Anomaly Detection", ICCV 2025.
FAPrompt is built on AnomalyCLIP's code base (DPAM image encoder, deep text prompts, glocal loss). Where the
paper and the official code (mala-lab/FAPrompt) differ, this follows the code, which produced the published
numbers; each such point is stated where it is implemented.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.methods.contract import FrozenFeatures, Prediction, ScoringGraph
from anomaly_vlm.methods.losses import dice_loss, focal_loss
from anomaly_vlm.methods.ops import default_dpam_start, encode_dpam, gaussian_blur
from anomaly_vlm.prompts.faprompt import ABNORMAL_PLACEHOLDER, NORMAL_PLACEHOLDER, FAPromptSet
from anomaly_vlm.prompts.learnable import encode_deep_prompted_text

#: Where the abnormality prior takes its patches from.
PRIOR_PATCHES = ("first", "top")


class CompoundPromptLearner(nn.Module):
    """FAPrompt's prompt learner: compound abnormality prompts, deep text prompts, the prior network.

    Parameters (official names): ``ctx_pos`` (normal context ``[n_pos, W]``, shared by every prompt),
    ``ctx_neg`` (``[P, n_neg, W]``, the abnormality tokens of each of the ``P`` abnormal prompts),
    ``deep_prompts`` (``[depth - 1, n_deep, W]``, the official ``compound_prompts_text``) and
    ``patch_meta_net`` (``Linear(k * D, k * D // 16) -> ReLU -> Linear(k * D // 16, W)``, PyTorch's default
    init), which maps the ``k`` selected unit-norm patch embeddings of an image (flattened) to a bias added to
    every abnormality token of that image (the data-dependent abnormality prior).

    The official learner also holds ``compound_prompt_projections`` (``Linear(W, 896)`` clones) that nothing
    uses; they change no output and are not reproduced.

    Args:
        backbone: the frozen CLIP whose text encoder is used.
        prompt_set: the sentences and shapes.
        prior_tokens: ``k``, the patches the prior network reads (10).
        text_truncate: run the text transformer only up to the last end token (exact up to float
            summation order with CLIP's causal mask; the official code runs all 77 positions).
    """

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompt_set: FAPromptSet,
        prior_tokens: int = 10,
        text_truncate: bool = True,
    ) -> None:
        super().__init__()
        clip = backbone.clip
        for attribute in ("transformer", "token_embedding", "positional_embedding", "ln_final", "attn_mask"):
            if getattr(clip, attribute, None) is None:
                raise ValueError(
                    f"backbone '{backbone.model_name}' has no text attribute '{attribute}'; FAPrompt needs "
                    "an open_clip CLIP with a built-in text transformer"
                )
        if getattr(clip, "text_pool_type", "argmax") != "argmax":
            raise ValueError(
                f"backbone '{backbone.model_name}' pools text with '{clip.text_pool_type}', not the EOT "
                "(argmax) token; unsupported"
            )
        depth = int(prompt_set.deep_prompt_depth)
        if depth > backbone.text_num_layers:
            raise ValueError(
                f"prompts.deep_prompt_depth={depth} exceeds the {backbone.text_num_layers} text blocks of "
                f"backbone '{backbone.model_name}'; set prompts.deep_prompt_depth<={backbone.text_num_layers}"
            )
        if prior_tokens < 1 or prior_tokens > backbone.num_patches:
            raise ValueError(
                f"method.prior_tokens={prior_tokens} outside 1..{backbone.num_patches} (the patches of "
                f"'{backbone.model_name}' at {backbone.image_size} px)"
            )
        self.prompt_set = prompt_set
        self._backbone = [backbone]  # a list keeps the frozen backbone out of this module's parameters
        self.prior_tokens = int(prior_tokens)
        self.text_truncate = bool(text_truncate)
        width = backbone.text_width
        n_pos, n_neg = int(prompt_set.normal_context_length), int(prompt_set.abnormal_context_length)
        self.n_pos, self.n_neg, self.num_abnormal = n_pos, n_neg, int(prompt_set.abnormal_prompts)
        normal, abnormal = prompt_set.sentences()
        tokens = backbone.tokenize(normal + abnormal[:1])
        normal_id = backbone.tokenize([NORMAL_PLACEHOLDER])[0, 1]
        abnormal_id = backbone.tokenize([ABNORMAL_PLACEHOLDER])[0, 1]
        if not bool((tokens[:, 1 : 1 + n_pos] == normal_id).all()) or not bool(
            (tokens[1, 1 + n_pos : 1 + n_pos + n_neg] == abnormal_id).all()
        ):
            raise ValueError(f"prompt set '{prompt_set.name}': the context placeholders did not tokenise 1:1")
        if bool((tokens[:, -1] != 0).any()):
            raise ValueError(f"prompt set '{prompt_set.name}': sentences exceed the text context length")
        with torch.no_grad():
            embedded = clip.token_embedding(tokens).float()
        # Fixed parts of the sentences, derived from the frozen backbone (not checkpointed).
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("suffix_pos", embedded[0, 1 + n_pos :].clone(), persistent=False)
        self.register_buffer("suffix_neg", embedded[1, 1 + n_pos + n_neg :].clone(), persistent=False)
        ids = torch.cat([tokens[:1], tokens[1:].expand(self.num_abnormal, -1)])
        self.register_buffer("token_ids", ids, persistent=False)
        embed_dim = backbone.embed_dim
        hidden = max(1, embed_dim * self.prior_tokens // 16)
        self.patch_meta_net = nn.Sequential(
            OrderedDict(
                [
                    ("linear1", nn.Linear(embed_dim * self.prior_tokens, hidden)),
                    ("relu", nn.ReLU()),
                    ("linear2", nn.Linear(hidden, width)),
                ]
            )
        )
        std = float(prompt_set.init_std)
        self.ctx_pos = nn.Parameter(torch.randn(n_pos, width) * std)
        self.ctx_neg = nn.Parameter(torch.randn(self.num_abnormal, n_neg, width) * std)
        self.deep_prompts = nn.Parameter(
            torch.randn(max(depth - 1, 0), prompt_set.deep_prompt_length, width) * std
        )

    @property
    def backbone(self) -> FrozenCLIP:
        return self._backbone[0]

    def prior(self, tokens: Tensor) -> Tensor:
        """``[B, W]`` abnormality bias from ``[B, k, D]`` selected unit-norm patch embeddings."""
        return self.patch_meta_net(tokens.reshape(tokens.shape[0], -1))

    def sentence_embeddings(self, bias: Tensor | None = None) -> Tensor:
        """``[S, L, W]`` input embeddings: per image (``bias`` ``[B, W]``) the normal sentence and the
        ``P`` abnormal ones, their abnormality tokens shifted by the image's bias; one set without it."""
        prefix = self.prefix.to(self.ctx_pos.dtype)
        normal = torch.cat([prefix[0], self.ctx_pos, self.suffix_pos])
        ctx_neg = self.ctx_neg if bias is None else self.ctx_neg.unsqueeze(0) + bias[:, None, None, :]
        if bias is None:
            ctx_neg = ctx_neg.unsqueeze(0)
        count = ctx_neg.shape[0]
        shared = self.ctx_pos.expand(count, self.num_abnormal, -1, -1)
        abnormal = torch.cat(
            [
                prefix[1].expand(count, self.num_abnormal, -1, -1),
                shared,
                ctx_neg,
                self.suffix_neg.expand(count, self.num_abnormal, -1, -1),
            ],
            dim=2,
        )
        sentences = torch.cat([normal.expand(count, 1, -1, -1), abnormal], dim=1)
        return sentences.reshape(-1, *sentences.shape[2:])

    def forward(self, bias: Tensor | None = None) -> Tensor:
        """Raw (unnormalised) text features of the normal and the ``P`` abnormal prompts:
        ``[1 + P, D]`` without ``bias``, ``[B, 1 + P, D]`` with a ``[B, W]`` bias."""
        embeddings = self.sentence_embeddings(bias)
        count = 1 if bias is None else bias.shape[0]
        ids = self.token_ids.repeat(count, 1)
        features = encode_deep_prompted_text(
            self.backbone,
            embeddings,
            ids,
            list(self.deep_prompts),
            fp16=self.prompt_set.deep_prompt_fp16,
            truncate=self.text_truncate,
        )
        features = features.view(count, 1 + self.num_abnormal, -1)
        return features[0] if bias is None else features


def aggregate_text(raw: Tensor) -> Tensor:
    """``[..., 1 + P, D]`` raw features -> ``[..., 2, D]`` unit [normal, mean of the RAW abnormal features]
    (the official aggregation: the abnormal prompts are averaged before any normalisation)."""
    pair = torch.stack([raw[..., 0, :], raw[..., 1:, :].mean(dim=-2)], dim=-2)
    return pair / pair.norm(dim=-1, keepdim=True)


def binary_focal_loss(score: Tensor, label: Tensor, gamma: float = 2.0, on_logits: bool = True) -> Tensor:
    """The official ``BinaryFocalLoss`` (alpha 1): ``mean((1 - p_t)^gamma * BCE)`` with ``p_t = exp(-BCE)``.

    ``on_logits`` (the official default, ``logits=True``) applies BCE-with-logits although the official
    input is a probability in ``[0, 1]``; False applies plain BCE to it.
    """
    if on_logits:
        bce = F.binary_cross_entropy_with_logits(score, label, reduction="none")
    else:
        bce = F.binary_cross_entropy(score.clamp(1e-7, 1 - 1e-7), label, reduction="none")
    return ((1.0 - torch.exp(-bce)) ** gamma * bce).mean()


class FAPrompt(nn.Module):
    """Frozen CLIP + DPAM image encoder + compound abnormality prompts with a data-dependent prior.

    Per image (as ``train.py`` / ``test.py`` of the official code):

    1. static text: [normal, mean of the ``P`` raw abnormal features], L2-normalised; patch probabilities
       ``p1 = softmax(cos(patch, text) / T)`` on the patch grid (map 1);
    2. the prior: ``k`` unit-norm patch embeddings -> ``patch_meta_net`` -> a bias added to every
       abnormality token; the official code meant the ``k`` most abnormal patches of map 1 but indexes
       patches ``0 .. k-1`` (``prior_patches``);
    3. per-image text from the biased prompts, the same aggregation; map 2 and the image probability
       ``softmax(cos(global, text_i) / T)[abnormal]`` from it;
    4. image score ``0.5 * (p_image + (2 max p1 + max p2) / 3)`` (maxima over the patch grid, before
       upsampling); map ``(p1 + p2) / 2`` (written as the official ``(a1 + 1 - n1 + a2 + 1 - n2) / 4``),
       upsampled bilinearly, then a Gaussian blur (``sigma`` 10 in the official test script).

    Args:
        backbone: frozen CLIP (published: ViT-L-14-336 QuickGELU, OpenAI weights, 518 px, positional
            embedding interpolated bilinearly).
        prompts: the compound prompt set.
        dpam: use the DPAM stream for patch tokens (the official code always does).
        dpam_start: first DPAM block (1-based); None scales the official 6-of-24 to the backbone depth.
        prior_tokens: ``k`` patches the prior network reads (10).
        prior_patches: ``first`` (official, a bug: patches ``0 .. k-1``, the first ``k`` cells of the top row
            of the grid, whatever the image) or ``top`` (the ``k`` most abnormal patches of map 1, sorted
            descending, as the paper describes).
        temperature: cosine similarities are divided by it before every softmax (0.07).
        map2_weight: weight of the segmentation losses of map 2 (0.5).
        diversity_weight: weight of the abnormal-prompt diversity loss (0.1).
        bias_weight: weight of the loss pulling normal images' bias to zero (1; summed over the normal
            images of the batch, not averaged, as the official code).
        image_focal_on_logits: the official ``BinaryFocalLoss`` applies BCE-with-logits to the image
            score, a probability (True, faithful); False applies plain BCE.
        text_truncate: see :class:`CompoundPromptLearner`.
        blur_sigma, blur_truncate: Gaussian blur of the test maps (SciPy's ``gaussian_filter`` with the
            official ``--sigma 10`` and its default truncation 4); 0 disables.
    """

    #: The image side has no learned part (DPAM is a fixed re-use of the frozen attention weights; the
    #: prior reads the frozen patch embeddings and only shifts text tokens), so features can be cached.
    cacheable = True

    def __init__(
        self,
        backbone: FrozenCLIP,
        prompts: FAPromptSet,
        dpam: bool = True,
        dpam_start: int | None = None,
        prior_tokens: int = 10,
        prior_patches: str = "first",
        temperature: float = 0.07,
        map2_weight: float = 0.5,
        diversity_weight: float = 0.1,
        bias_weight: float = 1.0,
        image_focal_on_logits: bool = True,
        text_truncate: bool = True,
        blur_sigma: float = 10.0,
        blur_truncate: float = 4.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        num_layers = backbone.num_layers
        start = default_dpam_start(num_layers) if dpam_start is None else int(dpam_start)
        if not 1 <= start <= num_layers:
            raise ValueError(
                f"method.dpam_start={dpam_start} outside 1..{num_layers} of '{backbone.model_name}'"
            )
        if prior_patches not in PRIOR_PATCHES:
            raise ValueError(f"method.prior_patches={prior_patches!r} is not one of {list(PRIOR_PATCHES)}")
        if temperature <= 0:
            raise ValueError(f"method.temperature={temperature} must be positive")
        self.dpam = bool(dpam)
        self.dpam_start = start
        self.layer = num_layers  # the official code keeps the last block's DPAM stream only
        self.prior_patches = prior_patches
        self.temperature = float(temperature)
        self.map2_weight = float(map2_weight)
        self.diversity_weight = float(diversity_weight)
        self.bias_weight = float(bias_weight)
        self.image_focal_on_logits = bool(image_focal_on_logits)
        self.blur_sigma = float(blur_sigma)
        self.blur_truncate = float(blur_truncate)
        self.prompt_learner = CompoundPromptLearner(backbone, prompts, prior_tokens, text_truncate)
        #: Raw static text features ``[1 + P, D]`` fixed for scoring; None computes them from the prompts.
        self.static_text: Tensor | None = None

    # ----- frozen features ------------------------------------------------------------------------
    def feature_spec(self) -> dict[str, Any]:
        return {
            "method": "faprompt",
            "layer": self.layer,
            "dpam": self.dpam,
            "dpam_start": self.dpam_start,
            "global_ln_post": False,
        }

    @torch.no_grad()
    def frozen_features(self, images: Tensor, normalized: bool = False) -> FrozenFeatures:
        """``global_embedding`` ``[B, D]`` (original stream's CLS ``@ proj``, no ``ln_post``, as the official
        code) and ``patch_embeddings`` ``[B, N, D]`` (the last block's DPAM stream, ``ln_post``, ``proj``).
        The official code also computes the taps of blocks 6/12/18 and discards them."""
        global_embedding, patches = encode_dpam(
            self.backbone,
            images,
            [self.layer],
            dpam=self.dpam,
            dpam_start=self.dpam_start,
            normalized=normalized,
        )
        return {"global_embedding": global_embedding, "patch_embeddings": patches[self.layer]}

    # ----- the two passes -------------------------------------------------------------------------
    def probabilities(self, patches: Tensor, text: Tensor) -> Tensor:
        """``[B, N, 2]`` softmax over (normal, abnormal) of cos/T; ``text`` ``[2, D]`` or per image
        ``[B, 2, D]``; ``patches`` unit-norm."""
        logits = patches @ text.transpose(-1, -2) if text.ndim == 3 else patches @ text.T
        return (logits / self.temperature).softmax(dim=-1)

    def upsample(self, probabilities: Tensor, size: tuple[int, int]) -> Tensor:
        """``[B, N, 2]`` -> ``[B, 2, H, W]``, bilinear (``align_corners=False``) as ``get_similarity_map``."""
        side_h, side_w = self.backbone.grid_size
        grid = probabilities.transpose(1, 2).reshape(probabilities.shape[0], 2, side_h, side_w)
        return F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)

    def select_prior_tokens(self, patches: Tensor, abnormal: Tensor) -> Tensor:
        """``[B, k, D]`` the patches the prior reads: ``first`` = patches ``0 .. k-1`` (official),
        ``top`` = the ``k`` highest abnormal probabilities of map 1, in descending order."""
        k = self.prompt_learner.prior_tokens
        if self.prior_patches == "first":
            return patches[:, :k]
        index = abnormal.detach().topk(k, dim=1, largest=True, sorted=True).indices
        return patches.gather(1, index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))

    def forward_features(
        self, features: FrozenFeatures, static_raw: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Both passes on frozen features: the probabilities, the per-image text, the prior's bias."""
        patches = F.normalize(features["patch_embeddings"], dim=-1)
        image = F.normalize(features["global_embedding"], dim=-1)
        if static_raw is None:
            static_raw = self.prompt_learner()
        p1 = self.probabilities(patches, aggregate_text(static_raw))
        bias = self.prompt_learner.prior(self.select_prior_tokens(patches, p1[..., 1]))
        text = aggregate_text(self.prompt_learner(bias))  # [B, 2, D]
        p2 = self.probabilities(patches, text)
        image_logits = (image.unsqueeze(1) @ text.transpose(1, 2))[:, 0] / self.temperature
        return {
            "static_raw": static_raw,
            "p1": p1,
            "p2": p2,
            "bias": bias,
            "image_logits": image_logits,
        }

    def image_score(self, parts: dict[str, Tensor]) -> Tensor:
        """``0.5 * (p_image + (2 max p1 + max p2) / 3)``, maxima over the patch grid."""
        maxima = (2 * parts["p1"][..., 1].amax(dim=1) + parts["p2"][..., 1].amax(dim=1)) / 3
        return 0.5 * (parts["image_logits"].softmax(dim=-1)[:, 1] + maxima)

    # ----- training -------------------------------------------------------------------------------
    def loss_from_features(
        self, features: FrozenFeatures, masks: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        """The official training loss of one batch (``train.py``):

        ``seg(map1) + map2_weight * seg(map2) + CE(image) + BinaryFocal(score) + diversity_weight * L_ab
        + bias_weight * L_bias`` with ``seg = focal + dice(abnormal, gt) + dice(normal, 1 - gt)`` at the
        input size, ``L_ab = Σ_{k<m} |cos(a_k, a_m)|`` over the static raw abnormal features and
        ``L_bias = Σ_{normal images} mean(bias²)``.
        """
        parts = self.forward_features(features)
        size = masks.shape[-2:]
        target = (masks > 0.5).float()
        labels = labels.to(target.device)
        segmentation = []
        for key in ("p1", "p2"):
            maps = self.upsample(parts[key], size)
            segmentation.append(
                focal_loss(maps, target) + dice_loss(maps[:, 1], target) + dice_loss(maps[:, 0], 1.0 - target)
            )
        image_loss = F.cross_entropy(parts["image_logits"], labels.long())
        score_loss = binary_focal_loss(
            self.image_score(parts), labels.float(), on_logits=self.image_focal_on_logits
        )
        abnormal = F.normalize(parts["static_raw"][1:], dim=-1)
        cosines = abnormal @ abnormal.T
        upper = torch.triu(torch.ones_like(cosines, dtype=torch.bool), diagonal=1)
        diversity = cosines[upper].abs().sum()
        normal = labels == 0
        bias_loss = (parts["bias"][normal] ** 2).mean(dim=-1).sum()
        seg = segmentation[0] + self.map2_weight * segmentation[1]
        total = (
            seg + image_loss + score_loss + self.diversity_weight * diversity + self.bias_weight * bias_loss
        )
        return {
            "loss": total,
            "segmentation_loss": seg,
            "image_loss": image_loss,
            "score_loss": score_loss,
            "diversity_loss": diversity,
            "bias_loss": bias_loss,
        }

    def loss(self, images: Tensor, masks: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """:meth:`loss_from_features` of ``images`` (``[B, 3, H, W]`` in ``[0, 1]``)."""
        return self.loss_from_features(self.frozen_features(images), masks, labels)

    # ----- scoring --------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, features: FrozenFeatures) -> Prediction:
        """Image score and blurred map of ``test.py`` (see the class docstring)."""
        return self.score_with_text(features, self.static_text)

    def score_with_text(self, features: FrozenFeatures, static_raw: Tensor | None) -> Prediction:
        """:meth:`score` with the given raw static text features (None: from the prompts)."""
        parts = self.forward_features(features, static_raw)
        size = (self.backbone.image_size, self.backbone.image_size)
        map1, map2 = self.upsample(parts["p1"], size), self.upsample(parts["p2"], size)
        maps = (map1[:, 1] + 1 - map1[:, 0] + map2[:, 1] + 1 - map2[:, 0]) / 4.0
        return Prediction(self.image_score(parts), gaussian_blur(maps, self.blur_sigma, self.blur_truncate))

    def forward(self, images: Tensor) -> Prediction:
        return self.score(self.frozen_features(images))

    def export_module(self) -> FAPromptGraph:
        """The export graph: normalised images -> (image score, map). The static text features are baked
        in; the per-image prompts still run the text transformer inside the graph (they depend on the
        image)."""
        with torch.no_grad():
            static = self.prompt_learner() if self.static_text is None else self.static_text
        return FAPromptGraph(self, static.detach().clone())

    def extra_repr(self) -> str:
        return (
            f"dpam={self.dpam}, dpam_start={self.dpam_start}, prior_patches={self.prior_patches}, "
            f"temperature={self.temperature}, blur_sigma={self.blur_sigma}"
        )


class FAPromptGraph(ScoringGraph):
    """:class:`ScoringGraph` of FAPrompt with fixed static text features (a buffer of the graph)."""

    def __init__(self, model: FAPrompt, static_text: Tensor) -> None:
        super().__init__(model)
        self.register_buffer("static_text", static_text)

    def score(self, features: FrozenFeatures) -> Prediction:
        return self.model.score_with_text(features, self.static_text)


__all__ = [
    "PRIOR_PATCHES",
    "CompoundPromptLearner",
    "FAPrompt",
    "FAPromptGraph",
    "aggregate_text",
    "binary_focal_loss",
]
