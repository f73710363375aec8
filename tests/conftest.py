"""Fixtures shared by every test area: the real bundled model, converted once per machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct as a Hugging Face folder (cached across runs)."""
    from lmi_compile.sources.bundled import materialize

    return materialize("bundled://smollm2")


@pytest.fixture()
def cli_env() -> dict[str, str]:
    """Environment for running `python -m lmi_compile` / `python -m lmi_runtime` in a subprocess
    from a source checkout (no editable install needed)."""
    env = dict(os.environ)
    paths = [str(REPO / "runtime"), str(REPO / "compile")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


@pytest.fixture()
def python() -> str:
    return sys.executable
