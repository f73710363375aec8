"""The SageMaker job entries run as SageMaker runs them: a subprocess with the SM_NEO_* contract
(optimization job) or the /opt/ml/processing layout (processing job, root moved by
LMI_PROCESSING_ROOT), on the real bundled model, publishing to a folder or the real S3 server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from lmi_compile.jobs.optimization import NeoPaths, job_recipe
from lmi_runtime.artifact.download import download_artifact
from lmi_runtime.artifact.folder import read_manifest, verify_folder
from lmi_runtime.config.properties import read_properties

LMI_NAMES = ("HF_MODEL", "HF_REVISION", "OPTION_", "TENSOR_PARALLEL_DEGREE", "MAX_BATCH_SIZE", "MAX_CONCURRENT_REQUESTS",
             "SM_NUM_GPUS", "MAX_BATCH_PREFILL_TOKENS", "CUDA_MEMORY_FRACTION", "ENABLE_CUDA_GRAPHS", "LMI_RECIPE")


def _clean(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(LMI_NAMES)}


def _neo_env(tmp_path: Path, model: Path) -> dict[str, str]:
    return {"SM_NEO_INPUT_MODEL_DIR": str(model), "SM_NEO_COMPILED_MODEL_DIR": str(tmp_path / "compiled"),
            "SM_NEO_COMPILATION_ERROR_FILE": str(tmp_path / "errors" / "errors.json"),
            "SM_NEO_CACHE_DIR": str(tmp_path / "cache"), "SM_NEO_HF_CACHE_DIR": str(tmp_path / "hf")}


def _job(python, env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "lmi_compile", *args], env=env, capture_output=True, text=True, timeout=600)


def _model_copy(smollm2_dir: Path, dest: Path) -> Path:
    """The input model as SageMaker mounts it: a plain folder (files hard-linked, read only here)."""
    dest.mkdir()
    for item in smollm2_dir.iterdir():
        os.link(item, dest / item.name)
    return dest


def test_a_bad_input_model_fails_the_job_with_the_error_file(tmp_path, python, cli_env):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    env = _clean(cli_env) | _neo_env(tmp_path, model) | {"HF_TOKEN": "hf_secretsecretsecretsecret"}
    done = _job(python, env, "sagemaker-optimize")
    assert done.returncode != 0
    error = json.loads((tmp_path / "errors" / "errors.json").read_text())
    assert list(error) == ["error"]
    assert "config.json lacks hidden_size" in error["error"] and "hint:" in error["error"]
    assert "hf_secret" not in error["error"] and "Traceback" not in done.stderr
    assert not (tmp_path / "compiled").exists()  # nothing half-written


def test_outside_a_job_the_entry_says_which_variables_are_missing(tmp_path, python, cli_env):
    env = _clean(cli_env) | {"SM_NEO_COMPILATION_ERROR_FILE": str(tmp_path / "errors.json")}
    done = _job(python, {k: v for k, v in env.items() if k not in ("SM_NEO_INPUT_MODEL_DIR", "SM_NEO_COMPILED_MODEL_DIR")},
                "sagemaker-optimize")
    assert done.returncode == 2
    assert "SM_NEO_INPUT_MODEL_DIR, SM_NEO_COMPILED_MODEL_DIR not set" in done.stderr
    assert "SM_NEO_INPUT_MODEL_DIR" in json.loads((tmp_path / "errors.json").read_text())["error"]


def test_job_settings_come_from_option_variables_or_a_recipe(tmp_path, smollm2_dir):
    paths = NeoPaths.from_env(_neo_env(tmp_path, smollm2_dir))
    env = {"OPTION_QUANTIZE": "awq", "OPTION_MAX_ROLLING_BATCH_SIZE": "4", "OPTION_TENSOR_PARALLEL_DEGREE": "1"}
    recipe, _ = job_recipe(paths, env)
    assert recipe.source.uri == str(smollm2_dir) and recipe.output.uri == str(tmp_path / "compiled")
    assert (recipe.quantize.method, recipe.quantize.group_size, recipe.limits.max_batch_size) == ("awq", 128, 4)
    assert recipe.output.cache_dir == str(tmp_path / "cache" / "lmi-stages")

    inside = tmp_path / "with-recipe"
    _model_copy(smollm2_dir, inside)
    (inside / "job.yaml").write_text("source: {uri: somewhere/else}\nquantize: {method: static_int8}\n")
    paths = NeoPaths.from_env(_neo_env(tmp_path, inside))
    with pytest.warns(UserWarning, match="OPTION_QUANTIZE ignored"):
        recipe, _ = job_recipe(paths, {"LMI_RECIPE": "job.yaml", "OPTION_QUANTIZE": "awq"})
    assert recipe.quantize.method == "static_int8" and recipe.source.uri == str(inside)
    with pytest.raises(Exception, match="job.yaml|outside|\\.\\."):
        job_recipe(paths, {"LMI_RECIPE": "../job.yaml"})


@pytest.mark.slow  # a whole run (fetch, compile, publish of 540 MB): 15 s quiet, a minute busy
def test_optimization_job_writes_a_deployable_artifact(tmp_path, python, cli_env, smollm2_dir):
    model = _model_copy(smollm2_dir, tmp_path / "model")
    (model / "serving.properties").write_text("option.max_rolling_batch_size=4\noption.n_positions=1024\n")
    env = _clean(cli_env) | _neo_env(tmp_path, model) | {"OPTION_MAX_ROLLING_BATCH_SIZE": "2"}
    done = _job(python, env, "sagemaker-optimize")
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stderr  # a log, not a terminal: no escape codes for CloudWatch
    assert [line.split(":")[0] for line in done.stderr.splitlines() if line.endswith(": running")] == \
        ["fetch", "quantize", "compile"]
    out = tmp_path / "compiled"
    verify_folder(out, read_manifest(out))  # what lmi-serve checks before loading
    properties = {k: s.value for k, s in read_properties(out / "serving.properties").items()}
    assert "option.model_id" not in properties  # the artifact's location is the model, as LMI writes
    assert properties["option.max_rolling_batch_size"] == "2"  # the environment wins over the shipped file
    assert properties["option.n_positions"] == "1024"
    assert not (tmp_path / "errors" / "errors.json").exists()
    assert done.stdout.startswith(f"published {out} ") and "stages    plan" in done.stdout


@pytest.mark.slow  # a whole int8 run with its quality gate, published to S3: 20 s quiet, 1-2 min busy
def test_processing_job_publishes_to_s3(tmp_path, python, cli_env, s3_env, bucket, smollm2_dir):
    root = tmp_path / "processing"
    (root / "input" / "recipe").mkdir(parents=True)
    _model_copy(smollm2_dir, root / "input" / "model")
    recipe = yaml.safe_load((Path(__file__).resolve().parents[2] / "recipes" / "smollm2-int8.yaml").read_text())
    recipe["source"] = {"uri": "meta-llama/not-used-the-model-input-wins"}
    recipe["quantize"]["quality"] = {"max_tokens": 512, "max_ppl_increase": 0.05}
    recipe["output"] = {"uri": f"s3://{bucket}/jobs/smollm2", "cache_dir": str(tmp_path / "cache")}
    (root / "input" / "recipe" / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = _clean(cli_env) | s3_env | {"LMI_PROCESSING_ROOT": str(root)}
    done = _job(python, env, "sagemaker-process")
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stderr and "quality: perplexity" in done.stderr
    manifest = download_artifact(f"s3://{bucket}/jobs/smollm2", tmp_path / "pulled")
    verify_folder(tmp_path / "pulled", manifest)
    assert manifest.quantization.method == "static_int8" and manifest.model.source == str(root / "input" / "model")
    assert not (root / "output").exists()  # an s3:// output is published directly


def test_processing_job_without_a_recipe_says_what_to_give(tmp_path, python, cli_env):
    (tmp_path / "input" / "recipe").mkdir(parents=True)
    done = _job(python, _clean(cli_env) | {"LMI_PROCESSING_ROOT": str(tmp_path)}, "sagemaker-process")
    assert done.returncode == 2
    assert "no recipe in" in done.stderr and "ProcessingInput named 'recipe'" in " ".join(done.stderr.split())
