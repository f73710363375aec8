"""One error type for everything a user can get wrong, so that CLIs and HTTP handlers can
turn it into a clear message (what is wrong + what to do) instead of a traceback."""

from __future__ import annotations


class LmiError(Exception):
    """A user-facing failure: `message` says what is wrong, `hint` what to do about it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
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
