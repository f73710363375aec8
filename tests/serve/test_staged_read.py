"""The staged reader (`backends.staged_read`) that loads weights onto a GPU: here it runs its
same threads, pieces and copies with CPU buffers (pinning and streams are the only GPU parts),
and must give safetensors' own tensors byte for byte, or refuse a damaged file by name."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmi_runtime.backends.staged_read import StagedReader, entries
from lmi_runtime.errors import ModelFolderError


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name].view(-1).view(torch.uint8), tensor.view(-1).view(torch.uint8)), name


@pytest.fixture
def mixed(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a.bf16": torch.randn(37, 129, generator=gen).to(torch.bfloat16),
        "b.fp16": torch.randn(3, 1000, generator=gen).half(),
        "c.fp32": torch.randn(4097, generator=gen),
        "d.int8": torch.randint(-128, 127, (17, 33), generator=gen, dtype=torch.int8),
        "e.fp8": torch.randn(64, 8, generator=gen).to(torch.float8_e4m3fn),
        "f.bool": torch.rand(11, generator=gen) > 0.5,
        "g.scalar": torch.tensor(3.5),
        "h.empty": torch.empty(0, 4),
        "i.int64": torch.arange(5),
    }
    paths = []
    for i, part in enumerate((dict(list(tensors.items())[:5]), dict(list(tensors.items())[5:]))):
        paths.append(tmp_path / f"model-{i}.safetensors")
        save_file(part, str(paths[-1]), metadata={"format": "pt"})
    return paths


@pytest.mark.parametrize("threads,chunk", [(1, 1 << 20), (3, 1000), (4, 64)])
def test_staged_read_equals_safetensors(mixed, threads, chunk):
    """Pieces smaller than a tensor and not a multiple of its element size, several threads,
    and one reader (one set of buffers) for both files."""
    reader = StagedReader(torch.device("cpu"), threads=threads, chunk=chunk)
    for path in mixed:
        assert_same(reader.read(path), load_file(str(path)))


def test_staged_read_of_a_real_model(smollm2_dir):
    path = next(smollm2_dir.glob("*.safetensors"))
    assert_same(StagedReader(torch.device("cpu"), threads=2).read(path), load_file(str(path)))


def _header(path) -> tuple[int, dict]:
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    return length, json.loads(data[8:8 + length])


def _rewrite(path, table: dict) -> None:
    length, _ = _header(path)
    data = path.read_bytes()
    head = json.dumps(table, separators=(",", ":")).encode().ljust(length)
    assert len(head) == length
    path.write_bytes(data[:8] + head + data[8 + length:])


def test_damaged_files_are_refused_by_name(mixed):
    path = mixed[0]
    good = path.read_bytes()
    length, table = _header(path)

    path.write_bytes(good[:-10])  # truncated: the last tensor runs past the end
    with pytest.raises(ModelFolderError, match=r"model-0.safetensors: tensor .* does not fit the file"):
        StagedReader(torch.device("cpu"), threads=2).read(path)

    path.write_bytes((1 << 40).to_bytes(8, "little") + good[8:])  # a header longer than the file
    with pytest.raises(ModelFolderError, match="no valid safetensors header"):
        entries(path)

    path.write_bytes(good[:8] + b"{not json" + good[17:])
    with pytest.raises(ModelFolderError, match="header is not JSON"):
        entries(path)

    path.write_bytes(good)
    name = next(n for n in table if n != "__metadata__")
    _rewrite(path, table | {name: table[name] | {"shape": [999, 999]}})  # shape and bytes disagree
    with pytest.raises(ModelFolderError, match=f"tensor '{name}'"):
        entries(path)

    _rewrite(path, table | {name: table[name] | {"dtype": "Q9"}})
    with pytest.raises(ModelFolderError, match="described wrongly"):
        entries(path)
