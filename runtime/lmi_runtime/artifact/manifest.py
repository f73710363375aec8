"""The artifact manifest (`lmi-artifact.json` at the artifact root).

One artifact holds one model (`model`) prepared in one or more *profiles*: each a variant for
some hardware (target backend, TP/PP degree, dtype, quantization), with what it needs to run
(hardware kind, GPU arch or NeuronCore version, device count, memory per device), the toolchain
that built it, and its limits as one record (batch, queue, lengths and the planned KV-cache
budget), which `serving.properties` is generated from and the runtime reads. Every file is
listed with its size and sha256, grouped: `shared` (config, tokenizer: the root's files), and
each profile's own folder (`rank{N}/` for the profile at the root, `profiles/<name>/…` for the
others), so a runtime verifies and downloads only the profile it serves.

format_version 1 (one target, limits and serving options at the top) is read as a single
profile named `default` at the root.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmi_runtime.engine.kv_budget import KvCachePlan
from lmi_runtime.errors import ArtifactError

MANIFEST_NAME = "lmi-artifact.json"
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = frozenset({1, FORMAT_VERSION})  # what this build's readers understand
SHARED_GROUP = "shared"
PROFILES_DIR = "profiles"
DEFAULT_PROFILE = "default"
PROFILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def rank_group(rank: int, folder: str = "") -> str:
    """Name of the file group (and folder) holding one tensor-parallel rank's files."""
    return f"{folder}/rank{rank}" if folder else f"rank{rank}"


def profile_folder(name: str) -> str:
    return f"{PROFILES_DIR}/{name}"


class FileEntry(BaseModel):
    path: str  # POSIX path relative to the artifact root
    size: int
    sha256: str
    blocks: list[str] | None = None  # sha256 of each checksums.BLOCK of a larger file: checked on every core

    def wanted(self) -> tuple[str, list[str] | None]:
        """What `checksums.check_files` compares the file with."""
        return self.sha256, self.blocks


class ModelInfo(BaseModel):
    source: str
    revision: str | None = None
    architecture: str | None = None
    config_digest: str | None = None  # sha256 of the source config.json: "the same model" when adding a profile
    tokenizer_class: str | None = None  # what AutoTokenizer chose when it was built: a start imports only it


class QuantizationInfo(BaseModel):
    method: str = "none"
    settings: dict[str, Any] = Field(default_factory=dict)
    report: dict[str, Any] = Field(default_factory=dict)


