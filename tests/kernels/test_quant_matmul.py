"""The quantized-weight layouts and the matmul kernel that reads them.

Layout tests run in this process (plain torch). The Triton kernel runs here under Triton's
interpreter (TRITON_INTERPRET=1, in a subprocess so the flag stays out of this process),
against the dequantized weight; on a GPU the same cases run compiled (scripts/gpu_check.py)."""

from __future__ import annotations

import subprocess

import pytest
import torch

from lmi_runtime.quant.linear import QuantLinear, qlinear
from lmi_runtime.quant.packed import (PackedWeight, concat, dequantize, pack, pack_int4, quantize_activations,
                                      quantize_rtn, unpack_int4)
from script_module import load_script

KINDS = [("int8", 0), ("fp8", 0), ("int4", 32), ("int4", 128)]


def weight(n=48, k=256, dtype=torch.float32, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_int4_planes_hold_each_groups_halves():
    values = torch.arange(64).remainder(16).reshape(1, 64)
    packed = pack_int4(values, 32)
    assert packed.shape == (1, 32)
    assert packed[0, 0] == values[0, 0] | (values[0, 16] << 4)  # k=0 low, k=16 (second half of group 0) high
    assert packed[0, 16] == values[0, 32] | (values[0, 48] << 4)
    assert torch.equal(unpack_int4(packed, 32), values.to(torch.uint8))


@pytest.mark.parametrize("kind,group", KINDS)
def test_pack_recovers_the_quantized_values_from_the_dequantized_weight(kind, group):
    """What a checkpoint loader does: dequantized weights + their scales -> the same integers."""
    w = weight()
    first = quantize_rtn(w, kind, group or 128)
    zero = None if first.zero is None else first.zero.float() - 8
    again = pack(dequantize(first, torch.float32), kind, first.scale, zero, first.group_size)
    assert torch.equal(again.q.view(torch.uint8), first.q.view(torch.uint8))
    assert (again.zero is None) == (first.zero is None)


@pytest.mark.parametrize("kind,group", KINDS)
def test_rtn_error_is_what_the_format_allows(kind, group):
    w = weight()
    error = ((dequantize(quantize_rtn(w, kind, group or 128), torch.float32) - w).norm() / w.norm()).item()
    assert error < {"int8": 0.01, "fp8": 0.05, "int4": 0.12}[kind]
    assert error > 0  # it did quantize


def test_fused_weights_concatenate_and_refuse_mixed_formats():
    a, b = quantize_rtn(weight(seed=1), "int4", 32), quantize_rtn(weight(seed=2), "int4", 32)
    fused = concat([a, b])
    torch.testing.assert_close(dequantize(fused, torch.float32),
                               torch.cat([dequantize(a, torch.float32), dequantize(b, torch.float32)]))
    with pytest.raises(ValueError, match="quantized differently"):
        concat([a, quantize_rtn(weight(), "int8")])


def test_activation_quantization_is_per_token_and_symmetric():
    x = torch.tensor([[1.0, -2.0, 0.5], [100.0, 1.0, -50.0]])
    got = quantize_activations(x, "int8")
    step = x.abs().amax(1, keepdim=True) / 127.5
    torch.testing.assert_close(got, (x / step).round().clamp(-128, 127) * step)
    assert torch.equal(quantize_activations(x, "none"), x)


def test_quant_linear_on_cpu_is_the_dequantized_matmul_plus_bias():
    w, bias = weight(), torch.randn(48)
    packed = quantize_rtn(w, "int4", 64)
    layer = QuantLinear(packed, bias)
    x = torch.randn(2, 3, 256)
    torch.testing.assert_close(layer(x), x @ dequantize(packed, torch.float32).T + bias)
    assert layer(x).shape == (2, 3, 48)
    with pytest.raises(ValueError, match="unknown quantized layout"):
        PackedWeight("int3", packed.q, packed.scale)


def test_the_op_traces_under_torch_compile():
    packed = quantize_rtn(weight(), "int8")
    x = torch.randn(5, 256)
    compiled = torch.compile(lambda x, w: qlinear(x, *w), fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(x, packed.args()), x @ dequantize(packed, torch.float32).T)


def interpret(cli_env: dict, python: str, source: str) -> None:
    """Run a kernel check in Triton's interpreter (a fresh process: the flag is read at import)."""
    pytest.importorskip("triton")
    done = subprocess.run([python, "-c", source], env=cli_env | {"TRITON_INTERPRET": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


INTERPRETED = """
import torch, triton
from lmi_runtime.kernels import quant_matmul as qm
from lmi_runtime.quant.packed import quantize_rtn, dequantize
torch.manual_seed(0)
for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2)):
    for m in (1, 3, 20):
        # one tile (the autotuner needs a GPU to time several): four int4 groups of 32 or one of 128
        qm._matmul_kernel.configs = [triton.Config({"BLOCK_M": 16 if m <= 16 else 64, "BLOCK_N": 16, "BLOCK_K": 128})]
        for n, k in ((48, 256), (40, 416)):  # 416: 13 groups of 32, the last tile part-filled
            w, x = torch.randn(n, k).to(dtype), torch.randn(m, k).to(dtype)
            torch.testing.assert_close(qm.matmul(x, w, None, None, "dense").float(), x.float() @ w.float().T,
                                       atol=tol * 10, rtol=tol)
            for kind, group, split in ((\"int8\", 0, 1), (\"fp8\", 0, 2), (\"int4\", 32, 1), (\"int4\", 32, 3),
                                       (\"int4\", 128, 1), (\"int4\", 128, 2)):
                if k % (group or 1):
                    continue
                p = quantize_rtn(w, kind, group or 128)
                got = qm.matmul(x, p.q, p.scale, p.zero, kind, p.group_size, split)
                assert got.dtype == dtype and got.shape == (m, n)
                torch.testing.assert_close(got.float(), x.float() @ dequantize(p, dtype).float().T, atol=tol * 10, rtol=tol)
print("ok")
"""


def test_triton_kernel_matches_the_dequantized_weight_in_the_interpreter(cli_env, python):
    interpret(cli_env, python, INTERPRETED)


GEMV_INTERPRETED = """
import torch
from lmi_runtime.kernels import gemv
from lmi_runtime.quant.packed import quantize_rtn, dequantize
torch.manual_seed(0)
for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2)):
    for n, k in ((48, 256), (42, 416)):  # 416: 13 groups of 32, the last tile part-filled; 42: the last rows masked
        w, x = torch.randn(n, k).to(dtype), torch.randn(1, k).to(dtype)
        for kind, group in (("int8", 0), ("fp8", 0), ("int4", 32), ("int4", 128)):
            if k % (group or 1):
                continue
            p = quantize_rtn(w, kind, group or 128)
            got = gemv.qgemv(x, p.q, p.scale, p.zero, kind, p.group_size, tile=(4, 128, 1))
            assert got.dtype == dtype and got.shape == (1, n)
            torch.testing.assert_close(got.float(), x.float() @ dequantize(p, dtype).float().T, atol=tol * 10, rtol=tol)
print("ok")
"""


def test_one_token_gemv_matches_the_dequantized_weight_in_the_interpreter(cli_env, python):
    interpret(cli_env, python, GEMV_INTERPRETED)


def test_half2_arithmetic_takes_16_bit_inputs_of_int_weights_only(monkeypatch):
    """fp8 has its own converter; int4 groups under 16 hold no word pair; fp32 inputs keep fp32."""
    from lmi_runtime.kernels.gemv import half2_applies

    for dtype in (torch.float16, torch.bfloat16):  # bf16 is rounded to fp16 pairs (overflow: redone in fp32)
        x = torch.zeros(4, dtype=dtype)
        assert half2_applies(x, "int8", 0) and half2_applies(x, "int4", 16) and half2_applies(x, "int4", 128)
        assert not half2_applies(x, "int4", 8) and not half2_applies(x, "fp8", 0)
    assert not half2_applies(torch.zeros(4), "int8", 0)
    half = torch.zeros(4, dtype=torch.float16)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter runs no inline PTX
    assert not half2_applies(half, "int8", 0)


def test_one_token_gemv_compiles_for_the_h100_without_one():
    """The interpreter runs the kernel's arithmetic, not Triton's lowering: compile each kind at
    its served tile to sm_90 machine code with the wheel's own ptxas (scripts/kernel_sass.py)."""
    pytest.importorskip("triton")
    from lmi_runtime.kernels import gemv

    kernel_sass = load_script("kernel_sass")
    for kind, group in (("int8", 0), ("fp8", 0), ("int4", 32), ("int4", 128)):
        for dtype in ("fp32", "bf16", "fp16"):  # 16-bit: int8 and int4 in half2 arithmetic (inline PTX)
            per_weight, ops = kernel_sass.count(gemv._qgemv_kernel, kind, group, gemv.Q_TILES[kind], dtype)
            fma = "HFMA2" if dtype != "fp32" and kind != "fp8" else "FFMA"
            assert ops[fma] > 0 and per_weight > 0, (kind, dtype, ops)  # the hot loop was found in the machine code


DEQUANT_INTERPRETED = """
import torch
from lmi_runtime.kernels import dequant
from lmi_runtime.quant.packed import quantize_rtn, dequantize
torch.manual_seed(0)
for n, k in ((48, 256), (42, 416)):  # 42: the last rows masked; 416: a part-filled int8 tile
    w = torch.randn(n, k)
    for kind, group in (("int8", 0), ("fp8", 0), ("int4", 32), ("int4", 128)):
        if k % (group or 1):
            continue
        p = quantize_rtn(w, kind, group or 128)
        for dtype in (torch.float32, torch.float16):
            got = dequant.dense(p, dtype)
            assert got.dtype == dtype and torch.equal(got, dequantize(p, dtype)), (n, k, kind, group, dtype)
        # the interpreter casts to bfloat16 by truncating (the GPU rounds): one unit in the last place
        torch.testing.assert_close(dequant.dense(p, torch.bfloat16).float(), dequantize(p, torch.bfloat16).float(),
                                   rtol=2**-7, atol=0)
print("ok")
"""


def test_one_pass_dequantize_equals_the_reference_bit_for_bit_in_the_interpreter(cli_env, python):
    interpret(cli_env, python, DEQUANT_INTERPRETED)
