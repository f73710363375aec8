"""A compact Llama-family decoder (Llama, Mistral, Qwen2, Yi and kin) in the style of gpt-fast:
RMSNorm, rotary embeddings (default, linear and llama3 scaling), SwiGLU MLP and grouped-query
attention over a paged KV cache. Module names match the Hugging Face checkpoints, so a
safetensors state dict loads as is; `fuse()` then merges q/k/v and gate/up into one matmul each
(fewer, larger GEMMs: decode is bound by reading the weights).

Tokens travel packed, `[N, hidden]`, with no padding: a decode step brings one token per
sequence, a prefill every prompt token of every admitted sequence. Each token carries its
position and the cache slot its key/value is written to; attention then reads every
sequence's context in place through its block table (`kernels.paged_attention`).

A layer is two pure functions around attention (`attention_inputs`, `attention_output_and_mlp`)
so that `torch.compile` can fuse norms, rotary and activations without seeing the cache
writes (compiling code that writes into a view of its argument copied the whole cache in every
layer: GPU-NOTES.md), and one compiled graph serves every layer since weights are arguments.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmi_runtime.backends.llama_family import LLAMA_FAMILY
from lmi_runtime.errors import ModelFolderError
from lmi_runtime.kernels.paged_attention import AttnBatch, NewKV, paged_attention
from lmi_runtime.quant.linear import QuantLinear, linear
from lmi_runtime.quant.packed import PackedWeight, concat

ROPE_TYPES = {"default", "linear", "llama3"}


class UnsupportedArchitecture(ModelFolderError):
    """The compact implementation does not cover this model; the transformers backend does."""


@dataclass
class LlamaArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: dict
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None

    @classmethod
    def from_hf(cls, cfg: dict) -> "LlamaArgs":
        model_type = cfg.get("model_type")
        if model_type not in LLAMA_FAMILY:
            raise UnsupportedArchitecture(f"model_type '{model_type}' is not in the Llama family")
        if cfg.get("hidden_act", "silu") != "silu":
            raise UnsupportedArchitecture(f"hidden_act '{cfg.get('hidden_act')}' is not SwiGLU")
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ROPE_TYPES or rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise UnsupportedArchitecture(f"rope type '{rope_type}' is not implemented here")
        rope["rope_type"] = rope_type
        heads = cfg["num_attention_heads"]
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
        bias = bool(cfg.get("attention_bias", False))
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rope=rope,
            qkv_bias=bias or model_type == "qwen2",
            o_bias=bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            sliding_window=window,
        )


def rope_inv_freq(args: LlamaArgs) -> torch.Tensor:
    rope, dim = args.rope, args.head_dim
    inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if rope["rope_type"] == "linear":
        inv_freq = inv_freq / rope["factor"]
    elif rope["rope_type"] == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old_len = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        inv_freq = torch.where(mid, smoothed, inv_freq)
    return inv_freq.float()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As transformers computes it: in fp32, scaled after the cast back."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [N, heads, D]; cos/sin: [N, D] in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


def attention_inputs(x, delta, norm_w, eps: float, qkv_w, qkv_b, cos, sin, num_heads: int, num_kv_heads: int):
    """Pre-attention half of a layer: the previous layer's output `delta` joins the residual
    stream here, where the norm reads it (one kernel for both), then norm, fused q/k/v
    projection and rotary. Pure (no cache); returns the residual stream and q, k, v."""
    dim = cos.shape[-1]
    x = x + delta
    qkv = linear(rms_norm(x, norm_w, eps), qkv_w, qkv_b)
    q, k, v = qkv.split([num_heads * dim, num_kv_heads * dim, num_kv_heads * dim], dim=-1)
    q = apply_rope(q.view(-1, num_heads, dim), cos, sin)
    k = apply_rope(k.view(-1, num_kv_heads, dim), cos, sin)
    return x, q, k, v.view(-1, num_kv_heads, dim)


def attention_output_and_mlp(x, attn, o_w, o_b, norm_w, eps: float, gate_up_w, gate_up_b, down_w, down_b):
    """Post-attention half of a layer: output projection, residual, norm, SwiGLU MLP. Returns
    the residual stream and the MLP's output, which the next layer adds (`attention_inputs`)."""
    return residual_and_mlp(x, attention_projection(attn, o_w, o_b), norm_w, eps, gate_up_w, gate_up_b,
                            down_w, down_b)


