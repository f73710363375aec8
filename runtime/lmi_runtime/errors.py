"""One error type for everything a user can get wrong, so that CLIs and HTTP handlers can
turn it into a clear message (what is wrong + what to do) instead of a traceback."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from lmi_runtime.redact import redact


class LmiError(Exception):
    """A user-facing failure: `message` says what is wrong, `hint` what to do about it.
    Both are redacted at construction, so no secret can leave through an error."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        message, hint = redact(message), redact(hint) if hint else hint
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(LmiError):
    """Invalid configuration: a recipe, environment variable or serving.properties key."""


class ModelFolderError(LmiError):
    """A model folder that cannot be used (missing config, weights, tokenizer...)."""


class StorageError(LmiError):
    """A transfer to or from a storage location failed."""


class ArtifactError(LmiError):
    """An artifact that is incomplete, tampered with, or does not fit this machine."""


class QualityGateError(LmiError):
    """A quantized or compiled model whose quality is below the recipe's threshold."""


class MissingExtraError(LmiError):
    """An optional dependency is missing; the hint names the extra to install."""

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"this step needs the Python package '{module}', which is not installed",
            hint=f"pip install 'lmi-compile[{extra}]'",
        )


class OSFailure(LmiError):
    """An operating-system error (disk full, permission denied, ...) turned into one message."""


def os_failure(err: OSError, doing: str = "") -> OSFailure:
    """One message for an OSError: what failed, on which path, and what to do (for a full
    disk: how much is free there and what to free)."""
    err = _first_cause(err)
    path = err.filename or ""
    where = f" {path}" if path else ""
    what = f"{doing}: " if doing else ""
    reason = err.strerror or type(err).__name__
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        # The error may name the source of a copy: report the fullest of the places involved.
        places = [_existing_parent(Path(p)) for p in (err.filename, err.filename2) if p] + [Path(tempfile.gettempdir())]
        folder = min(places, key=lambda place: shutil.disk_usage(place).free)
        free = shutil.disk_usage(folder).free / 2**20
        return OSFailure(
            f"{what}no space left on the device holding {folder} ({free:.1f} MiB free there)",
            hint=f"free space under {folder} (old artifacts, the stage cache in ~/.cache/lmi-compile, leftover "
            f"lmi-run-* folders in {tempfile.gettempdir()}), or point TMPDIR / --out / LMI_COMPILE_CACHE at a larger disk",
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OSFailure(f"{what}{reason}:{where or ' (no path given)'}", hint="check the permissions of that path, or choose a writable location")
    return OSFailure(f"{what}{reason}{where and f':{where}'}", hint="check that the path exists and is accessible, then run again")


def _first_cause(err: OSError) -> OSError:
    """`shutil.copytree` gathers its failures into one `shutil.Error` that keeps each cause only
    as text ("[Errno 28] No space left on device: 'src' -> 'dst'"): the first one, as an OSError again,
    so that it gets the message a plain copy would (it printed "Error" before)."""
    causes = err.args[0] if isinstance(err, shutil.Error) and err.args else None
    if not isinstance(causes, list) or not causes or len(causes[0]) != 3:
        return err
    _, target, why = causes[0]
    found = re.fullmatch(r"\[Errno (\d+)\] (.*?)(?:: '(.*?)'(?: -> '(.*)')?)?", str(why), flags=re.DOTALL)
    if not found:
        return OSError(0, str(why), target)
    code, reason, path, path2 = found.groups()
    return OSError(int(code), reason, path or target, None, path2)


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else path.parent


def debug_enabled() -> bool:
    """`--debug` was given (or LMI_DEBUG=1): show tracebacks instead of one-line errors."""
    return os.environ.get("LMI_DEBUG", "").lower() in ("1", "true", "yes")
