"""Start-up time of the command line: ``circuitgraph --help`` and ``import circuitgraph.cli.app``.

Wall time of fresh subprocesses (the interpreter start included), median of ``--runs``
after one warm-up run that fills the OS file cache; ``import torch`` alone is timed the
same way for scale. The CLI imports torch only when a command needs it, so ``--help``
should cost a small fraction of a torch import (target: under 0.5 s).

    python -m benchmarks.bench_cli_startup [--runs 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def wall_time(command: list[str], runs: int) -> float:
    """Median wall time of ``runs`` runs of ``command`` (after one warm-up run), seconds.

    Example:
        >>> wall_time([sys.executable, "-c", "pass"], 1) < 10
        True
    """
    subprocess.run(command, capture_output=True, check=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    script = shutil.which("circuitgraph") or str(Path(sys.executable).parent / "circuitgraph")
    cases = {
        "circuitgraph --help": [script, "--help"],
        "import circuitgraph.cli.app": [sys.executable, "-c", "import circuitgraph.cli.app"],
        "python -c pass": [sys.executable, "-c", "pass"],
        "import torch (for scale)": [sys.executable, "-c", "import torch"],
    }
    print(f"median wall time of {args.runs} fresh processes (after one warm-up)")
    results = {name: wall_time(cmd, args.runs) for name, cmd in cases.items()}
    for name, secs in results.items():
        print(f"  {name:<30} {secs:6.3f} s")
    ratio = results["circuitgraph --help"] / results["import torch (for scale)"]
    print(f"  --help / import torch          {ratio:6.2f}")


if __name__ == "__main__":
    main()
