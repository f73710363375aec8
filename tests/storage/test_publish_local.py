"""publish to a local folder, and both CLIs' error paths."""

from __future__ import annotations

import subprocess

import pytest

from lmi_compile.stages.publish import publish
from lmi_runtime.artifact.download import download_artifact
from lmi_runtime.artifact.folder import read_manifest
from lmi_runtime.artifact.manifest import MANIFEST_NAME
from lmi_runtime.errors import ArtifactError

from storage_folders import write_model


def test_local_publish_is_complete_resumable_and_idempotent(artifact, tmp_path):
    dest = tmp_path / "published"
    ref = publish(artifact, str(dest))
    assert (dest / MANIFEST_NAME).read_bytes() == (artifact / MANIFEST_NAME).read_bytes()
    assert len(ref.sent) == len(read_manifest(artifact).all_files())
    assert publish(artifact, str(dest)).sent == []

    # an interrupted publish: the manifest is gone and one file is half written
    (dest / MANIFEST_NAME).unlink()
    victim = read_manifest(artifact).files["rank1"][0].path
    (dest / victim).write_bytes(b"partial")
    again = publish(artifact, str(dest))
    assert again.sent == [victim] and (dest / MANIFEST_NAME).exists()
    assert not [p for p in dest.rglob(".lmi-tmp-*")]
    assert download_artifact(str(dest), tmp_path / "copy", rank=0) == read_manifest(artifact)


def test_tampered_artifact_is_not_published(artifact, tmp_path):
    manifest = read_manifest(artifact)
    (artifact / manifest.files["rank0"][0].path).write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        publish(artifact, str(tmp_path / "dest"))
    assert not (tmp_path / "dest").exists()


def _cli(cli_env, python, *args, env=None):
    return subprocess.run([python, "-m", "lmi_compile", *args], env=cli_env | (env or {}), capture_output=True, text=True, timeout=120)


def test_cli_publish_and_fetch_errors(cli_env, python, tmp_path, artifact):
    missing = _cli(cli_env, python, "publish", str(tmp_path / "nothing"), str(tmp_path / "dest"))
    assert missing.returncode == 2 and "error:" in missing.stderr and "has no lmi-artifact.json" in " ".join(missing.stderr.split())

    scheme = _cli(cli_env, python, "publish", str(artifact), "gs://bucket/x")
    assert scheme.returncode == 2 and "unsupported storage scheme 'gs'" in scheme.stderr

    folder = write_model(tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    pickled = _cli(cli_env, python, "fetch", str(folder), "--out", str(tmp_path / "out"))
    text = " ".join(pickled.stderr.split())
    assert pickled.returncode == 2 and "only pickle weights" in text and "--allow-pickle" in text
    allowed = _cli(cli_env, python, "fetch", str(folder), "--out", str(tmp_path / "out"), "--allow-pickle")
    assert allowed.returncode == 0 and "format: pickle" in allowed.stdout

    ok = _cli(cli_env, python, "publish", str(artifact), str(tmp_path / "dest"))
    assert ok.returncode == 0 and "already there" in ok.stdout


def test_cli_fetch_s3_errors(cli_env, python, tmp_path, s3_env, bucket):
    env = s3_env
    gone = _cli(cli_env, python, "fetch", "s3://no-such-bucket-here/m", "--out", str(tmp_path / "o"), env=env)
    assert gone.returncode == 2 and "does not exist" in gone.stderr
    empty = _cli(cli_env, python, "fetch", f"s3://{bucket}/nothing", "--out", str(tmp_path / "o"), env=env)
    assert empty.returncode == 2 and "no objects under" in empty.stderr
