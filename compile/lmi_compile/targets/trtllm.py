"""The `trtllm` target: what TensorRT-LLM 1.2 needs to serve a planned model, as pure functions
of the Plan (tested against the vendor's own argument definitions), plus the build step that
runs them inside the Dockerfile.trtllm image.

Two modes (recorded in the manifest):
- checkpoint (default): a Hugging Face checkpoint that TensorRT-LLM's PyTorch backend loads
  directly — as fetched for fp16/bf16, or a ModelOpt export (`hf_quant_config.json`) for
  fp8 / awq (W4A16) / smoothquant (W8A8) / static_int8 (W8A16) — plus `llm_api_options.json`,
  the LLM API arguments the plan decided (JSON, so also valid YAML for
  `trtllm-serve --extra_llm_api_options`);
- engine (the 1.2 line only; removed from TensorRT-LLM main): quantize.py / convert_checkpoint.py
  split the checkpoint for TP×PP, then `trtllm-build` compiles one `rank{N}.engine` per rank with
  the planned limits, a paged KV cache and the attention/GEMM plugins.

Artifact layout: `checkpoint/` (or `engine/` + `tokenizer/`) and `llm_api_options.json`, all in
the shared file group: one TensorRT-LLM process loads every rank (it starts the workers itself).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from lmi_compile.plan import Plan
from lmi_compile.plan.backend import refuse_fp8_without_fp8_cores
from lmi_runtime.artifact.manifest import TargetInfo
from lmi_runtime.backends.vendor import require
from lmi_runtime.errors import ConfigError

TRTLLM_VERSION = "1.2.1"  # the release image Dockerfile.trtllm pins; engines are tied to it
OPTIONS_FILE = "llm_api_options.json"
CHECKPOINT_DIR, ENGINE_DIR, TOKENIZER_DIR = "checkpoint", "engine", "tokenizer"
# our quantize.method → ModelOpt config (modelopt.torch.quantization) for checkpoint mode
MODELOPT_CONFIGS = {"fp8": "FP8_DEFAULT_CFG", "awq": "INT4_AWQ_CFG", "smoothquant": "INT8_SMOOTHQUANT_CFG",
                    "static_int8": "INT8_WEIGHT_ONLY_CFG"}
# engine mode: examples/quantization/quantize.py --qformat for the methods only it implements
QUANTIZE_QFORMATS = {"fp8": "fp8", "awq": "int4_awq"}
EXAMPLES = os.environ.get("TRTLLM_EXAMPLES", "/app/tensorrt_llm/examples")  # in NVIDIA's release image
GRAPH_PADDING = False  # padding batches up to a captured size: TensorRT-LLM's default
Log = Callable[[str], None]


def check(plan: Plan) -> None:
    """Refuse what the target cannot build, before anything is fetched."""
    if plan.quantization == "gptq":
        raise ConfigError("the trtllm target quantizes with ModelOpt, which has no GPTQ",
                          hint="use quantize.method: awq (INT4 weights, group 128) for TensorRT-LLM")
    if plan.quantization == "fp8":
        refuse_fp8_without_fp8_cores(plan.hardware)


def cuda_graph_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to the planned batch, and the batch itself: decode steps at those sizes
    replay a captured graph (each costs up to ~200 MB, so not every size)."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size]
    return sizes if sizes[-1] == max_batch_size else sizes + [max_batch_size]


def kv_cache_fraction(plan: Plan) -> float:
    """TensorRT-LLM sizes its KV cache as a fraction of the GPU memory free after loading the
    weights; the plan's KV budget per device over that free memory, rounded down."""
    kv = plan.kv_cache
    free = kv.memory_per_device - kv.weights_per_device
    return max(0.05, min(0.95, int(100 * kv.bytes_per_device / free) / 100))


def llm_api_options(plan: Plan) -> dict[str, Any]:
    """Keyword arguments of `tensorrt_llm.LLM` (TorchLlmArgs) the plan decided."""
    return {
        "tensor_parallel_size": plan.tp_degree,
        "pipeline_parallel_size": plan.pp_degree,
        "dtype": plan.dtype,
        "max_batch_size": plan.max_batch_size,
        "max_num_tokens": plan.max_num_tokens,
        "max_input_len": plan.max_input_len,
        "max_seq_len": plan.max_total_len,
        "kv_cache_config": {"free_gpu_memory_fraction": kv_cache_fraction(plan)},
        "cuda_graph_config": {"batch_sizes": cuda_graph_batch_sizes(plan.max_batch_size),
                              "enable_padding": GRAPH_PADDING},
    }


def engine_runtime_options(plan: Plan) -> dict[str, Any]:
    """LLM arguments for a built engine: limits and parallelism live in the engine; only the
    runtime's KV-cache share and batch limit are passed (TrtLlmArgs)."""
    return {"max_batch_size": plan.max_batch_size,
            "kv_cache_config": {"free_gpu_memory_fraction": kv_cache_fraction(plan)}}


def modelopt_config(plan: Plan) -> str | None:
    return MODELOPT_CONFIGS.get(plan.quantization)


