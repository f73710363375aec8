"""Manifest profiles: format 1 read as one profile, the layout rules, and how a profile is
judged for a machine (compatible, enough memory, preferred), with made-up hardware."""

from __future__ import annotations

import json

import pytest

from lmi_runtime.artifact.folder import check_manifest_paths, parse_manifest
from lmi_runtime.artifact.manifest import FileEntry, HardwareRequirement, Limits, Manifest, ModelInfo, Profile, TargetInfo
from lmi_runtime.artifact.profiles import assess, choose, grouped_report
from lmi_runtime.engine.kv_budget import kv_cache_plan
from lmi_runtime.errors import ArtifactError
from lmi_compile.plan.instances import instance_hardware
from lmi_runtime.hardware import GiB, Hardware

A10G = instance_hardware("ml.g5.2xlarge")
SMALL_CPU = Hardware(kind="cpu", count=1, name="small", memory_bytes=2 * GiB, cores=2, source="test")


def entry(path: str) -> FileEntry:
    return FileEntry(path=path, size=1, sha256="0" * 64)


def test_a_format_1_manifest_is_one_profile_named_default():
    v1 = {"format_version": 1, "model": {"source": "x"}, "target": {"backend": "torch", "hardware": {"kind": "any"}},
          "quantization": {"method": "static_int8"}, "limits": {"max_batch_size": 8, "max_total_len": 2048, "kv_cache": {}},
          "serving": {"job_queue_size": "64"}, "files": {"shared": [entry("config.json").model_dump()],
                                                      "rank0": [entry("rank0/model.safetensors").model_dump()]}}
    manifest = parse_manifest(json.dumps(v1).encode(), "v1")
    assert manifest.format_version == 2 and list(manifest.profiles) == ["default"]
    profile = manifest.profile
    assert profile.folder == "" and profile.quantization.method == "static_int8"
    assert profile.limits == Limits(max_batch_size=8, max_concurrent_requests=64, max_total_len=2048)
    assert [e.path for e in manifest.group_for_rank(0)] == ["config.json", "rank0/model.safetensors"]


def _two(folder_files: dict[str, list[FileEntry]]) -> Manifest:
    profiles = {"a": Profile(name="a", target=TargetInfo(backend="torch")),
                "b": Profile(name="b", folder="profiles/b", target=TargetInfo(backend="torch"))}
    return Manifest(model=ModelInfo(source="x"), profiles=profiles, files=folder_files)


def test_each_profile_sees_the_shared_files_and_its_own():
    manifest = _two({"shared": [entry("config.json")], "rank0": [entry("rank0/w.safetensors")],
                     "profiles/b": [entry("profiles/b/config.json")],
                     "profiles/b/rank0": [entry("profiles/b/rank0/w.safetensors")]})
    check_manifest_paths(manifest)
    assert [e.path for e in manifest.profile_files("a")] == ["config.json", "rank0/w.safetensors"]
    assert [e.path for e in manifest.only("b").group_for_rank(0)] == [
        "config.json", "profiles/b/config.json", "profiles/b/rank0/w.safetensors"]
    with pytest.raises(ArtifactError, match="holds 2 profiles"):
        manifest.group_for_rank(0)


def test_files_outside_every_profile_or_in_a_wrong_folder_are_refused():
    with pytest.raises(ArtifactError, match="no profile owns"):
        check_manifest_paths(_two({"profiles/c/rank0": [entry("profiles/c/rank0/w.safetensors")]}))
    with pytest.raises(ArtifactError, match="puts 'profiles/b/rank0/w' in group 'rank0'"):
        check_manifest_paths(_two({"rank0": [entry("profiles/b/rank0/w")]}))
    with pytest.raises(ValueError, match="expected '' or 'profiles/c'"):
        Manifest(model=ModelInfo(source="x"), files={},
                 profiles={"c": Profile(name="c", folder="../c", target=TargetInfo(backend="torch"))})


def _planned(name: str, *, dtype="float16", method="none", bits=None, kind="any", weights=GiB, memory=24 * GiB) -> Profile:
    kv = kv_cache_plan(memory_per_device=memory, utilization=0.9, weights_per_device=weights, reserve=GiB,
                       bytes_per_token=100_000, kv_heads_per_device=8, max_total_len=4096)
    quant = {"method": method, "settings": {"bits": bits} if bits else {}}
    return Profile(name=name, folder=f"profiles/{name}",
                   target=TargetInfo(backend="torch", dtype=dtype, hardware=HardwareRequirement(kind=kind)),
                   quantization=quant, limits=Limits(max_batch_size=8, max_total_len=4096, kv_cache=kv))


def test_lower_precision_wins_among_runnable_profiles_on_a_gpu():
    profiles = [_planned("fp16"), _planned("int4", method="awq", bits=4), _planned("int8", method="static_int8", bits=8)]
    manifest = Manifest(model=ModelInfo(source="x"), profiles={p.name: p for p in profiles})
    chosen, why = choose(manifest, A10G, running={})
    assert chosen.name == "int4" and "not fp16: ranked lower" in why and "not int8: ranked lower" in why
    assert choose(manifest, A10G, pinned="fp16", running={})[0].name == "fp16"


def test_too_little_memory_says_what_would_fit():
    big = _planned("big", weights=int(1.5 * GiB))  # 1.5 GiB weights + 1 GiB reserve + 4,096 × 100 kB
    verdict = assess(big, SMALL_CPU, running={})
    assert verdict.status == "too little memory"
    assert "needs 2.88 GiB per device" in verdict.reason and "offers 1.80 GiB" in verdict.reason
    assert "would fit with a device with at least 3.2 GiB (at utilization 0.9)" in verdict.reason
    report = grouped_report(Manifest(model=ModelInfo(source="x"), profiles={"big": big}), SMALL_CPU, running={})
    assert report.split("compatible but too little memory:")[1].split("incompatible:")[0].strip().startswith("big (")
    with pytest.raises(ArtifactError, match="no profile of this artifact runs on this machine: big: needs 2.88 GiB"):
        choose(Manifest(model=ModelInfo(source="x"), profiles={"big": big}), SMALL_CPU, running={})


def test_a_profile_needing_more_gpus_than_the_machine_has_is_incompatible():
    wide = _planned("wide", kind="cuda").model_copy(update={"target": TargetInfo(backend="torch", tp_degree=4,
                                                                                  hardware=HardwareRequirement(kind="cuda"))})
    verdict = assess(wide, A10G, running={})
    assert verdict.status == "incompatible" and "needs 4 devices (TP 4 × PP 1)" in verdict.reason


def test_a_torch_profile_tied_to_another_gpu_arch_is_incompatible():
    h100_only = _planned("h100").model_copy(update={"target": TargetInfo(
        backend="torch", hardware=HardwareRequirement(kind="cuda", arch="sm_90"))})
    verdict = assess(h100_only, A10G, running={})
    assert verdict.status == "incompatible"
    assert "built for cuda sm_90, but this machine has ml.g5.2xlarge: 1 × NVIDIA A10G" in verdict.reason
