"""The dispatch hook: an artifact whose manifest names a vendor target (trtllm, neuron) loads
through that vendor's backend and runs under the TokenEngine; everything else goes to
`backends.loader`. The toolchain check happened when the folder was inspected (locate.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lmi_runtime.backends.vendor import VENDOR_TARGETS
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.token_engine import TokenBackend
from lmi_runtime.locate import ModelFiles


def is_vendor(files: ModelFiles) -> bool:
    return files.manifest is not None and files.manifest.target.backend in VENDOR_TARGETS


def load_vendor_backend(files: ModelFiles, config: EngineConfig) -> TokenBackend:
    backend = files.manifest.target.backend  # type: ignore[union-attr]
    name = config.served_model_name or files.root.name
    if backend == "trtllm":
        from lmi_runtime.backends.trtllm_backend import load_trtllm

        return load_trtllm(files.root, name, set())
    from lmi_runtime.backends.neuron_backend import load_neuron

    cache_root = Path(os.environ.get("LMI_SERVE_CACHE") or Path.home() / ".cache" / "lmi-serve").expanduser()
    scratch = cache_root / "neuron" / hashlib.sha256(str(files.root).encode()).hexdigest()[:16]
    return load_neuron(files.root, name, set(), scratch)
