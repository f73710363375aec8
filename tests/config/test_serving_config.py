"""ServingConfig from LMI environment variables and serving.properties: names, aliases, precedence,
unknown-key warnings and clear errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from lmi_runtime.config import (
    PRECEDENCE_DOC,
    ConfigWarning,
    ServingConfig,
    build_config,
    load_serving_config,
    nearest,
    read_properties,
)
from lmi_runtime.errors import ConfigError


def load(env: dict[str, str], properties: Path | None = None) -> tuple[ServingConfig, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_serving_config(env, properties)
    return config, [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serving.properties"
    path.write_text(text)
    return path


def test_defaults_match_lmi():
    config, warned = load({})
    assert (config.tensor_parallel_degree, config.max_rolling_batch_size, config.job_queue_size) == ("max", 256, 1000)
    assert (config.rolling_batch, config.quantize, config.dtype, config.engine) == ("auto", "none", "auto", "Python")
    assert config.trust_remote_code is False and config.gpu_memory_utilization == 0.9 and warned == []


def test_simplified_lmi_variables_map_onto_options():
    config, warned = load({
        "HF_MODEL_ID": "meta-llama/Llama-2-7b-hf", "HF_REVISION": "01c7f73", "HF_MODEL_TRUST_REMOTE_CODE": "true",
        "TENSOR_PARALLEL_DEGREE": "4", "MAX_BATCH_SIZE": "64", "MAX_CONCURRENT_REQUESTS": "512",
        "PATH": "/usr/bin",  # unrelated variables are not ours to judge
    })
    assert config.model_id == "meta-llama/Llama-2-7b-hf" and config.revision == "01c7f73"
    assert config.trust_remote_code is True
    assert (config.tensor_parallel_degree, config.max_rolling_batch_size, config.job_queue_size) == (4, 64, 512)
    assert warned == []


def test_option_variables_are_lower_cased_and_unmodelled_ones_kept():
    config, warned = load({"OPTION_ROLLING_BATCH": "TNX", "OPTION_DTYPE": "bf16", "OPTION_MAX_NUM_TOKENS": "8192",
                           "OPTION_ENTRYPOINT": "djl_python.huggingface", "OPTION_ENGINE": "mpi"})
    assert config.rolling_batch == "neuron"  # LMI's tnx
    assert config.dtype == "bfloat16"
    assert config.engine == "MPI" and config.mpi_mode
    assert config.options == {"max_num_tokens": "8192", "entrypoint": "djl_python.huggingface"}
    assert warned == []


def test_tgi_aliases_apply_only_when_the_lmi_name_is_unset():
    aliases = {"SM_NUM_GPUS": "2", "HF_MODEL_QUANTIZE": "awq", "MAX_BATCH_PREFILL_TOKENS": "4096",
               "CUDA_MEMORY_FRACTION": "0.8", "ENABLE_CUDA_GRAPHS": "false"}
    config, _ = load(aliases)
    assert config.tensor_parallel_degree == 2 and config.quantize == "awq"
    assert config.max_rolling_batch_prefill_tokens == 4096 and config.gpu_memory_utilization == 0.8
    assert config.enforce_eager is True  # CUDA graphs off = eager

    config, warned = load({**aliases, "TENSOR_PARALLEL_DEGREE": "8", "OPTION_QUANTIZE": "gptq",
                           "OPTION_ENFORCE_EAGER": "false"})
    assert (config.tensor_parallel_degree, config.quantize, config.enforce_eager) == (8, "gptq", False)
    assert any("TENSOR_PARALLEL_DEGREE and SM_NUM_GPUS" in w for w in warned)


def test_option_variable_beats_simplified_variable_with_a_warning():
    config, warned = load({"HF_MODEL_ID": "org/a", "OPTION_MODEL_ID": "org/b"})
    assert config.model_id == "org/b"
    assert any("OPTION_MODEL_ID and HF_MODEL_ID" in w for w in warned)


def test_environment_wins_over_serving_properties_and_says_so(tmp_path: Path):
    properties = write(tmp_path, "engine=Python\noption.tensor_parallel_degree=2\noption.max_rolling_batch_size=32\n"
                                 "option.model_id=org/from-file\n")
    config, warned = load({"TENSOR_PARALLEL_DEGREE": "4", "OPTION_MODEL_ID": "org/from-file"}, properties)
    assert config.tensor_parallel_degree == 4  # environment over file
    assert config.max_rolling_batch_size == 32  # file over default
    assert config.model_id == "org/from-file"
    assert len(warned) == 1 and "TENSOR_PARALLEL_DEGREE='4'" in warned[0]
    assert "option.tensor_parallel_degree='2'" in warned[0] and "environment wins" in warned[0]
    assert "environment variables, then serving.properties, then defaults" in PRECEDENCE_DOC
    assert "environment variables, then serving.properties" in load_serving_config.__doc__


def test_properties_syntax(tmp_path: Path):
    properties = write(tmp_path, "# comment\n! also a comment\n\nengine = DeepSpeed\njob_queue_size: 300\n"
                                 "option.model_id=org/\\\n    name\noption.entryPoint=handler.py\nminWorkers=1\n")
    settings = read_properties(properties)
    assert settings["option.model_id"].value == "org/name"
    assert settings["option.model_id"].origin == "serving.properties line 6"
    config = build_config(settings)
    assert (config.engine, config.job_queue_size, config.model_id) == ("DeepSpeed", 300, "org/name")
    assert config.options == {"entrypoint": "handler.py"}
    assert build_config(read_properties(tmp_path)) == config  # a folder holding serving.properties


def test_unknown_keys_warn_with_the_nearest_known_key(tmp_path: Path):
    properties = write(tmp_path, "option.max_rolling_batch_sise=8\njob_queue_sise=9\n")
    config, warned = load({"OPTION_TENSOR_PARALEL_DEGREE": "2"}, properties)
    assert any("'option.max_rolling_batch_sise'" in w and "nearest known key: 'option.max_rolling_batch_size'" in w
               for w in warned)
    assert any("'job_queue_sise'" in w and "'job_queue_size'" in w for w in warned)
    assert any("'OPTION_TENSOR_PARALEL_DEGREE'" in w and "'OPTION_TENSOR_PARALLEL_DEGREE'" in w for w in warned)
    assert config.options == {"max_rolling_batch_sise": "8", "tensor_paralel_degree": "2"}  # kept, not lost
    assert config.job_queue_size == 1000  # the misspelt top-level key is ignored
    assert nearest("HF_MODLE_ID", ["HF_MODEL_ID", "HF_REVISION"]) == "HF_MODEL_ID"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MAX_BATCH_SIZE": "abc"}, ["MAX_BATCH_SIZE='abc'", "whole number ≥ 1"]),
        ({"TENSOR_PARALLEL_DEGREE": "0"}, ["TENSOR_PARALLEL_DEGREE='0'", "'max' or a whole number ≥ 1"]),
        ({"MAX_CONCURRENT_REQUESTS": "16", "MAX_BATCH_SIZE": "32"},
         ["MAX_CONCURRENT_REQUESTS='16'", "MAX_BATCH_SIZE='32'", "below"]),
        ({"OPTION_ROLLING_BATCH": "deepspeed"}, ["OPTION_ROLLING_BATCH='deepspeed'", "auto, torch, trtllm, neuron"]),
        ({"HF_MODEL_QUANTIZE": "bitsandbytes"}, ["HF_MODEL_QUANTIZE='bitsandbytes'", "awq, gptq, smoothquant, static_int8"]),
        ({"CUDA_MEMORY_FRACTION": "1.5"}, ["CUDA_MEMORY_FRACTION='1.5'", "(0, 1]"]),
        ({"ENABLE_CUDA_GRAPHS": "maybe"}, ["ENABLE_CUDA_GRAPHS='maybe'", "true or false"]),
    ],
)
def test_invalid_values_name_the_variable_the_value_and_what_is_allowed(env, expected):
    with pytest.raises(ConfigError) as caught:
        load_serving_config(env)
    text = str(caught.value)
    for part in expected:
        assert part in text
    assert caught.value.hint


def test_queue_rule_from_a_file_names_file_lines(tmp_path: Path):
    properties = write(tmp_path, "job_queue_size=10\noption.max_rolling_batch_size=20\n")
    with pytest.raises(ConfigError, match=r"job_queue_size='10' \(serving.properties line 1\)"):
        load_serving_config({}, properties)


def test_malformed_and_missing_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="line 2: expected 'key=value'"):
        load_serving_config({}, write(tmp_path, "engine=Python\njust-a-word\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_serving_config({}, tmp_path / "nope.properties")


def test_token_is_never_printed():
    token = "hf_abcdefghijklmnopqrstuvwxyz"
    config, _ = load({"HF_TOKEN": token, "HF_MODEL_ID": "org/gated"})
    assert config.hf_token.get_secret_value() == token
    assert token not in repr(config) and token not in str(config) and token not in config.model_dump_json()
    assert token not in str(config.to_properties())
    with pytest.raises(ConfigError) as caught:
        load_serving_config({"HF_TOKEN": token, "MAX_BATCH_SIZE": "x"})
    assert token not in str(caught.value)


def test_to_properties_round_trips(tmp_path: Path):
    config, _ = load({"HF_MODEL_ID": "org/m", "TENSOR_PARALLEL_DEGREE": "2", "OPTION_QUANTIZE": "awq",
                      "OPTION_MAX_NUM_TOKENS": "4096", "OPTION_ENFORCE_EAGER": "true"})
    lines = config.to_properties(include_model_id=False)
    assert "option.model_id" not in lines
    path = write(tmp_path, "".join(f"{k}={v}\n" for k, v in config.to_properties().items()))
    assert load_serving_config({}, path) == config