class HardwareRequirement(BaseModel):
    """What a machine must offer to run a profile."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["any", "cpu", "cuda", "neuron"] = "any"
    arch: str | None = None  # GPU arch a compiled engine or kernel cache is tied to, e.g. "sm_90"
    neuron_core_version: str | None = None  # "v2" (inf2, trn1), "v3" (trn2)
    mode: str | None = None  # trtllm: checkpoint | engine
    device_count: int = Field(1, ge=1)  # GPUs or NeuronCores (TP × PP)
    memory_per_device: int | None = None  # bytes: weights + activation reserve + one full-length sequence's KV
    # for people: what it was built on
    gpu: str | None = None
    instance_type: str | None = None
    instance_family: str | None = None


class TargetInfo(BaseModel):
    backend: str  # torch | trtllm | neuron
    tp_degree: int = 1
    pp_degree: int = 1
    dtype: str = "auto"
    hardware: HardwareRequirement = Field(default_factory=HardwareRequirement)
    toolchain: dict[str, str] = Field(default_factory=dict)  # package -> version


class Limits(BaseModel):
    """The one record of a profile's limits: the plan writes it, serving.properties is generated
    from it, the runtime reads it (below the environment and CLI options)."""

    max_batch_size: int | None = None
    max_concurrent_requests: int | None = None
    max_input_len: int | None = None
    max_total_len: int | None = None
    max_num_tokens: int | None = None  # the planned tokens per forward step: lmi-serve's prompt budget per step
    kv_cache: KvCachePlan | None = None  # the planned budget; None: the runtime measures the device


class Profile(BaseModel):
    name: str = Field(pattern=PROFILE_NAME)
    folder: str = ""  # "" (the root: rank{N}/) or profiles/<name>
    target: TargetInfo
    quantization: QuantizationInfo = Field(default_factory=QuantizationInfo)
    limits: Limits = Field(default_factory=Limits)

    def groups(self) -> list[str]:
        """Its own file groups (the shared group aside)."""
        return [self.folder] if self.folder else []

    def owns(self, group: str) -> bool:
        if self.folder:
            return group == self.folder or group.startswith(self.folder + "/rank")
        return group.startswith("rank")

    def describe(self) -> str:
        quant = "" if self.quantization.method == "none" else f" {self.quantization.method}"
        tp = f" TP {self.target.tp_degree}" if self.target.tp_degree > 1 else ""
        return f"{self.target.backend} {self.target.dtype}{quant}{tp}"


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    model: ModelInfo
    profiles: dict[str, Profile]
    files: dict[str, list[FileEntry]] = Field(default_factory=dict)  # group -> entries

    @model_validator(mode="before")
    @classmethod
    def _one_target_is_a_default_profile(cls, data: Any) -> Any:
        """format_version 1 (and the single-target keyword form): one profile, `default`, at the root."""
        if not isinstance(data, dict) or "profiles" in data or "target" not in data:
            return data
        data = dict(data)
        limits = data.pop("limits", None) or {}
        serving = data.pop("serving", None) or {}
        if hasattr(limits, "model_dump"):
            limits = limits.model_dump()
        limits = {k: v for k, v in dict(limits).items() if k != "kv_cache" or v}  # v1 wrote {} for "none"
        if "job_queue_size" in serving and not limits.get("max_concurrent_requests"):
            limits["max_concurrent_requests"] = int(serving["job_queue_size"])
        profile = {"name": DEFAULT_PROFILE, "target": data.pop("target"),
                   "quantization": data.pop("quantization", None) or QuantizationInfo(), "limits": limits}
        data["format_version"] = FORMAT_VERSION
        data["profiles"] = {DEFAULT_PROFILE: profile}
        return data

    @model_validator(mode="after")
    def _profiles_are_consistent(self) -> "Manifest":
        if not self.profiles:
            raise ValueError("a manifest lists at least one profile")
        for key, profile in self.profiles.items():
            if key != profile.name:
                raise ValueError(f"profile {key!r} is named {profile.name!r}")
            if profile.folder not in ("", profile_folder(profile.name)):
                raise ValueError(f"profile {key!r} has folder {profile.folder!r}; expected '' or {profile_folder(key)!r}")
        if sum(1 for p in self.profiles.values() if not p.folder) > 1:
            raise ValueError("only one profile can sit at the artifact root")
        return self

    # A manifest narrowed to one profile (`only`) reads like a format 1 one.
    @property
    def profile(self) -> Profile:
        if len(self.profiles) != 1:
            raise ArtifactError(f"this artifact holds {len(self.profiles)} profiles ({', '.join(self.profiles)}); "
                                "choose one first", hint="pick one with LMI_PROFILE=<name> (lmi-serve --list-profiles)")
        return next(iter(self.profiles.values()))

    @property
    def target(self) -> TargetInfo:
        return self.profile.target

    @property
    def quantization(self) -> QuantizationInfo:
        return self.profile.quantization

    @property
    def limits(self) -> Limits:
        return self.profile.limits

    def only(self, name: str) -> "Manifest":
        """This manifest with one profile and the files that profile uses (shared + its own)."""
        if name not in self.profiles:
            raise ArtifactError(f"this artifact has no profile {name!r} (it has {', '.join(self.profiles)})",
                                hint="list them with lmi-serve --list-profiles ARTIFACT")
        profile = self.profiles[name]
        files = {g: list(e) for g, e in self.files.items() if g == SHARED_GROUP or profile.owns(g)}
        return self.model_copy(update={"profiles": {name: profile}, "files": files})

    def profile_files(self, name: str) -> list[FileEntry]:
        return self.only(name).all_files()

    def group_for_rank(self, rank: int) -> list[FileEntry]:
        """The files one rank of the (only) profile needs: the shared group, the profile's own
        top-level files, and its rank's."""
        profile = self.profile
        groups = [SHARED_GROUP, *profile.groups(), rank_group(rank, profile.folder)]
        return [entry for group in groups for entry in self.files.get(group, [])]

    def all_files(self) -> list[FileEntry]:
        return [entry for group in self.files.values() for entry in group]
