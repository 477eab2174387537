"""Prompt-pair distributions and metrics."""

from circuitgraph.tasks.metrics import METRICS, Metric, answer_logits, get_metric
from circuitgraph.tasks.pairs import PromptPairs, TextPair, tokenize_pairs

__all__ = [
    "METRICS",
    "Metric",
    "PromptPairs",
    "TextPair",
    "answer_logits",
    "get_metric",
    "tokenize_pairs",
]
