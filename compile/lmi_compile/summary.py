"""What a run did, for the person or the CI job that started it: where the artifact went, how
big it is, what quantization cost in quality, and how long each stage took (or that the stage
cache held it). `lmi-compile run` prints it as text, or as JSON with `--json`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from lmi_runtime.progress import human_bytes, human_seconds


class StageTime(BaseModel):
    stage: str
    seconds: float
    cached: bool = False


class StagePreview(BaseModel):
    """A stage as `run --dry-run` sees it: its output already cached, or to be produced."""

    stage: str
    state: Literal["done", "cached", "runs"]
    detail: str = ""
    key: str | None = None  # the cache entry (first 12 hex digits) when cached


class RunSummary(BaseModel):
    artifact: str
    manifest_sha256: str
    profile: str  # the profile this run built (the artifact may hold others)
    backend: str
    tp_degree: int
    dtype: str
    quantization: str
    files: int
    bytes: int
    files_sent: int
    files_unchanged: int
    bytes_sent: int
    quality: dict | None  # the quality report's perplexity (original, quantized, increase, limit, passed)
    stages: list[StageTime]
    total_seconds: float

    def text(self) -> str:
        lines = [f"published {self.artifact} (manifest sha256 {self.manifest_sha256[:16]}…, "
                 f"{self.files_sent} files sent, {self.files_unchanged} unchanged)",
                 f"profile   {self.profile}: {self.backend}, TP {self.tp_degree}, {self.dtype}, quantization {self.quantization}",
                 f"size      {self.files} files, {human_bytes(self.bytes)}; sent {human_bytes(self.bytes_sent)}"]
        ppl = self.quality
        if ppl:
            limit = "no limit" if ppl.get("max_relative_increase") is None else f"limit {ppl['max_relative_increase']:+.2%}"
            lines.append(f"quality   perplexity {ppl['original']:.3f} → {ppl['quantized']:.3f} "
                         f"({ppl['relative_increase']:+.2%}, {limit})")
        elif self.quantization == "none":
            lines.append("quality   unchanged weights (no quantization), no check needed")
        else:
            lines.append(f"quality   no perplexity check on the {self.backend} target (its vendor quantizes)")
        stages = ", ".join(f"{s.stage} {'cached' if s.cached else human_seconds(s.seconds)}" for s in self.stages)
        lines.append(f"stages    {stages}; total {human_seconds(self.total_seconds)}")
        return "\n".join(lines)


def preview_text(previews: list[StagePreview]) -> str:
    width = max(len(p.stage) for p in previews)
    shown = {"done": "done", "cached": "cached", "runs": "would run"}
    return "\n".join(f"{p.stage:<{width}}  {shown[p.state]:<9}  {p.detail}" + (f" (cache {p.key})" if p.key else "")
                     for p in previews)
