"""What a usable Hugging Face model folder is, in one place for both sides: which files of a
repository to fetch (safetensors first, pickle only when allowed, never GGUF), and the checks
a folder must pass before anything loads it (config, tokenizer, weights, shard index, remote
code). lmi-compile's fetch stage and lmi-serve use the same rules.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmi_runtime.errors import ModelFolderError

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
_PICKLE_WEIGHTS = re.compile(r"^(pytorch_model|model)([-.][\w.-]*)?\.(bin|pt|pth)$")
# Formats a transformers folder does not need: other frameworks' weights and original dumps.
_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx", ".ckpt", ".ot", ".tflite", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt", "tokenizer.tiktoken")

PICKLE_HINT = (
    "pickle files can run arbitrary code when loaded; pass --allow-pickle (recipe: source.allow_pickle: true) "
    "only for a source you trust, or convert the weights to safetensors"
)
REMOTE_CODE_HINT = (
    "pass --trust-remote-code (recipe: source.trust_remote_code: true) only if you have read and trust "
    "that code, or pick a model whose architecture transformers supports natively"
)


@dataclass(frozen=True)
class ModelDir:
    """A validated model folder."""

    path: Path
    config: dict
    architecture: str | None
    weight_files: list[str]
    format: Literal["safetensors", "pickle"]


def _gguf_error(source: str) -> ModelFolderError:
    return ModelFolderError(
        f"{source} holds only GGUF weights (no config.json + safetensors checkpoint)",
        hint="GGUF is a llama.cpp inference format, already quantized and without the Hugging Face config; "
        "quantization and compilation here start from the original checkpoint. Use the original (non-GGUF) "
        "repository, convert it (transformers: from_pretrained(folder, gguf_file=...) then save_pretrained), "
        "or try the bundled model: bundled://smollm2",
    )


def select_model_files(files: list[str], source: str, allow_pickle: bool = False, trust_remote_code: bool = False) -> list[str]:
    """The files of a repository listing to fetch, or a clear error before any byte moves.

    Only top-level files (subfolders hold other formats, e.g. `original/` or `onnx/`); weights
    are the safetensors when there are any, else pickle `.bin` only when allowed; `*.py` only
    with trust_remote_code (it is the remote code).
    """
    top = [f for f in files if "/" not in f]
    others = [f for f in top if not f.endswith(_SKIP_SUFFIXES) and (trust_remote_code or not f.endswith(".py"))]
    safetensors = [f for f in top if f.endswith(".safetensors")]
    if SAFETENSORS_INDEX in top:  # Mistral-style repos also ship the same weights as consolidated.safetensors
        safetensors = [f for f in safetensors if not f.startswith("consolidated")]
    pickle = [f for f in top if _PICKLE_WEIGHTS.match(f)]
    if safetensors:
        return sorted(others + safetensors)
    if pickle and allow_pickle:
        return sorted(others + pickle)
    if pickle:
        raise ModelFolderError(f"{source} has only pickle weights ({', '.join(sorted(pickle)[:3])}), no safetensors", hint=PICKLE_HINT)
    if any(f.endswith(".gguf") for f in files):
        raise _gguf_error(source)
    raise ModelFolderError(f"{source} has no model weights (no *.safetensors)", hint="point at a Hugging Face checkpoint folder with config.json and safetensors weights")


def validate_model_folder(path: Path, allow_pickle: bool = False, trust_remote_code: bool = False, source: str | None = None) -> ModelDir:
    """Check that `path` is a loadable model folder; raise ModelFolderError saying what is wrong."""
    source = source or str(path)
    if not path.is_dir():
        raise ModelFolderError(f"model folder {path} does not exist", hint="check the path")
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    selected = select_model_files(files, source, allow_pickle, trust_remote_code)
    config = _read_config(path, source)
    if "auto_map" in config and not trust_remote_code:
        raise ModelFolderError(
            f"{source}: config.json has auto_map, so the model needs its own Python code ({', '.join(sorted(config['auto_map']))})",
            hint=REMOTE_CODE_HINT,
        )
    if not any(name in files for name in TOKENIZER_FILES) and not any(f.endswith(".tiktoken") for f in files):
        raise ModelFolderError(
            f"{source} has no tokenizer (expected tokenizer.json, tokenizer.model or vocab files)",
            hint="copy the tokenizer files from the base model into the folder",
        )
    check_tokenizer(path, source)
    if any(f.endswith(".safetensors") for f in selected):
        fmt, weights = "safetensors", _check_safetensors(path, [f for f in selected if f.endswith(".safetensors")], source)
    else:
        fmt, weights = "pickle", _check_pickle_index(path, [f for f in selected if _PICKLE_WEIGHTS.match(f)], source)
    architectures = config.get("architectures") or [None]
    return ModelDir(path, config, architectures[0], weights, fmt)


def _read_config(path: Path, source: str) -> dict:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelFolderError(f"{source} has no config.json", hint="a Hugging Face model folder needs config.json next to its weights")
    return read_config_file(config_path, source)


MAX_CONFIG_BYTES = 4 << 20
# Sizes a config asks the loader to allocate, with the most any real model uses (generously).
SIZE_BOUNDS: dict[str, int] = {
    "vocab_size": 1 << 22, "padded_vocab_size": 1 << 22, "hidden_size": 1 << 16, "n_embd": 1 << 16, "d_model": 1 << 16,
    "num_hidden_layers": 1024, "n_layer": 1024, "num_layers": 1024,
    "num_attention_heads": 1024, "n_head": 1024, "num_heads": 1024, "num_key_value_heads": 1024,
    "intermediate_size": 1 << 20, "ffn_hidden_size": 1 << 20, "head_dim": 4096,
    "max_position_embeddings": 1 << 24, "n_positions": 1 << 24,
    "num_local_experts": 1024, "num_experts": 1024, "num_experts_per_tok": 64,
}
MAX_PARAMETERS = 4 * 10**12


def read_config_file(config_path: Path, source: str) -> dict:
    """config.json as a dict, refused with a clear error when it is not UTF-8 JSON, not an
    object, or asks for sizes beyond `SIZE_BOUNDS` (checked before anything is allocated)."""
    try:
        if config_path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelFolderError(f"{source}: config.json is {config_path.stat().st_size} bytes; a model config is at most {MAX_CONFIG_BYTES}",
                                   hint="re-download or fix config.json")
        config = json.loads(config_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        why = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else "not valid JSON"
        raise ModelFolderError(f"{source}: config.json is {why} ({str(err)[:120]})", hint="re-download or fix config.json") from None
    check_model_config(config, source)
    return config


def check_model_config(config: object, source: str) -> None:
    """Refuse a config that is not an object, or whose sizes are not positive integers within
    bounds, or whose attention heads do not split (`num_key_value_heads` must divide
    `num_attention_heads`): such a config fails later, or allocates without end."""
    if not isinstance(config, dict):
        raise ModelFolderError(f"{source}: config.json is a JSON {type(config).__name__}, not an object",
                               hint="config.json must be a JSON object such as {\"model_type\": \"llama\", ...}; re-download it")
    for section in (config, config.get("text_config")):
        if isinstance(section, dict):
            _check_sizes(section, source)


def _check_sizes(config: dict, source: str) -> None:
    problems = []
    for key, bound in SIZE_BOUNDS.items():
        value = config.get(key)
        if value is None:
            continue
        if type(value) is not int:
            problems.append(f"{key} = {json.dumps(value)[:40]} is not a whole number")
        elif not 1 <= value <= bound:
            problems.append(f"{key} = {value} is outside 1..{bound}")
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if not problems and type(heads) is int and type(kv_heads) is int and heads % kv_heads:
        problems.append(f"num_key_value_heads = {kv_heads} does not divide num_attention_heads = {heads}")
    hidden = config.get("hidden_size")
    if not problems and type(heads) is int and type(hidden) is int and "head_dim" not in config and hidden % heads:
        problems.append(f"hidden_size = {hidden} is not a multiple of num_attention_heads = {heads}")
    if not problems:
        layers, vocab, inter = (config.get(k) for k in ("num_hidden_layers", "vocab_size", "intermediate_size"))
        if all(type(v) is int for v in (layers, vocab, hidden)):
            params = layers * (4 * hidden * hidden + 3 * hidden * (inter if type(inter) is int else 4 * hidden)) + 2 * vocab * hidden
            if params > MAX_PARAMETERS:
                problems.append(f"these sizes make about {params:.2g} parameters (more than {MAX_PARAMETERS:.0g})")
    if problems:
        raise ModelFolderError(f"{source}: config.json is not a usable model config: " + "; ".join(problems),
                               hint="fix config.json (these numbers come from the model's original config) or re-download it")


def safetensors_keys(file: Path) -> set[str]:
    """Tensor names from a safetensors header (8-byte length + JSON), without loading data;
    every tensor's byte range must lie inside the file (a truncated download, or offsets
    pointing far past the end, fail here rather than at serve time)."""
    file_size = file.stat().st_size
    with open(file, "rb") as handle:
        raw = handle.read(8)
        size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < size <= min(file_size - 8, 100 << 20):
            raise ModelFolderError(f"{file.name} is not a valid safetensors file (bad header)", hint="the file is truncated or corrupt: fetch it again")
        try:
            header = json.loads(handle.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise ModelFolderError(f"{file.name} is not a valid safetensors file (unreadable header)", hint="fetch it again") from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{file.name} is not a valid safetensors file (header is not an object)", hint="fetch it again")
    data_size = file_size - 8 - size
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise ModelFolderError(f"{file.name}: tensor {name!r} has no valid data_offsets", hint="the file is corrupt: fetch it again")
        if offsets[1] > data_size:
            raise ModelFolderError(
                f"{file.name}: tensor {name!r} needs bytes up to {offsets[1]} of the data section, which holds {data_size}",
                hint="the file is truncated or corrupt: fetch it again",
            )
    return {name for name in header if name != "__metadata__"}


def check_tokenizer(path: Path, source: str) -> None:
    """tokenizer.json must parse and tokenizer_config.json be a JSON object (a 0-byte or
    cut-off file otherwise fails only at serve time)."""
    settings = path / "tokenizer_config.json"
    if settings.is_file():
        try:
            parsed = json.loads(settings.read_bytes())
        except (ValueError, RecursionError):
            parsed = None
        if not isinstance(parsed, dict):
            raise ModelFolderError(f"{source}: tokenizer_config.json is not a JSON object",
                                   hint="the file is empty, truncated or corrupt: fetch the model again")
    file = path / "tokenizer.json"
    if not file.is_file():
        return
    try:
        from tokenizers import Tokenizer

        Tokenizer.from_file(str(file))
    except ImportError:  # pragma: no cover - tokenizers comes with transformers
        json.loads(file.read_bytes())
    except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception
        raise ModelFolderError(f"{source}: tokenizer.json does not parse ({str(err)[:120]})",
                               hint="the file is empty, truncated or corrupt: fetch the model again") from None


def _read_index(path: Path, name: str, source: str) -> dict[str, str]:
    try:
        weight_map = json.loads((path / name).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{source}: {name} is not a valid shard index ({err!r})", hint="re-download the index file") from None
    if not isinstance(weight_map, dict):
        raise ModelFolderError(f"{source}: {name} has no weight_map object", hint="re-download the index file")
    return weight_map


def _check_safetensors(path: Path, files: list[str], source: str) -> list[str]:
    """Every shard the index names exists and holds exactly the tensors the index says."""
    if not (path / SAFETENSORS_INDEX).is_file():
        for name in files:
            safetensors_keys(path / name)
        return files
    weight_map = _read_index(path, SAFETENSORS_INDEX, source)
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (path / s).is_file()]
    if missing:
        raise ModelFolderError(
            f"{source}: {SAFETENSORS_INDEX} references shards that are missing: {', '.join(missing)}",
            hint="the download is incomplete: fetch the model again",
        )
    problems = []
    for shard in shards:
        expected = {t for t, s in weight_map.items() if s == shard}
        actual = safetensors_keys(path / shard)
        if absent := sorted(expected - actual):
            problems.append(f"{shard} lacks {len(absent)} tensors the index lists (e.g. {absent[0]})")
        if unlisted := sorted(actual - expected):
            problems.append(f"{shard} holds {len(unlisted)} tensors the index does not map to it (e.g. {unlisted[0]})")
    if problems:
        raise ModelFolderError(f"{source}: the shard index does not match the shards: " + "; ".join(problems), hint="fetch the model again; the index and shards come from different versions")
    return shards


def _check_pickle_index(path: Path, files: list[str], source: str) -> list[str]:
    if not (path / PICKLE_INDEX).is_file():
        return files
    shards = sorted(set(_read_index(path, PICKLE_INDEX, source).values()))
    if missing := [s for s in shards if not (path / s).is_file()]:
        raise ModelFolderError(f"{source}: {PICKLE_INDEX} references shards that are missing: {', '.join(missing)}", hint="fetch the model again")
    return shards
