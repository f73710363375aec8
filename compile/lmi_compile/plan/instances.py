"""SageMaker/EC2 instance types, for planning a machine other than this one (`--for ml.g5.12xlarge`).

Figures are AWS's published ones (accelerator count and memory in GiB per accelerator, vCPUs).
GPU memory is the nominal size; the driver reports a little less (an A10G shows ~22.5 GiB of its
24), which the plan's default memory utilisation (0.9) leaves room for. Neuron memory is per
device (chip): Inferentia2 and Trainium carry 32 GiB for 2 NeuronCores-v2, i.e. 16 GiB per core.
"""

from __future__ import annotations

import difflib
from typing import NamedTuple

from lmi_runtime.errors import ConfigError
from lmi_runtime.hardware import GiB, Hardware


class Accelerator(NamedTuple):
    kind: str
    name: str
    memory_gib: int
    compute_capability: str | None = None
    cores_per_device: int = 1  # NeuronCores per Neuron device
    core_version: str | None = None


T4 = Accelerator("cuda", "NVIDIA T4", 16, "7.5")
A10G = Accelerator("cuda", "NVIDIA A10G", 24, "8.6")
L4 = Accelerator("cuda", "NVIDIA L4", 24, "8.9")
L40S = Accelerator("cuda", "NVIDIA L40S", 48, "8.9")
A100_40 = Accelerator("cuda", "NVIDIA A100-SXM4-40GB", 40, "8.0")
A100_80 = Accelerator("cuda", "NVIDIA A100-SXM4-80GB", 80, "8.0")
H100 = Accelerator("cuda", "NVIDIA H100 80GB HBM3", 80, "9.0")
INFERENTIA2 = Accelerator("neuron", "Inferentia2", 32, None, 2, "v2")
TRAINIUM = Accelerator("neuron", "Trainium", 32, None, 2, "v2")

# instance type (without "ml.") → (accelerator, devices, vCPUs)
INSTANCES: dict[str, tuple[Accelerator, int, int]] = {
    **{f"g4dn.{size}": (T4, n, cpus) for size, n, cpus in
       [("xlarge", 1, 4), ("2xlarge", 1, 8), ("4xlarge", 1, 16), ("8xlarge", 1, 32), ("16xlarge", 1, 64),
        ("12xlarge", 4, 48)]},
    **{f"{family}.{size}": (gpu, n, cpus) for family, gpu in (("g5", A10G), ("g6", L4), ("g6e", L40S))
       for size, n, cpus in
       [("xlarge", 1, 4), ("2xlarge", 1, 8), ("4xlarge", 1, 16), ("8xlarge", 1, 32), ("16xlarge", 1, 64),
        ("12xlarge", 4, 48), ("24xlarge", 4, 96), ("48xlarge", 8, 192)]},
    "p4d.24xlarge": (A100_40, 8, 96),
    "p4de.24xlarge": (A100_80, 8, 96),
    "p5.48xlarge": (H100, 8, 192),
    "inf2.xlarge": (INFERENTIA2, 1, 4),
    "inf2.8xlarge": (INFERENTIA2, 1, 32),
    "inf2.24xlarge": (INFERENTIA2, 6, 96),
    "inf2.48xlarge": (INFERENTIA2, 12, 192),
    "trn1.2xlarge": (TRAINIUM, 1, 8),
    "trn1.32xlarge": (TRAINIUM, 16, 128),
    "trn1n.32xlarge": (TRAINIUM, 16, 128),
}


def normalize(instance_type: str) -> str:
    name = instance_type.strip().lower()
    return name[3:] if name.startswith("ml.") else name


def instance_hardware(instance_type: str) -> Hardware:
    """The accelerators of a named instance type ("ml.g5.12xlarge" or "g5.12xlarge")."""
    name = normalize(instance_type)
    if name not in INSTANCES:
        close = difflib.get_close_matches(name, INSTANCES, n=3, cutoff=0.5)
        suggestion = f"did you mean {', '.join('ml.' + c for c in close)}? " if close else ""
        raise ConfigError(
            f"unknown instance type '{instance_type}'",
            hint=f"{suggestion}known families: {', '.join(sorted({n.split('.')[0] for n in INSTANCES}))} "
                 "(see lmi_compile.plan.instances.instance_types())",
        )
    accel, devices, cpus = INSTANCES[name]
    return Hardware(
        kind=accel.kind, count=devices, name=accel.name, memory_bytes=accel.memory_gib * GiB,
        compute_capability=accel.compute_capability, neuron_core_version=accel.core_version,
        cores=devices * accel.cores_per_device if accel.kind == "neuron" else cpus,
        instance_type=f"ml.{name}", source="instance table",
    )


def instance_types() -> list[str]:
    return [f"ml.{name}" for name in INSTANCES]


def gpu_families(min_compute_capability: float) -> dict[str, str]:
    """{"ml.g6": "L4", ...}: the instance families whose GPUs reach this compute capability."""
    return {f"ml.{name.split('.')[0]}": accel.name.removeprefix("NVIDIA ").split()[0]
            for name, (accel, _, _) in INSTANCES.items()
            if accel.kind == "cuda" and float(accel.compute_capability) >= min_compute_capability}
