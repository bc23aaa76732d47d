"""Per-sentence text embeddings, cached on disk, and their aggregation into text classifiers.

Text encoding of large prompt ensembles (WinCLIP: 7 x 21 + 4 x 21 sentences per class) dominates the
start-up of zero-shot runs. Embeddings depend only on (backbone weights, prompt set, class name), so
they are computed once and reused by every later run and every method.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_vlm.backbones.clip import FrozenCLIP
from anomaly_vlm.prompts.prompt_set import PromptSet

log = logging.getLogger(__name__)

Aggregation = Literal["normalized_mean", "raw_mean"]


def default_cache_dir() -> Path:
    """``$ANOMALY_VLM_CACHE`` or ``~/.cache/anomaly_vlm``."""
    return Path(os.environ.get("ANOMALY_VLM_CACHE", "~/.cache/anomaly_vlm")).expanduser()


class TextEmbeddingCache:
    """Disk cache of per-sentence text embeddings keyed by weights, prompt set and class name.

    Args:
        cache_dir: folder for the cache files; None disables the disk cache (memory only).
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.cache_dir = Path(cache_dir).expanduser() / "text" if cache_dir else None
        self._memory: dict[str, tuple[Tensor, Tensor]] = {}

    @staticmethod
    def key(backbone: FrozenCLIP, prompts: PromptSet, category: str) -> str:
        raw = f"{backbone.identity}|{prompts.name}|{prompts.fingerprint()}|{prompts.class_name(category)}"
        return hashlib.sha256(raw.encode()).hexdigest()[:24]

    def embeddings(self, backbone: FrozenCLIP, prompts: PromptSet, category: str) -> tuple[Tensor, Tensor]:
        """Raw (un-normalised) embeddings of all normal and all anomalous sentences of a category."""
        key = self.key(backbone, prompts, category)
        if key in self._memory:
            return self._memory[key]
        path = self.cache_dir / f"{key}.pt" if self.cache_dir else None
        if path is not None and path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
                pair = (stored["normal"], stored["anomalous"])
                self._memory[key] = pair
                return pair
            except Exception as error:  # a corrupt cache entry is recomputed, never fatal
                log.warning("Ignoring unreadable text cache entry %s (%s)", path, error)
        normal_sentences, anomalous_sentences = prompts.sentences(category)
        encoded = backbone.encode_text(normal_sentences + anomalous_sentences).float().cpu()
        pair = (encoded[: len(normal_sentences)], encoded[len(normal_sentences) :])
        self._memory[key] = pair
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(
                {
                    "normal": pair[0],
                    "anomalous": pair[1],
                    "category": category,
                    "prompt_set": prompts.name,
                    "weights": backbone.identity,
                },
                temporary,
            )
            os.replace(temporary, path)
        return pair

    def classifier(
        self,
        backbone: FrozenCLIP,
        prompts: PromptSet,
        category: str,
        aggregation: Aggregation = "normalized_mean",
    ) -> Tensor:
        """``[2, D]`` unit-norm text classifier, rows (normal, anomalous)."""
        normal, anomalous = self.embeddings(backbone, prompts, category)
        return aggregate_text_embeddings(normal, anomalous, aggregation)


def aggregate_text_embeddings(normal: Tensor, anomalous: Tensor, aggregation: Aggregation) -> Tensor:
    """Average sentence embeddings into one unit vector per state.

    ``normalized_mean``: L2-normalise each sentence, average, re-normalise (CLIP zero-shot recipe, used
    by APRIL-GAN). ``raw_mean``: average the raw embeddings, then normalise (WinCLIP as implemented in
    anomalib).
    """
    if aggregation == "normalized_mean":
        normal, anomalous = F.normalize(normal, dim=-1), F.normalize(anomalous, dim=-1)
    elif aggregation != "raw_mean":
        raise ValueError(f"unknown text aggregation '{aggregation}' (normalized_mean | raw_mean)")
    stacked = torch.stack([normal.mean(dim=0), anomalous.mean(dim=0)])
    return F.normalize(stacked, dim=-1)
