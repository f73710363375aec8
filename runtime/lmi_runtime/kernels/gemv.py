"""`y = x @ W.T` for one token and a 16-bit or fp32 weight, on CUDA cores: the decode step of
a single stream.

Why not cuBLAS: at one token a matmul only streams its weight, and cuBLAS's kernels read it at
2.2-2.8 TB/s on the H100, while this one reads 2.6-3.1 (`torch.sum` reads 3.07 there). A 7B
decode step's matmuls took 4.59 ms against cuBLAS's 5.03 (1.10×; a sweep over tiles on the
H100, CUDA graphs over weight copies that defeat the L2 cache). Each program owns two output
rows and walks K in 2048-wide tiles, without tensor cores and without padding the token to 16
rows as `quant_matmul` does; its weight loads are marked evict-first so the input stays cached.
At 4 tokens the same tiles were 0.70× of cuBLAS, so only one token comes here.

`qgemv` does the same for the packed weight-only kinds of `quant.packed` (int8 and fp8 per
channel, int4 by groups): at one token `quant_matmul`'s tensor-core tiles pad the token to 16
rows. At one token the int kinds are bound by instruction issue, not memory, so the kernel
reads them as 32-bit words and spends about three instructions a weight: one logic op puts a
field, in place, into the mantissa of 2^23 (`_field`), a subtraction makes it exact, an FMA
takes it with its input divided by the field's power of two (the int-to-float converter runs
at a quarter of the FMA rate; extracting bytes first cost three more). An int4 group's zero
point is applied once per group through the sum of its inputs: Σ s·(q−z)·x = s·(Σ q·x − z·Σ x).
`scripts/kernel_sass.py` counts the hot loop's instructions per weight for sm_90 without a
GPU: int4 4.5 (was 7.8 reading bytes), int8 5.0 (was 9.0) at the served tiles. A 7B decode
step's matmuls at one token on the H100 (`bench_matmul.py --tokens 1 --sweep-gemv`, same run):
int4-g128 2.03 ms against `quant_matmul`'s 3.03 (the byte-reading kernel: 2.79), int8 2.63
against 2.90 (was 3.03, so int8 was left to `quant_matmul` before), fp8 2.43 against 2.82;
cuBLAS fp16 4.86. fp8 keeps one reduction per tile: a [BLOCK_N, BLOCK_K] sum held to the end had
fewer instructions but took 2.68 ms against 2.46 (one call).

16-bit input (fp16: what the 7B benchmarks serve) takes the int kinds through half2 arithmetic instead,
two weights an instruction, as Marlin dequantizes: inline PTX puts two fields of a word into the
mantissas of half2 1024.0 with one logic op (int4) or byte permute (int8), one subtraction makes
the integers exact, one FMA takes two products, and each word pair's two lanes are widened to
fp32 and added once: int4 2.9 instructions a weight (was 4.5), int8 3.3 (was 5.0). Its products
are rounded to fp16: on 7B shapes the relative error against the fp32 product is 4-5e-4 (fp8,
still in fp32 arithmetic: 2e-4; the check allows 2e-3); int8's inputs are divided by 16 so that a lane's sums
stay below fp16's limit for inputs up to ~2000, and a program whose rows overflowed anyway
(inf or nan) does them again in fp32 (`gpu_check.py` checks both). A 7B decode step's matmuls on
the H100 (2026-12-07, two calls; cuBLAS fp16 4.86 and 4.85 ms in them): int4 1.60 ms against
the code before's 2.06, int8 2.53 against 2.63 (int8 was near the copy rate on its wide layers
already); int4's tiles differ for long rows and narrow layers (`q_tile`). bf16 input takes the
same path: each input pair is widened and rounded to an fp16 pair once per column (exact within
fp16's range; beyond it the lane turns inf and the rows are redone in fp32): int4 3.0
instructions a weight, int8 3.5, against 4.5 and 5.1 in fp32 arithmetic. Loading each tile's
words one tile ahead (Triton pipelines no load here: the loop has no dot) was slower for every
7B shape on the H100 (int4 down_proj 12.2 -> 17.8 µs, int8 18.2 -> 20.9): the other resident
programs hide that latency already, and the held words cost registers. Splitting a row's K over
several programs (partial sums added atomically, the last to arrive writes) was slower too (int8
o_proj 8.4 -> 10.5 µs, int4 down_proj 12.0 -> 12.7): even the narrow layers have programs enough.
"""

