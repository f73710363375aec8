"""The stage cache keys on input content, settings and tool versions, stores atomically, and
shares entries through S3."""

from __future__ import annotations

import pytest

from lmi_compile.recipe import QuantizeSpec
from lmi_compile.stage_cache import DIGESTS, StageCache, stage_key, tool_versions

from storage_folders import write_model


@pytest.fixture()
def model(tmp_path):
    return write_model(tmp_path / "model")


def test_key_covers_inputs_settings_and_tools(model):
    awq = QuantizeSpec(method="awq")
    base = stage_key("quantize", [model], awq)
    assert stage_key("quantize", [model], QuantizeSpec(method="awq")) == base  # same inputs: hit
    assert stage_key("quantize", [model], QuantizeSpec(method="awq", group_size=64)) != base  # a setting
    assert stage_key("quantize", [model], QuantizeSpec(method="gptq")) != base
    assert stage_key("compile", [model], awq) != base
    tools = tool_versions()
    assert {"torch", "transformers", "llmcompressor", "lmi-compile"} <= set(tools)
    assert stage_key("quantize", [model], awq, tools) == base
    assert stage_key("quantize", [model], awq, tools | {"transformers": "0.0.0"}) != base
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "torch_dtype": "float16"}')
    assert stage_key("quantize", [model], awq) != base  # input content, not its name


def test_get_put_round_trip(model, tmp_path):
    cache = StageCache(tmp_path / "cache")
    key = stage_key("quantize", [model], {"method": "none"})
    assert cache.get(key) is None
    stored = cache.put(key, model, stage="quantize")
    assert stored == cache.get(key) and (stored / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name != DIGESTS) == [key, f"{key}.json"]  # no temp left
    (stored / "model.safetensors").write_bytes(b"x")  # damaged entry → miss, then replaced
    assert cache.get(key) is None
    assert cache.put(key, model) == stored and cache.get(key) == stored


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LMI_COMPILE_CACHE", str(tmp_path / "c"))
    assert StageCache().root == tmp_path / "c" / "stages"


def test_remote_entries_are_shared(model, tmp_path, bucket, options):
    remote = f"s3://{bucket}/stage-cache"
    key = stage_key("quantize", [model], {"method": "none"})
    StageCache(tmp_path / "a", remote, options).put(key, model, stage="quantize")
    other = StageCache(tmp_path / "b", remote, options)  # another machine: empty local cache
    got = other.get(key)
    assert got == tmp_path / "b" / key
    assert (got / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    assert other.get("0" * 64) is None
