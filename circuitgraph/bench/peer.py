"""Peer comparison: our EAP edge scores against TransformerLens's ``attribution_patch``.

TransformerLens 4.3 (``granularity="edge"``) scores every (writer, reader) pair per token
position in the denoising convention, (a_clean − a_corrupt) · ∂L/∂in at the corrupt run.
Ours with ``mode="denoising"`` sums the same products over positions, so its scores are
compared with TransformerLens's summed over positions. Its ``metric_fn`` sees one example's
logits, so the pairs have one length and a common answer and wrong token.

Reported: the largest |ours − theirs| over all edges relative to the largest |theirs|, and
the time ratio theirs / ours (same batch, timed alternately, minimum over repeats).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from circuitgraph.attribution import EdgeSet, attribute_edges
from circuitgraph.bench.common import clock, interleaved_min
from circuitgraph.errors import ConfigError
from circuitgraph.nodes import Edge, Node
from circuitgraph.tasks.pairs import PromptPairs

__all__ = ["common_answer_pairs", "peer_comparison", "their_edges"]

_WRITERS = {"embed": "input", "attn_head_out": "head", "mlp_out": "mlp"}
_READERS = {"q_input": "q", "k_input": "k", "v_input": "v", "mlp_in": "mlp", "logits": "logits"}


def common_answer_pairs(pairs: PromptPairs, answer: int = 4, wrong: int = 5) -> PromptPairs:
    """The same token pairs with one answer and one wrong token for all (same length needed).

    Example:
        >>> from circuitgraph.bench.common import random_pairs
        >>> common_answer_pairs(random_pairs(64, 2, 5)).answer.tolist()
        [4, 4]
    """
    if (
        pairs.clean.shape[1] != int(pairs.answer_pos.max()) + 1
        or len(set(pairs.answer_pos.tolist())) != 1
    ):
        raise ConfigError("expected pairs of one length (no padding) for the peer comparison")
    return PromptPairs.from_tokens(
        pairs.clean.tolist(), pairs.corrupt.tolist(), [answer] * len(pairs), [wrong] * len(pairs)
    )


def their_edges(result: Any) -> dict[Edge, float]:
    """TransformerLens's per-position edge scores mapped to our edges, summed over positions.

    Example:
        >>> summed = their_edges(attribution_patch(...))  # doctest: +SKIP
    """
    summed: dict[Edge, float] = {}
    for (w, r), score in result.edge_scores.items():
        kind = _WRITERS[w.kind]
        src = Node("input") if kind == "input" else Node(kind, w.layer, w.head)  # type: ignore[arg-type]
        dst = Node("logits") if r.kind == "logits" else Node(_READERS[r.kind], r.layer, r.head)  # type: ignore[arg-type]
        e = Edge(src, dst)
        summed[e] = summed.get(e, 0.0) + float(score)
    return summed


def _clocked(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = clock()
    got = fn()
    return clock() - start, got


def peer_comparison(model: Any, info: Any, pairs: PromptPairs, repeats: int) -> dict[str, Any]:
    """Agreement and relative speed of our EAP and TransformerLens's edge attribution patching.

    Each side runs ``repeats`` times in all (the first run, whose scores are compared, is
    timed too); the minimum time is kept.

    Example:
        >>> r = peer_comparison(model, info, pairs, 3)  # doctest: +SKIP
        >>> r["max_rel_diff"] < 1e-4 and r["speedup"] >= 5  # doctest: +SKIP
    """
    from transformer_lens.tools.analysis.attribution_patching import (
        EdgeAttributionConfig,
        attribution_patch,
    )

    pairs = common_answer_pairs(pairs)
    pos, a, w = int(pairs.answer_pos[0]), int(pairs.answer[0]), int(pairs.wrong[0])
    cands = EdgeSet.full(info)
    config = EdgeAttributionConfig(granularity="edge")

    def metric_fn(logits: Any) -> Any:
        return logits[0, pos, a] - logits[0, pos, w]

    def theirs() -> Any:
        return attribution_patch(model, pairs.clean, pairs.corrupt, metric_fn, config)

    def ours() -> Any:
        return attribute_edges(
            model, pairs, "logit_diff", "eap", cands, batch_size=len(pairs), mode="denoising"
        )

    first = {"theirs": _clocked(theirs), "ours": _clocked(ours)}  # timed too
    summed, got = their_edges(first["theirs"][1]), first["ours"][1]
    if set(summed) != set(got.edges()):
        raise ConfigError("TransformerLens and circuitgraph disagree on the set of edges")
    scale = max(abs(v) for v in summed.values()) or 1.0
    worst = max(abs(got[e][0] - v) for e, v in summed.items()) / scale
    t = interleaved_min({"theirs": theirs, "ours": ours}, max(repeats - 1, 0))
    t = {k: min(t[k], first[k][0]) for k in t}
    return {
        "edges": len(summed), "n_pairs": len(pairs), "seq": int(pairs.clean.shape[1]),
        "max_rel_diff": worst, "theirs_s": t["theirs"], "ours_s": t["ours"],
        "speedup": t["theirs"] / t["ours"],
    }  # fmt: skip
