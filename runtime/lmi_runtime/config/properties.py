"""serving.properties → settings. The Java properties syntax LMI users write: `key=value` or
`key: value`, `#`/`!` comments, blank lines, and a trailing backslash to continue a line."""

from __future__ import annotations

from pathlib import Path

from lmi_runtime.config.schema import IGNORED_TOP_LEVEL, KNOWN_OPTIONS, TOP_LEVEL_KEYS
from lmi_runtime.config.settings import Setting
from lmi_runtime.config.suggest import warn_unknown
from lmi_runtime.config.text import read_utf8
from lmi_runtime.errors import ConfigError


def read_properties(path: Path) -> dict[str, Setting]:
    """Parse a serving.properties file; unknown keys warn (nearest known key) and are kept
    when they are `option.*` (an option we do not model may still matter to a handler)."""
    path = Path(path)
    if path.is_dir():
        path = path / "serving.properties"
    text = read_utf8(path, str(path), "a serving.properties file (or the folder holding one)")
    settings: dict[str, Setting] = {}
    for number, line in _logical_lines(text):
        key, value = _split(line, path, number)
        origin = f"{path.name} line {number}"
        if key.startswith("option."):
            key_name = key.lower()  # option names are case-insensitive, as OPTION_* variables are
            if key_name[len("option."):] not in KNOWN_OPTIONS:
                warn_unknown(key, (f"option.{k}" for k in KNOWN_OPTIONS), path.name, "kept as a pass-through option")
        elif key in IGNORED_TOP_LEVEL:
            continue  # djl-serving worker settings: lmi-serve runs one engine per rank
        elif key not in TOP_LEVEL_KEYS:
            warn_unknown(key, sorted(TOP_LEVEL_KEYS) + [f"option.{k}" for k in KNOWN_OPTIONS], path.name)
            continue
        else:
            key_name = key
        settings[key_name] = Setting(key_name, value, origin, key)
    return settings


def _logical_lines(text: str):
    """(first line number, joined line) for each non-comment line, continuations joined."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line[0] in "#!"):
            continue
        if not pending:
            start = number
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1]
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def _split(line: str, path: Path, number: int) -> tuple[str, str]:
    positions = [i for i in (line.find("="), line.find(":")) if i > 0]
    if not positions:
        raise ConfigError(f"{path.name} line {number}: expected 'key=value', got {line!r}",
                          hint="write one setting per line, e.g. option.tensor_parallel_degree=4")
    cut = min(positions)
    return line[:cut].strip(), line[cut + 1:].strip()
