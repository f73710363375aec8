"""GPU kernels of the runtime (Triton), each with a plain-torch twin for the CPU."""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """The GPU's SM count: kernels size their grids (context splits, split-K) by it."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def pdl(device: torch.device) -> bool:
    """Programmatic dependent launch (sm_90 and later; `LMI_PDL=0` turns it off): a decode step
    is a chain of short kernels, and each one's launch and ramp-up used to wait for the one
    before it to finish. Launched this way, a kernel's programs start while the one before still
    runs: they let the next kernel launch, fetch what nothing before them writes (the GEMVs'
    weights), and wait (`griddepcontrol.wait`) before reading its output or writing anything."""
    return (device.type == "cuda" and os.environ.get("LMI_PDL", "1") != "0"
            and os.environ.get("TRITON_INTERPRET") != "1" and _capability(device) >= 9)


@functools.cache
def _capability(device: torch.device) -> int:
    return torch.cuda.get_device_capability(device)[0]
