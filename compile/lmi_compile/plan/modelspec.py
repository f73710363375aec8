"""What a model's config.json says about its size: shapes, parameter count, weight and KV-cache bytes.

Used by `lmi-compile plan` to choose TP and size limits (the runtime reads shapes from the
checkpoint itself and shares only the formulas: `lmi_runtime.kv_bytes`, `tp_sharding`).
Configs name the same thing differently (Falcon's `n_head`/`n_layer`, GPT-2's `n_embd`, …);
`ModelSpec.from_config` reads them all into one shape. The parameter count is computed from the
layer shapes (no weights needed), exact for the Llama family (Llama, Mistral, Mixtral, Qwen2, …)
and Falcon, and a close estimate (biases ignored) for other architectures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lmi_runtime.backends.tp_sharding import kv_heads_per_rank
from lmi_runtime.errors import ModelFolderError
from lmi_runtime.kv_bytes import kv_bytes_per_token

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Families whose layout we count exactly. Llama-like: separate q/k/v/o, gated MLP (gate, up,
# down), RMSNorm, optional MoE experts.
LLAMA_LIKE = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
     "yi", "internlm", "internlm2", "baichuan", "aquila", "deci", "phi3", "olmo", "olmo2", "granite"}
)
FALCON = frozenset({"falcon", "RefinedWebModel", "RefinedWeb"})
UNTIED_BY_DEFAULT = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "yi", "internlm",
                               "internlm2", "baichuan", "aquila", "deci", "phi3", "olmo", "granite"})
QKV_BIAS = frozenset({"qwen2", "qwen2_moe"})


def _first(config: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return default


@dataclass(frozen=True)
class Linear:
    """One weight matrix kind in a decoder layer; `copies` counts experts."""

    name: str
    in_features: int
    out_features: int
    copies: int = 1

    @property
    def params(self) -> int:
        return self.in_features * self.out_features * self.copies


class ModelSpec(BaseModel):
    architecture: str | None = None
    model_type: str
    family: str  # llama | falcon | generic
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_experts: int = 1  # Mixtral: num_local_experts
    experts_per_token: int = 1
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool = False
    norm_params_per_layer: int = 0  # LayerNorm/RMSNorm parameters in one decoder layer
    torch_dtype: str | None = None  # the checkpoint's dtype, when config.json says

    @classmethod
    def from_folder(cls, folder: Path) -> "ModelSpec":
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise ModelFolderError(f"{folder} has no config.json",
                                   hint="point at a Hugging Face model folder (config.json beside the weights)")
        return cls.from_config(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ModelSpec":
        """Read a config.json dict (multimodal configs: their `text_config`)."""
        if "text_config" in config and not _first(config, "num_hidden_layers", "n_layer", "num_layers"):
            config = {**config["text_config"], "architectures": config.get("architectures")}
        model_type = str(config.get("model_type") or "unknown")
        family = "llama" if model_type in LLAMA_LIKE else "falcon" if model_type in FALCON else "generic"
        hidden = _first(config, "hidden_size", "n_embd", "d_model", "dim")
        heads = _first(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
        layers = _first(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
        vocab = _first(config, "vocab_size", "padded_vocab_size")
        missing = [n for n, v in (("hidden_size", hidden), ("num_attention_heads", heads),
                                  ("num_hidden_layers", layers), ("vocab_size", vocab)) if v is None]
        if missing:
            raise ModelFolderError(f"config.json lacks {', '.join(missing)} (model_type '{model_type}')",
                                   hint="is this a text-generation model's config.json?")
        if family == "falcon":
            new_arch = bool(config.get("new_decoder_architecture")) or model_type == "RefinedWeb"
            kv_heads = (_first(config, "num_kv_heads", "n_head_kv", default=heads) if new_arch
                        else 1 if config.get("multi_query", True) else heads)
            intermediate = _first(config, "ffn_hidden_size", default=4 * hidden)
            max_pos = _first(config, "max_position_embeddings", default=2048)  # Falcon's trained length
            # LayerNorm (weight + bias): ln_attn + ln_mlp in the new architecture, one shared
            # input_layernorm with parallel attention, else input + post-attention norms
            norms = 2 * hidden * (1 if config.get("parallel_attn", True) and not new_arch else 2)
        else:
            kv_heads = _first(config, "num_key_value_heads", "num_kv_heads", "multi_query_group_num", default=heads)
            intermediate = _first(config, "intermediate_size", "ffn_hidden_size", "n_inner", "ffn_dim", "d_ff",
                                  default=4 * hidden)
            max_pos = _first(config, "max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                             "max_sequence_length")
            # two norms per layer: RMSNorm (weight) in the Llama family, LayerNorm (weight + bias) elsewhere
            norms = 2 * hidden if family == "llama" else 4 * hidden
        tied = config.get("tie_word_embeddings")
        if tied is None:  # transformers' per-model default
            tied = model_type not in UNTIED_BY_DEFAULT
        architectures = config.get("architectures") or [None]
        return cls(
            architecture=architectures[0], model_type=model_type, family=family,
            num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
            head_dim=_first(config, "head_dim", default=hidden // heads), intermediate_size=intermediate,
            vocab_size=vocab,
            num_experts=_first(config, "num_local_experts", "num_experts", "n_routed_experts", default=1),
            experts_per_token=_first(config, "num_experts_per_tok", "moe_topk", default=1),
            max_position_embeddings=max_pos, tie_word_embeddings=bool(tied), norm_params_per_layer=norms,
            torch_dtype=_first(config, "torch_dtype", "dtype"),
        )

    # ---- shapes ---------------------------------------------------------------------------
    def layer_linears(self) -> list[Linear]:
        """The weight matrices of one decoder layer (what weight quantization compresses)."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if self.family == "falcon":  # fused query_key_value, dense, non-gated MLP
            return [Linear("query_key_value", h, q + 2 * kv), Linear("dense", q, h),
                    Linear("dense_h_to_4h", h, self.intermediate_size),
                    Linear("dense_4h_to_h", self.intermediate_size, h)]
        attention = [Linear("q_proj", h, q), Linear("k_proj", h, kv), Linear("v_proj", h, kv), Linear("o_proj", q, h)]
        if self.family == "llama":
            e = self.num_experts
            return attention + [Linear("gate_proj", h, self.intermediate_size, e),
                                Linear("up_proj", h, self.intermediate_size, e),
                                Linear("down_proj", self.intermediate_size, h, e)]
        return attention + [Linear("fc_in", h, self.intermediate_size), Linear("fc_out", self.intermediate_size, h)]

    def quantized_widths(self) -> dict[str, int]:
        """Input width of each weight matrix kind weight quantization groups (`quantize.groups`)."""
        return {linear.name: linear.in_features for linear in self.layer_linears()}

    def layer_other_params(self) -> int:
        """Per-layer parameters outside the weight matrices: norms, MoE router, q/k/v biases (Qwen2)."""
        router = self.hidden_size * self.num_experts if self.num_experts > 1 else 0
        bias = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.model_type in QKV_BIAS else 0
        return self.norm_params_per_layer + router + bias

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def final_norm_params(self) -> int:
        return self.hidden_size if self.family == "llama" else 2 * self.hidden_size

    @property
    def linear_params(self) -> int:
        return self.num_layers * sum(linear.params for linear in self.layer_linears())

    @property
    def num_parameters(self) -> int:
        """Unique parameters (tied embeddings counted once)."""
        return (self.embedding_params + self.lm_head_params + self.final_norm_params
                + self.linear_params + self.num_layers * self.layer_other_params())

    # ---- bytes ----------------------------------------------------------------------------
    def weight_bytes(self, dtype: str = "bfloat16", quantization: str = "none",
                     group_size: int | None = None, symmetric: bool = True) -> int:
        """Bytes of the weights in memory. Quantization compresses the decoder layers' matrices
        only; embeddings, lm_head and norms stay in `dtype`:
          int8 (static_int8, smoothquant) and fp8: 1 byte per weight + a 16-bit scale per output channel;
          4-bit (awq, gptq): ½ byte per weight + per group of `group_size` inputs a 16-bit scale
          and, when asymmetric, a 4-bit zero point."""
        unit = DTYPE_BYTES[dtype]
        dense = (self.num_parameters - self.linear_params) * unit
        linears = self.layer_linears()
        if quantization in ("none", None):
            return dense + self.linear_params * unit
        if quantization in ("static_int8", "smoothquant", "fp8"):
            per_layer = sum(l.params + 2 * l.out_features * l.copies for l in linears)
        elif quantization in ("awq", "gptq"):
            if group_size is None:
                raise ValueError(f"{quantization} needs a group size")
            per_layer = 0
            for l in linears:
                groups = l.out_features * math.ceil(l.in_features / group_size) * l.copies
                per_layer += math.ceil(l.params / 2) + groups * 2 + (0 if symmetric else math.ceil(groups / 2))
        else:
            raise ValueError(f"unknown quantization {quantization!r}")
        return dense + self.num_layers * per_layer

    def kv_bytes_per_token(self, dtype: str = "bfloat16", tp: int = 1, pp: int = 1) -> int:
        """KV-cache bytes one token takes on one rank, with KV heads split over `tp` ranks
        (replicated past the KV-head count) and layers over `pp` stages."""
        layers = math.ceil(self.num_layers / pp)
        return kv_bytes_per_token(layers, kv_heads_per_rank(self.num_kv_heads, tp), self.head_dim, DTYPE_BYTES[dtype])
