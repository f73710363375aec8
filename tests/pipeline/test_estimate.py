"""The plan's cost estimates: sizes chosen for the device and said so, recipe values kept, and a
warning that names the setting when a stage would run long."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lmi_compile.plan import make_plan
from lmi_compile.plan.instances import instance_hardware
from lmi_compile.recipe import Recipe
from lmi_runtime.hardware import GiB, Hardware

DATA = Path(__file__).resolve().parents[1] / "plan" / "data"
LLAMA = json.loads((DATA / "llama-2-7b" / "config.json").read_text())
TWO_CORES = Hardware(kind="cpu", count=1, name="test CPU", memory_bytes=24 * GiB, cores=2, source="test")


def _recipe(**quantize) -> Recipe:
    return Recipe.model_validate({"source": {"uri": "meta-llama/Llama-2-7b-hf"}, "quantize": quantize,
                                  "target": {"backend": "torch", "tp_degree": 1}})


def _stage(plan, name: str):
    return next(s for s in plan.estimates.stages if s.stage == name)


def test_cpu_sizes_are_small_and_stated_gpu_sizes_are_the_papers():
    on_cpu = make_plan(_recipe(method="awq"), LLAMA, TWO_CORES).estimates
    chosen = {s.setting: s.value for s in on_cpu.sizes}
    assert chosen["quantize.calibration.num_samples"] == "16" and chosen["quantize.awq_grid"] == "10"
    assert "CPU" in on_cpu.sizes[0].reason and on_cpu.device.startswith("cpu (2 cores")
    on_gpu = make_plan(_recipe(method="awq"), LLAMA, instance_hardware("ml.p5.48xlarge")).estimates
    chosen = {s.setting: s.value for s in on_gpu.sizes}
    assert (chosen["quantize.calibration.num_samples"], chosen["quantize.calibration.seq_len"]) == ("128", "512")
    assert on_gpu.device.startswith("cuda (NVIDIA H100")


def test_recipe_values_are_kept_and_not_listed_as_chosen():
    plan = make_plan(_recipe(method="gptq", calibration={"num_samples": 4}), LLAMA, TWO_CORES)
    settings = {s.setting for s in plan.estimates.sizes}
    assert "quantize.calibration.num_samples" not in settings and "quantize.calibration.seq_len" in settings
    assert "4 x 256 calibration tokens" in _stage(plan, "quantize").basis


def test_a_7b_awq_on_two_cores_warns_and_names_the_settings():
    plan = make_plan(_recipe(method="awq", calibration={"num_samples": 128, "seq_len": 512}), LLAMA, TWO_CORES)
    quantize = _stage(plan, "quantize")
    assert quantize.seconds > 600 and quantize.peak_memory_bytes > 2 * 6.7e9 * 4
    warning = next(w for w in plan.estimates.warnings() if w.startswith("quantize"))
    assert "awq_grid (now 10)" in warning and "num_samples (now 128)" in warning and "--device cuda" in warning
    # the same recipe on an H100 is minutes, without a warning
    gpu = make_plan(_recipe(method="awq", calibration={"num_samples": 128, "seq_len": 512}), LLAMA,
                    instance_hardware("ml.p5.48xlarge"))
    assert _stage(gpu, "quantize").seconds < 600 and not [w for w in gpu.estimates.warnings() if w.startswith("quantize")]


def test_run_dry_run_prints_the_estimates_and_runs_nothing(tmp_path, python, cli_env):
    recipe = tmp_path / "r.yaml"
    out = tmp_path / "out"
    recipe.write_text(f"source: {{uri: bundled://smollm2}}\nquantize: {{method: awq}}\n"
                      f"target: {{backend: torch, tp_degree: 1}}\noutput: {{uri: {out}}}\n")
    run = subprocess.run([python, "-m", "lmi_compile", "run", str(recipe), "--dry-run"], env=cli_env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Estimated cost on cpu" in run.stdout and "quantize.awq_grid=10" in run.stdout
    assert not out.exists()
