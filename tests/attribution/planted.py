"""A model with a large node that attribution patching cannot see (a test-side builder).

Two MLP layers, no norms, attention zeroed, d_model 8: dims 0-5 carry the signal the
unembedding reads, dim 6 is a switch (-1 on every clean token, +1 on every corrupt one), dim
7 a private channel the unembedding ignores.

* Layer-0 neuron 0, the planted node, reads the switch: off (0) on the clean prompt, on (1)
  on the corrupt one, and writes only to the private channel.
* Layer-1 neuron 0 reads the private channel with bias -1/2: off in the clean run, so the
  gradient reaching the planted node is exactly 0 and AtP scores it 0. Patched, the planted
  node turns it on, and it writes an effect of -``hidden_effect`` on the logit difference:
  1.2 times the largest direct effect of an ordinary neuron, so among the true top 5.
* Every other neuron is random: layer-0 neurons read the embedding and write to dims 0-5
  with heavy-tailed sizes (effects AtP sees exactly), layer-1 neurons read dims 0-5 through
  a ReLU (small effects AtP gets roughly right, and some interaction between nodes).

With ``hidden=False`` layer-1 neuron 0 never turns on: the planted node has no effect and
the screen misses nothing.
"""

from __future__ import annotations

import torch

from circuitgraph.nodes import Node
from circuitgraph.tasks.pairs import PromptPairs

from .conftest import native, params

D_MODEL, SWITCH, PRIVATE = 8, 6, 7
PLANTED = Node("neuron", 0, 0)
GATE = Node("neuron", 1, 0)


def planted_model(seed: int, d_mlp: int = 96, n_pairs: int = 4, hidden: bool = True):
    """(model, info, pairs, hidden_effect): the model above, its pairs, the planted effect."""
    vocab = 1 + 2 * n_pairs + 2
    model, info = native(2, D_MODEL, 1, 4, vocab, d_mlp=d_mlp)
    p = params(model)
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    answer, wrong = vocab - 2, vocab - 1
    with torch.no_grad():
        for t in p.values():
            t.zero_()
        emb = p["tok_embed.weight"]
        emb[1 : 1 + 2 * n_pairs, :SWITCH] = randn(2 * n_pairs, SWITCH)
        emb[1 : 1 + n_pairs, SWITCH] = -1.0  # clean tokens
        emb[1 + n_pairs : 1 + 2 * n_pairs, SWITCH] = 1.0  # corrupt tokens
        unembed = p["head.weight"]
        unembed[answer, :SWITCH] = randn(SWITCH)
        unembed[wrong, :SWITCH] = randn(SWITCH)
        # Layer 0: the planted neuron, then heavy-tailed ordinary neurons.
        fc_in0, fc_out0 = p["layers.0.mlp.fc_in.weight"], p["layers.0.mlp.fc_out.weight"]
        fc_in0[0, SWITCH] = 1.0
        fc_out0[PRIVATE, 0] = 1.0
        fc_in0[1:, :SWITCH] = randn(d_mlp - 1, SWITCH)
        p["layers.0.mlp.fc_in.bias"][1:] = 0.5 * randn(d_mlp - 1)
        sizes = torch.exp(-torch.arange(d_mlp - 1, dtype=torch.float64) / 6.0)
        fc_out0[:SWITCH, 1:] = (
            randn(SWITCH, d_mlp - 1) * sizes[torch.randperm(d_mlp - 1, generator=g)]
        )
        # Layer 1: the gate, then small random ReLU neurons.
        fc_in1, fc_out1 = p["layers.1.mlp.fc_in.weight"], p["layers.1.mlp.fc_out.weight"]
        fc_in1[0, PRIVATE] = 1.0 if hidden else 0.0
        p["layers.1.mlp.fc_in.bias"][0] = -0.5
        fc_in1[1:, :SWITCH] = 0.5 * randn(d_mlp - 1, SWITCH)
        fc_out1[:SWITCH, 1:] = 0.05 * randn(SWITCH, d_mlp - 1)
        gap_dir = unembed[answer] - unembed[wrong]
        # The planted effect: 1.2 x the largest direct effect of an ordinary neuron.
        act = torch.relu(emb[1 : 1 + 2 * n_pairs] @ fc_in0[1:].T + p["layers.0.mlp.fc_in.bias"][1:])
        direct = (act[n_pairs:] - act[:n_pairs]).mean(0) * (gap_dir @ fc_out0[:, 1:])
        hidden_effect = 1.2 * float(direct.abs().max())
        # The gate's input is 1/2 once the planted node is on; it writes along the difference.
        fc_out1[:, 0] = -2.0 * hidden_effect * gap_dir / gap_dir.dot(gap_dir)
    clean = [[0, 1 + i] for i in range(n_pairs)]
    corrupt = [[0, 1 + n_pairs + i] for i in range(n_pairs)]
    pairs = PromptPairs.from_tokens(clean, corrupt, [answer] * n_pairs, [wrong] * n_pairs)
    return model, info, pairs, hidden_effect if hidden else 0.0
