"""`lmi-compile run` with the vendor targets, as users run it (a subprocess): trtllm checkpoint
mode for fp16/bf16 needs no vendor library and is built here for real from the bundled model;
everything that needs the vendor stack fails before writing anything, naming the image to use."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from lmi_compile.plan import plan_recipe
from lmi_compile.recipe import Recipe
from lmi_compile.targets import trtllm
from lmi_runtime.artifact.folder import read_manifest, verify_folder


def _run(python, cli_env, tmp_path: Path, **sections) -> tuple[subprocess.CompletedProcess, Path, Recipe]:
    data = {"name": "smol", "source": {"uri": "bundled://smollm2"},
            "limits": {"max_batch_size": 8, "max_concurrent_requests": 64, "max_total_len": 2048},
            "output": {"uri": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}, **sections}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run([python, "-m", "lmi_compile", "run", str(path)], env=cli_env, capture_output=True,
                          text=True, timeout=300)
    return done, tmp_path / "out", Recipe.model_validate(data)


def test_trtllm_checkpoint_mode_builds_the_artifact_and_records_the_target(python, cli_env, tmp_path):
    done, out, recipe = _run(python, cli_env, tmp_path,
                             target={"backend": "trtllm", "instance_type": "ml.g5.xlarge"})
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(out)
    verify_folder(out, manifest)
    target = manifest.target
    assert target.backend == "trtllm" and target.dtype == "bfloat16"
    assert target.hardware.memory_per_device > 0  # weights + reserve + one full-length sequence, as planned
    assert target.hardware.model_dump(exclude_defaults=True, exclude={"memory_per_device"}) == {
        "kind": "cuda", "arch": "sm_86", "gpu": "NVIDIA A10G", "mode": "checkpoint", "instance_type": "ml.g5.xlarge"}
    assert target.toolchain["tensorrt_llm"] == trtllm.TRTLLM_VERSION
    assert manifest.quantization.method == "none"
    assert (out / "checkpoint" / "config.json").is_file() and (out / "checkpoint" / "model.safetensors").is_file()
    options = json.loads((out / trtllm.OPTIONS_FILE).read_text())
    assert options == trtllm.llm_api_options(plan_recipe(recipe))
    assert options["max_batch_size"] == 8 and options["tensor_parallel_size"] == 1

    served = subprocess.run([python, "-m", "lmi_runtime", str(out), "--port", "18431"], env=cli_env,
                            capture_output=True, text=True, timeout=120)
    said = " ".join(served.stderr.split())
    assert served.returncode == 2, said
    assert "this trtllm artifact was built for cuda sm_86, but this machine has CPU" in said


def test_trtllm_awq_without_modelopt_names_the_image_and_publishes_nothing(python, cli_env, tmp_path):
    done, out, _ = _run(python, cli_env, tmp_path, quantize={"method": "awq", "group_size": 64},
                        target={"backend": "trtllm", "instance_type": "ml.g5.xlarge"})
    assert done.returncode != 0
    said = " ".join(done.stderr.split())
    assert "awq quantization for TensorRT-LLM needs nvidia-modelopt" in said and "Dockerfile.trtllm" in said
    assert "fetch:" not in said  # refused before any download
    assert not out.exists()


def test_neuron_without_optimum_neuron_names_the_image_and_publishes_nothing(python, cli_env, tmp_path):
    done, out, _ = _run(python, cli_env, tmp_path, target={"backend": "neuron", "instance_type": "ml.inf2.xlarge"})
    assert done.returncode != 0
    said = " ".join(done.stderr.split())
    assert "needs optimum-neuron 0.4.5" in said and "Dockerfile.neuron" in said
    assert "fetch:" not in said
    assert not out.exists()
