"""Cold start on a CUDA GPU: process start → first token, compiling at start vs loading a kernel cache.

  python3 scripts/bench_cold_start.py --tokenizer DIR [--model llama2-7b|tiny|FOLDER] [--quant static_int8] [--out DIR]
      [--profile]

Each start is a new process (imports included) with empty Inductor and Triton caches, so
nothing compiled by an earlier one is reused except through the kernel cache
(`lmi_runtime.kernels.cache`): 1. an empty cache folder (this start compiles and saves), 2.
`--kernel-cache none` (what every start did before), 3. the saved folder (this start loads).
The starts share one Python bytecode folder (PYTHONPYCACHEPREFIX), which the first fills, as
a deployment's image holds its packages' .pyc files: a GPU machine whose venv is read-only and
without them spent ~5 s of every start compiling Python sources (cProfile, the H100, 2026-12-07);
PYTHONDONTWRITEBYTECODE, which that machine sets, is dropped for them.
Each start is from an artifact, as deployed: the compile stage's torch target with its manifest,
which names the tokenizer class AutoTokenizer chose (a start imports only that class); `--model
FOLDER` without a manifest is made one first. The weights' digests are checked as `lmi-serve`
checks them, before the first token; the starts share the digest cache (LMI_SERVE_CACHE), which
the first fills, as a restart finds it. Each start is split into imports, weights (reading,
placing and verifying them, KV pool) and compile + decode-graph capture. Then the saved cache
with another GPU arch in its info.json: the start must be refused, and its message is printed.
Triton is asked to print each autotuning it runs (not those its cache answers), and each start
logs every kernel Triton compiles in it (not those its cache answers): the table counts both per
start, and a start that loads the cache should run and compile none. Prints the table, writes
bench_cold_start.json.

`--profile` runs each start's load under cProfile and appends its 40 costliest calls (cumulative)
and 25 costliest functions (own time) to that start's log: which Python work a start spends its
seconds on (the profiler slows Python-heavy parts such as Dynamo's tracing, so read its times as
shares, and the table's times as inflated).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(folder: str, cache: str, quant: str) -> None:
    """One start, timed from the parent's spawn (LMI_T0). Its log lines go to stderr stamped with
    seconds since then, and Dynamo's compile-time table after them: where a start's time goes."""
    t0 = float(os.environ["LMI_T0"])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(t).2fs %(name)s: %(message)s")

    def stamp(record: logging.LogRecord) -> bool:
        record.t = record.created - t0
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(stamp)
    logging.getLogger("lmi_runtime").setLevel(logging.DEBUG)
    sys.path[:0] = [str(REPO / "runtime"), str(REPO / "compile")]
    from lmi_runtime.backends.loader import load_backend
    from lmi_runtime.engine.config import EngineConfig
    from lmi_runtime.engine.engine import LLMEngine
    from lmi_runtime.engine.offline import generate
    from lmi_runtime.engine.request import SamplingParams
    from lmi_runtime.locate import inspect_folder

    compiled = watch_triton_compiles()
    imported = time.time()
    config = EngineConfig(device="cuda", dtype="float16", max_batch_size=64, max_model_len=1024, kernel_cache=cache,
                          quantize=quant)
    profiler = cProfile.Profile() if os.environ.get("LMI_PROFILE_START") else None
    if profiler is not None:
        profiler.enable()
    files = inspect_folder(Path(folder))
    backend = load_backend(files, config)
    files.wait_verified()  # as the server does before it turns ready
    loaded = time.time()
    if profiler is not None:
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
    capture = backend.graphs.capture_s
    generate(LLMEngine(backend, config), [list(range(100, 228))], SamplingParams(max_new_tokens=1))
    first = time.time()
    import torch._dynamo.utils

    print(torch._dynamo.utils.compile_times(repr="str"), file=sys.stderr)
    print(json.dumps({"to_loaded_s": loaded - t0, "to_first_token_s": first - t0, "imports_s": imported - t0,
                      "weights_s": loaded - imported - capture, "compile_and_capture_s": capture,
                      "first_request_s": first - loaded, "triton_compiled": compiled,
                      "kernel_cache": backend.info.details.get("kernel_cache", "none")}))


def watch_triton_compiles() -> list[str]:
    """The kernels this process compiles with Triton (its cache had no binary for them), each
    logged with its cache key and folder: a start that loads the kernel cache should compile
    none (Inductor's worker processes, which only a compiling start uses, are not seen)."""
    import triton

    compiled: list[str] = []

    def listener(*, src, metadata, metadata_group, times, cache_hit) -> None:
        if not cache_hit:
            compiled.append(src.name)
            print(f"triton compiled {src.name} {metadata['hash'][:16]} into {triton.knobs.cache.dir}", file=sys.stderr)

    triton.knobs.compilation.listener = listener
    return compiled


def start(folder: Path, cache: str, quant: str, bytecode: Path, profile: bool = False) -> subprocess.CompletedProcess:
    inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env = inherited | {"TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(), "TRITON_CACHE_DIR": tempfile.mkdtemp(),
                       "PYTHONPYCACHEPREFIX": str(bytecode), "LMI_SERVE_CACHE": str(bytecode.parent / "serve-cache"),
                       "LMI_T0": repr(time.time()), "TRITON_PRINT_AUTOTUNING": "1"} | (
                           {"LMI_PROFILE_START": "1"} if profile else {})
    return subprocess.run([sys.executable, __file__, "--child", str(folder), "--cache", cache, "--quant", quant],
                          env=env, capture_output=True, text=True, timeout=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--model", default="llama2-7b")
    parser.add_argument("--quant", default="none", help="lmi-serve --quantize for every start (fp8, static_int8)")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--profile", action="store_true", help="each start's load under cProfile (see above)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.cache, args.quant)
    import torch

    from bench_gpu import SHAPES, check_setup, random_folder  # puts runtime/ and compile/ on the path

    check_setup(parser, args.tokenizer, random_weights=args.model in SHAPES)

    from lmi_compile.targets.torch_target import local_artifact
    from lmi_runtime.artifact.folder import read_manifest
    from lmi_runtime.artifact.manifest import MANIFEST_NAME

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": args.model, "quant": args.quant, "device": torch.cuda.get_device_name()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model)
        if args.model in SHAPES:
            folder = random_folder(args.model, args.tokenizer, Path(tmp) / "model", torch.float16)
            torch.cuda.empty_cache()
        if not (folder / MANIFEST_NAME).is_file():  # starts are from an artifact, as deployed
            folder = local_artifact(folder, Path(tmp) / "artifact", "float16")
        results["tokenizer_class"] = read_manifest(folder).model.tokenizer_class
        cache = Path(tmp) / "kernel-cache"
        bytecode = Path(tmp) / "pycache"
        for label, setting in (("compile and save the cache", str(cache)), ("compile at start", "none"),
                               ("load the kernel cache", str(cache))):
            done = start(folder, setting, args.quant, bytecode, args.profile)
            # Triton prints each autotuning it runs (not one its cache answers) to stdout
            tuned = done.stdout.count("Triton autotuning for function")
            (args.out / f"cold_start_{label.replace(' ', '_')}.log").write_text(done.stderr + done.stdout)
            if done.returncode != 0:
                print(f"{label}: failed\n{done.stderr[-3000:]}")
                results[label] = {"error": done.stderr[-1000:]}
                continue
            results[label] = json.loads(done.stdout.strip().splitlines()[-1]) | {"autotuned": tuned}
        info = json.loads((cache / "info.json").read_text())
        results["cache_mib"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20
        (cache / "info.json").write_text(json.dumps(info | {"arch": "sm_80"}))
        refused = start(folder, str(cache), args.quant, bytecode)
        message = [line for line in refused.stderr.splitlines() if "kernel cache" in line]
        results["other_arch"] = {"returncode": refused.returncode, "message": message[-1] if message else ""}
    base = results["compile at start"].get("to_first_token_s")
    print(f"\ncold start, {args.model} {args.quant}, {results['device']} (process start -> first token)")
    for label in ("compile and save the cache", "compile at start", "load the kernel cache"):
        row = results[label]
        if "to_first_token_s" in row:
            print(f"  {label:<28} {row['to_first_token_s']:7.1f} s  (imports {row['imports_s']:.1f} s, weights "
                  f"{row['weights_s']:.1f} s, compile + graphs {row['compile_and_capture_s']:.1f} s, first request "
                  f"{row['first_request_s']:.1f} s; cache "
                  f"{row['kernel_cache']}, {row['autotuned']} matmul autotunings run, "
                  f"{len(row['triton_compiled'])} Triton kernels compiled)  "
                  f"{base / row['to_first_token_s']:.2f}x faster than compiling")
    print(f"  kernel cache size: {results['cache_mib']:.1f} MiB; tokenizer class in the manifest: "
          f"{results['tokenizer_class']}")
    print(f"  cache built for sm_80: exit {results['other_arch']['returncode']}: {results['other_arch']['message']}")
    (args.out / f"bench_cold_start_{Path(args.model).name}_{args.quant}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
