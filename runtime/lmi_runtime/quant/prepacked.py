"""Packed weights saved ahead of time (the compile stage for target torch), so that a start
reads the kernels' layout as is: no compressed-tensors unpacking, no transformers.

One safetensors file: dense tensors under their checkpoint names, each packed layer as
`<layer>.q`, `<layer>.scale` and (int4) `<layer>.zero`. The file's metadata says the layout
and its version (`lmi_weights_layout`) and each layer's kind, group size and activation
scheme (`lmi_packed_layers`, JSON), so the file describes itself; the manifest's
`target.toolchain.weights_layout` repeats the layout for profile selection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from lmi_runtime.errors import ModelFolderError

if TYPE_CHECKING:  # torch stays out of the manifest check's imports (LAYOUT, check_layout)
    from lmi_runtime.backends.staged_read import Growing
    from lmi_runtime.quant.compressed import Checkpoint

LAYOUT = "lmi-packed-1"  # bump when the tensors' meaning changes; a runtime reads only its own
LAYOUT_KEY = "lmi_weights_layout"
LAYERS_KEY = "lmi_packed_layers"
HINT = "compile the artifact again with the lmi-compile that matches this lmi-serve (or serve it with the lmi-serve that built it)"


def layout_of(paths: Iterable[Path], growing: Mapping[Path, "Growing"] | None = None) -> str | None:
    """The layout the weight files declare; None for a plain checkpoint."""
    for path in paths:
        found = _metadata(path, growing).get(LAYOUT_KEY)
        if found is not None:
            return found
    return None


def _metadata(path: Path, growing: Mapping[Path, "Growing"] | None) -> dict[str, str]:
    from lmi_runtime.backends.staged_read import header

    return header(path, (growing or {}).get(path))[1]


def check_layout(layout: str, where: str, error: type[Exception] = ModelFolderError) -> None:
    """Refuse pre-packed weights of another layout version (the tensors' meaning differs)."""
    if layout != LAYOUT:
        raise error(f"{where} holds weights pre-packed in layout '{layout}'; this lmi-serve reads '{LAYOUT}' only",
                    hint=HINT)


def save(checkpoint: "Checkpoint", path: Path) -> None:
    from safetensors.torch import save_file

    tensors = dict(checkpoint.dense)
    layers = {}
    for name, w in checkpoint.packed.items():
        tensors.update({f"{name}.{part}": t.contiguous() for part, t in w.tensors().items()})
        layers[name] = {"kind": w.kind, "group_size": w.group_size, "act": w.act}
    save_file(tensors, str(path), metadata={"format": "pt", LAYOUT_KEY: LAYOUT, LAYERS_KEY: json.dumps(layers)})


def load(paths: list[Path], device: str = "cpu", growing: Mapping[Path, "Growing"] | None = None) -> "Checkpoint":
    """The packed layers and dense tensors of pre-packed files, read onto `device` (following
    files still downloading); a layout of another version or a damaged description is refused
    with what to do."""
    import torch

    from lmi_runtime.backends import staged_read
    from lmi_runtime.quant.compressed import Checkpoint
    from lmi_runtime.quant.packed import PackedWeight

    metadata: dict = {}
    for path in paths:
        metadata.update(_metadata(path, growing))
    where = ", ".join(p.name for p in paths)
    check_layout(metadata.get(LAYOUT_KEY, "none"), where)
    try:
        layers = json.loads(metadata[LAYERS_KEY])
        tensors = staged_read.read_weights(paths, torch.device(device), growing)
        packed = {name: PackedWeight(d["kind"], tensors[f"{name}.q"], tensors[f"{name}.scale"],
                                     tensors[f"{name}.zero"] if f"{name}.zero" in tensors else None,
                                     int(d["group_size"]), d["act"])
                  for name, d in layers.items()}
        if any(w.kind == "int4" and w.zero is None for w in packed.values()):
            raise ValueError("an int4 layer without zero points")
        owned = {f"{name}.{part}" for name in layers for part in ("q", "scale", "zero")}
        dense = {name: tensor for name, tensor in tensors.items() if name not in owned}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ModelFolderError(f"{where}: the packed-weights description ({LAYERS_KEY}) is damaged: {err!r}",
                               hint=HINT) from err
    return Checkpoint(packed, dense)
