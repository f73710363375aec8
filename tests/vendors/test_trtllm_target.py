"""The trtllm target's arguments for the must-show deployments, exactly, and checked against
TensorRT-LLM's own definitions (field names of its LLM API classes, trtllm-build's and the
example scripts' argparse options and choices) as recorded in tests/vendors/data/interfaces.json.
The ModelOpt config names are checked against the nvidia-modelopt wheel (snapshot, or the wheel
itself with LMI_VENDOR_SITE)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vendor_argv import flags, value
from lmi_compile.targets import trtllm
from lmi_runtime.backends.trtllm_backend import sampling_kwargs
from lmi_runtime.engine.request import SamplingParams
from lmi_runtime.errors import ConfigError

M, C, E = Path("/model"), Path("/ckpt"), Path("/engine")


def check_options_against(interfaces: dict, options: dict, cls: str) -> None:
    trt = interfaces["tensorrt_llm"]
    assert set(options) <= set(trt[cls]), set(options) - set(trt[cls])
    assert set(options.get("kv_cache_config", {})) <= set(trt["KvCacheConfig"])
    assert set(options.get("cuda_graph_config", {})) <= set(trt["CudaGraphConfig"])


def check_build_against(interfaces: dict, argv: list[str]) -> None:
    trt = interfaces["tensorrt_llm"]
    assert argv[0] == "trtllm-build"
    assert set(flags(argv)) <= set(trt["trtllm_build_options"]), set(flags(argv)) - set(trt["trtllm_build_options"])
    assert value(argv, "--kv_cache_type") in trt["kv_cache_type_values"]
    for plugin in ("--gpt_attention_plugin", "--gemm_plugin"):
        assert value(argv, plugin) in trt["plugin_values"]["dtype"]
    for feature in ("--remove_input_padding", "--context_fmha", "--use_paged_context_fmha"):
        assert value(argv, feature) in trt["plugin_values"]["feature"]


def test_llama2_7b_awq_on_g5_12xlarge_tp4(plan_for, interfaces):
    plan = plan_for("llama-2-7b", "ml.g5.12xlarge", quantize={"method": "awq"},
                    target={"backend": "trtllm", "tp_degree": 4})
    trtllm.check(plan)
    options = trtllm.llm_api_options(plan)
    assert options == {
        "tensor_parallel_size": 4, "pipeline_parallel_size": 1, "dtype": "bfloat16", "max_batch_size": 256,
        "max_num_tokens": 16384, "max_input_len": 1024, "max_seq_len": 1536,
        "kv_cache_config": {"free_gpu_memory_fraction": 0.83},
        "cuda_graph_config": {"batch_sizes": [1, 2, 4, 8, 16, 32, 64, 128, 256], "enable_padding": False},
    }
    check_options_against(interfaces, options, "TorchLlmArgs")
    assert trtllm.modelopt_config(plan) == "INT4_AWQ_CFG" in interfaces["modelopt"]["quantization_configs"]

    convert = trtllm.checkpoint_command(plan, M, C)  # engine mode: AWQ only through quantize.py
    assert convert == ["python3", "/app/tensorrt_llm/examples/quantization/quantize.py", "--model_dir", "/model",
                       "--dtype", "bfloat16", "--output_dir", "/ckpt", "--tp_size", "4", "--pp_size", "1",
                       "--qformat", "int4_awq", "--awq_block_size", "128"]
    assert set(flags(convert)) <= set(interfaces["tensorrt_llm"]["quantize_py_options"])
    assert value(convert, "--qformat") in interfaces["tensorrt_llm"]["quantize_py_qformat_choices"]
    build = trtllm.build_command(plan, C, E)
    assert build == ["trtllm-build", "--checkpoint_dir", "/ckpt", "--output_dir", "/engine", "--max_batch_size",
                     "256", "--max_input_len", "1024", "--max_seq_len", "1536", "--max_num_tokens", "16384",
                     "--kv_cache_type", "paged", "--gpt_attention_plugin", "auto", "--gemm_plugin", "auto",
                     "--remove_input_padding", "enable", "--context_fmha", "enable", "--use_paged_context_fmha",
                     "enable", "--workers", "4"]
    check_build_against(interfaces, build)
    check_options_against(interfaces, trtllm.engine_runtime_options(plan), "TrtLlmArgs")


def test_llama2_13b_smoothquant_on_p4d(plan_for, interfaces):
    plan = plan_for("llama-2-13b", "ml.p4d.24xlarge", quantize={"method": "smoothquant", "alpha": 0.5},
                    target={"backend": "trtllm"})
    assert (plan.tp_degree, plan.dtype, plan.hardware.arch) == (8, "bfloat16", "sm_80")
    options = trtllm.llm_api_options(plan)
    assert options["tensor_parallel_size"] == 8 and options["kv_cache_config"] == {"free_gpu_memory_fraction": 0.85}
    check_options_against(interfaces, options, "TorchLlmArgs")
    assert trtllm.modelopt_config(plan) == "INT8_SMOOTHQUANT_CFG" in interfaces["modelopt"]["quantization_configs"]
    convert = trtllm.checkpoint_command(plan, M, C, alpha=0.5)
    assert convert == ["python3", "/app/tensorrt_llm/examples/models/core/llama/convert_checkpoint.py",
                       "--model_dir", "/model", "--dtype", "bfloat16", "--output_dir", "/ckpt", "--tp_size", "8",
                       "--pp_size", "1", "--smoothquant", "0.5", "--per_token", "--per_channel"]
    assert set(flags(convert)) <= set(interfaces["tensorrt_llm"]["convert_checkpoint_llama_options"])
    check_build_against(interfaces, trtllm.build_command(plan, C, E))
    assert value(trtllm.build_command(plan, C, E), "--workers") == "8"


def test_llama31_8b_fp8_on_p5_checkpoint_mode(plan_for, interfaces):
    plan = plan_for("llama-3.1-8b", "ml.p5.48xlarge", quantize={"method": "fp8"}, target={"backend": "trtllm"})
    trtllm.check(plan)
    assert (plan.quantization, plan.tp_degree, plan.hardware.arch) == ("fp8", 8, "sm_90")
    options = trtllm.llm_api_options(plan)
    assert options == {
        "tensor_parallel_size": 8, "pipeline_parallel_size": 1, "dtype": "bfloat16", "max_batch_size": 256,
        "max_num_tokens": 16384, "max_input_len": 1024, "max_seq_len": 1536,
        "kv_cache_config": {"free_gpu_memory_fraction": 0.87},
        "cuda_graph_config": {"batch_sizes": [1, 2, 4, 8, 16, 32, 64, 128, 256], "enable_padding": False},
    }
    check_options_against(interfaces, options, "TorchLlmArgs")
    assert trtllm.modelopt_config(plan) == "FP8_DEFAULT_CFG" in interfaces["modelopt"]["quantization_configs"]
    info = trtllm.describe(plan, "checkpoint", {"tensorrt_llm": "1.2.1"})
    assert info.hardware.model_dump(exclude_defaults=True) == {"kind": "cuda", "arch": "sm_90", "gpu": "NVIDIA H100 80GB HBM3", "mode": "checkpoint",
                             "instance_type": "ml.p5.48xlarge"}


def test_fp8_is_refused_on_gpus_without_fp8(plan_for):
    plan = plan_for("llama-2-7b", "ml.g5.12xlarge", quantize={"method": "fp8"}, target={"backend": "trtllm"})
    with pytest.raises(ConfigError, match=r"fp8 needs FP8 tensor cores \(sm_89\+\).*sm_86"):
        trtllm.check(plan)


def test_gptq_is_refused_for_trtllm(plan_for):
    plan = plan_for("llama-2-7b", "ml.g5.12xlarge", quantize={"method": "gptq"}, target={"backend": "trtllm"})
    with pytest.raises(ConfigError, match="ModelOpt, which has no GPTQ"):
        trtllm.check(plan)


@pytest.mark.parametrize("method, flags_expected", [("none", []), ("static_int8", ["--use_weight_only"])])
def test_engine_mode_convert_checkpoint_flags(plan_for, interfaces, method, flags_expected):
    plan = plan_for("llama-2-7b", "ml.g5.12xlarge", quantize={"method": method}, target={"backend": "trtllm"})
    argv = trtllm.checkpoint_command(plan, M, C)
    assert set(flags(argv)) <= set(interfaces["tensorrt_llm"]["convert_checkpoint_llama_options"])
    assert all(f in argv for f in flags_expected)


def test_cuda_graph_batch_sizes_end_at_the_batch():
    assert trtllm.cuda_graph_batch_sizes(1) == [1]
    assert trtllm.cuda_graph_batch_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


@pytest.mark.parametrize("params, expected", [
    (SamplingParams(), {"max_tokens": 20, "detokenize": False, "logprobs": 1, "top_k": 1}),
    (SamplingParams(do_sample=True, temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.1, seed=3),
     {"max_tokens": 20, "detokenize": False, "logprobs": 1, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
      "repetition_penalty": 1.1, "seed": 3}),
])
def test_sampling_params_map_to_trtllm_fields(interfaces, params, expected):
    kwargs = sampling_kwargs(params, 20)
    assert kwargs == expected
    assert set(kwargs) <= set(interfaces["tensorrt_llm"]["SamplingParams"])


def test_modelopt_wheel_has_the_configs_and_export(vendor_python):
    out = vendor_python(
        "import ast, zipfile, sys, pathlib, modelopt;"
        "src = pathlib.Path(modelopt.__file__).parent / 'torch/quantization/config.py';"
        "names = {t.id for n in ast.parse(src.read_text()).body if isinstance(n, ast.AnnAssign) for t in [n.target]};"
        "print(sorted(names & {'FP8_DEFAULT_CFG', 'INT4_AWQ_CFG', 'INT8_SMOOTHQUANT_CFG', 'INT8_WEIGHT_ONLY_CFG'}))")
    assert out.strip() == str(sorted(trtllm.MODELOPT_CONFIGS.values()))


class RecordingLLM:
    """Stands in for `tensorrt_llm.LLM.generate_async(prompt_ids, sampling_params=, streaming=True)`:
    a streaming result whose outputs[0].token_ids / .logprobs grow cumulatively, as TensorRT-LLM's
    RequestOutput does, two tokens per chunk; records requests and aborts."""

    def __init__(self, script: list[int]):
        self.script, self.requests, self.aborted = script, [], []

    def generate_async(self, prompt, sampling_params, streaming):
        from types import SimpleNamespace

        llm, n = self, sampling_params["max_tokens"]
        self.requests.append((prompt, sampling_params, streaming))

        class Result:
            finished = False

            def abort(self):
                llm.aborted.append(prompt)

            async def __aiter__(self):
                for end in range(2, n + 2, 2):
                    tokens = llm.script[:min(end, n)]
                    self.finished = end >= n
                    yield SimpleNamespace(finished=self.finished, outputs=[SimpleNamespace(
                        token_ids=tokens, logprobs=[{t: SimpleNamespace(logprob=-0.25)} for t in tokens])])
        return Result()


def test_trtllm_backend_streams_new_tokens_and_aborts_on_free():
    import time

    from lmi_runtime.engine.backend import ServedModel
    from lmi_runtime.backends.trtllm_backend import TrtllmBackend
    from lmi_runtime.engine.request import Sequence

    llm = RecordingLLM([11, 12, 13, 14, 15])
    backend = TrtllmBackend(llm, dict, None, ServedModel("m", 64, {2}, 100), max_seq_len=64)
    seq = Sequence([1, 2, 3], SamplingParams(), max_new_tokens=5)
    assert backend.reserve(seq) and not backend.reserve(Sequence([1] * 60, SamplingParams(), max_new_tokens=5))
    backend.start([seq])
    steps, deadline = [], time.monotonic() + 10
    while not (steps and steps[-1].done) and time.monotonic() < deadline:
        steps += backend.poll([seq])
    assert [(s.token, s.logprob, s.done) for s in steps] == [(11, -0.25, False), (12, -0.25, False),
                                                             (13, -0.25, False), (14, -0.25, False),
                                                             (15, -0.25, False), (None, 0.0, True)]
    assert llm.requests == [([1, 2, 3], sampling_kwargs(SamplingParams(), 5), True)]
    backend.free(seq)
    assert llm.aborted == []  # finished: nothing to abort

    running = Sequence([4], SamplingParams(), max_new_tokens=5)
    backend._results[running.seq_id] = llm.generate_async([4], {"max_tokens": 5}, True)  # still running
    backend.free(running)
    assert llm.aborted == [[4]]
