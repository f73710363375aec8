"""`Hardware`: the accelerators one machine offers, probed here or taken from the instance table."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, computed_field

GiB = 1 << 30


class Hardware(BaseModel):
    kind: Literal["cuda", "neuron", "cpu"]
    count: int = Field(ge=1)  # GPUs, Neuron devices (chips), or 1 for the CPU
    name: str  # "NVIDIA A10G", "Inferentia2", the CPU model
    memory_bytes: int = Field(ge=1)  # per GPU, per Neuron device, or the machine's RAM for the CPU
    compute_capability: str | None = None  # CUDA, e.g. "8.6"
    neuron_core_version: str | None = None  # Neuron, e.g. "v2" (inf2, trn1) or "v3" (trn2)
    cores: int = Field(ge=1)  # NeuronCores on Neuron; host CPU cores otherwise
    instance_type: str | None = None  # set when planning for a named SageMaker instance
    source: str  # how we know: torch.cuda, nvidia-smi, neuron-ls, os, instance table

    @computed_field  # type: ignore[prop-decorator]
    @property
    def parallel_units(self) -> int:
        """Ranks tensor parallelism can use: GPUs, NeuronCores, or one process on a CPU."""
        return {"cuda": self.count, "neuron": self.cores, "cpu": 1}[self.kind]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def memory_per_unit(self) -> int:
        """Memory one rank has: a GPU's, a NeuronCore's share of its device, or the RAM."""
        if self.kind == "neuron":
            return self.memory_bytes * self.count // self.cores
        return self.memory_bytes

    @computed_field  # type: ignore[prop-decorator]
    @property
    def arch(self) -> str:
        """What compiled artifacts are tied to: sm_86, neuroncore-v2, or cpu."""
        if self.kind == "cuda" and self.compute_capability:
            return "sm_" + self.compute_capability.replace(".", "")
        if self.kind == "neuron" and self.neuron_core_version:
            return f"neuroncore-{self.neuron_core_version}"
        return self.kind

    def describe(self) -> str:
        where = f"{self.instance_type}: " if self.instance_type else ""
        if self.kind == "cpu":
            return f"{where}CPU {self.name}, {self.cores} cores, {self.memory_bytes / GiB:.1f} GiB RAM"
        if self.kind == "neuron":
            return (f"{where}{self.count} × {self.name} ({self.cores} NeuronCores {self.neuron_core_version or ''}, "
                    f"{self.memory_per_unit / GiB:.0f} GiB each)")
        cc = f", sm {self.compute_capability}" if self.compute_capability else ""
        return f"{where}{self.count} × {self.name} ({self.memory_bytes / GiB:.1f} GiB{cc})"
