"""The decode step's matmuls on a CUDA GPU: our Triton kernel (`kernels/quant_matmul.py`)
against cuBLAS and the field's quantized kernels, same run, same shapes.

  python3 scripts/bench_matmul.py [--tokens 1,4,16,64] [--only ours,tinygemm] [--sweep-gemv] [--shapes qkv,o]
      [--out DIR]

For each Llama-2-7B projection (q/k/v fused, o, gate/up fused, down, lm_head) and token count:
cuBLAS fp16 (`F.linear`), the one-token GEMV (`kernels/gemv.py`; `qgemv` for packed weights, with
`--sweep-gemv` over its tiles), ours on fp16 / int8 / fp8 / int4-g128 weights, and where this torch
has them: gemlite's fp16 / int8 / int4 kernels, tinygemm int4 (`aten._weight_int4pack_mm`, gpt-fast's and torchao's int4 path),
`torch.compile` of dequantize + linear (gpt-fast's int8 path) and `torch._scaled_mm` fp8 with
per-row scales. Each call is timed inside a CUDA graph of 20 calls cycling over enough weight
copies to defeat the L2 cache; a figure is µs per call and the weight bytes it read per
second. Every kernel's output is first checked against the dequantized fp32 reference.
Writes bench_matmul.json (and .png with matplotlib) under --out; the last table sums one
decode step (32 layers + lm_head) per variant.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "runtime")]

from lmi_runtime.kernels import gemv  # noqa: E402
from lmi_runtime.kernels.quant_matmul import matmul  # noqa: E402
from lmi_runtime.quant.packed import dequantize, quantize_rtn  # noqa: E402

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008),
          "lm_head": (32000, 4096)}
PER_STEP = {"qkv": 32, "o": 32, "gate_up": 32, "down": 32, "lm_head": 1}
L2_DEFEAT = 192 * 2**20  # bytes per graph of calls: ~4x the L2 cache
GEMV_TILES = [(4, 2048, 4), (4, 4096, 8), (8, 1024, 2), (8, 1024, 4), (8, 2048, 4), (8, 4096, 8), (16, 1024, 2),
              (16, 1024, 4), (16, 2048, 4), (16, 2048, 8), (16, 4096, 8), (32, 1024, 4), (32, 2048, 8)]


def graph_time(calls: list) -> float:
    """Seconds per call, replaying a CUDA graph of the calls (no launch gaps), best of 5."""
    for call in calls[:3]:
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    best = math.inf
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / len(calls))
    return best


def one_token_gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The runtime's one-token path (`kernels.gemv`); more tokens are cuBLAS's there."""
    if not gemv.applies(x, w):
        raise ValueError("one token only")
    return gemv.gemv(x, w)


def one_token_qgemv(x: torch.Tensor, p, tile) -> torch.Tensor:
    """The one-token GEMV of packed weights (`kernels.gemv.qgemv`)."""
    if not gemv.qapplies(x, p.q, p.kind, p.act, p.group_size):
        raise ValueError("one token only")
    return gemv.qgemv(x, p.q, p.scale, p.zero, p.kind, p.group_size, tile)


