"""The zoo models, each loaded once per session through the public path."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import torch

from circuitgraph.model import load_model


@cache
def zoo_model(name: str) -> Any:
    """(model, info) of ``zoo:NAME`` on the CPU, loaded once."""
    return load_model(f"zoo:{name}", device="cpu")


@pytest.fixture(scope="session")
def attn_only() -> Any:
    return zoo_model("attn-only-2l")


@pytest.fixture(scope="package", autouse=True)
def _one_thread() -> Iterator[None]:
    """Run the zoo's tiny models on one thread, restored afterwards.

    They are no faster on two, and on a busy machine OpenMP's spinning threads make a
    500-pair evaluation take seconds instead of a fraction of one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
