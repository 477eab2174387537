"""The HTML viewer with thousands of edges: page size, time to open, time to move the slider.

A GPT-2-small-shaped edge graph (every one of its 32491 edges scored at random, heavy
tailed), the circuit of the top ``--circuit`` edges, the slider carrying the top
``--max-edges``. Headless Chromium (Debian's ``chromium``, driven by the tests' DevTools
pipe driver) opens the page and moves the slider from the circuit's size to the end and
back, several times; the minimum of each timing is printed. Wall-clock times in one run on
this machine, not a target asserted anywhere.

    python -m benchmarks.bench_viewer [--max-edges 5000] [--circuit 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from circuitgraph import export
from circuitgraph.graph import build_circuit
from tests.export.browser import Browser, find_chromium
from tests.test_graph import full_scores

# seconds to the next drawn frame after moving the slider, and of that the script's own work
MOVE = """(() => { const t = performance.now(); circuitViewer.setSize(%d);
const js = performance.now() - t;
return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() =>
  r([(performance.now() - t) / 1000, js / 1000])))); })()"""


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--max-edges", type=int, default=5000)
    ap.add_argument("--circuit", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    binary = find_chromium()
    if binary is None:
        raise SystemExit("no Chromium: apt-get install chromium (or set CIRCUITGRAPH_CHROMIUM)")
    es = full_scores(n_layers=12, n_heads=12, seed=0)
    G = build_circuit(es, top_n=args.circuit)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        page = export.write(G, Path(tmp) / "big.html", scores=es, max_edges=args.max_edges)
        write_s = time.perf_counter() - t
        size_mb = page.stat().st_size / 1e6
        opened, grow, shrink, step = [], [], [], []
        for i in range(args.repeats):
            b = Browser(binary, Path(tmp) / f"profile{i}")
            try:
                t = time.perf_counter()
                b.open(page.resolve().as_uri())
                opened.append(time.perf_counter() - t)
                grow.append(b.eval(MOVE % args.max_edges))
                shown = b.eval("JSON.stringify(circuitViewer.counts())")
                step.append(b.eval(MOVE % (args.max_edges - 50)))  # a drag moves in small steps
                shrink.append(b.eval(MOVE % args.circuit))
            finally:
                b.close()
    print(f"{len(es)} scored edges, slider over the top {args.max_edges}; page "
          f"{size_mb:.2f} MB written in {write_s:.2f} s")  # fmt: skip
    print(f"at {args.max_edges}: {shown}")
    print(f"open (navigate until drawn): {min(opened):.2f} s")
    for name, times in ((f"{args.circuit} -> {args.max_edges}", grow),
                        (f"{args.max_edges} -> {args.max_edges - 50}", step),
                        (f"{args.max_edges - 50} -> {args.circuit}", shrink)):  # fmt: skip
        best = min(times)
        print(f"slider {name}: {best[0]:.3f} s to the next drawn frame, {best[1]:.3f} s of it "
              f"the viewer's script (min of {args.repeats})")  # fmt: skip


if __name__ == "__main__":
    main()
