"""Running streams while a burst of long prompts arrives, with and without a per-step prompt
budget (`max_prefill_tokens`), both on one loaded model in one run.

  python3 scripts/bench_burst.py [--device cpu|cuda] [--model DIR|llama2-7b] [--tokenizer DIR]
      [--burst 16] [--prompt-len 512] [--budget 1024] [--background 4] [--out DIR]

K background requests decode long outputs (end tokens ignored); once they stream, N prompts of
L tokens arrive together. Without a budget the engine prefills the whole burst in one step and
every background stream waits for it; with one the burst joins over several steps, a decode
step between each. Figures: the background streams' longest and median gap between two
tokens, and the burst's mean time to first token; ratios are no budget / budget. "No budget"
admits the whole burst at once, as the engine did before the budget; both runs prefill in
forwards of the torch backend's 8,192-token chunk (lmi-serve lowers the chunk to the budget
when the budget is lower, which changes only prompts longer than the budget).

The model: by default the bundled SmolLM2-135M; `--model llama2-7b` (CUDA) random weights of
that shape built as bench_gpu.py builds them (`--tokenizer` needed), or a model folder. Writes
bench_burst.json and, with matplotlib, bench_burst.png (token timelines) under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "runtime"), str(REPO / "compile")]

from bench_gpu import SHAPES, prompts, random_folder  # noqa: E402
from lmi_runtime.backends.loader import load_backend  # noqa: E402
from lmi_runtime.engine.config import EngineConfig  # noqa: E402
from lmi_runtime.engine.engine import LLMEngine  # noqa: E402
from lmi_runtime.engine.offline import Completion, generate  # noqa: E402
from lmi_runtime.engine.request import SamplingParams  # noqa: E402
from lmi_runtime.locate import inspect_folder  # noqa: E402

JOIN = 8  # steps the background decodes before the burst arrives
TAIL = 16  # background steps after the budgeted burst's last prefill step
BACKGROUND_PROMPT = 32  # tokens per background prompt
BURST_NEW = 8  # tokens each burst request generates


def run(backend, args, budget: int, vocab: int) -> tuple[float, list[Completion], list[Completion]]:
    """Background streams, then the burst at step JOIN; (wall seconds, background, burst)."""
    steps = JOIN + math.ceil(args.burst * args.prompt_len / args.budget) + TAIL  # outlasts either run's burst
    background = SamplingParams(max_new_tokens=steps, ignore_eos=True)
    burst = SamplingParams(max_new_tokens=BURST_NEW, ignore_eos=True)
    config = EngineConfig(max_batch_size=args.background + args.burst, max_prefill_tokens=budget)
    started = time.perf_counter()
    done = generate(LLMEngine(backend, config),
                    prompts(args.background, vocab, BACKGROUND_PROMPT, seed=1)
                    + prompts(args.burst, vocab, args.prompt_len, seed=2),
                    [background] * args.background + [burst] * args.burst,
                    join_at_step=[0] * args.background + [JOIN] * args.burst)
    return time.perf_counter() - started, done[:args.background], done[args.background:]


def figures(wall: float, background: list[Completion], burst: list[Completion]) -> dict:
    gaps = [b - a for c in background for a, b in zip(c.token_times, c.token_times[1:])]
    origin = burst[0].arrival
    return {
        "wall_s": wall,
        "background_max_gap_s": max(gaps),
        "background_median_gap_s": statistics.median(gaps),
        "burst_mean_ttft_s": statistics.mean(c.ttft for c in burst),
        "background_token_times_s": [[t - origin for t in c.token_times] for c in background],
        "burst_first_token_s": [c.token_times[0] - origin for c in burst],
    }


def report(results: dict, args, out: Path) -> None:
    base, budgeted = results["no_budget"], results["budget"]
    rows = [("background longest gap (ms)", "background_max_gap_s"),
            ("background median gap (ms)", "background_median_gap_s"),
            ("burst mean time to first token (ms)", "burst_mean_ttft_s"),
            ("run wall time (ms)", "wall_s")]
    print(f"\n{results['model']} ({results['device']}, {results['dtype']}): {args.background} background streams, "
          f"burst of {args.burst} × {args.prompt_len} tokens")
    print(f"  {'':<38} {'no budget':>10} {f'budget {args.budget}':>12} {'ratio':>7}")
    for label, key in rows:
        print(f"  {label:<38} {1e3 * base[key]:>10.1f} {1e3 * budgeted[key]:>12.1f} {base[key] / budgeted[key]:>6.2f}x")
    (out / "bench_burst.json").write_text(json.dumps(results, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    for ax, (name, run_figures) in zip(axes, (("no budget", base), (f"budget {args.budget}", budgeted))):
        ax.eventplot(run_figures["background_token_times_s"], linelengths=0.8)
        ax.scatter(run_figures["burst_first_token_s"], [-1] * args.burst, marker="|", color="red")
        ax.set_title(f"{name}: background tokens (rows 0..{args.background - 1}), burst first tokens (row -1, red)")
        ax.set_ylabel("stream")
    axes[-1].set_xlabel("seconds since the burst arrived")
    fig.tight_layout()
    fig.savefig(out / "bench_burst.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", help="a model folder, or a shape with random weights (CUDA): " + ", ".join(SHAPES))
    parser.add_argument("--tokenizer", type=Path, help="a folder with tokenizer files (for a random-weight shape)")
    parser.add_argument("--dtype", help="default: float32 on cpu, float16 on cuda")
    parser.add_argument("--burst", type=int, default=16, help="prompts arriving together")
    parser.add_argument("--prompt-len", type=int, default=512, help="tokens per burst prompt")
    parser.add_argument("--budget", type=int, default=1024, help="prompt tokens per step")
    parser.add_argument("--background", type=int, default=4, help="streams decoding when the burst arrives")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    if args.model in SHAPES and (args.device != "cuda" or args.tokenizer is None):
        parser.error(f"--model {args.model} builds random weights on the GPU: needs --device cuda and --tokenizer")
    dtype = args.dtype or ("float32" if args.device == "cpu" else "float16")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model in SHAPES:
            folder = random_folder(args.model, args.tokenizer, Path(tmp), getattr(torch, dtype))
        elif args.model:
            folder = Path(args.model)
        else:
            from lmi_compile.sources.bundled import materialize

            folder = materialize("bundled://smollm2")
        print(f"loading {folder} on {args.device} ({dtype})", flush=True)
        backend = load_backend(inspect_folder(folder), EngineConfig(device=args.device, dtype=dtype,
                                                                    max_batch_size=args.background + args.burst))
        vocab = backend.info.vocab_size
        results = {"model": args.model or "bundled SmolLM2-135M", "device": args.device, "dtype": dtype,
                   "args": {k: str(v) for k, v in vars(args).items()}}
        whole = args.burst * args.prompt_len  # the whole burst in one step: no budget
        print("warm-up", flush=True)
        run(backend, args, whole, vocab)
        for name, budget in (("no_budget", whole), ("budget", args.budget)):
            wall, background, burst = run(backend, args, budget, vocab)
            results[name] = figures(wall, background, burst)
            print(f"{name}: {wall:.1f} s", flush=True)
    report(results, args, args.out)


if __name__ == "__main__":
    main()
