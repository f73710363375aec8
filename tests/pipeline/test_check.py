"""`lmi-compile check` on an artifact published to the real S3 server: a profile of the bundled
model planned for ml.g5.2xlarge with 8% of its memory (the GPU shared with other work) passes
there and fails, with the numbers, on ml.g4dn.xlarge, whose 16 GiB T4 leaves too little."""

from __future__ import annotations

import json
import subprocess

import pytest

from lmi_compile.stages.publish import publish
from lmi_compile.plan.instances import instance_hardware
from lmi_runtime.storage.s3 import S3Options
from profiled import CPU, planned_profile, profiled_artifact


@pytest.fixture()
def published(smollm2_dir, smollm2_artifact, tmp_path, s3, s3_env, bucket) -> str:
    profile = planned_profile(smollm2_dir, "a10g", "", instance_hardware("ml.g5.2xlarge"), gpu_memory_utilization=0.08)
    art = profiled_artifact(smollm2_artifact, tmp_path / "art", [profile])
    uri = f"s3://{bucket}/checked"
    publish(art, uri, s3_options=S3Options.from_env())
    return uri


def _check(python, cli_env, s3_env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "lmi_compile", "check", *args], env={**cli_env, **s3_env},
                          capture_output=True, text=True, timeout=120)


def test_check_passes_where_it_fits_and_fails_with_the_numbers_where_it_does_not(published, python, cli_env, s3_env):
    fits = _check(python, cli_env, s3_env, published, "--for", "ml.g5.2xlarge")
    assert fits.returncode == 0, fits.stdout + fits.stderr
    assert "PASS" in fits.stdout and "fail" not in fits.stdout

    small = _check(python, cli_env, s3_env, published, "--for", "ml.g4dn.xlarge", "--json")
    assert small.returncode == 1, small.stderr
    report = json.loads(small.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert report["passed"] is False and report["profile"] == "a10g"
    assert checks["manifest and checksums"]["status"] == "pass"
    memory = checks["memory per device"]
    assert memory["status"] == "fail"
    # weights 0.25 GiB (bf16) + reserve 1 GiB + 8,192 × (2·576 + 2·1536) × 2 B + 8 × 49,152 × 4 B
    # + one 2,048-token sequence (2,048 × 23,040 B) = 1.36 GiB > 16 GiB × 0.08 = 1.28 GiB
    assert "= 1.36 GiB > usable 1.28 GiB (16.0 GiB × 0.08)" in memory["detail"]


def test_check_refuses_a_tampered_artifact(smollm2_dir, smollm2_artifact, tmp_path, python, cli_env):
    art = profiled_artifact(smollm2_artifact, tmp_path / "art", [planned_profile(smollm2_dir, "cpu", "", CPU)])
    text = (art / "config.json").read_text()
    (art / "config.json").unlink()  # a hard link into the session's artifact: replaced, not changed in place
    (art / "config.json").write_text(text.replace('"llama"', '"llamb"', 1))  # same size, other bytes
    done = _check(python, cli_env, {}, str(art), "--json")
    assert done.returncode == 1
    first = json.loads(done.stdout)["checks"][0]
    assert first["check"] == "manifest and checksums" and first["status"] == "fail"
    assert "sha256 mismatch: config.json" in first["detail"]


def test_check_on_this_machine_and_a_pinned_profile(smollm2_dir, smollm2_artifact, tmp_path, python, cli_env):
    art = profiled_artifact(smollm2_artifact, tmp_path / "art", [planned_profile(smollm2_dir, "cpu", "", CPU)])
    here = _check(python, cli_env, {}, str(art), "--json")
    assert here.returncode == 0, here.stdout + here.stderr
    assert json.loads(here.stdout)["profile"] == "cpu"
    pinned = _check(python, cli_env, {}, str(art), "--profile", "nope", "--json")
    assert pinned.returncode == 1
    row = json.loads(pinned.stdout)["checks"][1]
    assert row == {"check": "profile", "status": "fail", "detail": "no profile 'nope' (the artifact has cpu)"}