def variants(w16: torch.Tensor, gemv_tiles: list) -> dict:
    """name -> (make(x) -> call, weight bytes, reference weight in fp32); `gemv_tiles`: the packed
    GEMV's tiles to time ([None]: its default)."""
    out = {"cublas fp16": (lambda x, w=w16: F.linear(x, w), w16.numel() * 2, w16.float()),
           "ours fp16": (lambda x, w=w16: matmul(x, w, None, None, "dense"), w16.numel() * 2, w16.float()),
           "gemv fp16 (1 token)": (lambda x, w=w16: one_token_gemv(x, w), w16.numel() * 2, w16.float())}
    for kind in ("int8", "fp8", "int4"):
        p = quantize_rtn(w16, kind, 128)
        ref = dequantize(p, torch.float32)  # one for every variant of this weight (a tile sweep's would not fit)
        out[f"ours {kind}"] = (lambda x, p=p: matmul(x, p.q, p.scale, p.zero, p.kind, p.group_size), p.nbytes(), ref)
        for tile in gemv_tiles:
            name = f"qgemv {kind}" + (" %dx%dw%d" % tile if tile else "")
            out[name] = (lambda x, p=p, tile=tile: one_token_qgemv(x, p, tile), p.nbytes(), ref)
    p8 = quantize_rtn(w16, "int8")
    compiled = torch.compile(lambda x, q, s: F.linear(x, q.to(x.dtype)) * s)
    out["compiled int8 (gpt-fast)"] = (lambda x, p=p8: compiled(x, p.q, p.scale), p8.nbytes(),
                                       dequantize(p8, torch.float32))
    try:  # tinygemm: bf16 activations, [K/G, N, 2] scales and zeros
        p4 = quantize_rtn(w16, "int4", 128)
        from lmi_runtime.quant.packed import unpack_int4

        vals = unpack_int4(p4.q, 128)
        packed = torch.ops.aten._convert_weight_to_int4pack((vals[:, ::2] << 4 | vals[:, 1::2]).contiguous(), 8)
        s = p4.scale.float()
        zeros = (8 - p4.zero.float()) * s  # tinygemm: w = (q - 8) * s + zero
        sz = torch.stack([s, zeros], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
        out["tinygemm int4"] = (lambda x, q=packed, sz=sz: torch.ops.aten._weight_int4pack_mm(x.to(torch.bfloat16),
                                                                                                q, 128, sz),
                                p4.nbytes(), dequantize(p4, torch.float32))
    except Exception as err:  # noqa: BLE001 - report what this torch lacks, keep measuring the rest
        print(f"tinygemm int4 unavailable: {type(err).__name__}: {err}")
    pf = quantize_rtn(w16, "fp8")
    scale_b = pf.scale.float().view(1, -1)

    def scaled_mm(x, q=pf.q, scale_b=scale_b):
        sa = x.abs().amax(-1, keepdim=True).float().clamp(min=1e-12) / 448
        xq = (x / sa).to(torch.float8_e4m3fn)
        return torch._scaled_mm(xq, q.t(), scale_a=sa, scale_b=scale_b, out_dtype=torch.bfloat16)

    out["scaled_mm fp8 (W8A8)"] = (scaled_mm, pf.nbytes(), dequantize(pf, torch.float32))
    out |= gemlite_variants(w16)
    return out


def gemlite_variants(w16: torch.Tensor) -> dict:
    """gemlite's Triton kernels (fp16, int8 per channel, int4 groups of 128) on the same weights;
    empty where gemlite is not installed."""
    try:
        from gemlite import DType, GemLiteLinear
        from gemlite.helper import A16W8_INT8, A16Wn
    except ImportError as err:
        print(f"gemlite unavailable: {err}")
        return {}
    n, k = w16.shape
    dense = GemLiteLinear(16, group_size=None, in_features=k, out_features=n, input_dtype=DType.FP16,
                          output_dtype=DType.FP16).pack(w16, None, None)
    p8 = quantize_rtn(w16, "int8")
    int8 = A16W8_INT8(device="cuda").from_weights(p8.q, scales=p8.scale.view(-1, 1).half())
    p4 = quantize_rtn(w16, "int4", 128)
    from lmi_runtime.quant.packed import unpack_int4

    int4 = A16Wn(device="cuda").from_weights(unpack_int4(p4.q, 128), p4.scale.half(), p4.zero.half(), 4, 128)
    return {"gemlite fp16": (dense, w16.numel() * 2, w16.float()),
            "gemlite int8": (int8, p8.nbytes(), dequantize(p8, torch.float32)),
            "gemlite int4": (int4, p4.nbytes(), dequantize(p4, torch.float32))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1,4,16,64")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--sweep-gemv", action="store_true", help="time the packed GEMV with each tile of GEMV_TILES")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="which of the 7B projections to time")
    parser.add_argument("--only", default="", help="comma-separated parts of variant names to run (cublas fp16 always runs)")
    args = parser.parse_args()
    only = [part for part in args.only.split(",") if part] + ["cublas fp16"]
    args.out.mkdir(parents=True, exist_ok=True)
    tokens = [int(t) for t in args.tokens.split(",")]
    torch.manual_seed(0)
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    for shape, (n, k) in SHAPES.items():
        if shape not in args.shapes.split(","):
            continue
        w16 = (torch.randn(n, k, device="cuda") / math.sqrt(k)).half()
        # copies of every weight, so that each call of a graph reads a cold one (int4's is n*k/2 bytes)
        tiles = GEMV_TILES if args.sweep_gemv else [None]
        sets = [variants(w16 if i == 0 else w16.clone(), tiles) for i in range(max(2, min(32, math.ceil(L2_DEFEAT / (n * k / 2)))))]
        table = {}
        for name, (fn, nbytes, ref) in sets[0].items():
            if args.only and not any(part in name for part in only):
                continue
            row = {}
            for m in tokens:
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                try:
                    got = fn(x).float()
                    want = x.float() @ ref.T
                    err = ((got - want).norm() / want.norm()).item()
                    if err > (0.05 if "W8A8" in name else 0.01):
                        row[m] = {"error": f"relative error {err:.3g}"}
                        continue
                    calls = [lambda f=sets[i % len(sets)][name][0], x=x: f(x) for i in range(20)]
                    seconds = graph_time(calls)
                    row[m] = {"us": seconds * 1e6, "gb_s": nbytes / seconds / 1e9, "rel_err": err}
                except Exception as error:  # noqa: BLE001 - a kernel that cannot run this case says so
                    row[m] = {"error": f"{type(error).__name__}: {str(error)[-400:]}"}
            table[name] = row
        del sets
        results["shapes"][shape] = {"n": n, "k": k, "variants": table}
        print(f"\n{shape} [{n} x {k}]  µs per call (GB/s of weights read)")
        for name, row in table.items():
            cells = [f"{row[m]['us']:8.1f} ({row[m]['gb_s']:6.0f})" if "us" in row[m] else f"{row[m]['error'][:22]:>22}"
                     for m in tokens]
            print(f"  {name:<26}" + "  ".join(cells))
        del w16
        torch.cuda.empty_cache()
    print("\none decode step's matmuls (32 layers + lm_head), ms, and vs cuBLAS fp16")
    if len(results["shapes"]) < len(SHAPES):
        return (args.out / "bench_matmul.json").write_text(json.dumps(results, indent=2))  # no whole step to sum
    names = list(results["shapes"]["qkv"]["variants"])  # those that ran
    step = {}
    for name in names:
        step[name] = {}
        for m in tokens:
            cells = [results["shapes"][s]["variants"][name].get(m, {}) for s in SHAPES]
            if all("us" in c for c in cells):
                step[name][m] = sum(c["us"] * PER_STEP[s] for c, s in zip(cells, SHAPES)) / 1e3
    for name in names:
        base = step["cublas fp16"]
        print(f"  {name:<26}" + "  ".join(f"{step[name][m]:6.2f} ({base[m] / step[name][m]:4.2f}x)" if m in step[name]
                                          else f"{'n/a':>15}" for m in tokens))
    results["decode_step_ms"] = step
    from lmi_runtime.kernels import quant_matmul

    for kernel in (quant_matmul._matmul_kernel,):
        print(f"\nautotuned {kernel.fn.__name__}:")
        for key, config in kernel.cache.items():
            print(f"  {key[:6]} -> {config}")  # M bucket, N, K, kind, group, split
    (args.out / "bench_matmul.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
