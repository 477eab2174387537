"""GGUF files: dequantise once into a cached Hugging Face directory, then load it like any other.

transformers reads a GGUF (llama.cpp's format) with the ``gguf`` package and dequantises it,
but the model it returns is marked as quantized and refuses ``save_pretrained``. So a GGUF is
converted once per (file content, dtype): the dequantised weights, a config without
``quantization_config`` and the tokenizer rebuilt from the file's metadata are written to

    $CIRCUITGRAPH_CACHE/gguf/<sha256 of the file>-<dtype>/   (default ~/.cache/circuitgraph)

and every later load reads that directory through the same ``TransformerBridge`` path as a
user's model directory. The directory appears atomically (written under a temporary name,
then renamed), so an interrupted conversion never leaves a half cache behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from circuitgraph.errors import ModelLoadError

__all__ = ["cache_root", "cached_model_dir", "convert", "file_sha256", "find_gguf"]

SUFFIX = ".gguf"
MARKER = "circuitgraph-gguf.json"  # written last inside a cache entry: where it came from


def cache_root() -> Path:
    """Where circuitgraph caches converted models: ``$CIRCUITGRAPH_CACHE`` or ``~/.cache/circuitgraph``.

    Example:
        >>> isinstance(cache_root(), Path)
        True
    """
    env = os.environ.get("CIRCUITGRAPH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "circuitgraph"


def find_gguf(path: Path) -> Path | None:
    """The GGUF file ``path`` names: the file itself, or the only ``.gguf`` of a folder that has
    no ``config.json``; None when ``path`` is not a GGUF spec at all.

    Example:
        >>> find_gguf(Path("/")) is None
        True
    """
    if path.is_file():
        return path if path.suffix.lower() == SUFFIX else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == SUFFIX and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:5]) + (" ..." if len(found) > 5 else "")
        raise ModelLoadError(
            f"expected one .gguf file in the folder {str(path)!r} but it holds {len(found)} "
            f"({names}); pass the path of the file you want"
        )
    return found[0] if found else None


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content, read in 8 MiB chunks.

        Example:
            >>> import tempfile
    import time
            >>> with tempfile.NamedTemporaryFile() as f:
            ...     file_sha256(Path(f.name))[:8]
            'e3b0c442'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cached_model_dir(gguf: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The cache directory of ``gguf`` dequantised to ``dtype``, converting it on first use.

    Example:
        >>> folder = cached_model_dir(Path("SmolLM2.gguf"))  # doctest: +SKIP
        >>> (folder / "config.json").is_file()  # doctest: +SKIP
        True
    """
    try:
        sha = file_sha256(gguf)
    except OSError as err:
        raise ModelLoadError(
            f"cannot read the GGUF file {str(gguf)!r} ({err.strerror or err}); check the path "
            "and its permissions"
        ) from None
    key = f"{sha}-{_dtype_name(dtype)}"
    root = cache_root() / "gguf"
    final = root / key
    if (final / MARKER).is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    except OSError as err:
        raise ModelLoadError(
            f"cannot write the model cache in {str(root)!r} ({err.strerror or err}); set "
            "CIRCUITGRAPH_CACHE to a writable folder"
        ) from None
    try:
        convert(gguf, tmp, dtype, sha=sha)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left over on failure or a lost race
    return final


def _remove_stale(root: Path, age_s: float = 86400.0) -> None:
    """Delete temporary folders that a killed conversion left (untouched for a day)."""
    now = time.time()
    for folder in root.glob(".*"):
        with contextlib.suppress(OSError):
            if folder.is_dir() and now - folder.stat().st_mtime > age_s:
                shutil.rmtree(folder, ignore_errors=True)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished conversion into place; a concurrent twin that won is kept."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / MARKER).is_file():
            shutil.rmtree(final, ignore_errors=True)  # an unmarked leftover, never a finished one
            try:
                os.rename(tmp, final)
            except OSError as err:
                raise ModelLoadError(
                    f"cannot write the model cache entry {str(final)!r} ({err.strerror or err}); "
                    "set CIRCUITGRAPH_CACHE to a writable folder"
                ) from None


def convert(
    gguf: Path, out: Path, dtype: torch.dtype = torch.float32, sha: str | None = None
) -> None:
    """Dequantise ``gguf`` to ``dtype`` and write a Hugging Face directory (safetensors, config,
    tokenizer) into the existing folder ``out``; :data:`MARKER` is written last.

    Example:
        >>> convert(Path("model.gguf"), Path("model-hf"))  # doctest: +SKIP
    """
    if importlib.util.find_spec("gguf") is None:  # transformers needs it; say so in our words
        raise ModelLoadError(
            "loading a GGUF file needs the Python package gguf, which is not installed; "
            "pip install gguf"
        )
    model, tokenizer = _read(gguf, dtype)
    try:
        plain = _rebuilt(model)
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        raise ModelLoadError(
            f"could not turn the model read from {str(gguf)!r} into a plain transformers model: "
            f"{_first_line(err)}; pass a Hugging Face directory of the model instead"
        ) from err
    try:
        plain.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        (out / MARKER).write_text(
            json.dumps(_provenance(gguf, dtype, sha or file_sha256(gguf)), indent=1) + "\n"
        )
    except OSError as err:
        raise ModelLoadError(
            f"cannot write the converted model to {str(out)!r} ({err.strerror or err}); set "
            "CIRCUITGRAPH_CACHE to a folder with enough free space"
        ) from None


def _read(gguf: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """The dequantised transformers model and the tokenizer rebuilt from the file's metadata."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    except Exception as err:  # a malformed or unsupported file can fail anywhere in the reader
        raise ModelLoadError(
            f"could not read the GGUF file {str(gguf)!r} with transformers: {_first_line(err)}; "
            "check that it is a complete GGUF of an architecture transformers supports"
        ) from err
    return model, tokenizer


def _rebuilt(model: Any) -> Any:
    """The same weights in a plain (not "quantized") model, which ``save_pretrained`` accepts.

    Built on the meta device and filled with the loaded tensors (``assign``), so no second copy
    of the weights is made.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = model.config.to_dict()
    settings.pop("quantization_config", None)
    config = AutoConfig.for_model(**settings)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    return plain


def _provenance(gguf: Path, dtype: torch.dtype, sha: str) -> dict[str, Any]:
    from importlib import metadata

    return {
        "schema": "circuitgraph.gguf-cache/1",
        "source": gguf.name,
        "sha256": sha,
        "dtype": _dtype_name(dtype),
        "transformers": metadata.version("transformers"),
        "gguf": metadata.version("gguf"),
    }


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0].rstrip(".") if text else type(err).__name__
