"""The known induction circuit of zoo:attn-only-2l, found by exact activation patching."""

from __future__ import annotations

import torch

from circuitgraph.nodes import enumerate_nodes
from circuitgraph.patching import patch_nodes
from circuitgraph.tasks import PromptPairs, make_pairs


def _previous_token_score(pattern: torch.Tensor, pairs: PromptPairs, head: int) -> float:
    """Mean attention from each real position t ≥ 1 to t − 1."""
    values = [
        pattern[i, head, t, t - 1]
        for i in range(len(pairs))
        for t in range(1, int(pairs.answer_pos[i]) + 1)
    ]
    return float(torch.stack(values).mean())


def _induction_score(pattern: torch.Tensor, pairs: PromptPairs, head: int) -> float:
    """Mean attention from a repeated token to the token after its earlier occurrence."""
    values = []
    for i in range(len(pairs)):
        row = pairs.clean[i, : int(pairs.answer_pos[i]) + 1].tolist()
        for t, token in enumerate(row):
            earlier = [p for p in range(1, t - 1) if row[p] == token]
            if earlier:
                values.append(pattern[i, head, t, earlier[-1] + 1])
    return float(torch.stack(values).mean())


def test_patching_finds_previous_token_and_induction_heads(attn_only):
    model, info = attn_only
    pairs = make_pairs("induction", model.tokenizer, 48, seed=0)
    scores = patch_nodes(model, pairs, enumerate_nodes(info, ["head"]), "logit_diff")
    first, second = sorted(scores.ranking()[:2], key=lambda n: n.layer)
    assert (first.layer, second.layer) == (0, 1), scores.ranking()[:4]

    names = {f"blocks.{layer}.attn.hook_pattern" for layer in (0, 1)}
    with torch.no_grad():
        _, cache = model.run_with_cache(pairs.clean, names_filter=lambda n: n in names)
    prev = _previous_token_score(cache["blocks.0.attn.hook_pattern"], pairs, first.index)
    induction = _induction_score(cache["blocks.1.attn.hook_pattern"], pairs, second.index)
    assert prev >= 0.5, f"{first.id} puts {prev:.2f} on the previous token"
    assert induction >= 0.5, f"{second.id} puts {induction:.2f} on the induction target"
