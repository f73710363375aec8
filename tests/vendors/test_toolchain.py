"""The toolchain check at load: an artifact built for another GPU architecture, TensorRT-LLM
version or Neuron core / compiler version is refused with a message naming both; harmless
differences are warnings, one per field."""

from __future__ import annotations


import pytest

from lmi_compile.plan.instances import instance_hardware
from lmi_runtime.artifact.manifest import Manifest, ModelInfo, TargetInfo
from lmi_runtime.artifact.toolchain import check_target
from lmi_runtime.errors import ArtifactError
from lmi_runtime.locate import inspect_folder

A10G, H100, INF2 = (instance_hardware(n) for n in ("ml.g5.12xlarge", "ml.p5.48xlarge", "ml.inf2.24xlarge"))


def trtllm_target(mode: str, arch: str = "sm_90", version: str = "1.2.1") -> TargetInfo:
    return TargetInfo(backend="trtllm", tp_degree=8, hardware={"kind": "cuda", "arch": arch, "mode": mode},
                      toolchain={"tensorrt_llm": version, "torch": "2.9.0", "transformers": "4.57.1"})


def neuron_target(core: str = "v2", cc: str = "2.21.33363.0") -> TargetInfo:
    return TargetInfo(backend="neuron", tp_degree=8,
                      hardware={"kind": "neuron", "arch": f"neuroncore-{core}", "neuron_core_version": core},
                      toolchain={"optimum-neuron": "0.4.5", "neuronx-cc": cc, "neuron-sdk": "2.26.1"})


def test_engine_for_another_gpu_arch_is_refused_naming_both():
    with pytest.raises(ArtifactError, match=r"built for GPU arch sm_90, but this machine has sm_86 \(NVIDIA A10G\)"):
        check_target(trtllm_target("engine"), A10G, {"tensorrt_llm": "1.2.1"})


def test_engine_for_another_trtllm_version_is_refused_naming_both():
    with pytest.raises(ArtifactError, match=r"built for tensorrt_llm 1.2.1, but this machine has tensorrt_llm 1.2.0"):
        check_target(trtllm_target("engine"), H100, {"tensorrt_llm": "1.2.0"})


def test_checkpoint_tolerates_a_patch_release_and_another_arch_with_warnings():
    warnings = check_target(trtllm_target("checkpoint"), A10G,
                            {"tensorrt_llm": "1.2.0", "torch": "2.9.1", "transformers": "4.57.1"})
    assert warnings == ["GPU arch: built for sm_90, running on sm_86 (a checkpoint; loads anyway)",
                        "tensorrt_llm: built for 1.2.1, running 1.2.0 (same release line)",
                        "torch: built with 2.9.0, running 2.9.1"]


def test_checkpoint_for_another_trtllm_line_is_refused():
    with pytest.raises(ArtifactError, match=r"tensorrt_llm 1.2.1, but this machine has tensorrt_llm 1.3.0"):
        check_target(trtllm_target("checkpoint"), H100, {"tensorrt_llm": "1.3.0"})


def test_fp8_checkpoint_on_a_gpu_without_fp8_is_refused():
    with pytest.raises(ArtifactError, match="sm_90.*sm_86"):
        check_target(trtllm_target("checkpoint"), A10G, {"tensorrt_llm": "1.2.1"}, quantization="fp8")


def test_neuron_artifact_for_another_core_version_is_refused_naming_both():
    with pytest.raises(ArtifactError, match=r"built for NeuronCore v3, but this machine has NeuronCore v2 \(Inferentia2\)"):
        check_target(neuron_target(core="v3"), INF2, {"optimum-neuron": "0.4.5", "neuronx-cc": "2.21.33363.0"})


def test_neuron_artifact_for_another_compiler_is_refused_naming_both():
    with pytest.raises(ArtifactError, match=r"neuronx-cc 2.21.33363.0, but this machine has neuronx-cc 2.22.1.0"):
        check_target(neuron_target(), INF2, {"optimum-neuron": "0.4.5", "neuronx-cc": "2.22.1.0"})


def test_vendor_artifact_on_the_wrong_accelerator_kind_is_refused():
    with pytest.raises(ArtifactError, match="built for neuron neuroncore-v2, but this machine has .*A10G"):
        check_target(neuron_target(), A10G, {})


def test_missing_vendor_library_names_the_image():
    with pytest.raises(ArtifactError, match="tensorrt_llm 1.2.1, which is not installed here") as err:
        check_target(trtllm_target("checkpoint"), H100, {})
    assert "Dockerfile.trtllm" in str(err.value)


def test_serving_a_trtllm_artifact_on_this_cpu_machine_is_refused(tmp_path):
    """Through locate.inspect_folder, as lmi-serve does: this machine has no GPU."""
    manifest = Manifest(model=ModelInfo(source="x"), target=trtllm_target("checkpoint"))
    (tmp_path / "lmi-artifact.json").write_text(manifest.model_dump_json())
    with pytest.raises(ArtifactError, match=r"built for cuda sm_90, but this machine has CPU"):
        inspect_folder(tmp_path)
