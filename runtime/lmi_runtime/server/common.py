"""Server state and the HTTP error every handler raises (rendered per API family in app.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmi_runtime.engine.backend import ModelInfo
from lmi_runtime.engine.engine import AsyncEngine
from lmi_runtime.metrics import Registry


class HTTPError(Exception):
    """A 4xx/5xx with a message that says what is wrong; `param` names the offending field."""

    def __init__(self, status: int, message: str, hint: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.hint, self.param, self.code = status, message, hint, param, code

    def text(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def lmi_body(self) -> dict:
        """LMI's shape: `{"error", "code"}` (+ our `hint`)."""
        return {"error": self.message, "code": self.status, **({"hint": self.hint} if self.hint else {})}

    def openai_body(self) -> dict:
        """OpenAI's shape, which its SDK shows in the exception message."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.text(), "type": kind, "param": self.param, "code": self.code}}

    def tgi_body(self) -> dict:
        """TGI's shape, parsed by huggingface_hub (`error`, `error_type`)."""
        kind = {503: "overloaded", 500: "generation"}.get(self.status, "validation")
        return {"error": self.text(), "error_type": kind}


@dataclass
class ServerState:
    """Filled in when the model has loaded; until then /ping answers 503."""

    registry: Registry = field(default_factory=Registry)
    engine: AsyncEngine | None = None
    info: ModelInfo | None = None
    tokenizer: object | None = None
    load_error: str | None = None
    strict_params: bool = False  # --strict-params: unknown fields are a 400 on OpenAI routes too
    tgi_compat: bool = False  # OPTION_TGI_COMPAT: /invocations answers in TGI's shapes

    def ready(self) -> AsyncEngine:
        if self.engine is None:
            raise HTTPError(503, self.load_error or "the model is still loading", hint="retry when /ping answers 200")
        return self.engine
