"""GPU kernels of the runtime (Triton), each with a plain-torch twin for the CPU."""

from __future__ import annotations

import functools

import torch


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """The GPU's SM count: kernels size their grids (context splits, split-K) by it."""
    return torch.cuda.get_device_properties(device).multi_processor_count
