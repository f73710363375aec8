#!/usr/bin/env python3
"""Benchmark the quantization methods: wall time, peak memory, perplexity, and how much
perplexity each adds compared with plain round-to-nearest (RTN) at the same width and group size.

Every row runs in its own subprocess, so peak memory (resident set on CPU, CUDA allocator on a
GPU) belongs to that method alone. Rows:

  original            the unquantized model (perplexity baseline)
  rtn4-sym/-asym      round-to-nearest int4, groups (the baseline AWQ and GPTQ must beat)
  rtn8a8              round-to-nearest W8A8 without smoothing (SmoothQuant's baseline)
  awq, gptq           add `+asym`, `+actorder`, `+duoboth` for variants (e.g. gptq+asym+actorder)
  smoothquant         W8A8, int8 per-token dynamic activations
  static_int8         int8 weight-only per channel (= RTN int8)
  fp8                 float8 (e4m3) weights per channel, fp8 per-token dynamic activations (no calibration)

Examples:
  python3 scripts/bench_quantize.py                        # SmolLM2 on CPU, every row
  python3 scripts/bench_quantize.py --device cuda --model llama2-7b-shape --methods awq,gptq \\
      --samples 32 --seq-len 512 --json out.json --plot out.png   # timing only (random weights)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "runtime"), str(REPO / "compile")]

DEFAULT_METHODS = "original,rtn4-sym,rtn4-asym,awq+asym,gptq,gptq+asym,rtn8a8,smoothquant,static_int8,fp8"
LLAMA2_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096)


def settings_for(variant: str, args):
    """Parse `name[+option...]` into methods.Settings."""
    from lmi_compile.quantize.methods import Settings

    name, *options = variant.split("+")
    known = {"asym", "actorder", "duoboth", "noduo"}
    if set(options) - known:
        raise SystemExit(f"unknown option(s) {set(options) - known} in '{variant}' (known: {sorted(known)})")
    grouped = dict(bits=args.bits, group_size=args.group_size, symmetric="asym" not in options)
    table = {
        "rtn4-sym": dict(method="rtn", bits=4, group_size=args.group_size, symmetric=True),
        "rtn4-asym": dict(method="rtn", bits=4, group_size=args.group_size, symmetric=False),
        "rtn8a8": dict(method="rtn", bits=8, group_size=None, symmetric=True, activation_bits=8),
        "awq": dict(method="awq", **grouped, awq_grid=args.awq_grid,
                    awq_duo_scaling="both" if "duoboth" in options else "noduo" not in options),
        "gptq": dict(method="gptq", **grouped, desc_act="actorder" in options, damp=args.damp),
        "smoothquant": dict(method="smoothquant", bits=8, group_size=None, symmetric=True, alpha=args.alpha,
                            activation_bits=8),
        "static_int8": dict(method="static_int8", bits=8, group_size=None, symmetric=True),
        "fp8": dict(method="fp8", bits=8, group_size=None, symmetric=True, activation_bits=8, type="float"),
    }
    if name not in table:
        raise SystemExit(f"unknown method '{name}' (known: original, {', '.join(table)})")
    return Settings(**table[name])


# --------------------------------------------------------------------------- one row (child)

def build_model(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if args.model == "smollm2":
        from lmi_compile.sources.bundled import materialize

        folder = materialize("bundled://smollm2")
        dtype = torch.float32 if args.device == "cpu" else torch.float16
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        return model, AutoTokenizer.from_pretrained(folder)
    shape = LLAMA2_7B | ({"num_hidden_layers": args.layers} if args.layers else {})
    config = LlamaConfig(**shape)
    torch.manual_seed(0)
    with torch.device(args.device):  # random weights drawn on the device: seconds, not minutes
        # bfloat16 by default: with random fp16 weights AWQ's scale search overflows to inf/NaN.
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    # llm-compressor re-reads the config from `name_or_path`: give it a folder that holds it.
    folder = Path(tempfile.mkdtemp(prefix="llama2-7b-shape-"))
    config.save_pretrained(folder)
    model.config._name_or_path = str(folder)
    return model, None


def placeholder_tokenizer():
    """llm-compressor wants a tokenizer whenever calibration data is given, even pre-tokenized;
    the random-weight model has none (and the GPU machine no files), so build a stub in memory."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                   unk_token="<unk>", pad_token="<unk>")


