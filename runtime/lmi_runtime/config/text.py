"""Reading a configuration file's text with errors that name the file and say what to do."""

from __future__ import annotations

from pathlib import Path

from lmi_runtime.errors import ConfigError


def read_utf8(path: Path, what: str, hint: str) -> str:
    """`path`'s text; an unreadable or non-UTF-8 file is a ConfigError naming `what` (e.g.
    "recipe r.yaml") and the byte that is not UTF-8. `hint`: the file expected, e.g. "a recipe YAML file"."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {what}: {err.strerror or err}", hint=f"pass the path of {hint}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} is not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r})",
                          hint=f"save {what} as UTF-8 text") from None
