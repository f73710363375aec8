"""Serving speed on a CUDA GPU, every figure against baselines measured in the same run.

  python3 scripts/bench_gpu.py --tokenizer DIR [--model llama2-7b|tiny|PATH] [--out DIR]

For each model: the bandwidth ceiling (a device-to-device copy's bytes read + written per second,
what HBM moves, divided by the weight bytes one decode step reads), transformers `generate` at batch 1 and 64,
lmi-serve's engine single-stream decode and 64 concurrent requests (128 prompt / 128 new tokens, best of 3 each,
EOS ignored), time to first token at 1 and 64, and one forward pass over a 128-token prompt.
Prints a table, writes bench_gpu.json and (with matplotlib) bench_gpu.png under --out.
The Llama-2-7B shape uses random fp16 weights (no download): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "runtime"), str(REPO / "compile")]

from lmi_runtime.backends.loader import load_backend  # noqa: E402
from lmi_runtime.engine.config import EngineConfig  # noqa: E402
from lmi_runtime.engine.engine import LLMEngine  # noqa: E402
from lmi_runtime.engine.offline import generate  # noqa: E402
from lmi_runtime.engine.request import SamplingParams  # noqa: E402
from lmi_runtime.locate import inspect_folder  # noqa: E402

SHAPES = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    "tiny": dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096),
    "llama2-70b": dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=4096),
}
PROMPT, NEW, CONCURRENT = 128, 128, 64


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 4 GiB device-to-device copy (best of 5)."""
    src = torch.empty(2**31, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src)) for _ in range(5))
    del src, dst
    return 2 * 2**31 / best


def random_folder(shape: str, tokenizer_dir: Path, out: Path, dtype: torch.dtype) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape], torch_dtype=dtype)).to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    copy_tokenizer(tokenizer_dir, out)
    del model
    return out


def copy_tokenizer(tokenizer_dir: Path, out: Path) -> None:
    for file in tokenizer_dir.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            (out / file.name).write_bytes(file.read_bytes())


def prompts(count: int, vocab: int, length: int = PROMPT, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, min(vocab, 30000), (count, length), generator=gen).tolist()


def bench_transformers(folder: Path, dtype: torch.dtype, vocab: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).cuda().eval()
    out = {}
    for batch in (1, CONCURRENT):
        ids = torch.tensor(prompts(batch, vocab), device="cuda")

        def run():
            model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)

        run()  # warm-up
        out[f"hf_generate_b{batch}_tok_s"] = batch * NEW / timed(run)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def profile_decode(backend, out: Path, label: str) -> None:
    """Kernel time of one decode forward at batch 1 and 64 (contexts of 192 tokens), compiled
    but outside a graph so the profiler sees each kernel; the tables are added to profile_decode.txt."""
    from torch.profiler import ProfilerActivity, profile

    graphs = backend.graphs
    graphs.tables.copy_(torch.arange(graphs.tables.numel(), dtype=torch.int32, device="cuda")
                        .view_as(graphs.tables) % (backend.kv.blocks.num_blocks - 1) + 1)
    graphs.ctx_lens.fill_(192)
    graphs.tokens[2].zero_()  # write to the scratch block
    lines = []
    for size in (1, CONCURRENT):
        inputs = graphs._inputs(size)
        for _ in range(3):
            backend.model(inputs, backend.kv.pool, backend.kv.block_size)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                backend.model(inputs, backend.kv.pool, backend.kv.block_size)
            torch.cuda.synchronize()
        lines.append(f"{label}, batch {size}, 5 forwards\n" + prof.key_averages().table(sort_by="cuda_time_total", row_limit=18))
    graphs.forget_rows()
    with (out / "profile_decode.txt").open("a") as f:
        f.write("\n".join(lines) + "\n")