from __future__ import annotations

import os

import torch

try:  # the CPU-only install has no triton; the CUDA path needs it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None

BLOCK_N, BLOCK_K, WARPS = 2, 2048, 4  # the sweep's best tile for every 7B shape at one token
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """One row of input on CUDA, and a weight of the input's dtype."""
    return (triton is not None and x.is_cuda and x.numel() == x.shape[-1] and weight.dtype == x.dtype
            and x.dtype in DTYPES and weight.is_contiguous())


def _dot_ptx(constants: str, per_word: str, inputs: int) -> str:
    """PTX for the half2 dot product of two packed words ($1, $2) with their fp16 inputs (pairs
    in 32-bit registers, `inputs` per word from $3) -> $0, the sum in fp32. `per_word` turns
    the word {u} into half2 values t0..t{inputs-1} that are exact integers. Each FMA takes two
    products; the two lanes (a few products each, rounded in fp16: relative error 4-5e-4
    against the fp32 product on 7B shapes, on the H100) are widened and added once per pair."""
    words = []
    for i in range(2):
        x = [f"${3 + i * inputs + j}" for j in range(inputs)]
        words.append(per_word.format(u=f"${1 + i}") + "".join(f"fma.rn.f16x2 acc, t{j}, {x[j]}, acc;\n"
                                                                 for j in range(inputs)))
    return ("{\n.reg .b32 t0, t1, t2, t3, s, acc, k0, k1, k2;\n.reg .b16 l, h;\n.reg .f32 f0, f1;\n"
            + constants + "mov.b32 acc, 0;\n" + "".join(words)
            + "mov.b32 {l, h}, acc;\ncvt.f32.f16 f0, l;\ncvt.f32.f16 f1, h;\nadd.f32 f0, f0, f1;\nmov.b32 $0, f0;\n}")


# int4: a logic op puts the nibbles at bits 0 and 16 (or 4 and 20) of a word into the mantissas of
# half2 1024.0; subtracting 1032 (or an FMA by 1/16 minus 72) leaves q - 8 exactly.
INT4_PTX = _dot_ptx("mov.b32 k0, 0x64086408;\nmov.b32 k1, 0x2C002C00;\nmov.b32 k2, 0xD480D480;\n", """\
lop3.b32 t0, {u}, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 t1, {u}, 0x00F000F0, 0x64006400, 0xEA;
shr.u32 s, {u}, 8;
lop3.b32 t2, s, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 t3, s, 0x00F000F0, 0x64006400, 0xEA;
sub.f16x2 t0, t0, k0;
fma.rn.f16x2 t1, t1, k1, k2;
sub.f16x2 t2, t2, k0;
fma.rn.f16x2 t3, t3, k1, k2;
""", 4)
# int8 (XOR-ed with 0x80: 0..255): a byte permute puts bytes 0, 1 (2, 3) into the mantissas of
# half2 1024.0; subtracting 1152 leaves q exactly.
INT8_PTX = _dot_ptx("mov.b32 k0, 0x64806480;\n", """\
prmt.b32 t0, {u}, 0x64646464, 0x4140;
prmt.b32 t1, {u}, 0x64646464, 0x4342;
sub.f16x2 t0, t0, k0;
sub.f16x2 t1, t1, k0;
""", 2)

if triton is not None:

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, y_ptr, N, K, stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        n_ok = rn < N
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + rk
            k_ok = k < K
            w = tl.load(w_ptr + rn[:, None] * stride_wn + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0,
                        eviction_policy="evict_first")
            x = tl.load(x_ptr + k, mask=k_ok, other=0.0)
            acc += tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
        tl.store(y_ptr + rn, acc.to(y_ptr.dtype.element_ty), mask=n_ok)


