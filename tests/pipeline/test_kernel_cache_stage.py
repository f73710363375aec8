"""`lmi-compile kernel-cache ARTIFACT`: a torch profile's kernel cache built into the artifact,
checksummed with its rank's files, recorded in the manifest, which is rewritten last. The build
itself needs the GPU it is for (here a stand-in writes a cache; scripts/bench_cold_start.py
runs the real one on a GPU); without one the command says so and changes nothing."""

from __future__ import annotations

import subprocess

import pytest

from lmi_compile.pipeline import run_recipe
from lmi_compile.recipe import Recipe
from lmi_compile.stages import kernel_cache
from lmi_compile.stages.kernel_cache import add_kernel_cache
from lmi_compile.targets.torch_target import local_artifact
from lmi_runtime.artifact.folder import read_manifest, write_manifest
from lmi_runtime.backends.loader import load_backend
from lmi_runtime.checksums import sha256_file
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.errors import ConfigError
from lmi_runtime.hardware.model import Hardware
from lmi_runtime.kernels.cache import CacheInfo, save
from lmi_runtime.locate import inspect_folder
from tiny_llama import save_tiny_llama

H100 = CacheInfo("sm_90", "2.11.0", "3.6.0", "13.0")


@pytest.fixture
def artifact(tmp_path, smollm2_dir):
    return local_artifact(save_tiny_llama(tmp_path / "dense", smollm2_dir), tmp_path / "artifact")


def stand_in(tmp_path, info=H100):
    """What a GPU start leaves in the empty cache folder it is given."""
    def build(root, profile, cache):
        compiled = tmp_path / "triton-built"
        compiled.mkdir(exist_ok=True)
        (compiled / "kernel.cubin").write_bytes(b"compiled for " + info.arch.encode())
        save(cache, compiled, info)
        return info
    return build


def test_the_cache_goes_into_the_rank_folder_and_the_manifest(artifact, tmp_path):
    before = read_manifest(artifact)
    profile, info, size = add_kernel_cache(artifact, None, stand_in(tmp_path))
    manifest = read_manifest(artifact)
    assert info == H100 and size > 0
    toolchain = manifest.profiles[profile.name].target.toolchain
    assert {k: toolchain[k] for k in toolchain if k.startswith("kernel_cache.")} == {
        "kernel_cache.arch": "sm_90", "kernel_cache.torch": "2.11.0", "kernel_cache.triton": "3.6.0",
        "kernel_cache.cuda": "13.0"}
    added = {e.path for e in manifest.files["rank0"]} - {e.path for e in before.files["rank0"]}
    on_disk = {p.relative_to(artifact).as_posix() for p in (artifact / "rank0" / "kernel_cache").rglob("*") if p.is_file()}
    # (inductor.bin too when this process compiled something earlier)
    assert added == on_disk >= {"rank0/kernel_cache/info.json", "rank0/kernel_cache/triton/kernel.cubin"}
    for entry in manifest.files["rank0"]:
        assert sha256_file(artifact / entry.path) == entry.sha256
    assert not list(artifact.glob(".lmi-tmp-*"))
    # a CPU start verifies the new files and serves as before (caches are for CUDA starts)
    backend = load_backend(inspect_folder(artifact), EngineConfig(max_batch_size=2))
    assert "kernel_cache" not in backend.info.details

    add_kernel_cache(artifact, None, stand_in(tmp_path, CacheInfo("sm_86", "2.11.0", "3.6.0", "13.0")))
    again = read_manifest(artifact)
    paths = [e.path for e in again.files["rank0"]]
    assert len(paths) == len(set(paths)) == len(manifest.files["rank0"])  # replaced, not added twice
    assert again.profiles[profile.name].target.toolchain["kernel_cache.arch"] == "sm_86"


def test_a_failed_build_leaves_the_artifact_as_it_was(artifact):
    before = (artifact / "lmi-artifact.json").read_bytes()

    def broken(root, profile, cache):
        (cache / "triton").mkdir(parents=True)
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        add_kernel_cache(artifact, None, broken)
    assert (artifact / "lmi-artifact.json").read_bytes() == before
    assert not (artifact / "rank0" / "kernel_cache").exists() and not list(artifact.glob(".lmi-tmp-*"))


