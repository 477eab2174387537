"""The circuitgraph command line (installed as ``circuitgraph.cli``)."""