def checkpoint_command(plan: Plan, model_dir: Path, out: Path, *, alpha: float = 0.8) -> list[str]:
    """Engine mode, step 1: a TensorRT-LLM checkpoint split for TP×PP (quantized when asked)."""
    split = ["--tp_size", str(plan.tp_degree), "--pp_size", str(plan.pp_degree)]
    common = ["--model_dir", str(model_dir), "--dtype", plan.dtype, "--output_dir", str(out), *split]
    if plan.quantization in QUANTIZE_QFORMATS:
        extra = ["--awq_block_size", str(plan.weights.group_size)] if plan.quantization == "awq" else []
        return ["python3", f"{EXAMPLES}/quantization/quantize.py", *common,
                "--qformat", QUANTIZE_QFORMATS[plan.quantization], *extra]
    convert = ["python3", f"{EXAMPLES}/models/core/llama/convert_checkpoint.py", *common]
    if plan.quantization == "smoothquant":
        return convert + ["--smoothquant", str(alpha), "--per_token", "--per_channel"]
    if plan.quantization == "static_int8":
        return convert + ["--use_weight_only", "--weight_only_precision", "int8"]
    return convert


def build_command(plan: Plan, checkpoint: Path, out: Path) -> list[str]:
    """Engine mode, step 2: `trtllm-build` with the planned limits, one engine per rank."""
    return [
        "trtllm-build", "--checkpoint_dir", str(checkpoint), "--output_dir", str(out),
        "--max_batch_size", str(plan.max_batch_size), "--max_input_len", str(plan.max_input_len),
        "--max_seq_len", str(plan.max_total_len), "--max_num_tokens", str(plan.max_num_tokens),
        "--kv_cache_type", "paged", "--gpt_attention_plugin", "auto", "--gemm_plugin", "auto",
        "--remove_input_padding", "enable", "--context_fmha", "enable", "--use_paged_context_fmha", "enable",
        "--workers", str(plan.tp_degree * plan.pp_degree),
    ]


def describe(plan: Plan, mode: str, versions: dict[str, str]) -> TargetInfo:
    hw = plan.hardware
    return TargetInfo(
        backend="trtllm", tp_degree=plan.tp_degree, pp_degree=plan.pp_degree, dtype=plan.dtype,
        hardware={"kind": "cuda", "arch": hw.arch, "gpu": hw.name, "mode": mode,
                  **({"instance_type": hw.instance_type} if hw.instance_type else {})},
        toolchain=versions,
    )


def toolchain() -> dict[str, str]:
    """Versions that wrote the artifact: the TensorRT-LLM that will load it (installed, else the
    pinned image's) and, when present, ModelOpt / torch / transformers."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"tensorrt_llm": TRTLLM_VERSION}
    for name, dist in (("tensorrt_llm", "tensorrt-llm"), ("modelopt", "nvidia-modelopt"),
                       ("torch", "torch"), ("transformers", "transformers")):
        try:
            found[name] = version(dist).split("+")[0]
        except PackageNotFoundError:
            pass
    return found



def build(model_dir: Path, out: Path, plan: Plan, *, mode: str, alpha: float,
          calibration: Callable[[Any], list[list[int]]], log: Log) -> None:
    """Write the artifact's trtllm files into `out`. fp16/bf16 checkpoint mode needs nothing but
    a copy; every other case runs vendor code and needs the Dockerfile.trtllm image."""
    out.mkdir(parents=True, exist_ok=True)
    if mode == "checkpoint":
        target = out / CHECKPOINT_DIR
        if plan.quantization == "none":
            shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns(".*"))
        else:
            _modelopt_export(model_dir, target, plan, calibration, log)
        options = llm_api_options(plan)
    else:
        require("tensorrt_llm", "trtllm", "the trtllm engine mode")
        work = out.parent / "trtllm-checkpoint"
        for argv in (checkpoint_command(plan, model_dir, work, alpha=alpha),
                     build_command(plan, work, out / ENGINE_DIR)):
            log("trtllm: " + " ".join(argv))
            subprocess.run(argv, check=True)
        shutil.rmtree(work, ignore_errors=True)
        _copy_tokenizer(model_dir, out / TOKENIZER_DIR)
        options = engine_runtime_options(plan)
    (out / OPTIONS_FILE).write_text(json.dumps(options, indent=1) + "\n")


def _modelopt_export(model_dir: Path, target: Path, plan: Plan, calibration, log: Log) -> None:
    """ModelOpt post-training quantization on the GPU, exported as a Hugging Face checkpoint
    with hf_quant_config.json (what TensorRT-LLM's PyTorch backend loads)."""
    mtq = require("modelopt.torch.quantization", "trtllm", f"{plan.quantization} quantization for TensorRT-LLM")
    export = require("modelopt.torch.export", "trtllm", "the ModelOpt checkpoint export")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not torch.cuda.is_available():
        raise ConfigError("ModelOpt quantization for the trtllm target runs on an NVIDIA GPU; none is visible",
                          hint="run lmi-compile in the Dockerfile.trtllm image on a GPU instance")
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(plan.dtype, torch.float16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map="cuda")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    samples = calibration(tokenizer)
    config = getattr(mtq, MODELOPT_CONFIGS[plan.quantization])

    def forward_loop(m) -> None:
        for ids in samples:
            m(torch.tensor([ids], device="cuda"))

    log(f"trtllm: ModelOpt {MODELOPT_CONFIGS[plan.quantization]} over {len(samples)} calibration samples")
    with torch.inference_mode():
        mtq.quantize(model, config, forward_loop)
    export.export_hf_checkpoint(model, export_dir=target)
    tokenizer.save_pretrained(target)


def _copy_tokenizer(model_dir: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.is_file() and (item.name.startswith(("tokenizer", "special_tokens")) or item.name in
                               ("config.json", "generation_config.json")):
            shutil.copy2(item, target / item.name)
