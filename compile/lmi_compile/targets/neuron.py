"""The `neuron` target: optimum-neuron 0.4.5 (Neuron SDK 2.26) ahead-of-time export for
Inferentia2 / Trainium, as a pure function of the Plan, plus the build step that runs it inside
the Dockerfile.neuron image.

What optimum-neuron 0.4.5 actually takes (read from its wheel; tests/vendors checks it):
- `optimum-cli export neuron --model M --batch_size B --sequence_length S
  --tensor_parallel_size TP --instance_type inf2|trn1|trn2 OUT`, with continuous batching
  compiled in whenever B > 1 (its llama `_get_neuron_config`);
- decoder LLMs are exported by its NxD model classes (granite, llama, llama4_text, mixtral,
  phi3, qwen2, qwen3, qwen3_moe, smollm3); Mistral is not one of them;
- the compute dtype is the checkpoint's `config.json` dtype: the decoder path drops
  `--auto_cast_type`, so the plan's dtype is applied by writing it into the config we export;
- there is no int8 weight quantization for decoders, so `static_int8` is refused.

Artifact layout: `neuron/` (config.json, neuron_config.json, model.pt = the NEFFs,
checkpoint/weights/tp{rank}_sharded_checkpoint.safetensors, tokenizer) and `neuron-cache/`
(the compile cache, `neuronxcc-<ver>/MODULE_<hash>/…`), both shared: one process drives every
NeuronCore.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from lmi_compile.plan import Plan
from lmi_compile.plan.backend import NEURON_MODEL_TYPES
from lmi_runtime.artifact.manifest import TargetInfo
from lmi_runtime.backends.vendor import require
from lmi_runtime.errors import ConfigError

OPTIMUM_NEURON_VERSION = "0.4.5"
NEURON_SDK_VERSION = "2.26.1"
NEURONX_CC_VERSION = "2.21.33363.0"  # the compiler optimum-neuron 0.4.5's [neuronx] extra pins
EXPORT_DIR, CACHE_DIR = "neuron", "neuron-cache"
# optimum-neuron 0.4.5's text-generation model classes (optimum/neuron/models/inference/auto_models.py)
SUPPORTED_MODEL_TYPES = tuple(sorted(NEURON_MODEL_TYPES))
# --instance_type choices: the compilation target, by NeuronCore generation
INSTANCE_FAMILIES = {"inf2": "inf2", "trn1": "trn1", "trn1n": "trn1n", "trn2": "trn2"}
DTYPES = {"bfloat16": "bfloat16", "float16": "float16"}


def check(plan: Plan) -> None:
    """Refuse what optimum-neuron 0.4.5 cannot export, before anything is fetched."""
    if plan.quantization != "none":
        raise ConfigError(
            f"quantization '{plan.quantization}' is not available with optimum-neuron {OPTIMUM_NEURON_VERSION}: "
            "its decoder export has no int8 weight option",
            hint="use quantize.method: none on Neuron (bf16/fp16 weights)",
        )
    if plan.model.model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"optimum-neuron {OPTIMUM_NEURON_VERSION} has no Neuron implementation of '{plan.model.model_type}' "
            f"(it exports: {', '.join(SUPPORTED_MODEL_TYPES)})",
            hint="serve this model on a GPU instance (target torch or trtllm), or pick a supported architecture",
        )
    if plan.pp_degree != 1:
        raise ConfigError("optimum-neuron does not support pipeline parallelism", hint="set target.pp_degree: 1")


def instance_family(plan: Plan) -> str:
    """--instance_type: the family of the planned instance (ml.inf2.24xlarge → inf2)."""
    name = (plan.hardware.instance_type or "").removeprefix("ml.").split(".")[0]
    if name in INSTANCE_FAMILIES:
        return INSTANCE_FAMILIES[name]
    return "trn2" if plan.hardware.neuron_core_version == "v3" else "inf2"


def export_command(plan: Plan, model_dir: Path, out: Path) -> list[str]:
    """`optimum-cli export neuron` with TP = NeuronCores used, batch = max rolling batch,
    sequence length = n_positions."""
    return [
        "optimum-cli", "export", "neuron", "--model", str(model_dir), "--task", "text-generation",
        "--batch_size", str(plan.max_batch_size), "--sequence_length", str(plan.max_total_len),
        "--tensor_parallel_size", str(plan.tp_degree), "--instance_type", instance_family(plan), str(out),
    ]


def export_env(cache: Path) -> dict[str, str]:
    """The compile cache goes inside the artifact, beside the pre-sharded weights."""
    return {"NEURON_COMPILE_CACHE_URL": str(cache)}


def describe(plan: Plan, versions: dict[str, str]) -> TargetInfo:
    hw = plan.hardware
    return TargetInfo(
        backend="neuron", tp_degree=plan.tp_degree, pp_degree=1, dtype=plan.dtype,
        hardware={"kind": "neuron", "arch": hw.arch, "neuron_core_version": hw.neuron_core_version,
                  "instance_family": instance_family(plan),
                  **({"instance_type": hw.instance_type} if hw.instance_type else {})},
        toolchain=versions,
    )


def toolchain() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"optimum-neuron": OPTIMUM_NEURON_VERSION, "neuron-sdk": NEURON_SDK_VERSION,
             "neuronx-cc": NEURONX_CC_VERSION}
    for dist in ("optimum-neuron", "neuronx-cc", "torch-neuronx", "transformers"):
        try:
            found[dist] = version(dist).split("+")[0]
        except PackageNotFoundError:
            pass
    return found


def build(model_dir: Path, out: Path, plan: Plan, log: Callable[[str], None]) -> None:
    require("optimum.neuron", "neuron", "the neuron target's export")
    source = out.parent / "neuron-source"
    shutil.copytree(model_dir, source, ignore=shutil.ignore_patterns(".*"))
    config = json.loads((source / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = DTYPES[plan.dtype]  # the decoder export computes in this dtype
    (source / "config.json").write_text(json.dumps(config, indent=1))
    argv = export_command(plan, source, out / EXPORT_DIR)
    log("neuron: " + " ".join(argv))
    subprocess.run(argv, check=True, env={**os.environ, **export_env(out / CACHE_DIR)})
    shutil.rmtree(source, ignore_errors=True)
    for lock in (out / CACHE_DIR).rglob("*.lock"):  # a stale lock would make the runtime wait
        lock.unlink()
    failed = sorted(p.relative_to(out) for p in (out / CACHE_DIR).rglob("*.log"))
    if failed:  # a failed entry blocks recompiling until cleaned; never ship one
        raise ConfigError(f"the Neuron compile cache holds failed compilations: {', '.join(map(str, failed))}",
                          hint="read the .log files, fix the cause, and run again with a clean stage cache")
