"""The console script with a fault from ``tests/cli/faults.py`` patched in.

``CG_FAULT`` names the fault (see ``faults.inject``), ``CG_FAULT_MARKER`` the file a
``pause:...`` fault writes when it has stopped (the test then sends a signal). Run as
``python tests/cli/fault_driver.py ARGS...``; the exit status is the command's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from circuitgraph.cli.app import main
from tests.cli.faults import inject

if __name__ == "__main__":
    marker = os.environ.get("CG_FAULT_MARKER")
    with inject(os.environ.get("CG_FAULT") or None, Path(marker) if marker else None):
        main()
