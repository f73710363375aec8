"""`lmi-compile run` resumes from the stage cache: `--dry-run` says which stages the cache
already holds, and a run killed (SIGKILL) while quantizing is finished by the next run, which
reuses the fetched model and ends with its summary (`--json`)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from lmi_compile.pipeline import fetch_key
from lmi_compile.recipe_loader import load_recipe
from lmi_compile.stage_cache import StageCache
from lmi_compile.stages.fetch import fetch
from lmi_runtime.artifact.folder import read_manifest, verify_folder


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "resumed", "source": {"uri": "bundled://smollm2"},
        "quantize": {"method": "static_int8", "quality": {"max_tokens": 512, "max_ppl_increase": 0.05}},
        "target": {"backend": "torch", "tp_degree": 1}, "limits": {"max_batch_size": 4, "max_concurrent_requests": 16},
        "output": {"uri": str(tmp_path / "artifact"), "cache_dir": str(tmp_path / "cache")}}))
    return path


def _stages(stdout: str) -> dict[str, str]:
    """The dry run's stage table: stage → state."""
    table = stdout.split("stages (nothing is run):\n", 1)[1]
    return {line.split()[0]: " ".join(line.split()[1:3]) for line in table.splitlines() if line.strip()}


def test_dry_run_shows_what_the_stage_cache_holds(tmp_path, python, cli_env, smollm2_dir):
    recipe = _recipe(tmp_path)
    run = [python, "-m", "lmi_compile", "run", str(recipe), "--dry-run"]
    before = subprocess.run(run, env=cli_env, capture_output=True, text=True, timeout=120)
    assert before.returncode == 0, before.stderr
    assert _stages(before.stdout) == {"plan": "done torch,", "fetch": "would run", "quantize": "would run",
                                      "compile": "would run", "publish": "would run"}

    chosen = load_recipe(recipe)  # the fetch stage, run and cached as `run` does it
    fetch(chosen.source, tmp_path / "fetched")
    StageCache(tmp_path / "cache").put(fetch_key(chosen, None), tmp_path / "fetched", stage="fetch", move=True)
    after = subprocess.run(run, env=cli_env, capture_output=True, text=True, timeout=120)
    assert after.returncode == 0, after.stderr
    stages = _stages(after.stdout)
    assert stages["fetch"].startswith("cached") and stages["quantize"] == "would run"
    assert not (tmp_path / "artifact").exists()


@pytest.mark.slow  # two runs of the int8 pipeline: 20 s quiet, 1-2 min busy
def test_a_run_killed_while_quantizing_finishes_from_the_cache(tmp_path, python, cli_env):
    recipe = _recipe(tmp_path)
    first = subprocess.Popen([python, "-m", "lmi_compile", "run", str(recipe)], env=cli_env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 300
    for line in first.stderr:
        seen.append(line)
        if line.startswith("quantize: running") or time.monotonic() > deadline:
            break
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL and any(l.startswith("quantize: running") for l in seen), "".join(seen)
    assert not (tmp_path / "artifact").exists()

    second = subprocess.run([python, "-m", "lmi_compile", "run", str(recipe), "--json"], env=cli_env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "fetch: cached" in second.stderr and "quantize: running" in second.stderr
    summary = json.loads(second.stdout)
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["plan", "fetch", "quantize", "compile", "publish"]
    assert stages["fetch"]["cached"] and not stages["quantize"]["cached"] and stages["quantize"]["seconds"] > 0
    assert summary["artifact"] == str(tmp_path / "artifact") and summary["quantization"] == "static_int8"
    assert summary["quality"]["passed"] and summary["files_unchanged"] == 0
    manifest = read_manifest(tmp_path / "artifact")
    verify_folder(tmp_path / "artifact", manifest)
    assert summary["bytes"] == sum(f.size for f in manifest.all_files())


def test_dry_run_of_a_recipe_this_machine_cannot_build_says_where_run_would_stop(tmp_path, python, cli_env):
    """A GPU recipe dry-runs on a workstation: the plan and the stages, and why `run` would stop."""
    recipe = tmp_path / "gpu.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "gpu", "source": {"uri": str(Path(__file__).parents[1] / "plan" / "data" / "llama-2-7b")},
        "quantize": {"method": "fp8"}, "target": {"backend": "trtllm", "instance_type": "ml.g5.12xlarge"}}))
    done = subprocess.run([python, "-m", "lmi_compile", "run", str(recipe), "--dry-run"], env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert "run would stop before fetching: fp8 needs FP8 tensor cores (sm_89+)" in said
    assert list(_stages(done.stdout)) == ["plan", "fetch", "compile", "publish"]
