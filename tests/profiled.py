"""Artifacts with profiles planned by the real planner, built cheaply from the session's bundled
model artifact (weights hard-linked, not copied): what the profile, preflight and KV-capacity
tests serve, list and check."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmi_compile.pipeline import plan_profile
from lmi_compile.plan import make_plan
from lmi_compile.recipe import Recipe
from lmi_compile.targets import torch_target
from lmi_runtime.artifact.folder import file_entries, write_manifest
from lmi_runtime.artifact.limits import properties_text
from lmi_runtime.artifact.manifest import MANIFEST_NAME, Manifest, ModelInfo, Profile, QuantizationInfo, profile_folder
from lmi_compile.plan.instances import instance_hardware
from lmi_runtime.hardware import GiB, Hardware

# A CPU with a fixed memory figure, so that plans (and what the runtime serves from them) do not
# depend on the machine the tests run on.
CPU = Hardware(kind="cpu", count=1, name="test CPU", memory_bytes=int(2.25 * GiB), cores=2, source="test")
LIMITS = {"max_batch_size": 8, "max_concurrent_requests": 64, "max_total_len": 2048}


def planned_profile(model_dir: Path, name: str, folder: str, hardware: Hardware, **limits) -> Profile:
    recipe = Recipe(source={"uri": "bundled://smollm2"}, target={"backend": "torch"}, limits={**LIMITS, **limits})
    plan = make_plan(recipe, json.loads((model_dir / "config.json").read_text()), hardware)
    return plan_profile(name, folder, plan, torch_target.describe(1, plan.dtype), QuantizationInfo())


def profiled_artifact(src: Path, dest: Path, profiles: list[Profile]) -> Path:
    """`src` (the session's artifact) with `profiles`: the one with folder "" uses the root's
    rank0/ weights, each other one gets its own hard-linked copy under profiles/<name>/rank0/."""
    for item in src.rglob("*"):
        if item.is_file() and item.name != MANIFEST_NAME:
            target = dest / item.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(item, target)
    for profile in profiles:
        if profile.folder:
            (dest / profile.folder / "rank0").mkdir(parents=True)
            os.link(src / "rank0" / "model.safetensors", dest / profile.folder / "rank0" / "model.safetensors")
        (dest / profile.folder / "serving.properties").unlink(missing_ok=True)
        (dest / profile.folder / "serving.properties").write_text(properties_text(profile))
    model = ModelInfo(source="bundled://smollm2", architecture="LlamaForCausalLM")
    write_manifest(dest, Manifest(model=model, profiles={p.name: p for p in profiles}, files=file_entries(dest)))
    return dest


def cpu_and_gpu(model_dir: Path, src: Path, dest: Path) -> Path:
    """`torch-float32` at the root, planned for CPU; `gpu`, torch bfloat16 planned for ml.g5.2xlarge,
    which needs a CUDA GPU."""
    return profiled_artifact(src, dest, [
        planned_profile(model_dir, "torch-float32", "", CPU),
        planned_profile(model_dir, "gpu", profile_folder("gpu"), instance_hardware("ml.g5.2xlarge")),
    ])
