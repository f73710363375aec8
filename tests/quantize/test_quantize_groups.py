"""Group size against the real SmolLM2 layer shapes (built on the meta device: no weights)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lmi_compile.plan import make_plan
from lmi_compile.plan.instances import instance_hardware
from lmi_compile.plan.modelspec import ModelSpec
from lmi_compile.quantize.groups import quantized_widths, resolve_group_size
from lmi_compile.recipe import Recipe
from lmi_runtime.errors import ConfigError


@pytest.fixture(scope="module")
def widths(smollm2_dir):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(smollm2_dir))
    return quantized_widths(model)


def test_widths_cover_every_projection_but_the_head(widths):
    assert len(widths) == 30 * 7
    assert set(widths.values()) == {576, 1536}
    assert not any(name.endswith("lm_head") for name in widths)


def test_group_128_names_the_layers_and_the_valid_sizes(widths):
    with pytest.raises(ConfigError) as err:
        resolve_group_size(128, widths)
    assert "width 576" in err.value.message
    assert "model.layers.*.self_attn.q_proj" in err.value.message
    assert "(180 layers)" in err.value.message  # q, k, v, o, gate, up of 30 layers
    assert "16, 32, 64" in err.value.hint


def test_auto_picks_64_and_dividing_sizes_pass(widths):
    assert resolve_group_size("auto", widths) == 64
    assert resolve_group_size(32, widths) == 32


def test_auto_with_no_power_of_two_divisor_is_an_error():
    with pytest.raises(ConfigError, match="no power-of-two group size"):
        resolve_group_size("auto", {"a": 100, "b": 72})


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_the_plan_uses_the_group_size_the_quantizer_picks(smollm2_dir, widths, method):
    """One rule: the planner reads the widths from config.json and sizes the weights (and
    TensorRT-LLM's AWQ block) with the group the quantizer resolves on the loaded layers."""
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert set(ModelSpec.from_config(config).quantized_widths().values()) == set(widths.values())
    recipe = Recipe.model_validate({"source": {"uri": str(smollm2_dir)}, "quantize": {"method": method}})
    plan = make_plan(recipe, config, instance_hardware("ml.g5.xlarge"))
    assert plan.weights.group_size == resolve_group_size("auto", widths) == 64
    assert make_plan(recipe.model_copy(update={"quantize": recipe.quantize.model_copy(update={"method": "none"})}),
                     config, instance_hardware("ml.g5.xlarge")).weights.group_size is None
