"""The one door to llm-compressor: a heavy import, done only when a stage needs it.

Also keeps the library quiet (it logs to stdout through loguru and draws tqdm bars; we show our
own progress) and works around its one CPU-only failure (see `cpu_safe`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from importlib import metadata
from types import SimpleNamespace

from lmi_runtime.errors import MissingExtraError

VERSIONED = ("llmcompressor", "compressed-tensors", "transformers", "torch", "accelerate")


@functools.cache
def llmcompressor() -> SimpleNamespace:
    """Import llm-compressor's entry point and modifiers, or say which extra installs them."""
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")  # it logs METRIC lines to stdout
    try:
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
        from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    except ImportError as err:
        raise MissingExtraError("llmcompressor", "compile") from err
    return SimpleNamespace(
        oneshot=oneshot,
        GPTQModifier=GPTQModifier,
        QuantizationModifier=QuantizationModifier,
        AWQModifier=AWQModifier,
        SmoothQuantModifier=SmoothQuantModifier,
        QuantizationArgs=QuantizationArgs,
        QuantizationScheme=QuantizationScheme,
    )


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the tqdm bars of transformers, llm-compressor and compressed-tensors (the stage
    draws its own progress) and their save-time warnings about offloaded modules."""
    import tqdm

    original_init = tqdm.tqdm.__init__

    def silent_init(self, *args, **kwargs):
        kwargs["disable"] = True  # callers pass disable= themselves, so a default is not enough
        original_init(self, *args, **kwargs)

    tqdm.tqdm.__init__ = silent_init
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
            yield
    finally:
        tqdm.tqdm.__init__ = original_init


@contextlib.contextmanager
def cpu_safe() -> Iterator[None]:
    """AWQ pins its cached activations for faster host-to-device copies; with no accelerator,
    torch refuses to pin ("Cannot access accelerator device when none is available"). Pinning
    is only a transfer optimization, so on such a machine it is skipped."""
    import torch

    if torch.accelerator.is_available():
        yield
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original
