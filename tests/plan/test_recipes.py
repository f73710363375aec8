"""Every curated recipe in recipes/ is planned (offline: the hub ids resolve to the real
config.json files stored in tests/plan/data, placed in a Hugging Face cache as a download would
leave them), and the plan is the one the recipe's comment promises; Flan-T5 is refused by name."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from huggingface_hub import constants

from lmi_compile.plan import plan_recipe
from lmi_compile.recipe_loader import load_recipe
from lmi_runtime.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
# hub id → stored config (the public config.json of that repository)
HUB_CONFIGS = {
    "meta-llama/Llama-2-7b-hf": "llama-2-7b", "meta-llama/Llama-2-13b-hf": "llama-2-13b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b", "mistralai/Mistral-7B-v0.1": "mistral-7b",
    "mistralai/Mixtral-8x7B-v0.1": "mixtral-8x7b", "google/flan-t5-xxl": "flan-t5-xxl",
    "codellama/CodeLlama-34b-hf": "codellama-34b", "tiiuae/falcon-7b": "falcon-7b", "tiiuae/falcon-40b": "falcon-40b",
    "tiiuae/falcon-180B": "falcon-180b", "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
}
# recipe → (backend, TP degree, dtype, quantization) the plan must choose
EXPECTED = {
    "llama2-7b-g5": ("trtllm", 1, "bfloat16", "none"),
    "llama2-13b-g5": ("trtllm", 4, "bfloat16", "none"),
    "llama2-70b-p4d": ("trtllm", 8, "bfloat16", "none"),
    "llama2-70b-awq-g5": ("trtllm", 4, "float16", "awq"),
    "llama2-7b-awq-g5": ("trtllm", 4, "float16", "awq"),
    "mistral-7b-g5": ("trtllm", 1, "bfloat16", "none"),
    "mixtral-8x7b-p4d": ("trtllm", 8, "bfloat16", "none"),
    "codellama-34b-g5": ("trtllm", 8, "bfloat16", "none"),
    "falcon-7b-g5": ("trtllm", 1, "bfloat16", "none"),
    "falcon-40b-g5": ("trtllm", 8, "bfloat16", "none"),
    "falcon-180b-p4de": ("trtllm", 8, "bfloat16", "none"),
    "llama3.1-8b-fp8-p5": ("trtllm", 1, "bfloat16", "fp8"),
    "smollm2-int8": ("torch", 1, "float32", "static_int8"),
}
REFUSED = {"flan-t5-xxl-g5": "T5ForConditionalGeneration is an encoder-decoder model"}


def hub_cache(root: Path) -> Path:
    """A Hugging Face hub cache holding config.json of every repo in HUB_CONFIGS (one snapshot each)."""
    for repo_id, folder in HUB_CONFIGS.items():
        repo = root / f"models--{repo_id.replace('/', '--')}"
        commit = f"{abs(hash(repo_id)):040x}"[:40]
        (repo / "snapshots" / commit).mkdir(parents=True)
        shutil.copyfile(DATA / folder / "config.json", repo / "snapshots" / commit / "config.json")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    return root


@pytest.fixture(scope="module")
def offline_hub(tmp_path_factory):
    cache = hub_cache(tmp_path_factory.mktemp("hf") / "hub")
    saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE
    constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = True, str(cache)
    yield cache
    constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = saved


def test_every_recipe_has_an_expectation():
    assert {p.stem for p in RECIPES} == set(EXPECTED) | set(REFUSED)


@pytest.mark.parametrize("path", [p for p in RECIPES if p.stem in EXPECTED], ids=lambda p: p.stem)
def test_recipe_plans_as_documented(path, offline_hub):
    recipe = load_recipe(path)
    assert recipe.source.uri.startswith("bundled://") or recipe.source.uri in HUB_CONFIGS
    plan = plan_recipe(recipe)
    assert (plan.backend, plan.tp_degree, plan.dtype, plan.quantization) == EXPECTED[path.stem]
    assert plan.kv_cache.fits(plan.max_total_len) and plan.kv_cache.max_full_sequences >= 1
    assert plan.max_input_len + plan.max_output_len <= plan.max_total_len
    if recipe.target.instance_type:
        assert plan.hardware.instance_type == recipe.target.instance_type


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unservable_architecture_gets_an_honest_refusal(name, offline_hub):
    with pytest.raises(ConfigError) as caught:
        plan_recipe(load_recipe(REPO / "recipes" / f"{name}.yaml"))
    assert REFUSED[name] in caught.value.message and "lmi-dist" in caught.value.hint
    # naming the target when one is asked for (T5 on trtllm)
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    recipe.target.backend = "trtllm"
    with pytest.raises(ConfigError, match="the trtllm target"):
        plan_recipe(recipe)


def test_plan_cli_reads_a_curated_recipe_from_the_hub_cache(tmp_path, python, cli_env):
    """The documented path, `lmi-compile plan recipes/… --json`, offline against a hub cache."""
    hub_cache(tmp_path / "hf" / "hub")
    env = cli_env | {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([python, "-m", "lmi_compile", "plan", str(REPO / "recipes" / "mixtral-8x7b-p4d.yaml"), "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert (plan["backend"], plan["tp_degree"], plan["model"]["model_type"]) == ("trtllm", 8, "mixtral")
