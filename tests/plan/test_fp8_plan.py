"""fp8 for the torch target (llm-compressor): planned at 1 byte per weight on GPUs with FP8 tensor
cores and on a CPU (lmi-serve dequantizes there), refused before any download on older GPUs with
the instances that have them; the trtllm target keeps ModelOpt's fp8 behind the same rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmi_compile.plan import make_plan
from lmi_compile.plan.instances import instance_hardware
from lmi_compile.plan.modelspec import ModelSpec
from lmi_compile.recipe import Recipe
from lmi_compile.stages.plan import refuse_unbuildable
from lmi_runtime.errors import ConfigError
from lmi_runtime.hardware import GiB, Hardware

LLAMA = Path(__file__).parent / "data" / "llama-2-7b"
CONFIG = json.loads((LLAMA / "config.json").read_text())
CPU = Hardware(kind="cpu", count=1, name="test CPU", memory_bytes=24 * GiB, cores=2, source="test")


def _recipe(method: str = "fp8", backend: str = "torch") -> Recipe:
    return Recipe.model_validate({"source": {"uri": str(LLAMA)}, "quantize": {"method": method},
                                  "target": {"backend": backend}})


@pytest.mark.parametrize("instance", ["ml.g6.xlarge", "ml.g6e.xlarge", "ml.p5.48xlarge"])
def test_torch_fp8_plans_on_gpus_with_fp8_at_one_byte_per_weight(instance):
    plan = make_plan(_recipe(), CONFIG, instance_hardware(instance))
    refuse_unbuildable(_recipe(), plan)
    assert (plan.backend, plan.quantization) == ("torch", "fp8")
    spec = ModelSpec.from_config(CONFIG)
    assert plan.weights.bytes == spec.weight_bytes(plan.dtype, "static_int8")  # 1 byte + a scale per channel
    assert plan.weights.bytes < 0.55 * spec.weight_bytes(plan.dtype)
    assert "quantization fp8 (8-bit)" in next(r.reason for r in plan.reasons if r.decision == "weights")


def test_torch_fp8_on_a_cpu_is_evaluated_without_calibration():
    plan = make_plan(_recipe(), CONFIG, CPU)
    refuse_unbuildable(_recipe(), plan)
    chosen = {s.setting for s in plan.estimates.sizes}
    assert "quantize.quality.max_tokens" in chosen and "quantize.calibration.num_samples" not in chosen


@pytest.mark.parametrize("backend", ["torch", "trtllm"])
def test_fp8_on_a_gpu_without_fp8_is_refused_naming_the_instance_and_the_ones_to_use(backend):
    plan = make_plan(_recipe(backend=backend), CONFIG, instance_hardware("ml.g5.12xlarge"))
    with pytest.raises(ConfigError) as err:
        refuse_unbuildable(_recipe(backend=backend), plan)
    assert err.value.message.startswith("fp8 needs FP8 tensor cores (sm_89+); ml.g5.12xlarge: 4 × NVIDIA A10G")
    assert err.value.message.endswith("is sm_86")
    assert err.value.hint.endswith("ml.g6 (L4), ml.g6e (L40S), ml.p5 (H100)")
    assert "static_int8" in err.value.hint
