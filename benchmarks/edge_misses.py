"""Which edge estimator misses what: every edge of a zoo model, exact edge patching against
EAP, EAP-IG and edge AtP*, with the edge classes the issue names broken out.

    python -m benchmarks.edge_misses [--models zoo:attn-only-2l zoo:gpt2-4l] [--pairs 32]
                                     [--steps 5 20]
"""

from __future__ import annotations

import argparse

import torch

from circuitgraph import load_model
from circuitgraph.attribution import attribute_edges
from circuitgraph.tasks import make_pairs
from circuitgraph.zoo import list_models


def _classes(edges):
    """Named classes of edges: into MLP0 from the input, into layer-1 keys, into the logits."""
    return {
        "input->m0": [
            i
            for i, e in enumerate(edges)
            if e.src.kind == "input" and e.dst.kind == "mlp" and e.dst.layer == 0
        ],
        "->a1.*<k>": [i for i, e in enumerate(edges) if e.dst.kind == "k" and e.dst.layer == 1],
        "->logits": [i for i, e in enumerate(edges) if e.dst.kind == "logits"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["zoo:attn-only-2l", "zoo:gpt2-4l"])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", nargs="+", type=int, default=[5, 20])
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tasks = {f"zoo:{m.name}": m.tasks for m in list_models()}
    for spec in args.models:
        model, _ = load_model(spec, device="cpu")
        for task in tasks[spec]:
            pairs = make_pairs(task, model.tokenizer, args.pairs, seed=args.seed)
            exact = attribute_edges(model, pairs, method="exact")
            edges = exact.ranking()
            truth = torch.tensor([exact[e][0] for e in edges], dtype=torch.float64)
            methods = {"eap": {}, "atp*": {}, **{f"eap-ig{s}": {"steps": s} for s in args.steps}}
            est = {}
            for name, opts in methods.items():
                got = attribute_edges(
                    model,
                    pairs,
                    method=name.split("ig")[0] + "ig" if "ig" in name else name,
                    **opts,
                )
                est[name] = torch.tensor([got[e][0] for e in edges], dtype=torch.float64)
            k = args.top
            print(
                f"\n{spec} {task}: {len(edges)} edges, {len(pairs)} pairs; exact top edge {edges[0].id} = {float(truth[0]):.3g}"
            )
            print(f"{'':<26}" + "".join(f"{m:>11}" for m in est))
            top_true = set(range(k))
            rec = {
                m: len(top_true & set(v.abs().argsort(descending=True)[: 2 * k].tolist())) / k
                for m, v in est.items()
            }
            print(
                f"{'recall top-' + str(k) + ' in top-' + str(2 * k):<26}"
                + "".join(f"{rec[m]:>11.0%}" for m in est)
            )
            corr = {m: float(torch.corrcoef(torch.stack([v, truth]))[0, 1]) for m, v in est.items()}
            print(f"{'correlation with exact':<26}" + "".join(f"{corr[m]:>11.3f}" for m in est))
            for label, idx in _classes(edges).items():
                if not idx:
                    continue
                ix = torch.tensor(idx)
                tsum = float(truth[ix].abs().sum())
                # Σ|estimate| / Σ|exact| over the class: 1 is right, < 1 underestimates
                ratio = {m: float(v[ix].abs().sum()) / max(tsum, 1e-12) for m, v in est.items()}
                print(
                    f"{label + f' ({len(idx)}, Σ|exact| {tsum:.3g})':<26}"
                    + "".join(f"{ratio[m]:>11.2f}" for m in est)
                )
            for i in range(min(8, len(edges))):
                print(
                    f"  {edges[i].id:<24}{float(truth[i]):>9.3f}"
                    + "".join(f"{float(est[m][i]):>11.3f}" for m in est)
                )


if __name__ == "__main__":
    main()
