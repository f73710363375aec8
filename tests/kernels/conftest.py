"""Fixtures of the kernel tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def kernel_sass():
    """scripts/kernel_sass.py: compiles a Triton kernel to sm_90 machine code without a GPU (the
    wheel's ptxas and nvdisasm), where the interpreter runs only a kernel's arithmetic."""
    pytest.importorskip("triton")
    spec = importlib.util.spec_from_file_location("kernel_sass", Path(__file__).resolve().parents[2] / "scripts" / "kernel_sass.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
