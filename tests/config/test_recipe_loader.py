"""Recipes from YAML and from an LMI deployment's configuration."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import get_args

import pytest
import yaml

from lmi_compile.recipe import QuantMethod, Recipe
from lmi_compile.recipe_loader import load_recipe, recipe_from_dict, recipe_from_serving_config
from lmi_runtime.config import ConfigWarning, load_serving_config
from lmi_runtime.config.schema import QuantizeMethod
from lmi_runtime.errors import ConfigError

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def recorded(fn, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args)
    return result, [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]


def test_recipes_folder_is_not_empty():
    names = {path.name for path in RECIPES}
    assert {"smollm2-int8.yaml", "llama2-7b-awq-g5.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_without_warnings(path: Path):
    recipe, warned = recorded(load_recipe, path)
    assert isinstance(recipe, Recipe) and warned == []
    assert recipe.name == path.stem


def test_shipped_recipes_say_what_they_promise():
    smol = load_recipe(RECIPES[[p.name for p in RECIPES].index("smollm2-int8.yaml")])
    assert (smol.source.uri, smol.quantize.method, smol.quantize.bits) == ("bundled://smollm2", "static_int8", 8)
    assert (smol.target.backend, smol.output.uri) == ("torch", "./artifacts/smollm2-int8")
    llama = load_recipe(RECIPES[[p.name for p in RECIPES].index("llama2-7b-awq-g5.yaml")])
    assert (llama.quantize.method, llama.quantize.bits, llama.quantize.group_size) == ("awq", 4, 128)
    assert llama.target.instance_type == "ml.g5.12xlarge"


def test_unknown_keys_warn_at_every_level_with_the_nearest_key(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "nmae": "x",
        "source": {"uri": "org/m", "revison": "main"},
        "quantize": {"method": "gptq", "calibration": {"num_sample": 8}},
        "limits": {"max_batch": 4},
    }))
    recipe, warned = recorded(load_recipe, path)
    expected = [("'nmae'", "'name'"), ("'source.revison'", "'source.revision'"),
                ("'quantize.calibration.num_sample'", "'quantize.calibration.num_samples'"),
                ("'limits.max_batch'", "'limits.max_batch_size'")]
    for unknown, suggestion in expected:
        assert any(unknown in w and f"nearest known key: {suggestion}" in w and "r.yaml" in w for w in warned), unknown
    assert recipe.quantize.calibration.num_samples is None and recipe.source.revision is None  # None: sized per device


def test_unknown_quantization_method_names_the_allowed_ones():
    with pytest.raises(ConfigError) as caught:
        recipe_from_dict({"source": {"uri": "org/m"}, "quantize": {"method": "awq8"}}, where="bad.yaml")
    text = str(caught.value)
    assert "quantize.method = 'awq8'" in text and "bad.yaml" in text
    for method in get_args(QuantMethod):
        assert f"'{method}'" in text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"source": {}}, "source.uri: Field required"),
        ({"source": {"uri": "m"}, "quantize": {"method": "static_int8", "bits": 4}}, "8-bit"),
        ({"source": {"uri": "m"}, "limits": {"max_batch_size": 64, "max_concurrent_requests": 8}}, "below max_batch_size"),
        ({"source": {"uri": "m"}, "target": {"tp_degree": 0}}, "target.tp_degree = 0"),
        ({"source": {"uri": "m"}, "limits": {"gpu_memory_utilization": 1.2}}, "limits.gpu_memory_utilization = 1.2"),
    ],
)
def test_invalid_values_are_clear_errors(data, expected):
    with pytest.raises(ConfigError, match="invalid recipe") as caught:
        recipe_from_dict(data)
    assert expected in str(caught.value)


def test_bad_yaml_and_missing_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")


def test_serving_config_maps_onto_a_recipe():
    config = load_serving_config({
        "HF_MODEL_ID": "TheBloke/Llama-2-70B-AWQ", "HF_REVISION": "main", "OPTION_QUANTIZE": "awq",
        "TENSOR_PARALLEL_DEGREE": "4", "MAX_BATCH_SIZE": "16", "MAX_CONCURRENT_REQUESTS": "64",
        "OPTION_ROLLING_BATCH": "trtllm", "OPTION_MAX_INPUT_LEN": "2048", "OPTION_MAX_OUTPUT_LEN": "512",
        "OPTION_N_POSITIONS": "4096", "OPTION_DTYPE": "fp16", "CUDA_MEMORY_FRACTION": "0.85",
    })
    recipe = recipe_from_serving_config(config)
    assert recipe.name == "Llama-2-70B-AWQ"
    assert (recipe.source.uri, recipe.source.revision) == ("TheBloke/Llama-2-70B-AWQ", "main")
    assert (recipe.quantize.method, recipe.quantize.bits, recipe.quantize.symmetric) == ("awq", 4, False)
    assert (recipe.target.backend, recipe.target.tp_degree, recipe.target.dtype) == ("trtllm", 4, "float16")
    limits = recipe.limits
    assert (limits.max_batch_size, limits.max_concurrent_requests) == (16, 64)
    assert (limits.max_input_len, limits.max_output_len, limits.max_total_len) == (2048, 512, 4096)
    assert limits.gpu_memory_utilization == 0.85

    neuron = recipe_from_serving_config(load_serving_config({"HF_MODEL_ID": "org/m", "OPTION_ROLLING_BATCH": "tnx",
                                                             "OPTION_QUANTIZE": "static_int8"}))
    assert (neuron.target.backend, neuron.quantize.method, neuron.quantize.bits) == ("neuron", "static_int8", 8)


def test_serving_config_without_a_model_is_an_error():
    with pytest.raises(ConfigError, match="no model") as caught:
        recipe_from_serving_config(load_serving_config({}))
    assert "HF_MODEL_ID" in caught.value.hint


def test_runtime_and_recipe_agree_on_quantization_names():
    assert get_args(QuantizeMethod) == get_args(QuantMethod)
