"""Verify before load, always (issue 16): a local artifact is checked against its manifest like
a downloaded one — altered, extra or symlinked files and unknown format versions are refused,
by `inspect_folder` and by a real `lmi-serve` — and digests are cached by file identity."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from lmi_runtime.artifact.download import download_artifact
from lmi_runtime.artifact.manifest import MANIFEST_NAME
from lmi_runtime.artifact.transfer import push
from lmi_runtime.checksums import HashCache
from lmi_runtime.errors import ArtifactError, ModelFolderError
from lmi_runtime.locate import inspect_folder
from lmi_runtime.storage import open_storage
from served import free_port


@pytest.fixture()
def art(smollm2_artifact, copy_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("LMI_SERVE_CACHE", str(tmp_path / "serve-cache"))
    return copy_artifact(smollm2_artifact, tmp_path / "art")


def _flip_bytes(path, offset: int, count: int = 64) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        data = handle.read(count)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in data))


def _serve(python, cli_env, art, *args, timeout=120) -> subprocess.CompletedProcess:
    cmd = [python, "-m", "lmi_runtime", str(art), "--host", "127.0.0.1", "--port", str(free_port()), *args]
    return subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=timeout)


def test_flipped_weight_bytes_are_refused_by_lmi_serve(art, smollm2_artifact, copy_artifact, tmp_path, python, cli_env):
    weights = art / "rank0" / "model.safetensors"
    weights.unlink()
    copy_artifact(smollm2_artifact / "rank0", art / "rank0", copy_weights=True)  # a private copy to change
    _flip_bytes(weights, weights.stat().st_size // 2)
    files = inspect_folder(art)  # sizes fine: the weights' sha256 runs in the background
    with pytest.raises(ArtifactError, match="sha256 mismatch: rank0/model.safetensors"):
        files.wait_verified()
    done = _serve(python, cli_env | {"LMI_SERVE_CACHE": str(tmp_path / "c")}, art)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "sha256 mismatch: rank0/model.safetensors" in done.stderr and "Traceback" not in done.stderr
    inspect_folder(art, verify=False).wait_verified()  # --skip-verify: the user accepts the risk


def test_edited_config_is_refused(art):
    text = (art / "config.json").read_text()
    (art / "config.json").write_text(text.replace('"rope_theta": 100000.0', '"rope_theta": 900000.0'))  # same size
    with pytest.raises(ArtifactError, match="sha256 mismatch: config.json"):
        inspect_folder(art)  # small files are checked before anything reads them
    (art / "config.json").write_text(json.dumps(json.loads(text)))  # the same values, other bytes
    with pytest.raises(ArtifactError, match="wrong size: config.json"):
        inspect_folder(art)
    os.replace(art / "config.json", art / "config.json.bak")
    with pytest.raises(ArtifactError, match="missing: config.json; not in the manifest: config.json.bak"):
        inspect_folder(art)


def test_files_outside_the_manifest_are_refused(art):
    (art / "special_tokens_map.json").write_text("{}")
    with pytest.raises(ArtifactError, match="not in the manifest: special_tokens_map.json"):
        inspect_folder(art)
    (art / "special_tokens_map.json").unlink()
    (art / "rank0" / "modeling_evil.py").write_text("import os\n")
    with pytest.raises(ArtifactError, match="not in the manifest: rank0/modeling_evil.py"):
        inspect_folder(art, verify=False)  # the cheap checks stay on with --skip-verify


@pytest.mark.parametrize("version", [999, 0, -1, "1", 1.0, None, "missing"])
def test_unknown_or_malformed_format_version_is_refused(art, version):
    manifest = json.loads((art / MANIFEST_NAME).read_text())
    if version == "missing":
        del manifest["format_version"]
    else:
        manifest["format_version"] = version
    (art / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="this build reads format_version 1, 2"):
        inspect_folder(art)


def test_s3_artifact_with_an_unknown_format_version_is_refused(smollm2_artifact, tmp_path, bucket, options):
    manifest = json.loads((smollm2_artifact / MANIFEST_NAME).read_text())
    manifest["format_version"] = 3
    storage = open_storage(f"s3://{bucket}/art", options)
    push(smollm2_artifact, [], storage, MANIFEST_NAME, json.dumps(manifest).encode())
    with pytest.raises(ArtifactError, match="format_version 3; this build reads format_version 1, 2"):
        download_artifact(f"s3://{bucket}/art", tmp_path / "dl", rank=0, s3_options=options)
    assert not (tmp_path / "dl" / "config.json").exists()  # refused before any data moved


def test_symlinks_out_of_an_artifact_are_refused(art, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_bytes((art / "tokenizer_config.json").read_bytes())
    (art / "tokenizer_config.json").unlink()
    (art / "tokenizer_config.json").symlink_to(outside)  # same content, but not inside the artifact
    with pytest.raises(ArtifactError, match="resolves outside"):
        inspect_folder(art)


def test_symlinks_out_of_a_plain_model_folder_are_refused(smollm2_dir, copy_artifact, tmp_path):
    folder = copy_artifact(smollm2_dir, tmp_path / "model")
    (tmp_path / "elsewhere.json").write_bytes((folder / "config.json").read_bytes())
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ModelFolderError, match="'config.json': it resolves outside"):
        inspect_folder(folder)


def test_digests_are_cached_by_file_identity(art, tmp_path):
    start = time.perf_counter()
    inspect_folder(art).wait_verified()
    cold = time.perf_counter() - start
    cache = HashCache(tmp_path / "serve-cache" / "verified-digests.json")
    weights = art / "rank0" / "model.safetensors"
    assert cache.get(weights) is not None and cache.get(art / "config.json") is not None
    start = time.perf_counter()
    inspect_folder(art).wait_verified()
    warm = time.perf_counter() - start
    assert warm < cold  # nothing rehashed (figures: scripts/verify_cost.py)
    _flip_bytes(art / "config.json", 2, 1)  # same size, but mtime and ctime move
    assert cache.get(art / "config.json") is None
    with pytest.raises(ArtifactError, match="sha256 mismatch: config.json"):
        inspect_folder(art)