def attention_projection(attn, o_w, o_b):
    """Output projection; with tensor parallelism a rank's partial sum (row-parallel o_proj)."""
    return linear(attn.flatten(1), o_w, o_b)


def residual_and_mlp(x, o, norm_w, eps: float, gate_up_w, gate_up_b, down_w, down_b):
    """Residual of the (reduced) attention output, then the SwiGLU MLP's output, not yet added:
    with tensor parallelism a rank's partial sum (row-parallel down_proj)."""
    x = x + o
    gate, up = linear(rms_norm(x, norm_w, eps), gate_up_w, gate_up_b).chunk(2, dim=-1)
    return x, linear(F.silu(gate) * up, down_w, down_b)


class TokensDynamic:
    """`torch.compile` of a half-layer in which only the token count is symbolic.

    Why not `dynamic=True`: it makes every size and int argument symbolic (hidden size, head
    dim, head counts, even eps), so Inductor's kernels divide by runtime values at every
    element: on the H200 the rotary kernel took 10.7 µs for a 64-token decode step and 560 µs
    (a quarter of a TB/s) for an 8,192-token prefill. Here the first call of more than one
    token marks the token dim of the arguments named in `tokens` (those that carry tokens)
    dynamic, which compiles one graph with every other size constant; later counts >= 2 match
    its guards without marking again (marking costs ~0.1 ms a tensor), one token gets its own
    graph. Names, not positions: a renamed parameter fails here, not as a wrong guard."""

    def __init__(self, fn, tokens: tuple[str, ...]):
        self.compiled = torch.compile(fn, fullgraph=True)
        params = list(inspect.signature(fn).parameters)
        self.token_args = tuple(params.index(name) for name in tokens)
        self.marked = False

    def __call__(self, *args):
        if not self.marked and args[self.token_args[0]].shape[0] > 1:
            for i in self.token_args:
                torch._dynamo.maybe_mark_dynamic(args[i], 0)
            self.marked = True
        return self.compiled(*args)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def weight_of(layer: nn.Module):
    """What `linear` takes for this layer: the dense weight, or a quantized layer's arguments."""
    return layer.args() if isinstance(layer, QuantLinear) else layer.weight


def _fused(layers: list[nn.Module]) -> nn.Module:
    """One layer whose output is the concatenation of `layers`' outputs."""
    bias = torch.cat([layer.bias for layer in layers]) if layers[0].bias is not None else None
    if isinstance(layers[0], QuantLinear):
        return QuantLinear(concat([layer.packed() for layer in layers]), bias)
    weight = torch.cat([layer.weight for layer in layers])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=layers[0].bias is not None,
                      device="meta", dtype=weight.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


