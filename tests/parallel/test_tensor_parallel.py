"""Tensor parallelism on CPU through gloo: the compile stage's per-rank shards, and TP=N greedy
tokens equal to TP=1 with one process per rank (rank 0 here, the workers as subprocesses)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

from lmi_compile.plan.modelspec import ModelSpec
from lmi_compile.plan.parallel import valid_tp_degrees
from lmi_compile.stages.publish import publish
from lmi_compile.targets import torch_target
from lmi_runtime.artifact.folder import build_manifest, write_manifest
from lmi_runtime.artifact.manifest import ModelInfo
from lmi_runtime.backends.loader import load_backend
from lmi_runtime.backends.tp_sharding import check_degree, shard_tensor
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.engine import LLMEngine
from lmi_runtime.engine.offline import generate
from lmi_runtime.engine.request import SamplingParams
from lmi_runtime.errors import ConfigError, StorageError
from lmi_runtime.locate import inspect_folder, open_location
from lmi_runtime.storage.s3 import S3Storage
from served import lmi_serve
from tiny_llama import save_tiny_llama

NEW_TOKENS = 10


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A random Llama with 4 heads / 2 KV heads and every bias on (row-parallel biases too)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         attention_bias=True, mlp_bias=True, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper logits than the 0.02 init, so greedy picks are well separated
        model.lm_head.weight.mul_(20)
        for name, param in model.named_parameters():
            if name.endswith(".bias"):  # initialized to zeros: make a wrong split of them visible
                param.normal_(std=0.02)
    model.save_pretrained(out, safe_serialization=True)
    for file in smollm2_dir.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            (out / file.name).write_bytes(file.read_bytes())
    return out


def tp_artifact(model_dir: Path, out: Path, tp: int) -> Path:
    torch_target.build(model_dir, out, tp_degree=tp)
    write_manifest(out, build_manifest(out, model=ModelInfo(source=str(model_dir)),
                                       target=torch_target.describe(tp, "float32")))
    return out


@pytest.fixture(scope="module")
def tiny_tp2(tiny_dir, tmp_path_factory) -> Path:
    return tp_artifact(tiny_dir, tmp_path_factory.mktemp("tiny-tp2"), 2)


def greedy(backend, prompts: list[list[int]], joins: list[int]) -> list[list[int]]:
    engine = LLMEngine(backend, EngineConfig(max_batch_size=4))
    done = generate(engine, prompts, SamplingParams(max_new_tokens=NEW_TOKENS), join_at_step=joins)
    return [c.token_ids for c in done]


def test_shards_concatenate_back_to_the_checkpoint(tiny_dir, tiny_tp2):
    full = load_file(str(tiny_dir / "model.safetensors"))
    ranks = [load_file(str(tiny_tp2 / f"rank{r}" / "model.safetensors")) for r in range(2)]
    assert not list(tiny_tp2.glob("*.safetensors")), "weights belong under rank{r}/"
    for name, tensor in full.items():
        parts = [shards[name] for shards in ranks]
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            joined = torch.cat(parts, dim=1)
        elif name.endswith(("o_proj.bias", "down_proj.bias")):
            joined = parts[0] + parts[1]  # added once: rank 0 holds it, rank 1 zeros
            assert not parts[1].any()
        elif any(p in name for p in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            joined = torch.cat(parts, dim=0)
            assert parts[0].shape[0] == tensor.shape[0] // 2
        else:  # norms, embeddings, lm_head: replicated
            assert all(torch.equal(p, tensor) for p in parts), name
            joined = parts[0]
        assert torch.equal(joined, tensor), name
    manifest = inspect_folder(tiny_tp2, rank=1).manifest
    assert manifest.target.tp_degree == 2
    assert [e.path for e in manifest.files["rank1"]] == ["rank1/model.safetensors"]


def test_more_ranks_than_kv_heads_replicate_each_kv_head():
    k = torch.arange(2 * 3 * 5, dtype=torch.float32).view(2 * 3, 5)  # 2 KV heads of dim 3
    shards = [shard_tensor("model.layers.0.self_attn.k_proj.weight", k, r, 4, 2, 3) for r in range(4)]
    assert torch.equal(shards[0], k[:3]) and torch.equal(shards[1], k[:3])
    assert torch.equal(shards[2], k[3:]) and torch.equal(shards[3], k[3:])


def test_the_planner_and_the_shards_allow_the_same_degrees():
    """One TP rule: degree 8 splits the 8 heads but not the MLP width 12, so neither the
    planner offers it nor the compile stage's sharding accepts it."""
    spec = ModelSpec.from_config({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 8,
                                  "num_hidden_layers": 2, "vocab_size": 100, "intermediate_size": 12})
    assert valid_tp_degrees(spec, 8) == [1, 2, 4]
    with pytest.raises(ConfigError, match="MLP width 12"):
        check_degree(8, 8, 12, 8)
    check_degree(8, 8, 12, 4)