def calibration(args, tokenizer):
    from lmi_compile.quantize import corpora

    if tokenizer is None:  # random-weight model: any tokens time the same
        import torch

        g = torch.Generator().manual_seed(0)
        return torch.randint(0, LLAMA2_7B["vocab_size"], (args.samples, args.seq_len), generator=g).tolist(), None
    split = corpora.calibration_and_evaluation("builtin:python-docs", "builtin:python-docs")
    samples = corpora.calibration_samples(tokenizer, split.calibration, args.samples, args.seq_len)
    return samples, corpora.token_stream(tokenizer, split.evaluation)


def run_one(variant: str, args) -> dict:
    import resource

    import torch

    from lmi_compile.quantize import evaluate, methods
    from lmi_compile.quantize.library import quiet

    with quiet():
        model, tokenizer = build_model(args)
        samples, eval_ids = calibration(args, tokenizer)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        wall = 0.0
        row: dict = {"method": variant}
        if variant != "original":
            settings = settings_for(variant, args)
            row["settings"] = _describe(settings)
            start = time.perf_counter()
            methods.apply(model, settings, samples, tokenizer or placeholder_tokenizer())
            if args.device == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
        row["wall_s"] = wall
        row["peak_mib"] = (
            torch.cuda.max_memory_allocated() / 2**20
            if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        if eval_ids is not None:
            windows = evaluate.eval_windows(eval_ids, args.eval_seq_len, args.eval_tokens)
            start = time.perf_counter()
            row["ppl"] = evaluate.perplexity(model.to(args.device), windows, args.device)
            row["eval_s"] = time.perf_counter() - start
            row["eval_tokens"] = sum(map(len, windows))
    return row


def _describe(s) -> str:
    parts = [f"W{s.bits}A{s.activation_bits}" + (" fp8" if s.type == "float" else ""),
             f"g{s.group_size}" if s.group_size else "per-channel",
             "sym" if s.symmetric else "asym"]
    if s.method == "gptq":
        parts += [f"damp {s.damp}"] + (["act-order"] if s.desc_act else [])
    if s.method == "awq":
        parts += [f"grid {s.awq_grid}", f"duo {s.awq_duo_scaling}"]
    if s.method == "smoothquant":
        parts += [f"alpha {s.alpha}"]
    return ", ".join(parts)


# --------------------------------------------------------------------------- table (parent)

def run_all(args) -> list[dict]:
    from rich.progress import Progress

    rows = []
    variants = [v for v in args.methods.split(",") if v]
    with Progress() as progress, tempfile.TemporaryDirectory() as tmp:
        task = progress.add_task("benchmark", total=len(variants))
        for variant in variants:
            progress.update(task, description=f"{variant}")
            result = Path(tmp) / "row.json"
            child = [sys.executable, __file__, *args.child_argv, "--one", variant, "--result", str(result)]
            run = subprocess.run(child, capture_output=True, text=True)
            if run.returncode != 0:
                progress.console.print(f"[red]{variant} failed[/]\n{run.stderr[-3000:]}")
                rows.append({"method": variant, "error": run.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(result.read_text()))
            progress.advance(task)
    return rows


def compare(rows: list[dict], args) -> None:
    """Add perplexity increase vs the original and vs the best RTN row of the same format."""
    base = next((r["ppl"] for r in rows if r["method"] == "original" and "ppl" in r), None)
    if base is None:
        return
    for row in rows:
        if "ppl" in row:
            row["increase"] = row["ppl"] / base - 1
    for row in rows:
        if "increase" not in row or row["method"] == "original":
            continue
        fmt = _format_key(row)
        rtn = [r for r in rows if r["method"].startswith("rtn") and "increase" in r and _format_key(r) == fmt]
        if rtn and not row["method"].startswith("rtn"):
            best = min(rtn, key=lambda r: r["ppl"])
            row["vs_rtn"] = {"baseline": best["method"], "ratio": row["increase"] / best["increase"]
                             if best["increase"] > 0 else None}


def _format_key(row: dict) -> str:
    parts = row.get("settings", "").split(", ")
    return ", ".join(parts[:2])  # width/activations and grouping: W4A16, g64


def render(rows: list[dict], args) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"quantization benchmark: {args.model} on {args.device} "
                        f"({args.samples} x {args.seq_len} calibration tokens"
                        + (f", {rows[0].get('eval_tokens', 0)} eval tokens)" if args.model == "smollm2" else ")"))
    for col in ("method", "settings", "wall s", "peak MiB", "perplexity", "vs original", "added ppl vs best RTN"):
        table.add_column(col, justify="left" if col in ("method", "settings") else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["method"], "[red]failed[/]", *[""] * 5)
            continue
        vs = r.get("vs_rtn")
        table.add_row(
            r["method"], r.get("settings", "fp32" if args.device == "cpu" else args.dtype),
            f"{r['wall_s']:.1f}", f"{r['peak_mib']:.0f}",
            f"{r['ppl']:.3f}" if "ppl" in r else "-",
            f"{r['increase']:+.2%}" if "increase" in r else "-",
            f"{vs['ratio']:.2f}x of {vs['baseline']}" if vs and vs["ratio"] is not None else "-",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # logs and pipes: keep one row per line
    console.print(table)


def plot(rows: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "error" not in r and r["method"] != "original"]
    fig, axes = plt.subplots(1, 2 if any("increase" in r for r in rows) else 1, figsize=(12, 4.5), squeeze=False)
    names = [r["method"] for r in rows]
    axes[0][0].barh(names, [r["wall_s"] for r in rows], color="tab:blue")
    axes[0][0].set_xlabel("wall time (s)")
    axes[0][0].set_title(f"{args.model} on {args.device}")
    if axes.shape[1] == 2:
        colors = ["tab:gray" if n.startswith("rtn") else "tab:green" for n in names]
        axes[0][1].barh(names, [100 * r.get("increase", 0) for r in rows], color=colors)
        axes[0][1].set_xlabel("perplexity increase over the original (%)")
        axes[0][1].set_title("lower is better; grey = round-to-nearest baselines")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["smollm2", "llama2-7b-shape"], default="smollm2")
    p.add_argument("--layers", type=int, help="llama2-7b-shape: fewer decoder layers (smoke tests)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16", help="llama2-7b-shape weights")
    p.add_argument("--methods", default=None, help=f"comma list (default: {DEFAULT_METHODS})")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=20_000)
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--alpha", type=float, default=0.8)
    p.add_argument("--awq-grid", type=int, default=20)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.methods is None:
        args.methods = DEFAULT_METHODS if args.model == "smollm2" else "awq,gptq"
    if args.model != "smollm2" and args.device == "cpu" and not args.layers:
        p.error("llama2-7b-shape on CPU needs --layers N (a smoke test); the full shape is for --device cuda")
    args.child_argv = [a for a in argv]
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.one:
        args.result.write_text(json.dumps(run_one(args.one, args)))
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA GPU visible")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = run_all(args)
    compare(rows, args)
    render(rows, args)
    meta = {"model": args.model, "device": args.device, "samples": args.samples, "seq_len": args.seq_len,
            "eval_tokens": args.eval_tokens, "eval_seq_len": args.eval_seq_len, "group_size": args.group_size,
            "layers": args.layers}
    if args.device == "cuda":
        import torch

        meta["gpu"] = torch.cuda.get_device_name(0)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.plot:
        plot(rows, args.plot, args)


if __name__ == "__main__":
    main()
