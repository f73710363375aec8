"""A large shape served with tensor parallelism from per-rank shards: what each rank reads.

  python3 scripts/tp_load.py --tokenizer DIR [--shape llama2-70b] [--layers 1] [--tp 2] [--device cpu|cuda]

Random bf16 weights of the shape, with its layers reduced to `--layers` (so that TP=1 fits one
device or this machine's memory: the output says so), are split by the compile stage
(`torch_target.build`) into rank folders. The model is then served at TP=N, one process per rank
(gloo on CPU, NCCL on CUDA), and at TP=1 from the unsplit folder. For each rank the script shows
the files and bytes its loader read (the loader's own log line), the load time of each degree,
and whether their greedy tokens agree. Writes tp_load.json to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "runtime"), str(REPO / "compile")]

import torch  # noqa: E402

from bench_gpu import SHAPES, copy_tokenizer  # noqa: E402

READ = re.compile(r"rank (\d+) read (\d+) bytes of weights from (.*)")


def random_folder(shape: dict, tokenizer_dir: Path, out: Path) -> Path:
    """The Hugging Face folder of a random Llama of `shape` (bf16, std 0.02), written tensor by
    tensor without building the model."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    config = LlamaConfig(**shape, torch_dtype="bfloat16", tie_word_embeddings=False)
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    gen = torch.Generator().manual_seed(0)

    def rand(*size: int) -> torch.Tensor:
        return (torch.randn(*size, generator=gen) * 0.02).to(torch.bfloat16)

    ones = torch.ones(h, dtype=torch.bfloat16)
    state = {"model.embed_tokens.weight": rand(config.vocab_size, h), "model.norm.weight": ones.clone(),
             "lm_head.weight": rand(config.vocab_size, h)}
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}."
        state |= {p + "input_layernorm.weight": ones.clone(), p + "post_attention_layernorm.weight": ones.clone(),
                  p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.k_proj.weight": rand(kv, h),
                  p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, h),
                  p + "mlp.gate_proj.weight": rand(i, h), p + "mlp.up_proj.weight": rand(i, h),
                  p + "mlp.down_proj.weight": rand(h, i)}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    copy_tokenizer(tokenizer_dir, out)
    return out


@contextmanager
def stderr_to(path: Path):
    """Everything written to fd 2 meanwhile, the rank processes started meanwhile included."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def serve(folder: Path, device: str, prompts: list[list[int]], new: int, log_file: Path) -> dict:
    from lmi_runtime.backends.loader import load_backend
    from lmi_runtime.engine.config import EngineConfig
    from lmi_runtime.engine.engine import LLMEngine
    from lmi_runtime.engine.offline import generate
    from lmi_runtime.engine.request import SamplingParams
    from lmi_runtime.locate import inspect_folder

    config = EngineConfig(device=device, dtype="float32" if device == "cpu" else "bfloat16", max_batch_size=2,
                          max_model_len=256, kv_cache_gib=0.25, enforce_eager=True)
    started = time.perf_counter()
    with stderr_to(log_file):
        backend = load_backend(inspect_folder(folder), config)
        load_s = time.perf_counter() - started
        backend.info.eos_token_ids = set()
        try:
            done = generate(LLMEngine(backend, config), prompts, SamplingParams(max_new_tokens=new))
        finally:
            if backend.tp is not None:
                backend.tp.close()
    reads = {int(rank): {"bytes": int(size), "files": files.strip()} for rank, size, files in READ.findall(log_file.read_text())}
    return {"load_s": load_s, "reads": reads, "tokens": [c.token_ids for c in done]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True, help="a folder with tokenizer files")
    parser.add_argument("--shape", default="llama2-70b", choices=sorted(SHAPES))  # bench_gpu's shapes
    parser.add_argument("--layers", type=int, default=1, help="decoder layers kept (the shape's own count: all)")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s rank0 %(name)s: %(message)s")
    from lmi_compile.targets import torch_target
    from lmi_runtime.artifact.folder import build_manifest, write_manifest
    from lmi_runtime.artifact.manifest import ModelInfo

    shape = SHAPES[args.shape] | {"num_hidden_layers": args.layers}
    results: dict = {"shape": args.shape, "layers": f"{args.layers} of {SHAPES[args.shape]['num_hidden_layers']}",
                     "tp": args.tp, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        folder = random_folder(shape, args.tokenizer, Path(tmp) / "model")
        artifact = Path(tmp) / f"tp{args.tp}"
        torch_target.build(folder, artifact, tp_degree=args.tp, log=lambda line: None)
        write_manifest(artifact, build_manifest(artifact, model=ModelInfo(source=args.shape),
                                                target=torch_target.describe(args.tp, "bfloat16")))
        results["rank_files"] = {p.parent.name: p.stat().st_size for p in sorted(artifact.glob("rank*/*.safetensors"))}
        results["checkpoint_bytes"] = (folder / "model.safetensors").stat().st_size
        prompts = [list(range(100, 116)), list(range(2000, 2005))]
        results[f"tp{args.tp}"] = serve(artifact, args.device, prompts, args.new_tokens, Path(tmp) / "split.log")
        results["tp1"] = serve(folder, args.device, prompts, args.new_tokens, Path(tmp) / "one.log")
    split, one = results[f"tp{args.tp}"], results["tp1"]
    results["tokens_equal"] = split["tokens"] == one["tokens"]
    print(f"\n{args.shape} with {results['layers']} layers, {args.device}, random bf16 weights "
          f"({results['checkpoint_bytes'] / 2**30:.2f} GiB checkpoint)")
    for rank, read in sorted(split["reads"].items()):
        shard = results["rank_files"].get(f"rank{rank}", 0)
        print(f"  TP={args.tp} rank {rank}: read {read['bytes'] / 2**30:.2f} GiB from {read['files']} "
              f"(its shard: {shard / 2**30:.2f} GiB; {read['bytes'] / results['checkpoint_bytes']:.2f}x the checkpoint)")
    print(f"  load: TP={args.tp} {split['load_s']:.1f} s, TP=1 {one['load_s']:.1f} s")
    print(f"  greedy tokens TP={args.tp} == TP=1: {results['tokens_equal']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tp_load.json").write_text(json.dumps(results, indent=2))
    sys.exit(0 if results["tokens_equal"] and len(split["reads"]) == args.tp else 1)


if __name__ == "__main__":
    main()
