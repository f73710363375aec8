"""`lmi-compile plan` end to end (a subprocess, as users run it), checked against hand arithmetic.

The KV-cache formula (runtime/lmi_runtime/engine/kv_budget.py, which the planner and the runtime share), per device:
    usable   = memory × 0.9
    weights  = parameters × dtype_bytes / tp
    reserve  = 1 GiB + max_num_tokens × (2·hidden + 2·intermediate·experts_per_token / tp) × dtype_bytes
               + max_batch_size × vocab × 4
    per token = 2 × layers × max(1, kv_heads / tp) × head_dim × dtype_bytes
    tokens   = (usable − weights − reserve) // per token
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
GiB = 1 << 30
LMI_NAMES = ("HF_", "OPTION_", "TENSOR_PARALLEL_DEGREE", "MAX_BATCH_SIZE", "MAX_CONCURRENT_REQUESTS", "SM_NUM_GPUS",
             "MAX_BATCH_PREFILL_TOKENS", "CUDA_MEMORY_FRACTION", "ENABLE_CUDA_GRAPHS")


@pytest.fixture()
def run_plan(cli_env, python, tmp_path):
    clean = {k: v for k, v in cli_env.items() if not k.startswith(LMI_NAMES) or k == "HF_HOME"}  # keep the test cache
    clean["HF_HUB_OFFLINE"] = "1"  # no test touches the network

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "lmi_compile", "plan", *args], env={**clean, **env},
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return run


def said(done: subprocess.CompletedProcess) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(done.stderr.split())


def plan_json(run_plan, *args: str, **env: str) -> dict:
    done = run_plan(*args, "--json", **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_llama_2_7b_on_g5_12xlarge(run_plan):
    plan = plan_json(run_plan, "--for", "ml.g5.12xlarge", HF_MODEL_ID=str(DATA / "llama-2-7b"))
    assert (plan["backend"], plan["tp_degree"], plan["dtype"]) == ("trtllm", 4, "bfloat16")
    assert (plan["max_input_len"], plan["max_output_len"], plan["max_total_len"]) == (1024, 512, 1536)
    # 4 × A10G 24 GiB; Llama-2-7B 6,738,415,616 parameters in bf16 split over 4 GPUs
    usable = int(24 * GiB * 0.9)                                    # 23,192,823,398
    weights = 6_738_415_616 * 2 // 4                                # 3,369,207,808
    reserve = GiB + 16384 * (2 * 4096 + 2 * 11008 // 4) * 2 + 256 * 32000 * 4   # 1,555,300,352
    per_token = 2 * 32 * (32 // 4) * 128 * 2                        # 131,072
    assert plan["weights"]["bytes"] == 13_476_831_232
    assert plan["weights"]["bytes_per_device"] == weights
    assert plan["kv_cache"]["activation_reserve"] == reserve
    assert plan["kv_cache"]["bytes_per_device"] == usable - weights - reserve == 18_268_315_238
    assert plan["kv_cache"]["bytes_per_token"] == per_token
    assert plan["kv_cache"]["tokens"] == (usable - weights - reserve) // per_token == 139_376
    assert plan["min_tp_degree"] == 1  # 12.6 GiB of weights fit one A10G too
    decisions = {r["decision"] for r in plan["reasons"]}
    assert {"hardware", "backend", "dtype", "tp_degree", "kv_cache", "max_batch_size"} <= decisions
    assert all(r["reason"] for r in plan["reasons"])


def test_mixtral_8x7b_on_p4d_24xlarge(run_plan):
    plan = plan_json(run_plan, "--for", "ml.p4d.24xlarge", HF_MODEL_ID=str(DATA / "mixtral-8x7b"))
    assert (plan["backend"], plan["tp_degree"], plan["dtype"]) == ("trtllm", 8, "bfloat16")
    usable = int(40 * GiB * 0.9)
    weights = 46_702_792_704 * 2 // 8                                # all 8 experts are resident
    reserve = GiB + 16384 * (2 * 4096 + 2 * 14336 * 2 // 8) * 2 + 256 * 32000 * 4   # 2 experts per token
    per_token = 2 * 32 * (8 // 8) * 128 * 2                         # 8 KV heads over 8 GPUs: 1 each
    assert plan["kv_cache"]["tokens"] == (usable - weights - reserve) // per_token == 1_548_411
    assert plan["min_tp_degree"] == 4  # 87 GiB of weights need at least 4 × 40 GiB


def test_falcon_7b_on_g5_2xlarge(run_plan):
    plan = plan_json(run_plan, "--for", "ml.g5.2xlarge", HF_MODEL_ID=str(DATA / "falcon-7b"))
    assert (plan["backend"], plan["tp_degree"], plan["dtype"]) == ("trtllm", 1, "bfloat16")
    assert plan["model"]["num_kv_heads"] == 1  # multi-query attention
    usable = int(24 * GiB * 0.9)
    weights = 6_921_720_704 * 2
    reserve = GiB + 16384 * (2 * 4544 + 2 * 18176) * 2 + 256 * 65024 * 4
    per_token = 2 * 32 * 1 * 64 * 2                                 # one 64-wide KV head per layer
    assert plan["kv_cache"]["tokens"] == (usable - weights - reserve) // per_token == 820_321


def test_llama_2_7b_on_inf2_48xlarge(run_plan):
    plan = plan_json(run_plan, "--for", "ml.inf2.48xlarge", HF_MODEL_ID=str(DATA / "llama-2-7b"))
    # 24 NeuronCores; 32 heads allow at most 16 of them
    assert (plan["backend"], plan["tp_degree"], plan["dtype"]) == ("neuron", 16, "float16")
    assert plan["max_total_len"] == 4096  # n_positions = min(4096, 4096)
    usable = int(16 * GiB * 0.9)                                    # 16 GiB per NeuronCore
    weights = 6_738_415_616 * 2 // 16
    reserve = GiB + 4096 * (2 * 4096 + 2 * 11008 // 16) * 2 + 256 * 32000 * 4   # one 4096-token prompt per step
    per_token = 2 * 32 * (32 // 16) * 128 * 2
    tokens = (usable - weights - reserve) // per_token
    assert plan["kv_cache"]["tokens"] == tokens == 409_994
    # Neuron allocates batch × n_positions statically: the batch is lowered to what fits
    assert plan["max_batch_size"] == tokens // 4096 == 100


def test_explicit_tp_that_does_not_divide_heads(run_plan):
    done = run_plan("--for", "ml.g5.12xlarge", HF_MODEL_ID=str(DATA / "llama-2-7b"), TENSOR_PARALLEL_DEGREE="3")
    assert done.returncode == 2 and done.stdout == ""
    assert "tensor parallel degree 3 does not divide the model's 32 attention heads and 32 KV heads" in said(done)
    assert "valid degrees on this hardware: 1, 2, 4" in said(done)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MAX_BATCH_SIZE": "abc"}, "MAX_BATCH_SIZE='abc' (environment variable) is not valid"),
        ({"MAX_BATCH_SIZE": "64", "MAX_CONCURRENT_REQUESTS": "32"}, "MAX_CONCURRENT_REQUESTS='32'"),
    ],
)
def test_invalid_environment_is_a_clear_error(run_plan, env, expected):
    done = run_plan("--for", "ml.g5.12xlarge", HF_MODEL_ID=str(DATA / "llama-2-7b"), **env)
    assert done.returncode == 2 and expected in said(done) and "hint:" in said(done)
    assert "Traceback" not in said(done)


def test_unknown_quantization_method_in_a_recipe(run_plan, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"source:\n  uri: {DATA / 'llama-2-7b'}\nquantize:\n  method: awq4\n")
    done = run_plan(str(recipe), "--for", "ml.g5.12xlarge")
    assert done.returncode == 2
    assert "quantize.method = 'awq4'" in said(done)
    assert "'none', 'awq', 'gptq', 'smoothquant', 'static_int8' or 'fp8'" in said(done)


def test_model_folder_without_config_json(run_plan, tmp_path):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    done = run_plan("--for", "ml.g5.2xlarge", HF_MODEL_ID=str(folder))
    assert done.returncode == 2
    assert f"model folder {folder} has no config.json" in said(done) and "hint:" in said(done)


def test_model_too_large_even_at_full_tp(run_plan):
    done = run_plan("--for", "ml.g5.12xlarge", HF_MODEL_ID=str(DATA / "mixtral-8x7b"))
    assert done.returncode == 2
    text = said(done)
    assert "does not fit on ml.g5.12xlarge" in text and "even at TP 4" in text
    assert "weights 87.0 GiB (21.7 GiB per device at TP 4)" in text and "21.6 GiB (24 GiB × 0.9)" in text
    assert "larger instance" in text and "quantize" in text  # the hint: both ways out


def test_explicit_tp_too_small_names_the_smallest_that_fits(run_plan):
    done = run_plan("--for", "ml.p4d.24xlarge", HF_MODEL_ID=str(DATA / "mixtral-8x7b"), TENSOR_PARALLEL_DEGREE="2")
    assert done.returncode == 2
    assert "does not fit at TP 2" in said(done) and "use tensor parallel degree 4 or more" in said(done)


def test_serving_properties_and_environment_precedence(run_plan, tmp_path):
    properties = tmp_path / "serving.properties"
    properties.write_text(f"engine=Python\noption.model_id={DATA / 'llama-2-7b'}\n"
                          "option.tensor_parallel_degree=2\noption.max_rolling_batch_size=32\noption.max_rolling_batch_sise=1\n")
    plan = plan_json(run_plan, "--properties", str(properties), "--for", "ml.g5.12xlarge")
    assert (plan["tp_degree"], plan["max_batch_size"]) == (2, 32)
    done = run_plan("--properties", str(properties), "--for", "ml.g5.12xlarge", "--json", TENSOR_PARALLEL_DEGREE="4")
    assert done.returncode == 0 and json.loads(done.stdout)["tp_degree"] == 4  # the environment wins
    assert "overrides option.tensor_parallel_degree='2'" in said(done)
    assert "nearest known key: 'option.max_rolling_batch_size'" in said(done)


def test_table_output_and_help(run_plan):
    done = run_plan("--for", "ml.g5.12xlarge", HF_MODEL_ID=str(DATA / "llama-2-7b"))
    assert done.returncode == 0
    for word in ("backend", "trtllm", "tp_degree", "kv_cache", "139,376 tokens", "formula"):
        assert word in done.stdout
    help_text = " ".join(run_plan("--help").stdout.split())
    for word in ("RECIPE", "--properties", "--for", "--json", "HF_MODEL_ID", "environment variables, then serving.properties"):
        assert word in help_text


def test_bundled_model_on_this_cpu(run_plan, smollm2_dir):
    from lmi_runtime.hardware import probe

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-int8.yaml"
    plan = plan_json(run_plan, str(recipe))
    hardware = probe()
    if hardware.kind != "cpu":
        pytest.skip("this machine has an accelerator")
    assert (plan["backend"], plan["tp_degree"], plan["dtype"], plan["quantization"]) == ("torch", 1, "float32", "static_int8")
    assert plan["hardware"]["kind"] == "cpu" and plan["hardware"]["cores"] == hardware.cores
    # SmolLM2-135M: 30 layers, 3 KV heads of 64, fp32 on the CPU
    params, linear = 134_515_008, 30 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536)
    out_channels = 30 * (576 + 192 + 192 + 576 + 1536 + 1536 + 576)
    weights = (params - linear) * 4 + linear + 2 * out_channels     # int8 matrices, fp32 rest
    reserve = GiB + 8192 * (2 * 576 + 2 * 1536) * 4 + 8 * 49152 * 4
    per_token = 2 * 30 * 3 * 64 * 4
    usable = int(hardware.memory_bytes * 0.9)
    assert plan["weights"]["bytes"] == weights
    assert plan["kv_cache"]["tokens"] == (usable - weights - reserve) // per_token
    assert (plan["max_total_len"], plan["max_batch_size"]) == (2048, 8)
