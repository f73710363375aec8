"""Loading what lmi-serve is given: an artifact with weights under rank0/, a compressed-tensors
quantized checkpoint, the transformers fallback backend, the CLI end to end, and a failing
request that must fail alone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import torch

from lmi_runtime.artifact.manifest import FileEntry, Manifest, ModelInfo, TargetInfo
from lmi_runtime.backends.loader import load_backend
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.engine import LLMEngine
from lmi_runtime.engine.request import FinishEvent, FinishReason, SamplingParams, TokenEvent
from lmi_runtime.errors import ArtifactError, ModelFolderError
from lmi_runtime.locate import inspect_folder, resolve_location

from served import free_port, lmi_serve

from .conftest import FlakyBackend

PROMPT = "The capital of France is"


def run_engine(backend, prompts: list[str], n: int, **config) -> list[list]:
    engine = LLMEngine(backend, EngineConfig(**config))
    events: list[list] = [[] for _ in prompts]
    for prompt, sink in zip(prompts, events):
        engine.add_request(backend.tokenizer(prompt)["input_ids"], SamplingParams(max_new_tokens=n), sink.append)
    while engine.has_work():
        engine.step()
    return events


def token_ids(events: list) -> tuple[int, ...]:
    return tuple(e.id for e in events if isinstance(e, TokenEvent))


@pytest.fixture(scope="module")
def artifact(smollm2_dir, tmp_path_factory) -> Path:
    """An artifact root: config + tokenizer at the root, the weights under rank0/."""
    root = tmp_path_factory.mktemp("artifact")
    shared, rank0 = [], []
    for item in smollm2_dir.iterdir():
        if item.suffix == ".safetensors":
            (root / "rank0").mkdir(exist_ok=True)
            target = root / "rank0" / item.name
            os.link(item, target)  # a hard link: artifacts may not hold symlinks out of themselves
            rank0.append(target)
        else:
            shutil.copy(item, root / item.name)
            shared.append(root / item.name)

    def entry(path: Path) -> FileEntry:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return FileEntry(path=path.relative_to(root).as_posix(), size=path.stat().st_size, sha256=digest)

    manifest = Manifest(model=ModelInfo(source="bundled://smollm2", architecture="LlamaForCausalLM"),
                        target=TargetInfo(backend="torch"),
                        files={"shared": [entry(p) for p in shared], "rank0": [entry(p) for p in rank0]})
    (root / "lmi-artifact.json").write_text(manifest.model_dump_json(indent=2))
    return root


def test_artifact_with_rank0_weights_loads(artifact, reference):
    files = inspect_folder(artifact)
    assert files.root == artifact.resolve() and [w.parent.name for w in files.weights] == ["rank0"]
    with files.hf_folder() as folder:
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    backend = load_backend(files, EngineConfig(max_batch_size=2))
    assert token_ids(run_engine(backend, [PROMPT], 8)[0]) == reference(PROMPT, 8)


def test_artifact_problems_are_refused(artifact, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken, symlinks=True)
    manifest = json.loads((broken / "lmi-artifact.json").read_text())
    target = manifest["profiles"]["default"]["target"]
    target["backend"] = "trtllm"
    (broken / "lmi-artifact.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="compiled for the 'trtllm' backend"):
        inspect_folder(broken)
    target["backend"] = "torch"
    target["hardware"] = {"kind": "cuda", "arch": "sm_90"}  # e.g. an H100 kernel cache
    (broken / "lmi-artifact.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="built for cuda sm_90, but this machine has"):
        inspect_folder(broken)
    target["hardware"] = {"kind": "any"}
    manifest["files"]["rank0"][0]["path"] = "../../etc/passwd"
    (broken / "lmi-artifact.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="unsafe manifest path '../../etc/passwd'"):
        inspect_folder(broken)
    (broken / "rank0" / "model.safetensors").unlink()
    manifest["files"]["rank0"][0]["path"] = "rank0/model.safetensors"
    (broken / "lmi-artifact.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="missing: rank0/model.safetensors"):
        inspect_folder(broken)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelFolderError, match="no safetensors") as err:
        inspect_folder(pickled)
    assert "pickle" in err.value.hint


def test_a_corrupt_tokenizer_is_named(smollm2_dir, tmp_path):
    for name, text, said in (("tokenizer.json", '{"broken":', "tokenizer.json does not parse"),
                             ("tokenizer_config.json", "[]", "tokenizer_config.json is not a JSON object")):
        folder = tmp_path / name
        folder.mkdir()
        for item in smollm2_dir.iterdir():
            (os.link if item.suffix == ".safetensors" else shutil.copy)(item, folder / item.name)
        (folder / name).write_text(text)
        with pytest.raises(ModelFolderError, match=said) as err:
            load_backend(inspect_folder(folder), EngineConfig(device="cpu"))
        assert "fetch the model again" in err.value.hint


def test_resolve_location(tmp_path, monkeypatch):
    monkeypatch.setattr("lmi_runtime.locate.SAGEMAKER_MODEL_DIR", tmp_path / "absent")
    assert resolve_location(None, env={"HF_MODEL_ID": str(tmp_path)}) == tmp_path
    assert resolve_location(str(tmp_path)) == tmp_path
    with pytest.raises(ModelFolderError, match="HF_MODEL_ID is unset"):
        resolve_location(None, env={})
    with pytest.raises(ModelFolderError, match="not a location lmi-serve can read"):
        resolve_location("gs://bucket/model")
    with pytest.raises(ModelFolderError, match="not a folder"):
        resolve_location(str(tmp_path / "nope"))


def test_sagemaker_model_dir_may_point_elsewhere(tmp_path, monkeypatch):
    """LMI's pattern: /opt/ml/model holds only a serving.properties naming the model."""
    model_dir, weights = tmp_path / "opt-ml-model", tmp_path / "weights"
    model_dir.mkdir()
    weights.mkdir()
    monkeypatch.setattr("lmi_runtime.locate.SAGEMAKER_MODEL_DIR", model_dir)
    (model_dir / "serving.properties").write_text(f"engine=Python\noption.model_id={weights}\n")
    assert resolve_location(None, env={}) == weights
    (model_dir / "config.json").write_text("{}")  # a model folder itself: served as it is
    assert resolve_location(None, env={}) == model_dir


