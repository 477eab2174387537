"""The norm VJP: closed forms for LayerNorm / RMSNorm, autograd for anything else."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from circuitgraph import weights as W


class ShiftedRMSNorm(torch.nn.Module):
    """Gemma's convention, y = (1 + w) ⊙ x / r: an RMSNorm by name that the formula misfits."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(d))
        self.eps = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def _random_affine(norm: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_(1.0, 0.5)
    return norm


NORMS = {
    "layernorm": lambda d: _random_affine(torch.nn.LayerNorm(d)),
    "layernorm-plain": lambda d: torch.nn.LayerNorm(d, elementwise_affine=False),
    "llama-rms": lambda d: _random_affine(LlamaRMSNorm(d, eps=1e-5)),
    "shifted-rms": ShiftedRMSNorm,
}


@pytest.mark.parametrize("kind", sorted(NORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_norm_vjp_equals_autograd_on_every_cotangent(kind, dtype):
    torch.manual_seed(0)
    norm = NORMS[kind](16).to(dtype)
    x = torch.randn(3, 5, 16, dtype=dtype) * 3 + 1
    g = torch.randn(7, 3, 5, 16, dtype=dtype)
    got = W.norm_vjp(norm, x, g)
    want = torch.stack([torch.autograd.functional.vjp(norm, x, gi)[1] for gi in g])
    tol = 1e-5 if dtype == torch.float32 else 1e-6  # LlamaRMSNorm runs in float32 regardless
    assert torch.allclose(got, want, rtol=tol, atol=tol)
    # the closed form served every kind but Gemma's (else the check above only saw autograd)
    assert (W._CHECKED[norm] is None) == (kind == "shifted-rms")


def test_closed_forms_are_used_only_where_they_matched():
    torch.manual_seed(0)
    x, g = torch.randn(2, 3, 8), torch.randn(4, 2, 3, 8)
    known = [_random_affine(torch.nn.LayerNorm(8)), _random_affine(LlamaRMSNorm(8))]
    shifted = ShiftedRMSNorm(8)
    for norm in [*known, shifted]:
        W.norm_vjp(norm, x, g)
    assert all(W._CHECKED[n] is not None for n in known)
    assert W._CHECKED[shifted] is None  # Gemma's (1 + w) fails the check: autograd serves it


def test_a_zero_cotangent_does_not_vouch_for_a_formula():
    x = torch.randn(2, 3, 8)
    shifted = ShiftedRMSNorm(8)
    W.norm_vjp(shifted, x, torch.zeros(1, 2, 3, 8))
    assert W._CHECKED[shifted] is None


class ScaledByW(torch.nn.Module):
    """An RMSNorm by name whose scale is ``w``, not ``weight``: the formula cannot see it."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(d))
        self.eps = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def test_a_scale_the_formula_cannot_read_keeps_autograd():
    norm = ScaledByW(8)  # all ones: the plain formula would pass the check today
    x, g = torch.randn(2, 3, 8), torch.randn(4, 2, 3, 8)
    W.norm_vjp(norm, x, g)
    assert W._CHECKED[norm] is None
    with torch.no_grad():
        norm.w.mul_(3.0)
    want = torch.stack([torch.autograd.functional.vjp(norm, x, gi)[1] for gi in g])
    assert torch.allclose(W.norm_vjp(norm, x, g), want, atol=1e-5)


def test_stacked_weights_follow_every_change_of_the_parameters(tiny_gpt2):
    # no kept stacks: a write in place, one through .data (no version bump) and a new tensor
    # must each give the model's current weights
    model, _ = tiny_gpt2
    first = W.attn_weights(model)
    w_o = model.blocks[1].attn.o.weight
    old = w_o.data.clone()
    try:
        with torch.no_grad():
            w_o.mul_(2.0)
        assert torch.allclose(W.attn_weights(model).W_O[1], 2 * first.W_O[1])
        w_o.data.mul_(0.5)  # back to the start, unseen by the version counter
        assert torch.allclose(W.attn_weights(model).W_O[1], first.W_O[1])
        w_o.data = old * 3.0
        assert torch.allclose(W.attn_weights(model).W_O[1], 3 * first.W_O[1])
        assert torch.equal(W.attn_weights(model).W_Q, first.W_Q)
    finally:
        w_o.data = old
    assert torch.equal(W.attn_weights(model).W_O, first.W_O)


def test_the_norm_vjp_takes_mixed_dtypes():
    ln = _random_affine(torch.nn.LayerNorm(8))
    x = torch.randn(2, 3, 8)
    g = torch.randn(4, 2, 3, 8, dtype=torch.float64)
    got = W.norm_vjp(ln, x, g)
    want = W._autograd_vjp(ln.double(), x.double(), g)
    assert got.dtype == torch.float64 and torch.allclose(got, want, atol=1e-5)
