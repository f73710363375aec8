"""Probe this machine: NVIDIA GPUs (torch.cuda, else nvidia-smi), Neuron devices (neuron-ls),
else the CPU. Each probe that cannot answer (tool missing, driver error) falls through to the next."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from lmi_runtime.hardware.model import Hardware

log = logging.getLogger(__name__)
NVIDIA_SMI_QUERY = ["--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader"]
_UNITS = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}


def probe() -> Hardware:
    for attempt in (_probe_torch_cuda, _probe_nvidia_smi, _probe_neuron):
        try:
            found = attempt()
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as err:
            log.debug("%s failed: %s", attempt.__name__, err)
            continue
        if found is not None:
            return found
    return probe_cpu()


def _probe_torch_cuda() -> Hardware | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    props = torch.cuda.get_device_properties(0)
    return Hardware(kind="cuda", count=torch.cuda.device_count(), name=props.name,
                    memory_bytes=props.total_memory, compute_capability=f"{props.major}.{props.minor}",
                    cores=_cpu_count(), source="torch.cuda")


def _run(tool: str, *args: str) -> str | None:
    path = shutil.which(tool) or (f"/opt/aws/neuron/bin/{tool}" if os.path.exists(f"/opt/aws/neuron/bin/{tool}") else None)
    if path is None:
        return None
    done = subprocess.run([path, *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        log.debug("%s exited %s: %s", tool, done.returncode, done.stderr.strip())
        return None
    return done.stdout


def _probe_nvidia_smi() -> Hardware | None:
    output = _run("nvidia-smi", *NVIDIA_SMI_QUERY)
    return parse_nvidia_smi(output, _cpu_count()) if output else None


def parse_nvidia_smi(output: str, host_cores: int) -> Hardware | None:
    """Lines like `NVIDIA A10G, 23028 MiB, 8.6` (one per GPU; we plan for the first GPU's kind)."""
    rows = [[cell.strip() for cell in line.split(",")] for line in output.strip().splitlines() if line.strip()]
    if not rows:
        return None
    name, memory, capability = rows[0][:3]
    return Hardware(kind="cuda", count=len(rows), name=name, memory_bytes=parse_size(memory),
                    compute_capability=capability, cores=host_cores, source="nvidia-smi")


def _probe_neuron() -> Hardware | None:
    output = _run("neuron-ls", "--json-output")
    return parse_neuron_ls(output, _neuron_core_version()) if output else None


def parse_neuron_ls(output: str, core_version: str | None) -> Hardware | None:
    """neuron-ls --json-output: a list with one object per device (`nc_count`, `memory_size`)."""
    devices = json.loads(output)
    if not devices:
        return None
    cores = sum(int(device["nc_count"]) for device in devices)
    memory = int(devices[0]["memory_size"])
    name = {"v3": "Trainium2"}.get(core_version or "", "Inferentia2/Trainium")
    return Hardware(kind="neuron", count=len(devices), name=name, memory_bytes=memory, cores=cores,
                    neuron_core_version=core_version, source="neuron-ls")


def _neuron_core_version() -> str | None:
    """inf2/trn1 carry NeuronCore-v2, trn2 NeuronCore-v3; the instance type says which."""
    try:
        with open("/sys/devices/virtual/dmi/id/product_name") as handle:
            product = handle.read().strip()
    except OSError:
        return None
    if product.startswith("trn2"):
        return "v3"
    return "v2" if product.startswith(("inf2", "trn1")) else None


def probe_cpu() -> Hardware:
    return Hardware(kind="cpu", count=1, name=_cpu_name(), memory_bytes=_memory_bytes(), cores=_cpu_count(),
                    source="os")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _memory_bytes() -> int:
    """Physical RAM, or the container's cgroup limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def parse_size(text: str) -> int:
    """'23028 MiB' → bytes (nvidia-smi prints MiB)."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    number, unit = float(match.group(1)), (match.group(2) or "MiB").lower()
    return int(number * _UNITS[unit])
