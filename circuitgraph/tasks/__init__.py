"""Prompt-pair distributions and metrics."""

from circuitgraph.tasks.builtin import TASKS, Task, get_task, make_pairs
from circuitgraph.tasks.files import load_pairs, load_pairs_file
from circuitgraph.tasks.metrics import METRICS, Metric, answer_logits, get_metric
from circuitgraph.tasks.pairs import PromptPairs, TextPair, adds_bos, resolve_bos, tokenize_pairs

__all__ = [
    "METRICS",
    "TASKS",
    "Metric",
    "PromptPairs",
    "Task",
    "TextPair",
    "adds_bos",
    "answer_logits",
    "get_metric",
    "get_task",
    "load_pairs",
    "load_pairs_file",
    "make_pairs",
    "resolve_bos",
    "tokenize_pairs",
]