if triton is not None:

    @triton.jit
    def _field(u, MASK: tl.constexpr, magic, BIAS: tl.constexpr):
        """The bit field u & MASK of 32-bit words, in place (so times 2^its lowest bit), as fp32
        minus (BIAS - 2^23), exactly while it ends below bit 20: OR-ed into the mantissa of 2^23,
        one logic op per weight (`magic`, 2^23's bits, is an argument so that the AND and the OR
        fuse: an instruction takes one immediate), not the converter at a quarter of FMA rate."""
        return ((u & MASK) | magic).to(tl.float32, bitcast=True) - BIAS

    @triton.jit
    def _quarters(x):
        """[C, 4] -> its four columns, each [C] (the inputs of a word's bytes 0..3)."""
        even, odd = tl.split(tl.reshape(x, (x.shape[0], 2, 2)))
        x0, x2 = tl.split(even)
        x1, x3 = tl.split(odd)
        return x0, x1, x2, x3

    @triton.jit
    def _half_pairs(a, b):
        """Two words of fp16 pairs (x0, x1), (x2, x3) -> (x0, x2), (x1, x3): the inputs of the
        nibbles that one half2 lane pair of an int4 word holds."""
        return tl.inline_asm_elementwise(
            "prmt.b32 $0, $2, $3, 0x5410; prmt.b32 $1, $2, $3, 0x7632;",
            "=r,=r,r,r", [a, b], dtype=(tl.uint32, tl.uint32), is_pure=True, pack=1)

    _INT4_PTX, _INT8_PTX = tl.constexpr(INT4_PTX), tl.constexpr(INT8_PTX)  # a kernel reads constexpr globals

    @triton.jit
    def _pair_columns(t):
        """[R, C] -> its even and odd columns, each [R, C / 2] (two words for one asm block)."""
        return tl.split(tl.reshape(t, (t.shape[0], t.shape[1] // 2, 2)))

    @triton.jit
    def _fp16_pairs(x_ptr, at, mask, SIXTEENTH: tl.constexpr):
        """The inputs' 16-bit pairs at 32-bit word `at`, as fp16 pairs, each value divided by 16 if
        SIXTEENTH. bf16 is widened to fp32 (its bits in the high half) and rounded to fp16: exact
        within fp16's range; beyond it, inf, and the program redoes its rows in fp32."""
        pairs = tl.load(x_ptr.to(tl.pointer_type(tl.uint32), bitcast=True) + at, mask=mask, other=0)
        if x_ptr.dtype.element_ty == tl.bfloat16:
            scale: tl.constexpr = "mul.f32 lo, lo, 0f3D800000;\nmul.f32 hi, hi, 0f3D800000;\n" if SIXTEENTH else ""
            return tl.inline_asm_elementwise("{\n.reg .b32 lo, hi;\nshl.b32 lo, $1, 16;\nand.b32 hi, $1, 0xFFFF0000;\n"
                                             + scale + "cvt.rn.f16x2.f32 $0, hi, lo;\n}", "=r,r", [pairs],
                                             dtype=tl.uint32, is_pure=True, pack=1)
        elif SIXTEENTH:
            return tl.inline_asm_elementwise("{.reg .b32 k; mov.b32 k, 0x2C002C00; mul.f16x2 $0, $1, k;}", "=r,r",
                                             [pairs], dtype=tl.uint32, is_pure=True, pack=1)
        else:
            return pairs

    @triton.jit
    def _int4_dot(u, lo02, hi02, lo13, hi13):
        """Σ (q - 8)·x over int4 words [R, C] (their inputs [1, C] each) -> [R, C / 2] fp32, a
        word pair each (see `_dot_ptx`)."""
        u0, u1 = _pair_columns(u)
        a0, a1 = _pair_columns(lo02)
        b0, b1 = _pair_columns(hi02)
        c0, c1 = _pair_columns(lo13)
        d0, d1 = _pair_columns(hi13)
        return tl.inline_asm_elementwise(_INT4_PTX, "=r" + ",r" * 10, [u0, u1, a0, b0, c0, d0, a1, b1, c1, d1],
                                         dtype=tl.float32, is_pure=True, pack=1)

    @triton.jit
    def _int8_dot(u, x01, x23):
        """Σ q·x over int8 words XOR-ed with 0x80 [R, C] (their inputs [1, C] each) -> [R, C / 2]
        fp32, a word pair each (see `_dot_ptx`)."""
        u0, u1 = _pair_columns(u)
        a0, a1 = _pair_columns(x01)
        b0, b1 = _pair_columns(x23)
        return tl.inline_asm_elementwise(_INT8_PTX, "=r" + ",r" * 6, [u0, u1, a0, b0, a1, b1], dtype=tl.float32,
                                         is_pure=True, pack=1)

    @triton.jit
    def _int4_rows(x_ptr, words, s_ptr, z_ptr, rn, n_ok, K, stride_qn, stride_sn, magic, GROUP: tl.constexpr,
                   HALF2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """int4, per group of GROUP the first half in the low nibbles, the second in the high."""
        HALF: tl.constexpr = GROUP // 2
        WORDS: tl.constexpr = GROUP // 8  # a group's words
        GROUPS: tl.constexpr = BLOCK_K // GROUP
        c = tl.arange(0, BLOCK_K // 8)
        c_group, c_pos = c // WORDS, c % WORDS
        r = tl.arange(0, GROUPS)
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for g0 in range(0, K // GROUP, GROUPS):
            c_ok = (g0 + c_group) < K // GROUP
            r_ok = (g0 + r) < K // GROUP
            u = tl.load(words + rn[:, None] * (stride_qn // 4) + (g0 * WORDS + c)[None, :],
                        mask=n_ok[:, None] & c_ok[None, :], other=0, eviction_policy="evict_first")
            k_low = (g0 + c_group) * GROUP + 4 * c_pos  # nibble 2i + h of a word: k_low + i + h * HALF
            four = tl.arange(0, 4)
            x_lo = tl.load(x_ptr + k_low[:, None] + four[None, :], mask=c_ok[:, None], other=0.0).to(tl.float32)
            x_hi = tl.load(x_ptr + k_low[:, None] + HALF + four[None, :], mask=c_ok[:, None], other=0.0).to(tl.float32)
            xs = tl.sum(x_lo + x_hi, axis=1)
            if HALF2:  # Σ (q - 8)·x a word pair each; the zero point is then taken from 8
                at = k_low // 2
                lo02, lo13 = _half_pairs(_fp16_pairs(x_ptr, at, c_ok, False), _fp16_pairs(x_ptr, at + 1, c_ok, False))
                hi02, hi13 = _half_pairs(_fp16_pairs(x_ptr, at + HALF // 2, c_ok, False),
                                         _fp16_pairs(x_ptr, at + HALF // 2 + 1, c_ok, False))
                qx = _int4_dot(u, lo02[None, :], hi02[None, :], lo13[None, :], hi13[None, :])
                qx_g = tl.sum(tl.reshape(qx, (BLOCK_N, GROUPS, WORDS // 2)), axis=2)
                offset = 8.0
            else:
                qx = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
                u_top = u >> 12  # nibbles 5..7 to bits 8..19: a nibble is exact in the mantissa up to bit 19
                lo0, lo1, lo2, lo3 = _quarters(x_lo)
                hi0, hi1, hi2, hi3 = _quarters(x_hi)
                # nibble p of a word sits at bits 4p (p < 5) or, in u_top, 4p - 12: its field is
                # the nibble times 2^bit, so its input is divided by the same power of two (exact)
                qx += _field(u, 15, magic, 8388608.0) * lo0[None, :]
                qx += _field(u, 15 << 4, magic, 8388608.0) * (hi0 * (1.0 / 16))[None, :]
                qx += _field(u, 15 << 8, magic, 8388608.0) * (lo1 * (1.0 / 256))[None, :]
                qx += _field(u, 15 << 12, magic, 8388608.0) * (hi1 * (1.0 / 4096))[None, :]
                qx += _field(u, 15 << 16, magic, 8388608.0) * (lo2 * (1.0 / 65536))[None, :]
                qx += _field(u_top, 15 << 8, magic, 8388608.0) * (hi2 * (1.0 / 256))[None, :]
                qx += _field(u_top, 15 << 12, magic, 8388608.0) * (lo3 * (1.0 / 4096))[None, :]
                qx += _field(u_top, 15 << 16, magic, 8388608.0) * (hi3 * (1.0 / 65536))[None, :]
                qx_g = tl.sum(tl.reshape(qx, (BLOCK_N, GROUPS, WORDS)), axis=2)
                offset = 0.0
            x_g = tl.sum(tl.reshape(xs, (GROUPS, WORDS)), axis=1)
            sz_at = rn[:, None] * stride_sn + (g0 + r)[None, :]
            sz_ok = n_ok[:, None] & r_ok[None, :]
            scale = tl.load(s_ptr + sz_at, mask=sz_ok, other=0.0).to(tl.float32)
            zero = tl.load(z_ptr + sz_at, mask=sz_ok, other=0).to(tl.float32) - offset
            acc += tl.sum(scale * (qx_g - zero * x_g[None, :]), axis=1)
        return acc

    @triton.jit
    def _int8_rows(x_ptr, words, s_ptr, rn, n_ok, K, stride_qn, magic, HALF2: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr):
        """int8, four to a word: XOR 0x80 maps -128..127 to 0..255."""
        c = tl.arange(0, BLOCK_K // 4)
        part = tl.zeros((BLOCK_N, BLOCK_K // (8 if HALF2 else 4)), dtype=tl.float32)  # half2: a word pair each
        for c0 in range(0, K // 4, BLOCK_K // 4):
            c_ok = c0 + c < K // 4
            u = tl.load(words + rn[:, None] * (stride_qn // 4) + (c0 + c)[None, :],
                        mask=n_ok[:, None] & c_ok[None, :], other=0, eviction_policy="evict_first") ^ 0x80808080
            if HALF2:  # inputs / 16 (exact): a lane's four products stay below fp16's limit up to |x| ~ 2000
                at = 2 * (c0 + c)
                part += _int8_dot(u, _fp16_pairs(x_ptr, at, c_ok, True)[None, :],
                                  _fp16_pairs(x_ptr, at + 1, c_ok, True)[None, :])
            else:
                u_top = u >> 16  # bytes 2, 3 to bits 0..15
                x = tl.load(x_ptr + 4 * (c0 + c)[:, None] + tl.arange(0, 4)[None, :], mask=c_ok[:, None], other=0.0)
                x0, x1, x2, x3 = _quarters(x.to(tl.float32))
                part += _field(u, 255, magic, 8388608.0 + 128) * x0[None, :]
                part += _field(u, 255 << 8, magic, 8388608.0 + (128 << 8)) * (x1 * (1.0 / 256))[None, :]
                part += _field(u_top, 255, magic, 8388608.0 + 128) * x2[None, :]
                part += _field(u_top, 255 << 8, magic, 8388608.0 + (128 << 8)) * (x3 * (1.0 / 256))[None, :]
        scale = tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        return tl.sum(part, axis=1) * (16.0 if HALF2 else 1.0) * scale

    @triton.jit
    def _fp8_rows(x_ptr, q_ptr, s_ptr, rn, n_ok, K, stride_qn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """fp8: the converter is fast for it; reduced every tile (see the module docstring)."""
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + rk
            k_ok = k < K
            q = tl.load(q_ptr + rn[:, None] * stride_qn + k[None, :], mask=n_ok[:, None] & k_ok[None, :],
                        other=0.0, eviction_policy="evict_first")
            acc += tl.sum(q.to(tl.float32) * tl.load(x_ptr + k, mask=k_ok, other=0.0).to(tl.float32)[None, :], axis=1)
        return acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)

    @triton.jit
    def _qgemv_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, N, K, stride_qn, stride_sn, magic, KIND: tl.constexpr,
                      GROUP: tl.constexpr, HALF2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        words = q_ptr.to(tl.pointer_type(tl.uint32), bitcast=True)  # int8 and int4 read 32-bit words
        if KIND == 2:
            acc = _int4_rows(x_ptr, words, s_ptr, z_ptr, rn, n_ok, K, stride_qn, stride_sn, magic, GROUP, HALF2,
                             BLOCK_N, BLOCK_K)
        elif KIND == 1:
            acc = _int8_rows(x_ptr, words, s_ptr, rn, n_ok, K, stride_qn, magic, HALF2, BLOCK_N, BLOCK_K)
        else:
            acc = _fp8_rows(x_ptr, q_ptr, s_ptr, rn, n_ok, K, stride_qn, BLOCK_N, BLOCK_K)
        if HALF2:  # a half2 lane overflowed (inputs beyond fp16's range over the weights): these rows in fp32
            if tl.max(tl.where(tl.abs(acc) < float("inf"), 0, 1)) > 0:
                if KIND == 2:
                    acc = _int4_rows(x_ptr, words, s_ptr, z_ptr, rn, n_ok, K, stride_qn, stride_sn, magic, GROUP,
                                     False, BLOCK_N, BLOCK_K)
                else:
                    acc = _int8_rows(x_ptr, words, s_ptr, rn, n_ok, K, stride_qn, magic, False, BLOCK_N, BLOCK_K)
        tl.store(y_ptr + rn, acc.to(y_ptr.dtype.element_ty), mask=n_ok)


MAGIC = 0x4B000000  # the bits of 2^23 in fp32
QKINDS = {"int8": 1, "int4": 2, "fp8": 3}
# BLOCK_N, BLOCK_K (weights), warps: the H100 sweep's best tile for a 7B decode step's matmuls
Q_TILES = {"int8": (8, 2048, 4), "fp8": (4, 2048, 4), "int4": (16, 2048, 4)}


def q_tile(kind: str, n: int, k: int) -> tuple[int, int, int]:
    """The tile for an [n, k] weight. int4 in half2 arithmetic (H100 sweep, 2026-12-07): long
    rows (down_proj, k 11008) 12.1 µs with 16 x 4096 on 8 warps against 14.6 with the default,
    narrow layers (o_proj, n 4096) 6.1 µs with 8 rows against 6.7; the others within 3% of
    their best at the default."""
    if kind == "int4" and k > 8192:
        return 16, 4096, 8
    if kind == "int4" and n <= 4096:
        return 8, 2048, 4
    return Q_TILES[kind]


def qapplies(x: torch.Tensor, q: torch.Tensor, kind: str, act: str, group: int) -> bool:
    """One row of 16-bit or fp32 input on CUDA, a weight-only kind, int4 groups a tile holds whole,
    and int8 / int4 rows that start on 32-bit words (the kernel reads them as words)."""
    words = kind == "fp8" or (q.data_ptr() % 4 == 0 and q.stride(0) % 4 == 0)
    return (triton is not None and x.is_cuda and x.numel() == x.shape[-1] and x.dtype in DTYPES
            and act == "none" and (kind != "int4" or group <= 2048) and words)  # every int4 tile holds 2048 of K


def half2_applies(x: torch.Tensor, kind: str, group: int) -> bool:
    """16-bit input (bf16 rounded to fp16 pairs) and int weights take the half2 arithmetic (int4
    groups of 16 or more: a word pair at least); Triton's interpreter (the CPU tests) runs no
    inline PTX, so there the fp32 path stands in."""
    return (x.dtype in (torch.float16, torch.bfloat16) and (kind == "int8" or (kind == "int4" and group >= 16))
            and os.environ.get("TRITON_INTERPRET") != "1")


def qgemv(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, kind: str,
          group: int = 0, tile: tuple[int, int, int] | None = None) -> torch.Tensor:
    """x [..., K] holding one row times the packed [N, K] weight of `kind` -> [..., N] in x's
    dtype (`qapplies` must hold). `tile`: (BLOCK_N, BLOCK_K, warps), for sweeps."""
    n, k = q.shape[0], x.shape[-1]
    block_n, block_k, warps = tile or q_tile(kind, n, k)
    row = x.reshape(k).contiguous()
    half2 = half2_applies(row, kind, group)
    if half2 and row.data_ptr() % 4:  # read as 32-bit pairs
        row = row.clone()
    y = torch.empty(n, device=x.device, dtype=x.dtype)
    _qgemv_kernel[(triton.cdiv(n, block_n),)](row, q, scale, zero if zero is not None else scale, y, n, k, q.stride(0),
                                              scale.stride(0), MAGIC, KIND=QKINDS[kind], GROUP=group if kind == "int4" else 0,
                                              HALF2=half2, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
    return y.reshape(*x.shape[:-1], n)


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., K] holding one row, weight [N, K] -> [..., N] in x's dtype (`applies` must hold)."""
    n, k = weight.shape
    row = x.reshape(k).contiguous()
    y = torch.empty(n, device=x.device, dtype=x.dtype)
    _gemv_kernel[(triton.cdiv(n, BLOCK_N),)](row, weight, y, n, k, weight.stride(0), BLOCK_N=BLOCK_N,
                                              BLOCK_K=BLOCK_K, num_warps=WARPS)
    return y.reshape(*x.shape[:-1], n)