def test_an_invalid_degree_is_refused_with_the_valid_ones(smollm2_dir, tmp_path):
    with pytest.raises(ConfigError) as err:
        torch_target.build(smollm2_dir, tmp_path / "out", tp_degree=2)
    assert "9 attention heads, 3 KV heads" in str(err.value)
    assert "valid degrees: 1, 3" in err.value.hint
    assert not (tmp_path / "out").exists()


PROMPTS = ["The capital of France is", "Write a haiku about the sea, the wind and the long grey rocks of the coast",
           "1, 2, 3,", "def fib(n):"]
JOINS = [0, 0, 2, 5]  # the last two join a running batch


@pytest.mark.parametrize("model, tp", [("tiny", 2), ("smollm2", 3)])
def test_tp_greedy_tokens_equal_one_rank(model, tp, tiny_dir, tiny_tp2, smollm2_dir, tmp_path, capfd):
    """~45 s for the bundled model on 2 busy cores: TP=1, then three rank processes each loading torch."""
    folder = tiny_dir if model == "tiny" else smollm2_dir
    artifact = tiny_tp2 if model == "tiny" else tp_artifact(smollm2_dir, tmp_path / "tp3", 3)
    one = load_backend(inspect_folder(folder), EngineConfig(max_batch_size=4))
    prompts = [one.tokenizer(p)["input_ids"] for p in PROMPTS]
    expected = greedy(one, prompts, JOINS)
    heads, kv_heads = one.model.args.num_heads, one.model.args.num_kv_heads
    del one
    split = load_backend(inspect_folder(artifact), EngineConfig(max_batch_size=4))
    try:
        assert split.model.args.num_heads == heads // tp
        assert split.kv.pool.shape[3] == kv_heads // tp  # the cache holds this rank's KV heads only
        assert greedy(split, prompts, JOINS) == expected
    finally:
        split.tp.close()
    logs = capfd.readouterr().err
    for rank in range(1, tp):  # each worker read its own shard and nothing else
        line = re.search(rf"rank {rank} read (\d+) bytes of weights from (.*)", logs)
        assert line and line.group(2) == f"rank{rank}/model.safetensors", logs[-2000:]
        assert int(line.group(1)) == (artifact / f"rank{rank}" / "model.safetensors").stat().st_size


def test_a_dead_worker_fails_the_next_step_clearly(tiny_tp2):
    backend = load_backend(inspect_folder(tiny_tp2), EngineConfig(max_batch_size=2))
    try:
        worker = backend.tp.group.workers[0]
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        with pytest.raises(RuntimeError, match="tensor-parallel rank 1 has exited"):
            backend.score([1, 2, 3])
    finally:
        backend.tp.close()


def test_a_degree_that_does_not_match_the_artifact_is_refused(tiny_tp2):
    with pytest.raises(ConfigError, match="degree 4 was asked for, but the artifact is split for 2"):
        load_backend(inspect_folder(tiny_tp2), EngineConfig(tensor_parallel_degree=4))


