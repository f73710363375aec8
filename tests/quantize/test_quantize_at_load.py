"""`OPTION_QUANTIZE=fp8|static_int8` on a 16-bit checkpoint: lmi-serve quantizes its layers at
load (round-to-nearest per channel), packed or, on CPU by default, rounded and served dense;
the calibrated methods are refused with what to do instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmi_runtime.backends.loader import load_backend
from lmi_runtime.config.engine_settings import engine_config
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.engine import LLMEngine
from lmi_runtime.engine.offline import generate
from lmi_runtime.engine.request import SamplingParams
from lmi_runtime.errors import ConfigError
from lmi_runtime.locate import inspect_folder
from lmi_runtime.quant.linear import QuantLinear
from tiny_llama import save_tiny_llama

PROMPTS = [[1, 504, 3458, 282, 4649, 314], [1, 1205, 314]]


@pytest.fixture(scope="module")
def dense_tiny(tmp_path_factory, smollm2_dir) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("dense-tiny"), smollm2_dir)


def tokens(folder: Path, **settings) -> tuple[list[list[int]], object]:
    config = EngineConfig(device="cpu", kv_cache_gib=0.05, max_batch_size=4, **settings)
    backend = load_backend(inspect_folder(folder), config)
    backend.info.eos_token_ids = set()
    out = generate(LLMEngine(backend, config), PROMPTS, SamplingParams(max_new_tokens=12))
    return [o.token_ids for o in out], backend


@pytest.mark.parametrize("method, kind", [("fp8", "fp8"), ("static_int8", "int8")])
def test_layers_quantized_at_load_packed_or_rounded_give_the_same_tokens(dense_tiny, method, kind):
    packed, backend = tokens(dense_tiny, quantize=method, quantized_kernels="on")
    layers = backend.model.model.layers
    assert isinstance(layers[0].mlp.gate_up_proj, QuantLinear) and layers[0].mlp.gate_up_proj.kind == kind
    assert backend.info.details["quantized_layers"] == f"{kind} ×8"
    assert backend.info.details["quantization"] == f"{method} (at load)"
    rounded, dense_backend = tokens(dense_tiny, quantize=method)  # CPU default: rounded weights, dense matmuls
    assert not isinstance(dense_backend.model.model.layers[0].mlp.gate_up_proj, QuantLinear)
    assert packed == rounded
    original, _ = tokens(dense_tiny)
    assert original[0][:4] == packed[0][:4]  # per-channel 8-bit keeps the first picks of a sharp model


def test_calibrated_methods_are_refused_at_load_with_what_to_do(dense_tiny):
    with pytest.raises(ConfigError, match="quantize=awq needs calibration") as err:
        tokens(dense_tiny, quantize="awq")
    assert "lmi-compile" in err.value.hint


def test_the_setting_comes_from_option_quantize_and_the_tgi_alias():
    assert engine_config({}, env={"OPTION_QUANTIZE": "fp8"}).quantize == "fp8"
    assert engine_config({}, env={"HF_MODEL_QUANTIZE": "int8"}).quantize == "static_int8"
    assert engine_config({"quantize": "fp8"}, env={"OPTION_QUANTIZE": "awq"}).quantize == "fp8"


def test_quantize_at_load_is_refused_where_it_would_be_ignored(dense_tiny):
    with pytest.raises(ConfigError, match="needs the torch backend"):
        tokens(dense_tiny, quantize="fp8", backend="transformers")
