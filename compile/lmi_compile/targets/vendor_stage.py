"""The compile stage for the vendor targets (trtllm, neuron): check the plan up front, build
the target's files from the fetched model, and say what the manifest records about them.

Quantization for these targets is the vendor's own (ModelOpt for TensorRT-LLM; none on Neuron),
so llm-compressor's quantize stage is skipped and its perplexity gate does not apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lmi_compile.plan import Plan
from lmi_compile.recipe import Recipe
from lmi_compile.targets import neuron, trtllm
from lmi_runtime.artifact.manifest import QuantizationInfo, TargetInfo
from lmi_runtime.backends.vendor import require

Log = Callable[[str], None]


def check(recipe: Recipe, plan: Plan) -> None:
    """Unsupported combinations and a missing vendor library fail here, before any download."""
    if plan.backend == "trtllm":
        trtllm.check(plan)
    else:
        neuron.check(plan)
    needed = library(recipe, plan)
    if needed:
        require(*needed)


def library(recipe: Recipe, plan: Plan) -> tuple[str, str, str] | None:
    """(module, target, purpose) the build imports; None when it needs no vendor code."""
    if plan.backend == "neuron":
        return "optimum.neuron", "neuron", "the neuron target's export"
    if recipe.target.mode == "engine":
        return "tensorrt_llm", "trtllm", "the trtllm engine mode"
    if plan.quantization != "none":
        return "modelopt.torch.quantization", "trtllm", f"{plan.quantization} quantization for TensorRT-LLM"
    return None


def settings(recipe: Recipe, plan: Plan) -> dict:
    """Everything the vendor build depends on (the stage-cache key)."""
    quant = recipe.quantize
    return {"plan": plan.model_dump(mode="json", exclude={"reasons", "hardware"}), "arch": plan.hardware.arch,
            "mode": recipe.target.mode, "alpha": quant.alpha, "group_size": quant.group_size,
            "calibration": quant.calibration.model_dump(mode="json")}


def build(recipe: Recipe, plan: Plan, model_dir: Path, out: Path, log: Log) -> None:
    if plan.backend == "neuron":
        neuron.build(model_dir, out, plan, log)
        return
    quant = recipe.quantize

    def calibration(tokenizer) -> list[list[int]]:
        from lmi_compile.quantize import corpora

        texts = corpora.calibration_and_evaluation(quant.calibration.dataset, quant.quality.dataset)
        return corpora.calibration_samples(tokenizer, texts.calibration, quant.calibration.num_samples,
                                           quant.calibration.seq_len)

    trtllm.build(model_dir, out, plan, mode=recipe.target.mode, alpha=quant.alpha,
                 calibration=calibration, log=log)


def target_info(recipe: Recipe, plan: Plan) -> TargetInfo:
    if plan.backend == "trtllm":
        return trtllm.describe(plan, recipe.target.mode, trtllm.toolchain())
    return neuron.describe(plan, neuron.toolchain())


def quantization_info(recipe: Recipe, plan: Plan) -> QuantizationInfo:
    method = plan.quantization
    if method == "none":
        return QuantizationInfo(method="none")
    if recipe.target.mode == "engine":
        tool = {"tool": "tensorrt_llm examples",
                "script": Path(trtllm.checkpoint_command(plan, Path("MODEL"), Path("OUT"))[1]).name}
    else:
        tool = {"tool": "modelopt", "config": trtllm.MODELOPT_CONFIGS[method]}
    return QuantizationInfo(method=method, settings=tool,
                            report={"perplexity": None, "note": "vendor quantization: no perplexity gate was run"})
