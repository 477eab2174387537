"""Edge attribution over all edges: speed and memory against the bare model.

Prints, for each model shape, in one run on the same batch:

* ``eap`` time over all edges / (2 forward + 1 backward of the bare model)  (target ≤ 1.5);
  the bare backward takes activation gradients only (what EAP needs; cheaper than
  ``loss.backward()`` with parameter gradients, so the stricter baseline). Timed alternately,
  minimum over repeats, one thread, process CPU time by default;
* peak memory of ``eap`` / peak of a plain forward + backward with parameter gradients
  (target ≤ 2): the process's peak resident set size (VmHWM, reset once the model and batch
  are loaded) above its size at that moment, each measured in a fresh process (Linux only).

    python -m benchmarks.bench_edges [--shapes tiny-gpt2 gpt2-small] [--pairs 8] [--seq 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from benchmarks.common import bare_passes, interleaved_min, random_gpt2, random_pairs
from circuitgraph.attribution.edges import EdgeSet, attribute_edges
from circuitgraph.tasks.metrics import answer_logits, get_metric


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; return that RSS in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def _plain_forward_backward(model, pairs) -> None:
    """What a user's plain forward + backward does: parameter gradients included."""
    metric = get_metric("logit_diff")
    with torch.no_grad():
        model(pairs.corrupt)
    metric(answer_logits(model(pairs.clean), pairs), pairs).sum().backward()
    model.zero_grad(set_to_none=True)


def worker(shape: str, what: str, n_pairs: int, seq: int) -> dict[str, float]:
    """Run one measurement in this process; report working memory."""
    model, info = random_gpt2(shape)
    pairs = random_pairs(info.d_vocab, n_pairs, seq)
    cands = EdgeSet.full(info)
    before = _reset_peak()  # loading the model peaks higher than the work measured here
    if what == "bare":
        _plain_forward_backward(model, pairs)
    else:
        attribute_edges(model, pairs, "logit_diff", "eap", cands, batch_size=n_pairs)
    return {"peak_mb": _status_mb("VmHWM") - before}


def timings(shape: str, n_pairs: int, seq: int, repeats: int) -> dict[str, float]:
    model, info = random_gpt2(shape)
    pairs = random_pairs(info.d_vocab, n_pairs, seq)
    cands = EdgeSet.full(info)
    fns = {
        "bare": bare_passes(model, pairs, 1),
        "eap": lambda: attribute_edges(
            model, pairs, "logit_diff", "eap", cands, batch_size=n_pairs
        ),
    }
    interleaved_min(fns, 1)  # warm-up
    return {"edges": float(len(cands.edges())), **interleaved_min(fns, repeats)}


def _in_fresh_process(shape: str, what: str, n_pairs: int, seq: int) -> float:
    cmd = [sys.executable, "-m", "benchmarks.bench_edges", "--worker", what, "--shapes", shape]
    cmd += ["--pairs", str(n_pairs), "--seq", str(seq), "--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["tiny-gpt2", "gpt2-small"])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--worker", choices=["bare", "eap"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.shapes[0], args.worker, args.pairs, args.seq)))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.pairs} x {args.seq}"
    )
    head = f"{'model':<12} {'edges':>7} {'2f+1b':>9} {'eap':>9} {'time':>6} {'mem':>6}"
    print(head + "   (targets: time <= 1.5, mem <= 2)")
    for shape in args.shapes:
        t = timings(shape, args.pairs, args.seq, args.repeats)
        bare_mem = _in_fresh_process(shape, "bare", args.pairs, args.seq)
        eap_mem = _in_fresh_process(shape, "eap", args.pairs, args.seq)
        print(
            f"{shape:<12} {int(t['edges']):>7} {t['bare'] * 1e3:>7.1f}ms "
            f"{t['eap'] * 1e3:>7.1f}ms {t['eap'] / t['bare']:>6.2f} {eap_mem / bare_mem:>6.2f}"
            f"   (peak MB: bare {bare_mem:.0f}, eap {eap_mem:.0f})"
        )


if __name__ == "__main__":
    main()
