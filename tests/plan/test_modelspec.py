"""ModelSpec from real published config.json files: shapes, parameter counts, weight and KV bytes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmi_compile.plan.modelspec import ModelSpec
from lmi_runtime.errors import ModelFolderError

DATA = Path(__file__).parent / "data"


def spec(name: str) -> ModelSpec:
    return ModelSpec.from_folder(DATA / name)


def test_llama_2_7b_shapes_and_parameters():
    s = spec("llama-2-7b")
    assert (s.architecture, s.family, s.num_layers, s.hidden_size) == ("LlamaForCausalLM", "llama", 32, 4096)
    assert (s.num_heads, s.num_kv_heads, s.head_dim, s.intermediate_size, s.vocab_size) == (32, 32, 128, 11008, 32000)
    assert (s.max_position_embeddings, s.tie_word_embeddings, s.num_experts) == (4096, False, 1)
    # embeddings + lm_head + final norm + 32 × (attention 4·4096² + MLP 3·4096·11008 + 2 norms)
    expected = 2 * 32000 * 4096 + 4096 + 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096)
    assert s.num_parameters == expected == 6_738_415_616  # the published "6.74 B"


def test_mixtral_counts_every_expert():
    s = spec("mixtral-8x7b")
    assert (s.num_experts, s.experts_per_token, s.num_kv_heads, s.max_position_embeddings) == (8, 2, 8, 32768)
    attention = 2 * 4096 * 4096 + 2 * 4096 * 1024
    experts = 8 * 3 * 4096 * 14336
    expected = 2 * 32000 * 4096 + 4096 + 32 * (attention + experts + 4096 * 8 + 2 * 4096)
    assert s.num_parameters == expected
    assert s.num_parameters == pytest.approx(46.7e9, rel=0.001)


def test_falcon_rw_config_multi_query():
    s = spec("falcon-7b")
    assert (s.family, s.model_type, s.num_heads, s.num_kv_heads, s.head_dim) == ("falcon", "RefinedWebModel", 71, 1, 64)
    assert (s.num_layers, s.intermediate_size, s.tie_word_embeddings, s.max_position_embeddings) == (32, 18176, True, 2048)
    # fused qkv 4544 → (71 + 2)·64, dense, 4h MLP, one LayerNorm (w+b) per layer; ln_f; tied embeddings
    per_layer = 4544 * 73 * 64 + 4544 * 4544 + 2 * 4544 * 18176 + 2 * 4544
    assert s.num_parameters == 65024 * 4544 + 2 * 4544 + 32 * per_layer == 6_921_720_704
    # The "7.2 B" quoted for Falcon-7B counts lm_head.weight as its checkpoint stores it, although
    # it is tied to the embeddings (one tensor in memory).
    assert s.num_parameters + 65024 * 4544 == pytest.approx(7.2e9, rel=0.005)


def test_falcon_new_decoder_architecture_reads_kv_heads():
    config = {"model_type": "falcon", "hidden_size": 8192, "num_attention_heads": 128, "num_hidden_layers": 60,
              "new_decoder_architecture": True, "num_kv_heads": 8, "vocab_size": 65024}
    assert ModelSpec.from_config(config).num_kv_heads == 8
    assert ModelSpec.from_config({**config, "new_decoder_architecture": False, "multi_query": False}).num_kv_heads == 128


@pytest.mark.parametrize("name", ["llama-2-7b", "mixtral-8x7b", "falcon-7b"])
def test_counts_match_transformers_own_models(name: str):
    """Instantiate the architecture on the meta device (no memory) and count its parameters."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = json.loads((DATA / name / "config.json").read_text())
    if config["model_type"] == "RefinedWebModel":  # the in-library Falcon reads the same values
        config = {**config, "model_type": "falcon", "num_attention_heads": config["n_head"],
                  "num_hidden_layers": config["n_layer"]}
        for key in ("auto_map", "n_head", "n_layer"):
            config.pop(key)
    model_type = config.pop("model_type")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.CONFIG_MAPPING[model_type](**config))
    assert spec(name).num_parameters == sum(p.numel() for p in model.parameters())


def test_bundled_model_count_matches_its_safetensors(smollm2_dir: Path):
    from safetensors import safe_open

    with safe_open(str(smollm2_dir / "model.safetensors"), framework="pt") as handle:
        total = sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    s = ModelSpec.from_folder(smollm2_dir)
    assert (s.num_heads, s.num_kv_heads, s.head_dim, s.tie_word_embeddings) == (9, 3, 64, True)
    assert s.num_parameters == total


def test_weight_bytes_for_dtypes_and_quantization():
    s = spec("llama-2-7b")
    n = s.num_parameters
    assert s.weight_bytes("bfloat16") == 2 * n and s.weight_bytes("float32") == 4 * n
    linear = 32 * (4 * 4096**2 + 3 * 4096 * 11008)
    dense = n - linear  # embeddings, lm_head, norms stay 16-bit
    out_channels = 32 * (4 * 4096 + 2 * 11008 + 4096)  # per layer: q,k,v,o + gate,up + down
    assert s.weight_bytes("float16", "static_int8") == 2 * dense + linear + 2 * out_channels
    # AWQ g128 asymmetric: ½ byte per weight, per 128-input group a 2-byte scale and a ½-byte zero
    groups = 32 * (4 * 4096 * 4096 // 128 + 2 * 11008 * 4096 // 128 + 4096 * 11008 // 128)
    assert s.weight_bytes("float16", "awq", 128, symmetric=False) == 2 * dense + linear // 2 + 2 * groups + groups // 2
    assert s.weight_bytes("float16", "gptq", 128, symmetric=True) == 2 * dense + linear // 2 + 2 * groups


def test_kv_bytes_per_token():
    llama, mixtral, falcon = spec("llama-2-7b"), spec("mixtral-8x7b"), spec("falcon-7b")
    assert llama.kv_bytes_per_token("float16") == 2 * 32 * 32 * 128 * 2 == 524_288
    assert llama.kv_bytes_per_token("float16", tp=4) == 524_288 // 4
    assert mixtral.kv_bytes_per_token("bfloat16", tp=8) == 2 * 32 * 1 * 128 * 2
    # MQA: one KV head, replicated on every rank rather than split
    assert falcon.kv_bytes_per_token("bfloat16", tp=71) == falcon.kv_bytes_per_token("bfloat16") == 2 * 32 * 64 * 2
    assert llama.kv_bytes_per_token("float16", pp=2) == 524_288 // 2


def test_folder_without_config_json(tmp_path: Path):
    with pytest.raises(ModelFolderError, match="no config.json"):
        ModelSpec.from_folder(tmp_path)
    with pytest.raises(ModelFolderError, match="lacks"):
        ModelSpec.from_config({"model_type": "bert-ish", "hidden_size": 8})


@pytest.mark.parametrize(
    ("model_type", "config", "tolerance"),
    [
        ("qwen2", dict(hidden_size=896, num_attention_heads=14, num_key_value_heads=2, num_hidden_layers=24,
                       intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True), 0),  # q/k/v biases
        ("gpt2", dict(n_embd=768, n_head=12, n_layer=12, vocab_size=50257, n_positions=1024), 0.01),  # generic
    ],
)
def test_other_families_against_transformers(model_type, config, tolerance):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.CONFIG_MAPPING[model_type](**config))
    actual = sum(p.numel() for p in model.parameters())
    assert ModelSpec.from_config({**config, "model_type": model_type}).num_parameters == pytest.approx(actual, rel=tolerance)
