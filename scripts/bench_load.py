"""Weights from a local model folder onto the GPU, the way lmi-serve loads them, against the
way it loaded them before (same run, same files, page cache warm for both).

  python3 scripts/bench_load.py --model FOLDER [--rounds 2] [--out DIR]

- before: `safetensors.load_file` into CPU memory, q/k/v and gate/up fused on the CPU, then
  the whole model moved with `.to("cuda")`;
- mmap: the memory-mapped files read straight onto the GPU (`load_file(device=...)`) and fused
  there, each layer's parts freed as it goes;
- now: the same, but read by several threads through pinned staging buffers
  (`backends.staged_read`, what `backends.loader` uses on a GPU);
- the field's loaders, where installed, in place of `load_file` (then fused on the GPU the same
  way): Run:ai's model streamer (`runai-model-streamer`) and `fastsafetensors` (no GDS).

Each variant runs in its own process (nothing cached on the GPU between them) and reports
seconds, GB/s of weight files and the GPU and host memory peaks; best of `--rounds`. Writes bench_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(folder: Path, variant: str) -> dict:
    sys.path[:0] = [str(REPO / "runtime")]
    import torch
    from safetensors.torch import load_file

    from lmi_runtime.backends import loader
    from lmi_runtime.backends.llama_model import LlamaArgs
    from lmi_runtime.locate import inspect_folder

    files = inspect_folder(folder)
    hf_config = json.loads((folder / "config.json").read_text())
    args, dtype, cuda = LlamaArgs.from_hf(hf_config), torch.float16, torch.device("cuda")
    torch.cuda.init()
    torch.cuda.synchronize()
    start = time.perf_counter()
    if variant == "before":
        state: dict = {}
        for path in files.weights:
            state.update(load_file(str(path)))
        model = loader._build_llama(args, state, dtype, torch.device("cpu"), 1024).to(cuda)
    else:
        state = READERS[variant](files.weights, cuda)
        model = loader._build_llama(args, state, dtype, cuda, 1024)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert next(model.parameters()).is_cuda
    size = sum(p.stat().st_size for p in files.weights)
    host_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"s": seconds, "gb_s": size / seconds / 1e9, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "host_peak_gib": host_peak / 2**30, "bytes": size}


def _runai(paths: list[Path], device) -> dict:
    """Run:ai's model streamer: many threads read the files into CPU buffers it reuses; each
    tensor is copied to the GPU before the next is read."""
    from runai_model_streamer import SafetensorsStreamer

    with SafetensorsStreamer() as streamer:
        streamer.stream_files([str(p) for p in paths], owned=False)
        return {name: tensor.to(device) for name, tensor in streamer.get_tensors()}


def _fastsafetensors(paths: list[Path], device) -> dict:
    """fastsafetensors without GPUDirect Storage (a bounce buffer): every file lands in one GPU
    buffer that the tensors share (kept as long as any of them is)."""
    import torch
    from fastsafetensors import fastsafe_open

    with fastsafe_open([str(p) for p in paths], nogds=True, device=f"cuda:{torch.cuda.current_device()}") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def _mmap(paths: list[Path], device) -> dict:
    from lmi_runtime.backends.staged_read import read_mapped

    return read_mapped(paths, device)


def _ours(paths: list[Path], device) -> dict:
    from lmi_runtime.backends.staged_read import read_weights

    return read_weights(paths, device)


READERS = {"mmap": _mmap, "now": _ours, "runai streamer": _runai, "fastsafetensors": _fastsafetensors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a dense Llama-family folder")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child)))
        return
    results: dict = {}
    for _ in range(args.rounds):
        for variant in ("before", *READERS):
            done = subprocess.run([sys.executable, __file__, "--model", str(args.model), "--child", variant],
                                  capture_output=True, text=True, env=os.environ)
            if done.returncode != 0:
                print(f"{variant} failed:\n{done.stderr[-3000:]}")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            if variant not in results or row["s"] < results[variant]["s"]:
                results[variant] = row
    gib = results["now"]["bytes"] / 2**30
    print(f"\nloading {args.model.name} ({gib:.1f} GiB of safetensors) onto the GPU, best of {args.rounds}")
    for variant, row in results.items():
        print(f"  {variant:<16} {row['s']:6.2f} s  {row['gb_s']:5.1f} GB/s  GPU peak {row['peak_gib']:5.1f} GiB"
              f"  host peak {row['host_peak_gib']:5.1f} GiB  {results['before']['s'] / row['s']:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_load.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
