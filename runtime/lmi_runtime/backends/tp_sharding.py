"""How a Llama-family checkpoint splits across tensor-parallel ranks: the one rule that the
compile stage (which writes `rank{r}/model.safetensors`) and the runtime (which builds each
rank's model from its shard) both follow.

Megatron-style: q/k/v and gate/up are column-parallel (split by output rows, whole heads per
rank), o_proj and down_proj row-parallel (split by input columns; each rank's output is a
partial sum, all-reduced once after attention and once after the MLP). Row-parallel biases
stay on rank 0 and are zeros elsewhere, so the sum adds them once. Norms, embeddings and
lm_head are replicated: the simplest exact choice (every rank computes the same logits, no
gather needed); a vocab-parallel embedding and head would save memory and are later work.

When the degree is a multiple of the KV heads (more ranks than KV heads), each KV head is
replicated on `tp / kv_heads` ranks, as vLLM does; otherwise each rank holds `kv_heads / tp`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from lmi_runtime.errors import ConfigError

if TYPE_CHECKING:  # torch stays out of the planner's imports
    import torch

COLUMN = ("q_proj", "gate_proj", "up_proj")  # split by output rows, evenly
KV = ("k_proj", "v_proj")  # split by output rows, whole KV heads (replicated past kv_heads)
ROW = ("o_proj", "down_proj")  # split by input columns; bias on rank 0 only


def splits_heads(num_heads: int, num_kv_heads: int, tp: int) -> bool:
    """Whether `tp` ranks can share the heads: attention heads split evenly, and KV heads
    either split evenly or are replicated (tp a multiple of them)."""
    return num_heads % tp == 0 and (num_kv_heads % tp == 0 or tp % num_kv_heads == 0)


def valid_degrees(num_heads: int, num_kv_heads: int, intermediate_size: int, limit: int) -> list[int]:
    """The tensor-parallel degrees ≤ `limit` a model allows (the one TP rule, for the planner
    too): the heads split as `splits_heads` says and the MLP width splits evenly."""
    return [t for t in range(1, limit + 1) if splits_heads(num_heads, num_kv_heads, t) and intermediate_size % t == 0]


def check_degree(num_heads: int, num_kv_heads: int, intermediate_size: int, tp: int) -> None:
    valid = valid_degrees(num_heads, num_kv_heads, intermediate_size, num_heads)
    if tp in valid:
        return
    raise ConfigError(
        f"tensor parallel degree {tp} does not split the model's {num_heads} attention heads, "
        f"{num_kv_heads} KV heads and MLP width {intermediate_size} evenly",
        hint=f"use one of the valid degrees: {', '.join(map(str, valid))}",
    )


def kv_heads_per_rank(num_kv_heads: int, tp: int) -> int:
    """KV heads one rank holds: its share, or one replicated head when there are more ranks
    than KV heads (GQA/MQA)."""
    return max(1, num_kv_heads // tp)


def shard_args(args, tp: int):
    """The LlamaArgs of one rank's shard: its heads and MLP width."""
    check_degree(args.num_heads, args.num_kv_heads, args.intermediate_size, tp)
    return replace(args, num_heads=args.num_heads // tp, num_kv_heads=kv_heads_per_rank(args.num_kv_heads, tp),
                   intermediate_size=args.intermediate_size // tp)


def _kv_rows(num_kv_heads: int, head_dim: int, rank: int, tp: int) -> slice:
    if num_kv_heads % tp == 0:
        per = num_kv_heads // tp
        return slice(rank * per * head_dim, (rank + 1) * per * head_dim)
    head = rank // (tp // num_kv_heads)  # replicated: tp / kv_heads ranks share one head
    return slice(head * head_dim, (head + 1) * head_dim)


def shard_tensor(name: str, tensor: torch.Tensor, rank: int, tp: int, num_kv_heads: int,
                 head_dim: int) -> torch.Tensor:
    """Rank `rank`'s part of the checkpoint tensor `name` (Hugging Face naming)."""
    if tp == 1:
        return tensor
    parts = name.split(".")
    module, kind = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", "")
    if module in COLUMN:
        return tensor.chunk(tp, dim=0)[rank].contiguous()
    if module in KV:
        return tensor[_kv_rows(num_kv_heads, head_dim, rank, tp)].contiguous()
    if module in ROW and kind == "weight":
        return tensor.chunk(tp, dim=1)[rank].contiguous()
    if module in ROW and kind == "bias":
        return tensor.clone() if rank == 0 else tensor.new_zeros(tensor.shape)
    return tensor  # norms, embeddings, lm_head: replicated
