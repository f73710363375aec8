"""Fixtures shared by every test area: the real bundled model (converted once per machine) and
a real S3-compatible server (SeaweedFS on 127.0.0.1, one per session).

Tests never touch the user's own caches: `isolate_caches` (below, at import time, so that
subprocesses inherit it too) points every cache at a test-owned folder. The converted bundled
model lives in one stable test-owned place (`LMI_TEST_CACHE`, default /tmp/lmi-compile-test-cache)
so the suite converts it once per machine, not once per run or per test.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import uuid

import pytest

import s3server

REPO = Path(__file__).resolve().parents[1]
TEST_CACHE = Path(os.environ.get("LMI_TEST_CACHE") or Path(tempfile.gettempdir()) / "lmi-compile-test-cache")


def isolate_caches(root: Path) -> dict[str, str]:
    """Cache variables that keep lmi-compile, lmi-serve and Hugging Face off ~/.cache."""
    return {
        "LMI_COMPILE_CACHE": str(root / "lmi-compile"),
        "LMI_SERVE_CACHE": str(root / "lmi-serve"),
        "HF_HOME": str(root / "hf"),
    }


os.environ.update(isolate_caches(TEST_CACHE))


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


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    server = s3server.S3Server(tmp_path_factory.mktemp("seaweedfs") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def s3_env(s3, monkeypatch) -> dict[str, str]:
    """Point boto3 and s5cmd (this process and subprocesses) at the test server; fail fast."""
    env = s3.env() | {"LMI_S3_RETRY_COUNT": "0"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "LMI_S3_TOOL", "LMI_S5CMD", "LMI_S3_TRANSFER_LOG"):
        monkeypatch.delenv(name, raising=False)
    return env


@pytest.fixture()
def bucket(s3, s3_env):
    name = s3.create_bucket(f"t-{uuid.uuid4().hex[:12]}")
    yield name
    s3.drop_bucket(name)


@pytest.fixture(scope="session")
def smollm2_artifact(smollm2_dir, tmp_path_factory) -> Path:
    """The real bundled model as an artifact (config + tokenizer at the root, weights under
    rank0/, a manifest). Files are hard links into the cached model: copy before changing any
    (`copy_artifact`)."""
    from lmi_runtime.artifact.folder import build_manifest, write_manifest
    from lmi_runtime.artifact.manifest import ModelInfo, TargetInfo

    root = tmp_path_factory.mktemp("smollm2-artifact")
    for item in smollm2_dir.iterdir():
        target = root / "rank0" / item.name if item.suffix == ".safetensors" else root / item.name
        target.parent.mkdir(exist_ok=True)
        os.link(item, target)
    info = {"model": ModelInfo(source="bundled://smollm2", architecture="LlamaForCausalLM"), "target": TargetInfo(backend="torch")}
    write_manifest(root, build_manifest(root, **info))
    return root


@pytest.fixture(scope="session")
def copy_artifact():
    """`copy_artifact(src, dest, copy_weights=False)`: see `_copy_artifact`."""
    return _copy_artifact


def _copy_artifact(src: Path, dest: Path, copy_weights: bool = False) -> Path:
    """A private copy of an artifact to tamper with: small files copied, weights hard-linked
    unless `copy_weights` (then they may be changed too)."""
    import shutil

    for item in src.rglob("*"):
        if item.is_file():
            target = dest / item.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if item.suffix == ".safetensors" and not copy_weights:
                os.link(item, target)
            else:
                shutil.copyfile(item, target)
    return dest
