"""``python -m circuitgraph``: the command line, also under ``torchrun -m circuitgraph``."""

from circuitgraph.cli.app import main

main()
