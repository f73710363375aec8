"""Storage test fixtures: one real SeaweedFS S3 server per session (plus a private one for the
interruption test), client settings that fail fast, and small real model/artifact folders."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import s3server
from lmi_runtime.storage.s3 import S3Options
from storage_folders import write_artifact


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
def bucket(s3, s3_env) -> str:
    return s3.create_bucket(f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture()
def options(s3) -> S3Options:
    return S3Options(endpoint_url=s3.endpoint, retry_count=0)


@pytest.fixture()
def artifact(tmp_path) -> Path:
    return write_artifact(tmp_path / "artifact")