@pytest.fixture(scope="module")
def quantized_dir(smollm2_dir, tmp_path_factory) -> Path:
    """A real compressed-tensors int4 g64 checkpoint made with llm-compressor (round to nearest)."""
    pytest.importorskip("llmcompressor")
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("w4g64")
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64}
    oneshot(model=model, recipe=QuantizationModifier(config_groups={"g": {"targets": ["Linear"], "weights": weights}},
                                                     ignore=["lm_head"]))
    model.save_pretrained(out, save_compressed=True)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(out)
    return out


def test_compressed_tensors_checkpoint_loads_dequantized(quantized_dir, backend, reference):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    quantized = load_backend(inspect_folder(quantized_dir), EngineConfig(max_batch_size=2))
    assert quantized.info.details["quantization"] == "compressed-tensors"
    hf = AutoModelForCausalLM.from_pretrained(quantized_dir, dtype=torch.float32,
                                              quantization_config=CompressedTensorsConfig(run_compressed=False))
    ids = quantized.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    expected = tuple(hf.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist())
    got = token_ids(run_engine(quantized, [PROMPT], 8)[0])
    assert got == expected
    qkv = quantized.model.model.layers[0].self_attn.qkv_proj.weight
    dense = backend.model.model.layers[0].self_attn.qkv_proj.weight
    assert not torch.equal(qkv, dense)  # the quantized weights, not the original ones


def test_transformers_fallback_backend(smollm2_dir, reference):
    fallback = load_backend(inspect_folder(smollm2_dir), EngineConfig(backend="transformers", max_batch_size=3))
    assert fallback.info.details["backend"] == "transformers"
    prompts = ["The capital of France is", "def fibonacci(n):", "Water boils at"]
    results = run_engine(fallback, prompts, 6, max_batch_size=3)
    assert [token_ids(r) for r in results] == [reference(p, 6) for p in prompts]


def test_a_failing_request_fails_alone(backend, reference):
    from .conftest import sibling_backend

    own = sibling_backend(backend, 3)
    poison_prompt = "Water boils at"
    flaky = FlakyBackend(own, own.tokenizer(poison_prompt)["input_ids"][-1])
    prompts = [PROMPT, poison_prompt, "def fibonacci(n):"]
    engine = LLMEngine(flaky, EngineConfig(max_batch_size=3))  # type: ignore[arg-type]
    events: list[list] = [[] for _ in prompts]
    for prompt, sink in zip(prompts, events):
        engine.add_request(own.tokenizer(prompt)["input_ids"], SamplingParams(max_new_tokens=6), sink.append)
    while engine.has_work():
        engine.step()
    finals = [e[-1] for e in events]
    assert all(isinstance(f, FinishEvent) for f in finals)
    assert finals[1].reason == FinishReason.ERROR and "kernel failure" in finals[1].error
    assert len(token_ids(events[1])) == 2  # it failed mid-way, after two tokens
    assert [token_ids(events[i]) for i in (0, 2)] == [reference(prompts[i], 6) for i in (0, 2)]
    assert own.kv.blocks.free_blocks == own.kv.blocks.num_blocks - 1  # every block back in the pool


def test_lmi_serve_cli_end_to_end(artifact, cli_env, python, tmp_path):
    env = {**cli_env, "MAX_BATCH_SIZE": "4", "OPTION_MAX_MODEL_LEN": "512"}
    with lmi_serve(python, str(artifact), env, tmp_path / "serve.log") as url:
        res = httpx.post(f"{url}/invocations", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 3}})
        assert res.json() == {"generated_text": " Paris.\n"}
        too_long = httpx.post(f"{url}/invocations", json={"inputs": "hi " * 600})
        assert too_long.status_code == 413 and "at most 511" in too_long.json()["error"]
    text = (tmp_path / "serve.log").read_text()
    assert "loaded" in text and "max batch 4" in text and "max_model_len 512" in text


def flat(text: str) -> str:
    """Rich wraps long lines; compare with whitespace collapsed."""
    return " ".join(text.split())


def test_lmi_serve_cli_errors(cli_env, python, tmp_path):
    missing = subprocess.run([python, "-m", "lmi_runtime", str(tmp_path / "nope")], env=cli_env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "is not a folder" in flat(missing.stderr)
    env = {**cli_env, "MAX_BATCH_SIZE": "lots"}
    bad_env = subprocess.run([python, "-m", "lmi_runtime", str(tmp_path)], env=env, capture_output=True, text=True,
                             timeout=60)
    assert bad_env.returncode == 2 and "MAX_BATCH_SIZE='lots'" in flat(bad_env.stderr)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    no_weights = subprocess.run([python, "-m", "lmi_runtime", str(tmp_path), "--port", str(free_port())],
                                env={**cli_env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=60)
    assert no_weights.returncode == 2 and "no safetensors weights" in flat(no_weights.stderr)
