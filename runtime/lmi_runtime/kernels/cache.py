"""A kernel cache: the code a CUDA start compiles, saved once and loaded before the model compiles.

What a start builds, and where it goes: the compiled layers (Inductor, through
`torch.compiler.save_cache_artifacts` / `load_cache_artifacts`), and the Triton kernels of our
own (paged attention, quantized matmul) with the matmul's autotuning results (Triton's cache
folder, `TRITON_CACHE_DIR`, which `autotune(cache_results=True)` writes into). The folder:

    info.json     GPU arch, torch, triton and CUDA versions it was built with (written last)
    inductor.bin  torch.compiler's cache artifacts
    triton/       Triton's cache folder

Compiled code runs only on the GPU arch and with the library versions it was built for, so a
cache built elsewhere is refused with both named; `recompile` builds it anew instead. A folder
without `info.json` is filled at the end of the start (`lmi-serve --kernel-cache DIR`: the
first start builds, the next ones load); an artifact can ship one beside a rank's weights
(`rank0/kernel_cache/`, built by `lmi-compile kernel-cache` on the GPU), which is only read.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmi_runtime.errors import ArtifactError

log = logging.getLogger("lmi_runtime.kernel_cache")
INFO = "info.json"
PARTS = {INFO, "inductor.bin", "triton"}  # what a cache folder holds
SHIPPED = "kernel_cache"  # an artifact's cache, beside its weights
REBUILD = "build it again (lmi-serve --kernel-cache DIR --recompile)"  # the hint for a damaged cache


@dataclass(frozen=True)
class CacheInfo:
    arch: str
    torch: str
    triton: str
    cuda: str

    @classmethod
    def running(cls, device: torch.device) -> CacheInfo:
        import triton

        major, minor = torch.cuda.get_device_capability(device)
        return cls(f"sm_{major}{minor}", torch.__version__, triton.__version__, torch.version.cuda or "none")

    def describe(self) -> str:
        return f"{self.arch}, torch {self.torch}, triton {self.triton}, CUDA {self.cuda}"


@dataclass
class KernelCache:
    """One start's use of a cache folder: `begin` before anything compiles, `finish` after the
    warm-up (decode graphs captured), which saves what was built if the folder had nothing."""

    folder: Path
    running: CacheInfo
    recompile: bool = False
    writable: bool = True
    loaded: bool = False
    _triton_dir: Path | None = None

    def begin(self) -> bool:
        """Point Triton at a private cache folder (a copy of the saved one, or empty) and load
        Inductor's artifacts. True when a saved cache was loaded."""
        self._check_replaceable()
        self._triton_dir = Path(tempfile.mkdtemp(prefix="lmi-triton-"))
        atexit.register(shutil.rmtree, self._triton_dir, True)
        os.environ["TRITON_CACHE_DIR"] = str(self._triton_dir)
        saved = read_info(self.folder)
        if saved is not None and saved != self.running:
            if not self.recompile:
                raise ArtifactError(
                    f"kernel cache {self.folder} was built for {saved.describe()}; this machine runs "
                    f"{self.running.describe()}",
                    hint="build it again here (lmi-serve --kernel-cache DIR --recompile), or serve without it "
                         "(--kernel-cache none): the start then compiles")
            log.warning("kernel cache %s built for %s, running %s: recompiling", self.folder, saved.describe(),
                        self.running.describe())
            saved = None
        if saved is None:
            return False
        if (self.folder / "triton").is_dir():
            shutil.copytree(self.folder / "triton", self._triton_dir, dirs_exist_ok=True)
            _rebase_groups(self._triton_dir, self.folder)
        if (self.folder / "inductor.bin").is_file():
            # a corrupt file: torch logs why and returns None
            if torch.compiler.load_cache_artifacts((self.folder / "inductor.bin").read_bytes()) is None:
                raise ArtifactError(f"kernel cache {self.folder}: inductor.bin does not load (see the warning above)",
                                    hint=REBUILD)
        self.loaded = True
        log.info("kernel cache loaded from %s (%s)", self.folder, saved.describe())
        return True

    def _check_replaceable(self) -> None:
        """The folder is (re)written at the end of a start that does not load it: refuse, before
        anything compiles, a path that is a file or a folder of other files, which saving would
        destroy (a cache's own parts, even without info.json, may be replaced)."""
        if not self.writable or not self.folder.exists():
            return
        if not self.folder.is_dir() or any(entry.name not in PARTS for entry in self.folder.iterdir()):
            raise ArtifactError(f"--kernel-cache {self.folder} is not a kernel cache and not empty; saving one there "
                                "would replace what it holds",
                                hint="give a new or empty folder (or an existing kernel cache)")

    def finish(self) -> None:
        """Save what this start compiled, when the folder held no usable cache."""
        if self.loaded or not self.writable or self._triton_dir is None:
            return
        save(self.folder, self._triton_dir, self.running)
        log.info("kernel cache saved to %s (%s)", self.folder, self.running.describe())


def _rebase_groups(triton_dir: Path, source: Path) -> None:
    """Point each kernel's file list at the copy. Triton lists a compiled kernel's files by
    absolute path (`<key>/__grp__<kernel>.json`), so in a copy they name the folder the cache was
    built in, gone since, and Triton compiled every kernel of ours again: 20 of them in a 7B int8
    start on the H100, whose compile and graphs then took 10.5 s against 4.7 s with this. A
    kernel's files lie beside its list; a listed name that is not a plain file name is refused
    (a cache is input, like any artifact file)."""
    for group in triton_dir.glob("*/__grp__*.json"):
        try:
            children = json.loads(group.read_text())["child_paths"]
            names = list(children)
        except (ValueError, KeyError, TypeError) as err:
            raise ArtifactError(f"kernel cache {source}: {group.relative_to(triton_dir)} is not Triton's file list "
                                f"({err!r})", hint=REBUILD) from err
        for name in names:
            if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
                raise ArtifactError(f"kernel cache {source}: {group.relative_to(triton_dir)} lists {name!r}, which is "
                                    "not a file name", hint=REBUILD)
        group.write_text(json.dumps({"child_paths": {name: str(group.parent / name) for name in names}}))


def read_info(folder: Path) -> CacheInfo | None:
    path = folder / INFO
    if not path.is_file():
        return None
    try:
        return CacheInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise ArtifactError(f"kernel cache {folder}: unreadable {INFO} ({err})",
                            hint="delete the folder to rebuild it, or pass --recompile") from err


def save(folder: Path, triton_dir: Path, info: CacheInfo) -> None:
    """Write the cache beside `folder` first and move it in whole, `info.json` last, so a start
    killed half-way leaves no folder that claims to be a cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    shutil.copytree(triton_dir, staging / "triton")
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is not None:
        (staging / "inductor.bin").write_bytes(artifacts[0])
    (staging / INFO).write_text(json.dumps(asdict(info), indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)


def for_start(setting: str | None, weights_dir: Path | None, device: torch.device,
              recompile: bool) -> KernelCache | None:
    """The cache a CUDA start with compiled layers uses: `setting` (a folder; 'none': no cache),
    else the one an artifact ships beside the rank's weights (read only), else none."""
    if setting == "none" or device.type != "cuda":
        return None
    running = CacheInfo.running(device)
    if setting:
        return KernelCache(Path(setting), running, recompile)
    shipped = weights_dir / SHIPPED if weights_dir is not None else None
    if shipped is not None and (shipped / INFO).is_file():
        return KernelCache(shipped, running, recompile, writable=False)
    return None
