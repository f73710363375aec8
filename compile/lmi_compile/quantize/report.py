"""The quantization report, saved beside the quantized model as `lmi-quantization.json` so
the artifact manifest can carry it."""

from __future__ import annotations

import resource
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

REPORT_NAME = "lmi-quantization.json"


class TextUse(BaseModel):
    source: str
    licence: str
    samples: int  # calibration samples, or evaluation windows
    seq_len: int
    tokens: int

    @classmethod
    def of(cls, text, sequences: list[list[int]], seq_len: int) -> "TextUse":
        """How much of `text` (a corpus with `source` and `licence`) the token `sequences` used."""
        return cls(source=text.source, licence=text.licence, samples=len(sequences), seq_len=seq_len,
                   tokens=sum(map(len, sequences)))


class Perplexity(BaseModel):
    original: float
    quantized: float
    relative_increase: float  # (quantized - original) / original
    max_relative_increase: float | None  # the gate; None = report only
    passed: bool


class Memory(BaseModel):
    """Peaks of the whole process (CPU resident set) and of the CUDA allocator, when used."""

    cpu_peak_rss_mib: float
    cuda_peak_allocated_mib: float | None = None


class QuantReport(BaseModel):
    method: str
    settings: dict  # bits, group size, symmetric, act-order, dampening, alpha... as applied
    group_size_note: str | None = None  # how `auto` was resolved
    format: str  # how the weights are stored
    calibration: TextUse | None = None
    evaluation: TextUse | None = None
    perplexity: Perplexity | None = None
    wall_time_s: float = Field(description="the quantization itself, without evaluation")
    evaluation_time_s: float = 0.0
    memory: Memory
    versions: dict[str, str]
    device: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def save(self, folder: Path) -> Path:
        path = folder / REPORT_NAME
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> "QuantReport":
        return cls.model_validate_json((folder / REPORT_NAME).read_text())


def peak_memory(device: str) -> Memory:
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    cuda = None
    if device.startswith("cuda"):
        import torch

        cuda = torch.cuda.max_memory_allocated() / 2**20
    return Memory(cpu_peak_rss_mib=round(rss_kib / 1024, 1), cuda_peak_allocated_mib=cuda and round(cuda, 1))
