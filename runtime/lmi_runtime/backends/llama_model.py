"""A compact Llama-family decoder (Llama, Mistral, Qwen2, Yi and kin) in the style of gpt-fast:
RMSNorm, rotary embeddings (default, linear and llama3 scaling), SwiGLU MLP and grouped-query
attention reading and writing a paged KV cache. Module names match the Hugging Face
checkpoints, so a safetensors state dict loads as is.

One forward serves prefill and decode: every row of the batch brings its tokens with their
absolute positions, the flat cache slots to write them to, and the cache slots of its whole
context to attend over (`CacheView`). Attention is masked per row by position, so rows of
different lengths share one batched step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmi_runtime.errors import ModelFolderError

LLAMA_KIN = {"llama", "mistral", "qwen2"}
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
        if model_type not in LLAMA_KIN:
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


@dataclass
class CacheView:
    """Where a batch's keys/values go and come from, as flat slot indices into the pool."""

    write_slots: torch.Tensor  # [B, T] slot of each input token
    read_slots: torch.Tensor  # [B, L] slot of each context position (padding: any slot)
    mask: torch.Tensor  # [B, 1, T, L] True where a token may attend


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.args = args
        hd = args.head_dim
        self.q_proj = nn.Linear(args.hidden_size, args.num_heads * hd, bias=args.qkv_bias)
        self.k_proj = nn.Linear(args.hidden_size, args.num_kv_heads * hd, bias=args.qkv_bias)
        self.v_proj = nn.Linear(args.hidden_size, args.num_kv_heads * hd, bias=args.qkv_bias)
        self.o_proj = nn.Linear(args.num_heads * hd, args.hidden_size, bias=args.o_bias)

    def forward(self, x, cos, sin, cache_k, cache_v, view: CacheView) -> torch.Tensor:
        b, t, _ = x.shape
        a = self.args
        q = self.q_proj(x).view(b, t, a.num_heads, a.head_dim)
        k = self.k_proj(x).view(b, t, a.num_kv_heads, a.head_dim)
        v = self.v_proj(x).view(b, t, a.num_kv_heads, a.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        slots = view.write_slots.reshape(-1)
        cache_k[slots] = k.reshape(-1, a.num_kv_heads, a.head_dim)
        cache_v[slots] = v.reshape(-1, a.num_kv_heads, a.head_dim)
        keys = cache_k[view.read_slots].transpose(1, 2)  # [B, kv_heads, L, hd]
        values = cache_v[view.read_slots].transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys, values, attn_mask=view.mask, enable_gqa=True
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        h, i, bias = args.hidden_size, args.intermediate_size, args.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = MLP(args)

    def forward(self, x, cos, sin, cache_k, cache_v, view):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache_k, cache_v, view)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(args) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.args = args
        self.model = Decoder(args)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(args), persistent=False)

    def tie_weights(self) -> None:
        if self.args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        positions: torch.Tensor,  # [B, T]
        kv_cache: torch.Tensor,  # [layers, 2, slots, kv_heads, head_dim]
        view: CacheView,
        last: torch.Tensor,  # [B] index in T of the token whose logits are wanted
    ) -> torch.Tensor:
        freqs = positions.unsqueeze(-1).float() * self.inv_freq  # [B, T, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(2)  # [B, T, 1, hd]
        x = self.model.embed_tokens(input_ids)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, kv_cache[i, 0], kv_cache[i, 1], view)
        x = x[torch.arange(x.shape[0], device=x.device), last]
        return self.lm_head(self.model.norm(x))
