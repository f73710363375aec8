"""An artifact with two profiles of the real bundled model, on this CPU machine: lmi-serve picks
the runnable one and says why, lists the other as incompatible with its reason, honours
LMI_PROFILE and refuses a pin that cannot run here; only the chosen profile's files are checked
and downloaded."""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import pytest

from lmi_runtime.artifact.folder import file_entries, read_manifest, write_manifest
from lmi_runtime.artifact.manifest import HardwareRequirement, Manifest, ModelInfo, Profile, TargetInfo
from lmi_runtime.errors import ArtifactError
from lmi_runtime.locate import inspect_folder, resolve_location
from profiled import cpu_and_gpu
from served import lmi_serve


@pytest.fixture(scope="module")
def two_profiles(smollm2_dir, smollm2_artifact, tmp_path_factory):
    return cpu_and_gpu(smollm2_dir, smollm2_artifact, tmp_path_factory.mktemp("profiles") / "art")


def _serve_cli(python, cli_env, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "lmi_runtime", *args], env={**cli_env, **env}, capture_output=True,
                          text=True, timeout=180)


def test_list_profiles_groups_them_for_this_machine(two_profiles, python, cli_env):
    done = _serve_cli(python, cli_env, "--list-profiles", str(two_profiles))
    assert done.returncode == 0, done.stderr
    runnable, rest = done.stdout.split("compatible but too little memory:")
    too_little, incompatible = rest.split("incompatible:")
    assert "runnable here:" in runnable and "torch-float32 (torch float32)" in runnable and "gpu" not in runnable
    assert "(none)" in too_little
    assert "gpu (torch bfloat16): this torch artifact was built for cuda, but this machine has CPU" in incompatible


def test_serve_picks_the_runnable_profile_and_says_why(two_profiles, python, cli_env, tmp_path):
    log = tmp_path / "serve.log"
    with lmi_serve(python, str(two_profiles), cli_env, log) as url:
        answer = httpx.post(f"{url}/invocations", json={"inputs": "The capital of France is",
                                                          "parameters": {"max_new_tokens": 4}}, timeout=60)
        assert answer.status_code == 200 and answer.json()["generated_text"]
    said = log.read_text()
    assert "serving profile torch-float32 (torch float32): compatible with" in said
    assert "not gpu: incompatible" in said
    assert "from the artifact's plan" in said  # the KV cache: the profile's planned budget
    # the profile's limits record
    assert "max batch 8, queue 64, max_model_len 2048, prompt tokens per step 8192" in said


def test_an_incompatible_or_unknown_pin_is_refused_clearly(two_profiles, python, cli_env):
    done = _serve_cli(python, cli_env, str(two_profiles), "--port", "1", LMI_PROFILE="gpu")
    assert done.returncode == 2
    said = " ".join(done.stderr.split())
    assert "profile 'gpu' was pinned (LMI_PROFILE / --profile) but cannot run here: incompatible: " \
           "this torch artifact was built for cuda, but this machine has CPU" in said
    done = _serve_cli(python, cli_env, str(two_profiles), "--port", "1", "--profile", "nope")
    assert done.returncode == 2 and "LMI_PROFILE=nope: this artifact has no such profile (it has torch-float32, gpu)" \
        in " ".join(done.stderr.split())


def test_a_pin_serves_that_profile_and_checks_only_its_files(two_profiles, copy_artifact, tmp_path, monkeypatch):
    art = copy_artifact(two_profiles, tmp_path / "art")
    manifest = read_manifest(art)
    manifest.profiles["gpu"].target.hardware = HardwareRequirement(kind="any")  # runnable here too
    write_manifest(art, manifest)
    assert inspect_folder(art, verify=False).manifest.profile.name == "torch-float32"  # preferred: none pinned
    (art / "rank0" / "model.safetensors").unlink()  # the other profile's weights
    with pytest.raises(ArtifactError, match="missing: rank0/model.safetensors"):
        inspect_folder(art)
    monkeypatch.setenv("LMI_PROFILE", "gpu")
    files = inspect_folder(art)
    files.wait_verified()
    assert files.manifest.profile.name == "gpu" and files.artifact == art.resolve()
    assert [w.resolve() for w in files.weights] == [(art / "profiles/gpu/rank0/model.safetensors").resolve()]
    assert json.loads((files.root / "config.json").read_text())["model_type"] == "llama"  # shared, seen from the profile


def test_s3_downloads_only_the_chosen_profile(s3, s3_env, bucket, tmp_path):
    """A small artifact-shaped folder (the download path does not read the weights)."""
    from lmi_compile.stages.publish import publish
    from lmi_runtime.storage.s3 import S3Options

    art = tmp_path / "art"
    for path in ("rank0/model.safetensors", "profiles/gpu/rank0/model.safetensors"):
        (art / path).parent.mkdir(parents=True, exist_ok=True)
        (art / path).write_bytes(os.urandom(4096))
    (art / "config.json").write_text('{"model_type": "llama"}')
    profiles = {"cpu": Profile(name="cpu", target=TargetInfo(backend="torch")),
                "gpu": Profile(name="gpu", folder="profiles/gpu",
                               target=TargetInfo(backend="torch", hardware=HardwareRequirement(kind="cuda")))}
    write_manifest(art, Manifest(model=ModelInfo(source="test"), profiles=profiles, files=file_entries(art)))
    uri = f"s3://{bucket}/two"
    publish(art, uri, s3_options=S3Options.from_env())
    local = resolve_location(uri, env={**s3_env, "LMI_SERVE_CACHE": str(tmp_path / "cache")})
    got = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert got == ["config.json", "lmi-artifact.json", "rank0/model.safetensors"]
    with pytest.raises(ArtifactError, match="profile 'gpu' was pinned"):
        resolve_location(uri, env={**s3_env, "LMI_SERVE_CACHE": str(tmp_path / "other"), "LMI_PROFILE": "gpu"})
    assert not (tmp_path / "other").exists()  # refused before any download
