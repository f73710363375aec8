"""The compile stage's GPU half for target `torch`: build a profile's kernel cache into the artifact.

It runs where the artifact will be served (the instance type's GPU: a SageMaker processing job
on it, or any machine with that GPU): `lmi-serve`'s own start (load, compiled layers, decode
graphs for every batch-size bucket of the profile's max batch) with an empty cache folder, which
the start fills (`lmi_runtime.kernels.cache`). The cache goes into the profile's rank folder
(`rank0/kernel_cache/`), so it is checksummed, verified and downloaded with that rank's files;
the manifest records what it was built with (`toolchain`: `kernel_cache.arch`, `.torch`,
`.triton`, `.cuda`) and is rewritten last, so an interrupted build leaves the artifact as it was.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from lmi_runtime.artifact.folder import read_manifest, write_manifest
from lmi_runtime.artifact.manifest import FileEntry, Manifest, Profile, rank_group
from lmi_runtime.checksums import hash_files
from lmi_runtime.errors import ConfigError
from lmi_runtime.hardware.model import Hardware
from lmi_runtime.kernels.cache import SHIPPED, CacheInfo, read_info
from lmi_runtime.storage.local import TMP_PREFIX

VENDOR_BUILDS = "TensorRT-LLM engines and Neuron NEFFs are compiled by their own target's compile stage"
Builder = Callable[[Path, Profile, Path], CacheInfo]  # (artifact, profile, empty cache folder) -> what it built


def add_kernel_cache(root: Path, profile_name: str | None, build: Builder) -> tuple[Profile, CacheInfo, int]:
    """Build `profile_name`'s cache (default: the artifact's only torch profile) into `root`;
    returns the updated profile, what the cache was built for and its size in bytes."""
    manifest = read_manifest(root)
    profile = _torch_profile(manifest, profile_name)
    group = rank_group(0, profile.folder)
    staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))  # skipped by artifact scans
    try:
        info = build(root, profile, staging / SHIPPED)
        if read_info(staging / SHIPPED) != info:
            raise RuntimeError(f"the kernel cache build did not save a cache for {info.describe()}")
        dest = root / group / SHIPPED
        if dest.exists():
            shutil.rmtree(dest)
        (staging / SHIPPED).rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    digests = hash_files(sorted(p for p in dest.rglob("*") if p.is_file()), "hashing kernel cache")
    entries = [FileEntry(path=p.relative_to(root).as_posix(), size=p.stat().st_size, sha256=digest)
               for p, digest in digests.items()]
    prefix = f"{group}/{SHIPPED}/"
    kept = [e for e in manifest.files.get(group, []) if not e.path.startswith(prefix)]
    toolchain = {**profile.target.toolchain, **{f"kernel_cache.{k}": v for k, v in asdict(info).items()}}
    updated = profile.model_copy(update={"target": profile.target.model_copy(update={"toolchain": toolchain})})
    write_manifest(root, manifest.model_copy(update={
        "profiles": {**manifest.profiles, profile.name: updated},
        "files": {**manifest.files, group: kept + entries},
    }))
    return updated, info, sum(e.size for e in entries)


def _torch_profile(manifest: Manifest, name: str | None) -> Profile:
    torch_profiles = [p for p in manifest.profiles.values() if p.target.backend == "torch"]
    if name is not None:
        profile = manifest.only(name).profile  # an unknown name: the artifact's own message
    elif len(torch_profiles) == 1:
        profile = torch_profiles[0]
    else:
        raise ConfigError(f"this artifact holds {len(torch_profiles)} torch profiles "
                          f"({', '.join(p.name for p in torch_profiles) or 'none'})",
                          hint="name one with --profile" if torch_profiles else
                          f"kernel caches are for target torch; {VENDOR_BUILDS}")
    if profile.target.backend != "torch":
        raise ConfigError(f"profile {profile.name} is for target {profile.target.backend}, not torch",
                          hint=VENDOR_BUILDS)
    if profile.target.tp_degree > 1:
        raise ConfigError(f"profile {profile.name} has tensor parallel degree {profile.target.tp_degree}: "
                          "kernel caches are built for one rank only so far",
                          hint="serve it without a cache (each start compiles), or build one for a TP 1 profile")
    return profile


def refuse_unbuildable_here(backend: str, tp_degree: int, hardware: Hardware) -> None:
    """`target.kernel_cache` in a recipe: refused before anything is fetched when this machine
    cannot build the cache the plan's hardware will load."""
    if backend != "torch":
        raise ConfigError(f"target.kernel_cache is for target torch, and this plan's target is {backend}",
                          hint=VENDOR_BUILDS)
    if tp_degree > 1:
        raise ConfigError(f"target.kernel_cache: the plan has tensor parallel degree {tp_degree}, and kernel "
                          "caches are built for one rank only so far", hint="set target.tp_degree: 1, or leave "
                          "target.kernel_cache off (each start then compiles)")
    here = _this_gpu()
    if here is None:
        raise ConfigError("target.kernel_cache builds the cache on this machine's GPU, and it has none",
                          hint="run the recipe on the instance type you will serve on, or leave "
                               "target.kernel_cache off and run lmi-compile kernel-cache there later")
    planned = hardware.compute_capability
    if hardware.kind == "cuda" and planned and planned != here:
        raise ConfigError(f"target.kernel_cache would build for this machine's GPU (sm_{here.replace('.', '')}), "
                          f"and the plan is for {hardware.describe()} ({hardware.arch}): lmi-serve would refuse it "
                          "there",
                          hint="run the recipe on that instance type, or leave target.kernel_cache off")


def _this_gpu() -> str | None:
    """This machine's CUDA compute capability ("9.0"), None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def build_on_this_gpu(root: Path, profile: Profile, cache: Path) -> CacheInfo:
    """`lmi-serve`'s start of this profile on this machine's GPU, with `cache` to fill."""
    import torch

    if _this_gpu() is None:
        raise ConfigError("building a kernel cache needs the GPU it is for, and this machine has none",
                          hint="run lmi-compile kernel-cache on the instance type you will serve on")
    from lmi_runtime.backends.loader import load_backend
    from lmi_runtime.config.engine_settings import engine_config
    from lmi_runtime.locate import inspect_folder

    config = engine_config({"kernel_cache": str(cache), "device": "cuda"}, profile=profile)
    backend = load_backend(inspect_folder(root, profile=profile), config)
    del backend
    torch.cuda.empty_cache()
    return CacheInfo.running(torch.device("cuda"))
