"""Dockerfile.trtllm / Dockerfile.neuron cannot be built here (no Docker daemon, no access to
nvcr.io or public.ecr.aws) and Debian 12 packages no hadolint, so this is a parse-level lint:
pinned base images (never `latest`), every COPY source present, SageMaker's conventions (port
8080, /opt/ml/model, an entry point that answers `serve`), the vendor versions the adapters
were checked against. The entry point script itself is run for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from lmi_compile.targets import neuron, trtllm

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"Dockerfile.trtllm": "nvcr.io/nvidia/tensorrt-llm/release:" + trtllm.TRTLLM_VERSION,
          "Dockerfile.neuron": "public.ecr.aws/neuron/pytorch-inference-neuronx:2.8.0-neuronx-py311-sdk"
                               + neuron.NEURON_SDK_VERSION + "-ubuntu22.04"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                             if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def resolve(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_lint(name):
    steps = instructions(REPO / name)
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    bases = [resolve(a.split()[0], args) for kind, a in steps if kind == "FROM"]
    assert bases == [IMAGES[name]], bases
    for base in bases:
        assert re.search(r":[\w.-]+$", base) and not base.endswith(":latest"), f"unpinned base {base}"
    assert "latest" not in (REPO / name).read_text().lower()
    assert [a for kind, a in steps if kind == "EXPOSE"] == ["8080"]

    entry = [a for kind, a in steps if kind == "ENTRYPOINT"]
    assert len(entry) == 1 and json.loads(entry[0]) == ["/usr/local/bin/lmi-entrypoint"]  # exec form
    assert [json.loads(a) for kind, a in steps if kind == "CMD"] == [["serve"]]
    copies = [a.split() for kind, a in steps if kind == "COPY"]
    for *sources, dest in copies:
        for source in sources:
            assert (REPO / source).exists(), f"{name}: COPY source {source} is missing"
    assert ["scripts/docker-entrypoint.sh", "/usr/local/bin/lmi-entrypoint"] in copies
    run = " ".join(a for kind, a in steps if kind == "RUN")
    assert "pip check" in run and "mkdir -p /opt/ml/model" in run and "lmi-compile --help" in run
    assert re.search(r"pip install -c /tmp/constraints.txt .*\.( |$)", run)  # this project, under constraints
    if name == "Dockerfile.neuron":
        assert f'"optimum-neuron[neuronx]=={neuron.OPTIMUM_NEURON_VERSION}"' in run


@pytest.fixture()
def fake_bin(tmp_path):
    """`lmi-serve` and `lmi-compile` that print their arguments, to see what the entry point runs."""
    for name in ("lmi-serve", "lmi-compile"):
        (tmp_path / name).write_text(f'#!/bin/sh\necho "{name} $*"\n')
        (tmp_path / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SM_NEO_EXECUTION_CONTEXT"}
    return {**env, "PATH": f"{tmp_path}:{os.environ['PATH']}"}


@pytest.mark.parametrize("argv, expected", [
    (["serve"], "lmi-serve --host 0.0.0.0 --port 8080"),
    ([], "lmi-serve --host 0.0.0.0 --port 8080"),
    (["serve", "--max-batch-size", "4"], "lmi-serve --host 0.0.0.0 --port 8080 --max-batch-size 4"),
    (["echo", "compile", "this"], "compile this"),
])
def test_entrypoint_answers_sagemaker_serve_and_runs_anything_else(fake_bin, argv, expected):
    done = subprocess.run(["sh", str(REPO / "scripts" / "docker-entrypoint.sh"), *argv], env=fake_bin,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == expected


def test_entrypoint_runs_the_optimization_job_entry_in_a_neo_context(fake_bin):
    """An optimization job's container runs with SM_NEO_EXECUTION_CONTEXT set: the job entry
    runs whatever the arguments (here `serve`), never the server."""
    done = subprocess.run(["sh", str(REPO / "scripts" / "docker-entrypoint.sh"), "serve"],
                          env=fake_bin | {"SM_NEO_EXECUTION_CONTEXT": "1"}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "lmi-compile sagemaker-optimize"
