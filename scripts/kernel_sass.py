"""Instructions per weight in the packed GEMV's hot loop, compiled for the H100 on a machine without one.

  python3 scripts/kernel_sass.py [--kinds int4,int8,fp8] [--tiles 8x1024w2,16x1024w4] [--runtime DIR]

Triton's wheel carries ptxas and nvdisasm, so `kernels.gemv._qgemv_kernel` compiles to sm_90
machine code here. At one token the int kinds are bound by instruction issue, not memory (an SM
issues 128 thread-instructions a clock; int4 at the H100's 3 TB/s needs 26 weights a clock per
SM), so the count per weight is what their speed depends on until the device measures them.
A static count, not a timing: `bench_matmul.py --sweep-gemv` on a GPU decides (an fp8 variant
with a fifth fewer instructions ran 9% slower on the H100). `--runtime DIR`
counts another checkout's kernel (its `runtime/` folder), e.g. the code before a change.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
Q_TYPES = {"int8": "i8", "int4": "u8", "fp8": "fp8e4nv"}
KINDS = {"int8": 1, "int4": 2, "fp8": 3}
INSTRUCTION = re.compile(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def signature(kernel, kind: str, dtype: str) -> dict:
    """Argument types for the kernel's parameters: `dtype` input and scales, `kind`'s weights."""
    types = {}
    for param in kernel.params:
        name = param.name
        if param.is_constexpr:
            types[name] = "constexpr"
        elif name == "q_ptr":
            types[name] = "*" + Q_TYPES[kind]
        elif name == "z_ptr":
            types[name] = "*u8" if kind == "int4" else "*" + dtype
        elif name.endswith("_ptr"):
            types[name] = "*" + dtype
        else:
            types[name] = "i32"
    return types


def hot_loop(sass: str) -> list[str]:
    """The instructions of the first loop, from its label to the branch back to it: the main loop
    (the half2 kernels' fallback to fp32 arithmetic, a second loop, comes after it)."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.L_x_\d+):", line))}
    for i, line in enumerate(lines):
        back = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", line)
        if back and labels.get(back.group(1), i) < i:
            return [m.group(1) for line in lines[labels[back.group(1)]:i + 1] if (m := INSTRUCTION.search(line))]
    return []


def count(kernel, kind: str, group: int, tile: tuple[int, int, int],
          dtype: str = "fp16") -> tuple[float, collections.Counter]:
    """Instructions per weight in the hot loop for `dtype` input ("fp16", "bf16": the half2 path
    of the int kinds; "fp32": the fp32 arithmetic), and the loop's instructions by opcode."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    block_n, block_k, warps = tile
    types = signature(kernel, kind, dtype)
    constexprs = {"KIND": KINDS[kind], "GROUP": group, "HALF2": dtype in ("fp16", "bf16") and kind != "fp8",
                  "BLOCK_N": block_n, "BLOCK_K": block_k}
    # every pointer, size and stride divisible by 16, as Triton specializes a 7B layer's call
    aligned = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(kernel.params) if not p.is_constexpr}
    source = ASTSource(fn=kernel, signature=types, constexprs=constexprs, attrs=aligned)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        sass = subprocess.run([str(nvdisasm), "-c", cubin.name], capture_output=True, text=True, check=True).stdout
    ops = collections.Counter(hot_loop(sass))
    return sum(ops.values()) / (block_n * block_k / (32 * warps)), ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="int4,int8,fp8")
    parser.add_argument("--group", type=int, default=128, help="int4 group size")
    parser.add_argument("--dtypes", default="fp16,bf16,fp32", help="input dtypes (16-bit: the half2 path of int4/int8)")
    parser.add_argument("--tiles", default="", help="BLOCK_NxBLOCK_KwWARPS,... (default: the served tiles)")
    parser.add_argument("--runtime", type=Path, default=REPO / "runtime", help="the runtime/ folder to count")
    args = parser.parse_args()
    sys.path.insert(0, str(args.runtime))
    from lmi_runtime.kernels import gemv

    print(f"{args.runtime}: instructions per weight in the hot loop (sm_90)")
    for kind in args.kinds.split(","):
        tiles = [tuple(int(v) for v in re.split(r"[xw]", t)) for t in args.tiles.split(",") if t] or [gemv.Q_TILES[kind]]
        for tile in tiles:
            for dtype in args.dtypes.split(","):
                per_weight, ops = count(gemv._qgemv_kernel, kind, args.group if kind == "int4" else 0, tile, dtype)
                top = ", ".join(f"{op} {n}" for op, n in ops.most_common(6))
                print(f"  {kind:<5} {dtype:<5} {'%dx%dw%d' % tile:<11} {per_weight:5.2f}   ({top})")


if __name__ == "__main__":
    main()
