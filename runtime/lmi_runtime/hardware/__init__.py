"""What a machine offers for serving: probed here, or looked up for a named SageMaker instance."""

from lmi_runtime.hardware.instances import INSTANCES, instance_hardware, instance_types
from lmi_runtime.hardware.model import GiB, Hardware
from lmi_runtime.hardware.probe import parse_neuron_ls, parse_nvidia_smi, probe

__all__ = ["GiB", "INSTANCES", "Hardware", "instance_hardware", "instance_types", "parse_neuron_ls",
           "parse_nvidia_smi", "probe"]
