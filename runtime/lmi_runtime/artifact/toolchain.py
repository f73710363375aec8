"""Does this machine run what an artifact was built for? The manifest's `target.hardware` and
`target.toolchain` against the running ones, field by field, each with its own policy:

| target | field                         | policy | why |
|--------|-------------------------------|--------|-----|
| all    | hardware kind (cuda / neuron) | refuse | the files cannot run on another kind of accelerator |
| torch  | GPU arch, when recorded       | refuse | a kernel cache is compiled for one SM version |
| torch  | weights_layout (pre-packed quantized weights) | refuse unless this runtime's | the tensors' meaning is the layout version's |
| trtllm | GPU arch, engine mode         | refuse | engines are compiled for one SM version |
| trtllm | GPU arch, checkpoint mode     | warn   | a checkpoint loads on any GPU TensorRT-LLM supports (FP8 needs sm_89+, refused then) |
| trtllm | tensorrt_llm, engine mode     | refuse | engines load only in the exact version that built them |
| trtllm | tensorrt_llm, checkpoint mode | refuse if major.minor differ, else warn | the LLM API options were checked against that line |
| neuron | NeuronCore version (v2 / v3)  | refuse | NEFFs are compiled for one core generation |
| neuron | neuronx-cc (the SDK's compiler) | refuse | NEFFs and the compile cache are keyed by the compiler version (`neuron-sdk` is recorded for people) |
| neuron | optimum-neuron                | refuse | its neuron_config.json / model.pt layout changes between releases |
| all    | torch, transformers, modelopt, torch-neuronx | warn | checkpoint formats are stable across them |
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from lmi_runtime.artifact.manifest import TargetInfo
from lmi_runtime.backends.vendor import IMAGES
from lmi_runtime.errors import ArtifactError
from lmi_runtime.hardware import Hardware
from lmi_runtime.quant import prepacked

log = logging.getLogger("lmi_runtime.toolchain")
DISTRIBUTIONS = {"tensorrt_llm": "tensorrt-llm", "modelopt": "nvidia-modelopt", "torch": "torch",
                 "transformers": "transformers", "optimum-neuron": "optimum-neuron", "neuronx-cc": "neuronx-cc",
                 "torch-neuronx": "torch-neuronx"}
VENDOR_KINDS = {"trtllm": "cuda", "neuron": "neuron"}
EXACT = {"neuron": ("neuronx-cc", "optimum-neuron")}
FP8_MIN_SM = 89


def installed_versions(names) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(DISTRIBUTIONS.get(name, name)).split("+")[0]
        except PackageNotFoundError:
            pass
    return found


def check_target(target: TargetInfo, hardware: Hardware, running: dict[str, str],
                 quantization: str = "none") -> list[str]:
    """Raise ArtifactError on a mismatch that cannot work; return one warning per harmless one."""
    wanted_hw, built = target.hardware, target.toolchain
    kind = wanted_hw.kind
    needed = VENDOR_KINDS.get(target.backend)
    if needed and kind != needed:
        raise ArtifactError(
            f"this artifact was compiled for the '{target.backend}' backend but its manifest records "
            f"{kind} hardware instead of {needed}",
            hint=f"compile it again with lmi-compile run (target {target.backend}) in the {IMAGES[target.backend]} image")
    if kind != "any" and hardware.kind != kind:
        _refuse(target, f"{kind} {wanted_hw.arch or ''}".strip(), hardware.describe(), "hardware")
    if not needed and wanted_hw.arch and wanted_hw.arch != hardware.arch:  # torch: a kernel cache for one GPU
        _refuse(target, f"{kind} {wanted_hw.arch}", hardware.describe(), "GPU architecture")
    if "weights_layout" in built:
        prepacked.check_layout(built["weights_layout"], "this artifact", ArtifactError)
    warnings: list[str] = []
    if target.backend == "trtllm":
        engine = wanted_hw.mode == "engine"
        arch = wanted_hw.arch
        if arch and arch != hardware.arch:
            if engine or (quantization == "fp8" and _sm(hardware.arch) < FP8_MIN_SM):
                _refuse(target, f"GPU arch {arch}", f"{hardware.arch} ({hardware.name})", "GPU architecture")
            warnings.append(f"GPU arch: built for {arch}, running on {hardware.arch} (a checkpoint; loads anyway)")
        warnings += _compare(target, "tensorrt_llm", built, running, exact=engine, same_line=True)
    elif target.backend == "neuron":
        core = wanted_hw.neuron_core_version
        if core and core != hardware.neuron_core_version:
            _refuse(target, f"NeuronCore {core}", f"NeuronCore {hardware.neuron_core_version} ({hardware.name})",
                    "NeuronCore version")
        for name in EXACT["neuron"]:
            warnings += _compare(target, name, built, running, exact=True)
    for name in ("torch", "transformers", "modelopt", "torch-neuronx"):
        if name in built and name in running and built[name] != running[name]:
            warnings.append(f"{name}: built with {built[name]}, running {running[name]}")
    for warning in warnings:
        log.warning("artifact/runtime difference: %s", warning)
    return warnings


def _compare(target: TargetInfo, name: str, built: dict, running: dict, *, exact: bool,
             same_line: bool = False) -> list[str]:
    if name not in built:
        return []
    if name not in running:
        raise ArtifactError(
            f"this {target.backend} artifact was built for {name} {built[name]}, which is not installed here",
            hint=f"serve it from the image built from {IMAGES[target.backend]}")
    want, have = built[name], running[name]
    if want == have:
        return []
    if exact or (same_line and want.split(".")[:2] != have.split(".")[:2]):
        _refuse(target, f"{name} {want}", f"{name} {have}", name)
    return [f"{name}: built for {want}, running {have} (same release line)"]


def _refuse(target: TargetInfo, built: str, here: str, what: str) -> None:
    raise ArtifactError(
        f"this {target.backend} artifact was built for {built}, but this machine has {here}",
        hint=f"compile it again for this {what} (lmi-compile run in the {IMAGES.get(target.backend, 'matching')} "
             "image on this instance type), or serve it where it was built for",
    )


def _sm(arch: str) -> int:
    return int(arch.removeprefix("sm_")) if arch.startswith("sm_") and arch[3:].isdigit() else 0

