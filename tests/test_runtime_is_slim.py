"""The runtime package must install and run without the pipeline or its toolchain."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("lmi_compile", "llmcompressor", "auto_round", "datasets", "gguf")


def test_importing_every_runtime_module_pulls_in_no_pipeline_package(python, cli_env):
    script = (
        "import importlib, pkgutil, sys, lmi_runtime\n"
        "for m in pkgutil.walk_packages(lmi_runtime.__path__, 'lmi_runtime.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        f"print(sorted(n for n in {HEAVY!r} if n in sys.modules))\n"
    )
    out = subprocess.run([python, "-c", script], env=cli_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_base_dependencies_hold_no_compile_toolchain():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    assert not any(name in base for name in ("llmcompressor", "auto-round", "gguf", "tensorrt", "neuronx"))
