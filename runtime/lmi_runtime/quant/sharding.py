"""One tensor-parallel rank's share of a packed checkpoint, by the rule dense weights follow
(`backends/tp_sharding.py`): column-parallel layers split their output rows (q, scales and zero
points alike), row-parallel ones their input columns. A per-channel scale belongs to an output
row, so a row-parallel int8/fp8 layer keeps all of it: each rank's partial sum is scaled as
the whole would be, and the all-reduce adds exact parts. int4 splits whole groups (a group's
bytes are contiguous in `quant.packed`'s layout), so its input width must hold `tp` × whole
groups.

Activations quantized per token (W8A8) are refused: a row-parallel layer's rank sees only its
slice of each token, so its scale would differ from the one-rank model's."""

from __future__ import annotations

from lmi_runtime.backends.tp_sharding import ROW, shard_tensor
from lmi_runtime.errors import ConfigError
from lmi_runtime.quant.compressed import Checkpoint
from lmi_runtime.quant.packed import PackedWeight


def check_shardable(checkpoint: Checkpoint, tp: int) -> None:
    for name, w in checkpoint.packed.items():
        if w.act != "none":
            raise ConfigError(f"tensor parallel degree {tp} with activations quantized per token ({w.act}, layer "
                              f"{name}): each rank would scale its slice of a token differently",
                              hint="use tensor_parallel_degree 1 for W8A8, or a weight-only method (awq, gptq, static_int8)")
        if w.kind == "int4" and name.rsplit(".", 1)[-1] in ROW and w.scale.shape[1] % tp:
            raise ConfigError(f"{name}: {w.scale.shape[1]} int4 groups of {w.group_size} do not split over {tp} ranks",
                              hint="use a tensor parallel degree that divides the group count, or a smaller group size")


def shard_packed(name: str, w: PackedWeight, rank: int, tp: int, num_kv_heads: int, head_dim: int) -> PackedWeight:
    """`name`: the layer (checkpoint name without `.weight`)."""
    def part(t):  # per-channel scales of a row-parallel layer stay whole: they scale output rows
        if t is None or (name.rsplit(".", 1)[-1] in ROW and t.dim() == 1):
            return t
        return shard_tensor(f"{name}.weight", t, rank, tp, num_kv_heads, head_dim)

    return PackedWeight(w.kind, part(w.q), part(w.scale), part(w.zero), w.group_size, w.act)


def shard_checkpoint(checkpoint: Checkpoint, rank: int, tp: int, num_kv_heads: int, head_dim: int) -> Checkpoint:
    """Rank `rank`'s share; `check_shardable` first (once, before any rank is written)."""
    return Checkpoint({name: shard_packed(name, w, rank, tp, num_kv_heads, head_dim) for name, w in checkpoint.packed.items()},
                      {name: shard_tensor(name, t, rank, tp, num_kv_heads, head_dim) for name, t in checkpoint.dense.items()})
