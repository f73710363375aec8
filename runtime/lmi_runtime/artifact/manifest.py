"""The artifact manifest (`lmi-artifact.json` at the artifact root).

It says what was built (model, quantization, target, limits, serving options), for which
hardware and toolchain, and lists every file with its size and sha256, grouped per rank,
so that a runtime can verify a download and refuse an artifact that does not fit.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

MANIFEST_NAME = "lmi-artifact.json"
FORMAT_VERSION = 1
READABLE_FORMAT_VERSIONS = frozenset({FORMAT_VERSION})  # what this build's readers understand
SHARED_GROUP = "shared"


def rank_group(rank: int) -> str:
    """Name of the file group (and folder) holding one tensor-parallel rank's files."""
    return f"rank{rank}"


class FileEntry(BaseModel):
    path: str  # POSIX path relative to the artifact root
    size: int
    sha256: str


class ModelInfo(BaseModel):
    source: str
    revision: str | None = None
    architecture: str | None = None
    config_digest: str | None = None


class QuantizationInfo(BaseModel):
    method: str = "none"
    settings: dict[str, Any] = Field(default_factory=dict)
    report: dict[str, Any] = Field(default_factory=dict)


class TargetInfo(BaseModel):
    backend: str  # torch | trtllm | neuron
    tp_degree: int = 1
    pp_degree: int = 1
    dtype: str = "auto"
    hardware: dict[str, Any] = Field(default_factory=dict)  # e.g. {"kind": "cuda", "arch": "sm_90"}
    toolchain: dict[str, str] = Field(default_factory=dict)  # package -> version


class Limits(BaseModel):
    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_total_len: int | None = None
    kv_cache: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    model: ModelInfo
    quantization: QuantizationInfo = Field(default_factory=QuantizationInfo)
    target: TargetInfo
    limits: Limits = Field(default_factory=Limits)
    serving: dict[str, str] = Field(default_factory=dict)  # option.* an endpoint needs
    files: dict[str, list[FileEntry]] = Field(default_factory=dict)  # group -> entries

    def group_for_rank(self, rank: int) -> list[FileEntry]:
        """The files one rank needs: the shared group plus its own."""
        return self.files.get(SHARED_GROUP, []) + self.files.get(rank_group(rank), [])

    def all_files(self) -> list[FileEntry]:
        return [entry for group in self.files.values() for entry in group]
