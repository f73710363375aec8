"""What the trtllm and neuron targets need from their vendor libraries, and the clear error when
a library is missing: those targets run only inside the images built from Dockerfile.trtllm /
Dockerfile.neuron, never in the slim runtime."""

from __future__ import annotations

import importlib
from types import ModuleType

from lmi_runtime.errors import ConfigError

VENDOR_TARGETS = ("trtllm", "neuron")
IMAGES = {"trtllm": "Dockerfile.trtllm", "neuron": "Dockerfile.neuron"}
PACKAGES = {"tensorrt_llm": "tensorrt-llm 1.2.x", "modelopt": "nvidia-modelopt",
            "optimum.neuron": "optimum-neuron 0.4.5 (Neuron SDK 2.26)"}


def require(module: str, target: str, purpose: str) -> ModuleType:
    """Import `module` or fail naming the image that has it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f"{purpose} needs {_package(module)}, which is not installed here ({err})",
            hint=f"run it inside the image built from {IMAGES[target]} (see the README's Targets section)",
        ) from err


def _package(module: str) -> str:
    return next((name for prefix, name in PACKAGES.items() if module == prefix or module.startswith(prefix + ".")),
                module)


__all__ = ["IMAGES", "VENDOR_TARGETS", "require"]
