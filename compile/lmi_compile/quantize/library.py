"""The one door to llm-compressor: a heavy import, done only when a stage needs it.

Also keeps the library quiet (it logs to stdout through loguru and draws tqdm bars), passing its
progress on to ours instead, and works around its one CPU-only failure (see `cpu_safe`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator
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


OnStep = Callable[[str, int, int | None], None]  # (bar description, items done, items in all)


@contextlib.contextmanager
def quiet(on_step: OnStep | None = None) -> Iterator[None]:
    """Silence the tqdm bars of transformers, llm-compressor and compressed-tensors and their
    save-time warnings about offloaded modules; each item a silenced bar iterates over is
    reported to `on_step` instead (llm-compressor's "(3/31): Calibrating" over samples, ...)."""
    import tqdm

    original_init, original_iter = tqdm.tqdm.__init__, tqdm.tqdm.__iter__

    def silent_init(self, iterable=None, desc=None, total=None, *args, **kwargs):
        kwargs["disable"] = True  # callers pass disable= themselves, so a default is not enough
        original_init(self, iterable, desc, total, *args, **kwargs)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self._lmi_desc, self._lmi_total = desc or "", total

    def reporting_iter(self):
        for done, item in enumerate(original_iter(self), start=1):
            yield item
            if on_step is not None:  # after the caller's work on `item`
                on_step(getattr(self, "_lmi_desc", ""), done, getattr(self, "_lmi_total", None))

    tqdm.tqdm.__init__, tqdm.tqdm.__iter__ = silent_init, reporting_iter
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
            yield
    finally:
        tqdm.tqdm.__init__, tqdm.tqdm.__iter__ = original_init, original_iter


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
