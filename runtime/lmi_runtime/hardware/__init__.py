"""What a machine offers for serving, as probed here (named SageMaker instances are the
planner's: `lmi_compile.plan.instances`)."""

from lmi_runtime.hardware.model import GiB, Hardware
from lmi_runtime.hardware.probe import parse_neuron_ls, parse_nvidia_smi, probe

__all__ = ["GiB", "Hardware", "parse_neuron_ls", "parse_nvidia_smi", "probe"]
