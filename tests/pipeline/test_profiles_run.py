"""`lmi-compile run` adding a profile to an artifact of the same model: only the new profile's
files are sent, the manifest merges both; a different model at the destination is refused
before any work."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from lmi_compile.pipeline import run_recipe
from lmi_compile.recipe import Recipe
from lmi_runtime.artifact.download import fetch_manifest
from lmi_runtime.artifact.folder import write_manifest
from lmi_runtime.artifact.manifest import MANIFEST_NAME, Manifest, ModelInfo, Profile, TargetInfo
from lmi_runtime.errors import ArtifactError

BASE = {"name": "smollm2", "source": {"uri": "bundled://smollm2"}, "target": {"backend": "torch"},
        "limits": {"max_batch_size": 8, "max_concurrent_requests": 64, "max_total_len": 2048}}


def test_another_model_at_the_destination_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    other = Manifest(model=ModelInfo(source="hf:someone/else", config_digest="ab" * 32),
                     profiles={"x": Profile(name="x", target=TargetInfo(backend="torch"))})
    write_manifest(out, other)
    before = (out / MANIFEST_NAME).read_bytes()
    recipe = Recipe(**BASE, output={"uri": str(out), "cache_dir": str(tmp_path / "cache")})
    lines: list[str] = []
    with pytest.raises(ArtifactError, match=r"already holds an artifact of another model \(hf:someone/else, "
                                            r"config.json sha256 abababababab; this run's is [0-9a-f]{12}\)"):
        run_recipe(recipe, log=lines.append)
    assert not any(line.startswith(("quantize", "compile")) for line in lines)  # refused right after fetch
    assert (out / MANIFEST_NAME).read_bytes() == before and sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME]


@pytest.mark.slow  # two pipeline runs on the bundled model (no quantization): ~15-40 s
def test_a_second_recipe_adds_its_profile_without_resending_the_first(tmp_path, python, cli_env, s3, s3_env, bucket):
    uri = f"s3://{bucket}/smollm2"

    def run(**changes) -> subprocess.CompletedProcess:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({**BASE, **changes, "output": {"uri": uri, "cache_dir": str(tmp_path / "cache")}}))
        done = subprocess.run([python, "-m", "lmi_compile", "run", str(recipe)], env=cli_env | s3_env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done

    first = run()
    assert "(profile torch-float32)" in first.stderr
    second = run(profile="a10g", target={"backend": "torch", "instance_type": "ml.g5.2xlarge"})
    assert "(profile a10g, added to the 1 there)" in " ".join(second.stderr.split())
    assert "2 files sent" in second.stdout  # its weights and its serving.properties; the shared files stay
    manifest, _ = fetch_manifest(uri)
    assert sorted(manifest.profiles) == ["a10g", "torch-float32"]
    a10g = manifest.profiles["a10g"]
    assert a10g.folder == "profiles/a10g" and a10g.target.dtype == "bfloat16" and a10g.target.hardware.kind == "cuda"
    assert [e.path for e in manifest.files["profiles/a10g/rank0"]] == ["profiles/a10g/rank0/model.safetensors"]
    assert manifest.files["rank0"] and manifest.model.config_digest  # the first profile is still there

    again = run(profile="a10g", target={"backend": "torch", "instance_type": "ml.g5.2xlarge"})
    assert "0 files sent" in again.stdout  # the same profile again: replaced by itself, nothing to send
    assert json.loads(fetch_manifest(uri)[1]) == json.loads(manifest.model_dump_json(exclude_none=True))
