"""The zoo: small models circuitgraph trains itself and ships (see ``circuitgraph.train``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from circuitgraph.errors import ModelLoadError

__all__ = ["ZooModel", "list_models", "model_path"]

_ROOT = Path(__file__).parent / "models"


@dataclass(frozen=True)
class ZooModel:
    name: str
    architecture: str
    tasks: tuple[str, ...]
    size_mb: float
    path: Path


def list_models() -> list[ZooModel]:
    """The bundled models (those whose weights are present)."""
    import json

    out = []
    for d in sorted(_ROOT.glob("*/")) if _ROOT.exists() else []:
        card = d / "zoo.json"
        if not card.is_file():
            continue
        meta = json.loads(card.read_text())
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file()) / 2**20
        out.append(ZooModel(d.name, meta["architecture"], tuple(meta["tasks"]), size, d))
    return out


def model_path(name: str) -> Path:
    """The directory of zoo model ``name``."""
    from circuitgraph.zoo.native import is_native_dir

    path = _ROOT / name
    if not (path / "config.json").is_file() and not is_native_dir(path):
        names = [m.name for m in list_models()]
        raise ModelLoadError(
            f"expected a zoo model among {names} but got {name!r}; run `circuitgraph models`"
        )
    return path
