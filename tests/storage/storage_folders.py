"""Small but real model and artifact folders for the storage tests (a module with a unique
name, so that test files can import it whatever other test areas call their conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from lmi_runtime.artifact.folder import build_manifest, write_manifest
from lmi_runtime.artifact.manifest import ModelInfo, TargetInfo


def write_model(folder: Path, shards: int = 1, config: dict | None = None, tokenizer: bool = True) -> Path:
    """A small but real Hugging Face-style folder: config, tokenizer, safetensors (+ index)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    if tokenizer:
        (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}))
    rng = np.random.default_rng(0)
    tensors = {f"model.layers.{i}.weight": rng.standard_normal((64, 64), dtype=np.float32) for i in range(4)}
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
        return folder
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def write_artifact(folder: Path, ranks: int = 2, files_per_rank: int = 3, size: int = 256 << 10, seed: int = 0) -> Path:
    """An artifact-shaped folder (shared files + rank{N}/ files) with its manifest."""
    rng = np.random.default_rng(seed)
    (folder / "tokenizer.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text('{"model": "bpe"}')
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    for rank in range(ranks):
        for i in range(files_per_rank):
            path = folder / f"rank{rank}" / f"shard-{i}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.bytes(size + i))
    manifest = build_manifest(folder, model=ModelInfo(source="test"), target=TargetInfo(backend="torch", tp_degree=ranks))
    write_manifest(folder, manifest)
    return folder
