"""Model configs are checked against sane bounds before anything is allocated (issue 16): a
config.json that is a list, a string or binary, or asks for 0 heads, a "big" vocabulary, KV
heads that do not divide the heads or 10^9 layers gets one clear error from `plan`, `fetch`
and `lmi-serve` — no traceback, no endless "loading"."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from lmi_compile.plan import plan_recipe
from lmi_compile.recipe import Recipe, SourceSpec
from lmi_compile.stages.fetch import fetch
from lmi_runtime.errors import ModelFolderError
from served import free_port

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
         "num_attention_heads": 9, "num_key_value_heads": 3, "num_hidden_layers": 30, "vocab_size": 49152,
         "max_position_embeddings": 8192}

BAD_CONFIGS = [
    ("list", b"[1, 2, 3]", "config.json is a JSON list, not an object"),
    ("string", b'"llama"', "config.json is a JSON str, not an object"),
    ("binary", bytes(range(256)), "config.json is not UTF-8 text"),
    ("zero-heads", {**LLAMA, "num_attention_heads": 0}, "num_attention_heads = 0 is outside 1..1024"),
    ("big-vocab", {**LLAMA, "vocab_size": "big"}, 'vocab_size = "big" is not a whole number'),
    ("kv-3-of-4", {**LLAMA, "num_attention_heads": 4, "hidden_size": 256, "num_key_value_heads": 3},
     "num_key_value_heads = 3 does not divide num_attention_heads = 4"),
    ("billion-layers", {**LLAMA, "num_hidden_layers": 10**9}, "num_hidden_layers = 1000000000 is outside 1..1024"),
    ("float-layers", {**LLAMA, "num_hidden_layers": 30.5}, "num_hidden_layers = 30.5 is not a whole number"),
]


def _model(tmp_path, smollm2_dir, copy_artifact, config) -> object:
    folder = copy_artifact(smollm2_dir, tmp_path / "model")  # the real tokenizer and weights
    raw = config if isinstance(config, bytes) else json.dumps(config).encode()
    (folder / "config.json").write_bytes(raw)
    return folder


@pytest.mark.parametrize("name, config, message", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_plan_and_fetch_refuse_configs_out_of_bounds(name, config, message, tmp_path, smollm2_dir, copy_artifact):
    folder = _model(tmp_path, smollm2_dir, copy_artifact, config)
    with pytest.raises(ModelFolderError, match="config.json") as err:
        plan_recipe(Recipe(name="m", source=SourceSpec(uri=str(folder))))
    assert message in err.value.message
    with pytest.raises(ModelFolderError) as err:
        fetch(SourceSpec(uri=str(folder)), tmp_path / "out")
    assert message in err.value.message and not (tmp_path / "out").exists()


def test_plan_cli_says_it_in_one_message(tmp_path, smollm2_dir, copy_artifact, python, cli_env):
    folder = _model(tmp_path, smollm2_dir, copy_artifact, b"[1, 2, 3]")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: m\nsource: {{uri: '{folder}'}}\n")
    done = subprocess.run([python, "-m", "lmi_compile", "plan", str(recipe)], env=cli_env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "config.json is a JSON list" in done.stderr and "Traceback" not in done.stderr


def test_lmi_serve_refuses_a_billion_layers_at_once(tmp_path, smollm2_dir, copy_artifact, python, cli_env):
    folder = _model(tmp_path, smollm2_dir, copy_artifact, {**LLAMA, "num_hidden_layers": 10**9})
    start = time.monotonic()
    done = subprocess.run([python, "-m", "lmi_runtime", str(folder), "--host", "127.0.0.1", "--port", str(free_port())],
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "num_hidden_layers = 1000000000 is outside" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr and time.monotonic() - start < 60  # was: "loading" forever, +40 MiB/s


def test_the_real_config_passes(smollm2_dir):
    plan = plan_recipe(Recipe(name="m", source=SourceSpec(uri=str(smollm2_dir))))
    assert plan.tp_degree == 1
