"""Prompt sets and text classifiers."""

from anomaly_vlm.prompts.learnable import LearnablePromptEncoder, LearnablePromptSet
from anomaly_vlm.prompts.prompt_set import PromptSet
from anomaly_vlm.prompts.promptad import PromptADPromptSet
from anomaly_vlm.prompts.text_cache import TextEmbeddingCache, aggregate_text_embeddings, default_cache_dir

__all__ = [
    "LearnablePromptEncoder",
    "LearnablePromptSet",
    "PromptADPromptSet",
    "PromptSet",
    "TextEmbeddingCache",
    "aggregate_text_embeddings",
    "default_cache_dir",
]