def test_only_a_torch_profile_of_one_rank_takes_a_cache(artifact, tmp_path):
    manifest = read_manifest(artifact)
    profile = next(iter(manifest.profiles.values()))
    for update, message in (({"backend": "trtllm"}, "not torch"), ({"tp_degree": 2}, "tensor parallel degree 2")):
        changed = profile.model_copy(update={"target": profile.target.model_copy(update=update)})
        write_manifest(artifact, manifest.model_copy(update={"profiles": {profile.name: changed}}))
        with pytest.raises(ConfigError, match=message):
            add_kernel_cache(artifact, profile.name, stand_in(tmp_path))


def test_without_a_gpu_the_command_says_where_to_run_it(artifact, python, cli_env):
    before = (artifact / "lmi-artifact.json").read_bytes()
    done = subprocess.run([python, "-m", "lmi_compile", "kernel-cache", str(artifact)], env=cli_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "needs the GPU it is for" in done.stderr and "instance type you will serve on" in done.stderr
    assert (artifact / "lmi-artifact.json").read_bytes() == before


def recipe_asking_for_the_cache(tmp_path, smollm2_dir, **target) -> Recipe:
    source = save_tiny_llama(tmp_path / "source", smollm2_dir)
    return Recipe(name="tiny", source={"uri": str(source)}, target={"backend": "torch", "kernel_cache": True, **target},
                  limits={"max_batch_size": 4, "max_concurrent_requests": 8},
                  output={"uri": str(tmp_path / "out"), "cache_dir": str(tmp_path / "stage-cache")})


def test_a_recipe_asking_for_the_cache_on_a_machine_without_a_gpu_is_refused_before_any_work(tmp_path, smollm2_dir,
                                                                                             monkeypatch):
    monkeypatch.setattr(kernel_cache, "_this_gpu", lambda: None)  # as on CI's machine, also where a GPU is
    lines: list[str] = []
    with pytest.raises(ConfigError, match="builds the cache on this machine's GPU, and it has none"):
        run_recipe(recipe_asking_for_the_cache(tmp_path, smollm2_dir), log=lines.append)
    assert lines == [] and not (tmp_path / "out").exists()


def test_a_recipe_builds_the_cache_into_the_artifact_before_publishing(tmp_path, smollm2_dir, monkeypatch):
    monkeypatch.setattr(kernel_cache, "_this_gpu", lambda: "9.0")
    monkeypatch.setattr(kernel_cache, "build_on_this_gpu", stand_in(tmp_path))
    lines: list[str] = []
    result = run_recipe(recipe_asking_for_the_cache(tmp_path, smollm2_dir), log=lines.append)
    published = read_manifest(tmp_path / "out")
    assert published == result.manifest
    assert published.profiles[result.profile].target.toolchain["kernel_cache.arch"] == "sm_90"
    assert "rank0/kernel_cache/info.json" in {e.path for e in published.files["rank0"]}
    for entry in published.files["rank0"]:
        assert sha256_file(tmp_path / "out" / entry.path) == entry.sha256
    assert any(line.startswith("kernel_cache: built for sm_90") for line in lines)
    assert [t.stage for t in result.stages].index("kernel_cache") < [t.stage for t in result.stages].index("publish")


@pytest.mark.parametrize("backend, tp, planned, message", [
    ("neuron", 1, None, "for target torch, and this plan's target is neuron"),
    ("torch", 2, None, "tensor parallel degree 2"),
    ("torch", 1, "8.6", r"this machine's GPU \(sm_90\), and the plan is for .*A10G.* \(sm_86\)"),
])
def test_what_this_machine_cannot_build_is_named(monkeypatch, backend, tp, planned, message):
    monkeypatch.setattr(kernel_cache, "_this_gpu", lambda: "9.0")
    hardware = Hardware(kind="cuda", count=1, name="NVIDIA A10G", memory_bytes=24 * 2**30, compute_capability=planned,
                        cores=8, instance_type="ml.g5.2xlarge", source="instance table")
    with pytest.raises(ConfigError, match=message):
        kernel_cache.refuse_unbuildable_here(backend, tp, hardware)
    kernel_cache.refuse_unbuildable_here("torch", 1, hardware.model_copy(update={"compute_capability": "9.0"}))
