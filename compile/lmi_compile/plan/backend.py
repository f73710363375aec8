"""Which backend serves a model on given hardware, by architecture (lists from LMI's documentation)."""

from __future__ import annotations

from lmi_compile.plan.instances import gpu_families
from lmi_compile.plan.modelspec import ModelSpec
from lmi_runtime.backends.llama_family import LLAMA_FAMILY
from lmi_runtime.errors import ConfigError
from lmi_runtime.hardware import Hardware

# model_type values of the architectures LMI's TensorRT-LLM container optimises (LMI 0.27:
# Aquila, Baichuan, BLOOM, ChatGLM, DBRX, DeciLM, Falcon, Gemma, GPT-2, GPT BigCode, GPT-J,
# GPT-NeoX, InternLM, LLaMA, Mistral, Mixtral, MPT, OPT, Phi, Qwen, Qwen2, Yi (a llama), T5).
TRTLLM_MODEL_TYPES = frozenset(
    {"aquila", "baichuan", "bloom", "chatglm", "dbrx", "deci", "falcon", "RefinedWebModel", "RefinedWeb",
     "gemma", "gpt2", "gpt_bigcode", "gptj", "gpt_neox", "internlm", "llama", "mistral", "mixtral", "mpt",
     "opt", "phi", "qwen", "qwen2", "yi", "t5"}
)
# optimum-neuron 0.4.5's text-generation models (its inference auto_models registry; no Mistral);
# lmi_compile.targets.neuron refuses the others at `run` (tests/vendors checks this list).
NEURON_MODEL_TYPES = frozenset({"granite", "llama", "llama4_text", "mixtral", "phi3", "qwen2", "qwen3", "qwen3_moe",
                                "smollm3"})
NEURON_QUANTIZATION = frozenset({"none", "static_int8"})
FP8_MIN_COMPUTE_CAPABILITY = 8.9  # FP8 tensor cores: Ada (sm_89), Hopper (sm_90) and later


def torch_path(spec: ModelSpec) -> str:
    if spec.model_type in LLAMA_FAMILY:  # else the transformers backend
        return "compact Llama-family implementation (paged KV cache)"
    return f"generic transformers implementation ({spec.model_type} has no compact implementation)"


def refuse_encoder_decoder(model_config: dict, requested: str) -> None:
    """Encoder-decoder models (T5, BART, …) have no target here; say so at plan time instead of
    planning them as a decoder: the torch runtime loads causal LMs only, and the trtllm target
    builds decoder-only checkpoints and engines (TensorRT-LLM's enc-dec path is another workflow)."""
    if not model_config.get("is_encoder_decoder"):
        return
    arch = (model_config.get("architectures") or [model_config.get("model_type", "this model")])[0]
    on = "any target" if requested == "auto" else f"the {requested} target"
    raise ConfigError(
        f"{arch} is an encoder-decoder model, which {on} of lmi-compile cannot serve: the torch runtime "
        "loads decoder-only (causal LM) checkpoints, the trtllm target builds decoder-only models, and "
        "optimum-neuron's text-generation export is decoder-only too",
        hint="serve encoder-decoder models such as Flan-T5 with LMI's lmi-dist container "
             "(option.rolling_batch=lmi-dist), or choose a decoder-only model")


def refuse_fp8_without_fp8_cores(hardware: Hardware) -> None:
    """fp8 weights and activations are multiplied on FP8 tensor cores, which GPUs before Ada lack;
    both GPU targets (trtllm, torch) refuse such a plan before anything is fetched. A CPU plan
    passes: lmi-serve dequantizes compressed-tensors checkpoints there."""
    cc = float(hardware.compute_capability or 0)
    if hardware.kind != "cuda" or cc >= FP8_MIN_COMPUTE_CAPABILITY:
        return
    families = ", ".join(f"{family} ({gpu})" for family, gpu in gpu_families(FP8_MIN_COMPUTE_CAPABILITY).items())
    raise ConfigError(f"fp8 needs FP8 tensor cores (sm_89+); {hardware.describe()} is {hardware.arch}",
                      hint=f"use awq, smoothquant or static_int8 on this GPU, or plan for an instance with FP8: {families}")


def choose_backend(requested: str, hardware: Hardware, spec: ModelSpec, quantization: str) -> tuple[str, str]:
    """(backend, reason). An explicit choice is checked against the hardware; `auto` decides."""
    arch = spec.architecture or spec.model_type
    if requested == "trtllm" and hardware.kind != "cuda":
        raise ConfigError(f"backend trtllm needs NVIDIA GPUs; this plan's hardware is {hardware.describe()}",
                          hint="use --for with a GPU instance (e.g. ml.g5.12xlarge), or target.backend: auto")
    if requested == "neuron" and hardware.kind != "neuron":
        raise ConfigError(f"backend neuron needs AWS Inferentia2/Trainium; this plan's hardware is {hardware.describe()}",
                          hint="use --for with an inf2/trn1 instance (e.g. ml.inf2.48xlarge), or target.backend: auto")
    if requested == "torch" and hardware.kind == "neuron":
        raise ConfigError("backend torch cannot use NeuronCores", hint="use target.backend: neuron (or auto) on inf2/trn1")

    if hardware.kind == "neuron" or requested == "neuron":
        if quantization not in NEURON_QUANTIZATION:
            raise ConfigError(f"quantization '{quantization}' is not available on Neuron",
                              hint=f"on Neuron use one of: {', '.join(sorted(NEURON_QUANTIZATION))}")
        caveat = "" if spec.model_type in NEURON_MODEL_TYPES else (
            f"; note: optimum-neuron 0.4.5 cannot export {arch} (it exports {', '.join(sorted(NEURON_MODEL_TYPES))}), "
            "so `lmi-compile run` will refuse it")
        return "neuron", f"Neuron hardware: compiled ahead of time with optimum-neuron{caveat}"
    if requested == "trtllm":
        note = "" if spec.model_type in TRTLLM_MODEL_TYPES else f"; note: {arch} is not in LMI's TensorRT-LLM list"
        return "trtllm", f"requested{note}"
    if requested == "torch":
        return "torch", f"requested: {torch_path(spec)}"
    if hardware.kind == "cpu":
        return "torch", f"no accelerator: {torch_path(spec)} on the CPU"
    if spec.model_type in TRTLLM_MODEL_TYPES:
        return "trtllm", f"NVIDIA GPU and {arch} is in TensorRT-LLM's supported set"
    return "torch", f"{arch} is not in TensorRT-LLM's supported set: {torch_path(spec)}"