def test_lmi_serve_answers_on_a_tp_artifact_from_s3(tiny_tp2, python, cli_env, s3_env, bucket, tmp_path):
    """Published, streamed (every rank's shard on this host, loaded as it lands), served by two processes."""
    uri = f"s3://{bucket}/tp2"
    publish(tiny_tp2, uri)
    log = tmp_path / "serve.log"
    env = cli_env | s3_env | {"LMI_SERVE_CACHE": str(tmp_path / "serve-cache")}
    with lmi_serve(python, uri, env, log, timeout=90) as url:
        reply = httpx.post(f"{url}/invocations", json={"inputs": "The sea is", "parameters": {"max_new_tokens": 6}},
                           timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["generated_text"]
    text = log.read_text()
    assert "rank 0 read" in text and "from rank0/model.safetensors" in text
    assert re.search(r"rank 1 read \d+ bytes of weights from rank1/model.safetensors\n", text), text[-2000:]
    assert re.search(r"downloaded 2 weight files \([\d.]+ GB\) in [\d.]+ s while loading", text), text[-2000:]


def opened_by_a_worker(path: Path) -> bool:
    """Whether a tensor-parallel worker of this process holds `path` open."""
    target, me = os.path.realpath(path), str(os.getpid())
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.name == me or b"worker_main" not in (proc / "cmdline").read_bytes():
                continue
            if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                return True
        except OSError:  # a process that ended, or one we may not look into
            continue
    return False


def workers_of_this_process() -> list[str]:
    me = str(os.getpid())
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            if parent == me and b"worker_main" in (proc / "cmdline").read_bytes():
                found.append(proc.name)
        except (OSError, IndexError):
            continue
    return found


def test_a_tp_artifact_from_s3_loads_every_rank_while_it_streams(tiny_dir, tiny_tp2, s3_env, bucket, tmp_path, monkeypatch,
                                                                capfd):
    """Rank 0 streams every rank's weights; the worker reads rank 1's as they land (its second
    half is held back until the worker has the file open), and the tokens equal one rank's."""
    uri = f"s3://{bucket}/tp2-streamed"
    publish(tiny_tp2, uri)
    one = load_backend(inspect_folder(tiny_dir), EngineConfig(max_batch_size=4))
    prompts = [one.tokenizer(p)["input_ids"] for p in PROMPTS]
    expected = greedy(one, prompts, JOINS)
    del one
    stream_to = S3Storage.stream_to

    def held_back(storage, key: str, local: Path) -> None:
        if not key.endswith("rank1/model.safetensors"):
            return stream_to(storage, key, local)
        stream_to(storage, key, tmp_path / "rank1-whole")
        data = (tmp_path / "rank1-whole").read_bytes()
        local.parent.mkdir(parents=True, exist_ok=True)
        with local.open("wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            deadline = time.monotonic() + 120
            while not opened_by_a_worker(local) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1)  # the worker reads up to the half and waits there
            out.write(data[len(data) // 2:])

    monkeypatch.setattr(S3Storage, "stream_to", held_back)
    location = open_location(uri, s3_env | {"LMI_SERVE_CACHE": str(tmp_path / "cache")})
    assert sorted(location.arriving) == ["rank0/model.safetensors", "rank1/model.safetensors"]
    files = inspect_folder(location.path, arriving=location.arriving)
    split = load_backend(files, EngineConfig(max_batch_size=4))
    try:
        files.wait_verified()
        assert greedy(split, prompts, JOINS) == expected
    finally:
        split.tp.close()
    logs = capfd.readouterr().err
    assert "rank1/model.safetensors is still downloading (rank 0 fetches it): reading it as it lands" in logs, logs[-3000:]
    assert re.search(r"rank 1 read \d+ bytes of weights from rank1/model.safetensors", logs), logs[-3000:]


@pytest.mark.timeout(300)
def test_a_rank_whose_weights_fail_to_download_fails_the_start_at_once(tiny_tp2, s3, s3_env, bucket, tmp_path):
    """Rank 1's object is gone: rank 0 fails the start naming it (before any collective, which
    the worker left waiting would hang), and its worker ends with it."""
    uri, key = f"s3://{bucket}/tp2-broken", "tp2-broken/rank1/model.safetensors"
    publish(tiny_tp2, uri)
    s3.client().delete_object(Bucket=bucket, Key=key)
    location = open_location(uri, s3_env | {"LMI_SERVE_CACHE": str(tmp_path / "cache")})
    files = inspect_folder(location.path, arriving=location.arriving)
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"{bucket}/{key}"):
        load_backend(files, EngineConfig(max_batch_size=2))
    assert time.monotonic() - started < 120  # not a collective's timeout (600 s)
    assert workers_of_this_process() == []
    assert not (location.path / "rank1" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def tiny_int4(smollm2_dir, tmp_path_factory) -> Path:
    """A tiny Llama quantized by llm-compressor: int4, asymmetric groups of 32 (no calibration);
    every input width holds an even number of groups."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny-int4")
    dense = save_tiny_llama(out / "dense", smollm2_dir, hidden=64, intermediate=128, max_positions=512)
    model = AutoModelForCausalLM.from_pretrained(dense)
    groups = {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": False,
                                                             "strategy": "group", "group_size": 32}}}
    oneshot(model=model, recipe=[QuantizationModifier(config_groups=groups, ignore=["lm_head"])])
    model.save_pretrained(out, save_compressed=True)
    for file in dense.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            (out / file.name).write_bytes(file.read_bytes())
    return out


def test_quantized_layers_split_packed_and_tp_tokens_equal_one_rank(tiny_int4, tmp_path):
    """Each rank's shard is pre-packed (int4 groups split whole, scales with their rows), the
    ranks serve it packed, and greedy tokens equal one rank's packed model."""
    artifact = tp_artifact(tiny_int4, tmp_path / "int4-tp2", 2)
    settings = dict(max_batch_size=4, quantized_kernels="on")
    one = load_backend(inspect_folder(tiny_int4), EngineConfig(**settings))
    prompts = [one.tokenizer(p)["input_ids"] for p in PROMPTS]
    expected = greedy(one, prompts, JOINS)
    assert one.info.details["quantized_layers"] == "int4 g32 ×14"
    del one
    split = load_backend(inspect_folder(artifact), EngineConfig(**settings))
    try:
        assert split.info.details["quantized_layers"] == "int4 g32 ×14"
        down = split.model.model.layers[0].mlp.down_proj
        assert down.q.shape == (64, 128 // 2 // 2) and down.scale.shape == (64, 128 // 32 // 2)
        assert greedy(split, prompts, JOINS) == expected
    finally:
        split.tp.close()


def test_quantized_splits_are_refused_before_anything_is_written(tiny_dir, tmp_path):
    """W8A8: a row-parallel rank would scale its slice of each token differently; int4 whose
    groups do not split evenly (the MLP width 96 holds 3 groups of 32)."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    for scheme, refusal in (("W8A8", "activations quantized per token"), ("W4A16_ASYM", "3 int4 groups of")):
        model = AutoModelForCausalLM.from_pretrained(tiny_dir)
        groups = {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "group",
                                                                 "group_size": 32, "symmetric": False}}}
        modifier = (QuantizationModifier(scheme=scheme, targets=["Linear"], ignore=["lm_head"]) if scheme == "W8A8"
                    else QuantizationModifier(config_groups=groups, ignore=["lm_head"]))
        oneshot(model=model, recipe=[modifier])
        model.save_pretrained(tmp_path / scheme, save_compressed=True)
        with pytest.raises(ConfigError, match=refusal):
            torch_target.build(tmp_path / scheme, tmp_path / f"out-{scheme}", tp_degree=2)
        assert not (tmp_path / f"out-{scheme}").exists()
    other = tmp_path / "autogptq"  # quantized in a format the packed layers do not read
    shutil.copytree(tiny_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(ConfigError, match="cannot be split"):
        torch_target.build(other, tmp_path / "out-gptq", tp_degree=2)
    assert not (tmp_path / "out-gptq").exists()
