"""Hardware: the instance table, the parsers of nvidia-smi / neuron-ls output, and this machine's probe."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from lmi_compile.plan.instances import instance_hardware, instance_types
from lmi_runtime.errors import ConfigError
from lmi_runtime.hardware import GiB, parse_neuron_ls, parse_nvidia_smi, probe


@pytest.mark.parametrize(
    ("instance", "kind", "units", "per_unit_gib", "arch"),
    [
        ("ml.g5.xlarge", "cuda", 1, 24, "sm_86"),
        ("ml.g5.12xlarge", "cuda", 4, 24, "sm_86"),
        ("ml.g5.48xlarge", "cuda", 8, 24, "sm_86"),
        ("ml.g6.12xlarge", "cuda", 4, 24, "sm_89"),
        ("ml.g6e.48xlarge", "cuda", 8, 48, "sm_89"),
        ("ml.p4d.24xlarge", "cuda", 8, 40, "sm_80"),
        ("ml.p4de.24xlarge", "cuda", 8, 80, "sm_80"),
        ("ml.p5.48xlarge", "cuda", 8, 80, "sm_90"),
        ("ml.inf2.xlarge", "neuron", 2, 16, "neuroncore-v2"),
        ("ml.inf2.24xlarge", "neuron", 12, 16, "neuroncore-v2"),
        ("ml.inf2.48xlarge", "neuron", 24, 16, "neuroncore-v2"),
        ("ml.trn1.32xlarge", "neuron", 32, 16, "neuroncore-v2"),
        ("g5.2xlarge", "cuda", 1, 24, "sm_86"),  # the "ml." prefix is optional
    ],
)
def test_instance_table(instance, kind, units, per_unit_gib, arch):
    hardware = instance_hardware(instance)
    assert (hardware.kind, hardware.parallel_units, hardware.arch) == (kind, units, arch)
    assert hardware.memory_per_unit == per_unit_gib * GiB
    assert hardware.instance_type.startswith("ml.")


def test_inf2_48xlarge_is_12_chips_of_32_gib():
    hardware = instance_hardware("ml.inf2.48xlarge")
    assert (hardware.count, hardware.cores, hardware.memory_bytes) == (12, 24, 32 * GiB)


def test_unknown_instance_lists_the_nearest_names():
    with pytest.raises(ConfigError, match="unknown instance type 'ml.g5.13xlarge'") as caught:
        instance_hardware("ml.g5.13xlarge")
    assert "ml.g5.12xlarge" in caught.value.hint and "ml.g5.16xlarge" in caught.value.hint
    assert "ml.p4d.24xlarge" in instance_types()


def test_parse_nvidia_smi_output():
    output = "NVIDIA A10G, 23028 MiB, 8.6\nNVIDIA A10G, 23028 MiB, 8.6\n"
    hardware = parse_nvidia_smi(output, host_cores=48)
    assert (hardware.kind, hardware.count, hardware.name) == ("cuda", 2, "NVIDIA A10G")
    assert (hardware.memory_bytes, hardware.compute_capability, hardware.arch) == (23028 << 20, "8.6", "sm_86")
    # captured from this project's H100 device machine with the probe's exact query
    h100 = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559 MiB, 9.0\n", host_cores=16)
    assert (h100.count, h100.memory_bytes, h100.arch) == (1, 81559 << 20, "sm_90")


def test_parse_neuron_ls_json():
    devices = [{"neuron_device": i, "bdf": f"{i:02x}:00.0", "connected_to": [], "nc_count": 2,
                "memory_size": 32 * GiB, "neuron_processes": []} for i in range(12)]
    hardware = parse_neuron_ls(json.dumps(devices), "v2")
    assert (hardware.kind, hardware.count, hardware.cores, hardware.parallel_units) == ("neuron", 12, 24, 24)
    assert hardware.memory_per_unit == 16 * GiB and hardware.arch == "neuroncore-v2"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or shutil.which("neuron-ls") is not None,
                    reason="this machine has an accelerator; the CPU fallback is not what it reports")
def test_probe_reports_this_cpu():
    hardware = probe()
    assert hardware.kind == "cpu" and hardware.parallel_units == 1
    assert hardware.cores == len(os.sched_getaffinity(0))
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < hardware.memory_bytes <= physical