def weight_bytes(model) -> int:
    """Bytes of the weights a decode step reads (the embedding table excepted)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    embed = model.model.embed_tokens.weight
    return sum(t.numel() * t.element_size() for t in tensors.values() if t is not embed or model.args.tie_word_embeddings)


def bench_ours(folder: Path, dtype_name: str, vocab: int, eager: bool, profile_to: Path | None = None,
               quant: str = "none") -> dict:
    """`quant`: see `load_quantized`."""
    config = EngineConfig(device="cuda", dtype=dtype_name, max_batch_size=CONCURRENT, enforce_eager=eager,
                          max_model_len=1024)
    started = time.perf_counter()
    backend = load_quantized(folder, config, quant)
    load_s = time.perf_counter() - started
    engine = LLMEngine(backend, config)
    params = SamplingParams(max_new_tokens=NEW)
    generate(engine, prompts(2, vocab), params)  # warm-up
    single = [generate(engine, prompts(1, vocab), params)[0] for _ in range(3)]
    runs = []  # best of 3, as single-stream
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        many = generate(engine, prompts(CONCURRENT, vocab), params)
        runs.append((time.perf_counter() - start, many))
    wall, many = min(runs, key=lambda run: run[0])
    # best of 5, as time to first token: the host's noise moved the median of the same code 18-36 ms
    forward = min(timed(lambda: _prefill_once(backend, prompts(1, vocab)[0])) for _ in range(5))
    result = {
        "load_s": load_s,
        "single_decode_tok_s": max(c.decode_tokens_per_s for c in single),
        "single_ttft_s": min(c.ttft for c in single),
        f"c{CONCURRENT}_tok_s": sum(len(c.token_ids) for c in many) / wall,
        f"c{CONCURRENT}_runs_tok_s": [sum(len(c.token_ids) for c in got) / took for took, got in runs],
        f"c{CONCURRENT}_ttft_p50_s": statistics.median(c.ttft for c in many),
        "prompt_forward_s": forward,
        "kv_cache_tokens": int(backend.info.details["kv_cache_tokens"]),
        "weight_gib": weight_bytes(backend.model) / 2**30,
    }
    if backend.graphs is not None:  # GPU time of one decode step alone (no host work between)
        for size in (1, CONCURRENT):
            graph = backend.graphs.graphs[size][0]
            result[f"graph_replay_b{size}_ms"] = 1e3 * timed(lambda: [graph.replay() for _ in range(20)]) / 20
        if profile_to is not None:
            profile_decode(backend, profile_to, quant)
    del engine, backend
    gc.collect()
    torch.cuda.empty_cache()
    return result


def load_quantized(folder: Path, config: EngineConfig, quant: str):
    """The torch backend over `folder`, quantized at load by `quant` (fp8, static_int8 as
    lmi-serve's --quantize; int4: groups of 128), round-to-nearest: speed does not depend on
    the values. Random weights: every request runs to its length (no end-of-sequence id)."""
    if quant == "int4":  # no at-load option (int4 wants calibration: lmi-compile's awq/gptq); same kernels
        from lmi_runtime.backends import loader
        from lmi_runtime.quant.rtn import quantize_layers

        eager_config = EngineConfig(**{**vars(config), "quantize": "none", "enforce_eager": True})
        backend = load_backend(inspect_folder(folder), eager_config)
        quantize_layers(backend.model.model.layers, "int4")
        backend = loader.torch_backend(backend.model, backend.tokenizer, backend.info, backend.kv, config)
    else:
        backend = load_backend(inspect_folder(folder), EngineConfig(**{**vars(config), "quantize": quant}))
    backend.info.eos_token_ids = set()
    return backend


def _prefill_once(backend, prompt_ids: list[int]) -> None:
    from lmi_runtime.engine.request import Sequence

    seq = Sequence(prompt_ids, SamplingParams(), max_new_tokens=1)
    backend.kv_manager.reserve(seq)
    try:
        backend.prefill([seq])
    finally:
        backend.kv_manager.free(seq)


def step_bytes(folder: Path) -> int:
    """Weight bytes one decode step reads: all but the embedding table (one row of it is read),
    which lm_head reads in full when the two are tied."""
    config = json.loads((folder / "config.json").read_text())
    total = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    item = 4 if (config.get("dtype") or config.get("torch_dtype")) == "float32" else 2
    embed = config["vocab_size"] * config["hidden_size"] * item
    return total if config.get("tie_word_embeddings") else total - embed


def report(name: str, figures: dict, out: Path) -> None:
    ceiling = figures["ceiling_tok_s"]
    ours = figures["graphs"]
    hf1, hf64 = figures.get("hf_generate_b1_tok_s"), figures.get(f"hf_generate_b{CONCURRENT}_tok_s")
    eager = figures.get("eager")
    rows = [("copy bandwidth (TB/s, read+write)", figures["copy_tb_s"], ""),
            ("ceiling single-stream (tok/s)", ceiling, "1.00x ceiling")]
    if hf1:
        rows.append(("transformers generate b=1 (tok/s)", hf1, f"{hf1 / ceiling:.2f}x ceiling"))
    if eager:
        rows.append(("ours eager single-stream decode (tok/s)", eager["single_decode_tok_s"],
                     f"{eager['single_decode_tok_s'] / ceiling:.2f}x ceiling"))
    rows.append(("ours single-stream decode (tok/s)", ours["single_decode_tok_s"],
                 f"{ours['single_decode_tok_s'] / ceiling:.2f}x ceiling"))
    if hf64:
        rows.append((f"transformers generate b={CONCURRENT} (tok/s)", hf64, "1.00x hf"))
    if eager and hf64:
        rows.append((f"ours eager {CONCURRENT} concurrent (tok/s)", eager[f"c{CONCURRENT}_tok_s"],
                     f"{eager[f'c{CONCURRENT}_tok_s'] / hf64:.2f}x hf"))
    rows += [
        (f"ours {CONCURRENT} concurrent (tok/s)", ours[f"c{CONCURRENT}_tok_s"],
         f"{ours[f'c{CONCURRENT}_tok_s'] / hf64:.2f}x hf" if hf64 else ""),
        ("one forward over the prompt (ms)", 1e3 * ours["prompt_forward_s"], ""),
        ("ours TTFT c=1 (ms)", 1e3 * ours["single_ttft_s"],
         f"{ours['single_ttft_s'] / ours['prompt_forward_s']:.2f}x forward"),
        (f"ours TTFT c={CONCURRENT} p50 (ms)", 1e3 * ours[f"c{CONCURRENT}_ttft_p50_s"], ""),
        ("decode graph alone b=1 / b=64 (ms)", ours.get("graph_replay_b1_ms", 0),
         f"{ours.get(f'graph_replay_b{CONCURRENT}_ms', 0):.2f} ms at b={CONCURRENT}"),
        ("load + compile + capture (s)", ours["load_s"], f"eager load {eager['load_s']:.1f} s" if eager else ""),
    ]
    for quant in ("static_int8", "fp8", "int4"):
        if quant in figures:
            q = figures[quant]
            rows += [(f"{quant} weights (GiB)", q["weight_gib"], f"{q['weight_gib'] / ours['weight_gib']:.2f}x fp16"),
                     (f"{quant} single-stream decode (tok/s)", q["single_decode_tok_s"],
                      f"{q['single_decode_tok_s'] / ours['single_decode_tok_s']:.2f}x fp16"),
                     (f"{quant} {CONCURRENT} concurrent (tok/s)", q[f"c{CONCURRENT}_tok_s"],
                      f"{q[f'c{CONCURRENT}_tok_s'] / ours[f'c{CONCURRENT}_tok_s']:.2f}x fp16"),
                     (f"{quant} decode graph alone b=1 (ms)", q.get("graph_replay_b1_ms", 0), "")]
    print(f"\n{name} ({figures['dtype']}, {figures['device']}, {PROMPT} in / {NEW} out)")
    for label, value, ratio in rows:
        print(f"  {label:<42} {value:>10.2f}  {ratio}")
    (out / f"bench_gpu_{name}.json").write_text(json.dumps(figures, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    quants = [q for q in ("static_int8", "fp8", "int4") if q in figures]
    single = {"ceiling": ceiling, "hf b=1": hf1, "eager": eager and eager["single_decode_tok_s"],
              "ours": ours["single_decode_tok_s"]} | {q: figures[q]["single_decode_tok_s"] for q in quants}
    many = {f"hf b={CONCURRENT}": hf64, "eager": eager and eager[f"c{CONCURRENT}_tok_s"],
            "ours": ours[f"c{CONCURRENT}_tok_s"]} | {q: figures[q][f"c{CONCURRENT}_tok_s"] for q in quants}
    left.bar(*zip(*[(k, v) for k, v in single.items() if v]))
    left.set_title("single-stream decode, tok/s")
    right.bar(*zip(*[(k, v) for k, v in many.items() if v]))
    right.set_title(f"{CONCURRENT} concurrent, tok/s")
    fig.suptitle(f"{name}, {figures['dtype']}, {figures['device']}")
    fig.tight_layout()
    fig.savefig(out / f"bench_gpu_{name}.png", dpi=100)


def check_setup(parser: argparse.ArgumentParser, tokenizer: Path | None, random_weights: bool = True) -> None:
    """Stop with a usage message, before anything is made, on a machine without a CUDA GPU or
    without the tokenizer folder the random-weight models take."""
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU; this machine has none")
    if random_weights and (tokenizer is None or not (tokenizer / "tokenizer_config.json").is_file()):
        parser.error(f"--tokenizer {tokenizer}: not a folder with tokenizer files (tokenizer_config.json); "
                     "give the bundled model's folder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="llama2-7b, tiny, llama2-70b (about 130 GiB of weights) or a model folder (repeatable)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="a folder with tokenizer files")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--profile", action="store_true", help="also write the decode step's kernel table")
    parser.add_argument("--quant", default="", help="also serve quantized at load: fp8,static_int8,int4 (graphs only)")
    parser.add_argument("--skip", default="", help="leave out baselines: hf (transformers generate), eager")
    args = parser.parse_args()
    check_setup(parser, args.tokenizer)
    skip = set(filter(None, args.skip.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    bandwidth = copy_bandwidth()
    for name in args.model or ["llama2-7b"]:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(name) if name not in SHAPES else random_folder(name, args.tokenizer, Path(tmp), dtype)
            vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
            figures = {"dtype": args.dtype, "device": torch.cuda.get_device_name(), "copy_tb_s": bandwidth / 1e12,
                       "ceiling_tok_s": bandwidth / step_bytes(folder)}
            if "hf" not in skip:
                figures |= bench_transformers(folder, dtype, vocab)
            if "eager" not in skip:
                figures["eager"] = bench_ours(folder, args.dtype, vocab, eager=True)
            figures["graphs"] = bench_ours(folder, args.dtype, vocab, eager=False,
                                           profile_to=args.out if args.profile else None)
            print("fp16 graphs", json.dumps(figures["graphs"]), flush=True)
            for quant in filter(None, args.quant.split(",")):
                figures[quant] = bench_ours(folder, args.dtype, vocab, eager=False, quant=quant,
                                            profile_to=args.out if args.profile else None)
                print(quant, json.dumps(figures[quant]), flush=True)  # in case a time limit cuts the run
            report(Path(name).name, figures, args.out)


if __name__ == "__main__":
    main()