class Attention(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        hd = args.head_dim
        self.q_proj = nn.Linear(args.hidden_size, args.num_heads * hd, bias=args.qkv_bias)
        self.k_proj = nn.Linear(args.hidden_size, args.num_kv_heads * hd, bias=args.qkv_bias)
        self.v_proj = nn.Linear(args.hidden_size, args.num_kv_heads * hd, bias=args.qkv_bias)
        self.o_proj = nn.Linear(args.num_heads * hd, args.hidden_size, bias=args.o_bias)

    def fuse(self) -> None:
        self.qkv_proj = _fused([self.q_proj, self.k_proj, self.v_proj])
        del self.q_proj, self.k_proj, self.v_proj


class MLP(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        h, i, bias = args.hidden_size, args.intermediate_size, args.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)

    def fuse(self) -> None:
        self.gate_up_proj = _fused([self.gate_proj, self.up_proj])
        del self.gate_proj, self.up_proj


class DecoderLayer(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = MLP(args)


class Decoder(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(args) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


@dataclass
class StepInputs:
    """One forward's packed tokens and where their keys/values live (tensors on the device)."""

    input_ids: torch.Tensor  # [N]
    positions: torch.Tensor  # [N]
    write_slots: torch.Tensor  # [N] flat cache slot of each token
    attn: AttnBatch
    logits_rows: torch.Tensor  # [B] token whose logits each sequence wants


class LlamaForCausalLM(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.args = args
        self.model = Decoder(args)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.pre = attention_inputs
        self.post = attention_output_and_mlp
        # tensor parallelism: sums the ranks' partial outputs in place (None: one rank). The
        # post-attention half then runs as two pure pieces with the all-reduce between them.
        self.all_reduce = None
        self.projection = attention_projection
        self.mlp_partial = residual_and_mlp

    def use_packed(self, weights: dict[str, PackedWeight]) -> None:
        """Swap the named linear layers (checkpoint names without `.weight`, e.g.
        `model.layers.0.mlp.down_proj`) for quantized ones; call before `prepare`."""
        for name, packed in weights.items():
            parent_name, _, child = name.rpartition(".")
            parent = self.get_submodule(parent_name)
            old = getattr(parent, child)
            setattr(parent, child, QuantLinear(packed, old.bias))

    def tie_weights(self) -> None:
        if self.args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def prepare(self, max_len: int, device: torch.device, dtype: torch.dtype) -> None:
        """After loading: fuse projections and build the rotary table for positions < max_len."""
        for layer in self.model.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()
        angles = torch.arange(max_len, dtype=torch.float32).unsqueeze(1) * rope_inv_freq(self.args)
        angles = torch.cat((angles, angles), dim=-1)
        self.rope_cos = angles.cos().to(device=device, dtype=dtype)
        self.rope_sin = angles.sin().to(device=device, dtype=dtype)

    def compile_layers(self) -> None:
        """Regional compilation: one graph for each half-layer, shared by every layer."""
        self.pre = TokensDynamic(attention_inputs, tokens=("x", "delta", "cos", "sin"))
        self.post = TokensDynamic(attention_output_and_mlp, tokens=("x", "attn"))
        if self.all_reduce is not None:
            self.projection = TokensDynamic(attention_projection, tokens=("attn",))
            self.mlp_partial = TokensDynamic(residual_and_mlp, tokens=("x", "o"))

    @torch.no_grad()  # not inference_mode: it breaks torch.compile and CUDA-graph capture
    def forward(self, step: StepInputs, kv_cache: torch.Tensor, block_size: int) -> torch.Tensor:
        """kv_cache: [layers, 2, slots, kv_heads, head_dim]; returns [B, vocab] logits."""
        a = self.args
        cos, sin = self.rope_cos[step.positions], self.rope_sin[step.positions]
        x = self.model.embed_tokens(step.input_ids)
        delta = torch.zeros_like(x)  # what the previous layer adds to the residual stream
        for i, layer in enumerate(self.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            x, q, k, v = self.pre(x, delta, layer.input_layernorm.weight, a.rms_norm_eps, weight_of(attn.qkv_proj),
                                  attn.qkv_proj.bias, cos, sin, a.num_heads, a.num_kv_heads)
            new = NewKV(k, v, step.write_slots)
            out = paged_attention(q, kv_cache[i, 0], kv_cache[i, 1], new, step.attn, block_size)
            mlp_args = (layer.post_attention_layernorm.weight, a.rms_norm_eps, weight_of(mlp.gate_up_proj),
                        mlp.gate_up_proj.bias, weight_of(mlp.down_proj), mlp.down_proj.bias)
            if self.all_reduce is None:
                x, delta = self.post(x, out, weight_of(attn.o_proj), attn.o_proj.bias, *mlp_args)
            else:
                o = self.all_reduce(self.projection(out, weight_of(attn.o_proj), attn.o_proj.bias))
                x, partial = self.mlp_partial(x, o, *mlp_args)
                delta = self.all_reduce(partial)
        rows = step.logits_rows
        return linear(self.model.norm(x[rows] + delta[rows]), weight_of(self.lm_head), self.lm_head.bias)
