"""Shared fixtures for the vendor targets: plans for the must-show deployments (real public
config.json files, SageMaker instance figures), the vendors' interface snapshot, and the
optional unpacked vendor wheels (scripts/vendor_site.sh) for checks against their real parsers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmi_compile.plan import Plan, make_plan
from lmi_compile.plan.instances import instance_hardware
from lmi_compile.recipe import Recipe

CONFIGS = Path(__file__).resolve().parents[1] / "plan" / "data"
SNAPSHOT = Path(__file__).parent / "data" / "interfaces.json"


@pytest.fixture(scope="session")
def interfaces() -> dict:
    return json.loads(SNAPSHOT.read_text())


@pytest.fixture(scope="session")
def plan_for():
    def plan(model: str, instance: str, **recipe) -> Plan:
        spec = Recipe.model_validate({"source": {"uri": str(CONFIGS / model)}, **recipe})
        return make_plan(spec, json.loads((CONFIGS / model / "config.json").read_text()), instance_hardware(instance))
    return plan


@pytest.fixture(scope="session")
def vendor_python():
    """Run Python code with the unpacked vendor wheels first on the path, in a subprocess (they
    pin other transformers/hub versions than ours); skipped without LMI_VENDOR_SITE."""
    site = os.environ.get("LMI_VENDOR_SITE")
    if not site or not Path(site).is_dir():
        pytest.skip("set LMI_VENDOR_SITE to a folder made by scripts/vendor_site.sh (CI does)")

    def run(code: str) -> str:
        done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": site},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout
    return run
