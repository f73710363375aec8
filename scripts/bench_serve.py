#!/usr/bin/env python3
"""Serving benchmark: lmi-serve against transformers' `generate` on the same model and machine.

For each concurrency level C, C distinct greedy requests arrive at once:
- lmi-serve (a subprocess, the real HTTP server, streaming JSON lines; TTFT = first token line);
- HF sequential: `model.generate` one request after another (what a naive server does);
- HF batched: one padded `generate` over all C requests (static batching, left padding).
Tokens/s counts the tokens actually generated (up to EOS); TTFT is from the moment all
requests arrived to each request's first token, averaged. Ratios are lmi-serve over the
baseline for tokens/s and baseline over lmi-serve for TTFT (above 1: lmi-serve is better).

    python3 scripts/bench_serve.py [--model DIR] [--concurrency 1,8,32] [--max-new-tokens 24] [--plot out.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "runtime"), str(REPO / "compile")]


@dataclass
class Result:
    tokens: int
    seconds: float
    ttfts: list[float]

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds

    @property
    def ttft(self) -> float:
        return statistics.mean(self.ttfts)


def prompts_for(count: int) -> list[str]:
    return [f"Write a short note about topic number {i} for a science class:" for i in range(count)]


class FirstTokenClock:
    """A generate() streamer recording when the first generated token appeared."""

    def __init__(self) -> None:
        self.calls, self.first = 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:  # call 1 is the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def count_tokens(rows, eos: set[int]) -> int:
    total = 0
    for row in rows.tolist():
        cut = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
        total += cut
    return total


def hf_sequential(model, tok, prompts: list[str], n: int, eos: set[int]) -> Result:
    import torch

    start, tokens, ttfts = time.perf_counter(), 0, []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        clock = FirstTokenClock()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                 streamer=clock, pad_token_id=tok.pad_token_id or 0)
        tokens += count_tokens(out[:, ids.shape[1]:], eos)
        ttfts.append(clock.first - start)
    return Result(tokens, time.perf_counter() - start, ttfts)


def hf_batched(model, tok, prompts: list[str], n: int, eos: set[int]) -> Result:
    import torch

    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.decode([min(eos)])
    start = time.perf_counter()
    batch = tok(prompts, return_tensors="pt", padding=True)
    clock = FirstTokenClock()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=n, do_sample=False, streamer=clock,
                             pad_token_id=tok.pad_token_id)
    seconds = time.perf_counter() - start
    tokens = count_tokens(out[:, batch["input_ids"].shape[1]:], eos)
    return Result(tokens, seconds, [clock.first - start] * len(prompts))


async def lmi_serve(url: str, prompts: list[str], n: int) -> Result:
    import httpx

    async def one(client: httpx.AsyncClient, prompt: str, start: float) -> tuple[int, float]:
        first, tokens = None, 0
        body = {"inputs": prompt, "parameters": {"max_new_tokens": n}, "stream": True}
        async with client.stream("POST", "/invocations", json=body) as res:
            res.raise_for_status()
            async for line in res.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                first = first or time.perf_counter()
                if "details" in event:
                    tokens = event["details"]["generated_tokens"]
        return tokens, first - start

    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one(client, p, start) for p in prompts))
        seconds = time.perf_counter() - start
    return Result(sum(t for t, _ in results), seconds, [f for _, f in results])


def start_server(model_dir: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmi_runtime", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
         "--max-batch-size", str(max_batch), "--log-level", "warning"],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"lmi-serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/ping").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    proc.terminate()
    raise SystemExit("lmi-serve did not become ready")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [("lmi", "lmi-serve"), ("seq", "HF generate, sequential"), ("batch", "HF generate, batched")]
    levels = [str(r["c"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.27
    for k, (key, label) in enumerate(systems):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        ax1.bar(xs, [r[key].tps for r in rows], width, label=label)
        ax2.bar(xs, [r[key].ttft for r in rows], width, label=label)
    for ax, title in ((ax1, "tokens/s (higher is better)"), (ax2, "mean time to first token, s (lower is better)")):
        ax.set_xticks(range(len(rows)), levels)
        ax.set_xlabel("concurrent requests")
        ax.set_title(title)
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="Hugging Face folder (default: bundled SmolLM2)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--plot", default=None, help="write a PNG chart here")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console = Console(width=170)
    model_dir = args.model
    if model_dir is None:
        from lmi_compile.sources.bundled import materialize

        model_dir = materialize("bundled://smollm2")
    levels = [int(c) for c in args.concurrency.split(",")]
    n = args.max_new_tokens
    console.print(f"model {model_dir}, {n} new tokens per request, torch threads {torch.get_num_threads()}")

    rows: list[dict] = [{"c": c} for c in levels]
    proc, url = start_server(model_dir, max(levels))
    try:
        asyncio.run(lmi_serve(url, prompts_for(2), 4))  # warm-up
        for row in rows:
            row["lmi"] = asyncio.run(lmi_serve(url, prompts_for(row["c"]), n))
            console.print(f"lmi-serve  C={row['c']}: {row['lmi'].tps:.1f} tok/s")
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gen = json.loads((Path(model_dir) / "generation_config.json").read_text()) if (
        Path(model_dir) / "generation_config.json").is_file() else {}
    eos_value = gen.get("eos_token_id", model.config.eos_token_id)
    eos = set(eos_value if isinstance(eos_value, list) else [eos_value])
    hf_sequential(model, tok, prompts_for(1), 4, eos)  # warm-up
    for row in rows:
        prompts = prompts_for(row["c"])
        row["seq"] = hf_sequential(model, tok, prompts, n, eos)
        row["batch"] = hf_batched(model, tok, prompts, n, eos)
        console.print(f"HF         C={row['c']}: sequential {row['seq'].tps:.1f} tok/s, batched {row['batch'].tps:.1f} tok/s")

    table = Table(title=f"lmi-serve vs transformers generate ({n} new tokens, greedy)")
    for col in ("concurrency", "lmi tok/s", "HF seq tok/s", "HF batch tok/s", "x vs seq", "x vs batch",
                "lmi TTFT s", "HF seq TTFT s", "HF batch TTFT s", "TTFT x vs seq", "TTFT x vs batch"):
        table.add_column(col, justify="right")
    for r in rows:
        lmi, seq, batch = r["lmi"], r["seq"], r["batch"]
        table.add_row(
            str(r["c"]), f"{lmi.tps:.1f}", f"{seq.tps:.1f}", f"{batch.tps:.1f}",
            f"{lmi.tps / seq.tps:.2f}", f"{lmi.tps / batch.tps:.2f}",
            f"{lmi.ttft:.2f}", f"{seq.ttft:.2f}", f"{batch.ttft:.2f}",
            f"{seq.ttft / lmi.ttft:.2f}", f"{batch.ttft / lmi.ttft:.2f}",
        )
    console.print(table)
    if args.plot:
        plot(rows, args.plot)
        console.print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
