"""Storage test fixtures: client settings that fail fast and small real model/artifact folders
(the session's SeaweedFS server and its bucket fixtures live in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmi_runtime.storage.s3 import S3Options
from storage_folders import write_artifact


@pytest.fixture()
def options(s3) -> S3Options:
    return S3Options(endpoint_url=s3.endpoint, retry_count=0)


@pytest.fixture()
def artifact(tmp_path) -> Path:
    return write_artifact(tmp_path / "artifact")
