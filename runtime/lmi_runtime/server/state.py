"""What the HTTP handlers share: the loaded model's engine, tokenizer and metrics, once it is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmi_runtime.engine.backend import ServedModel
from lmi_runtime.engine.engine import AsyncEngine
from lmi_runtime.metrics import Registry
from lmi_runtime.server.errors import HTTPError


@dataclass
class ServerState:
    """Filled in when the model has loaded; until then /ping answers 503."""

    registry: Registry = field(default_factory=Registry)
    engine: AsyncEngine | None = None
    info: ServedModel | None = None
    tokenizer: object | None = None
    load_error: str | None = None
    strict_params: bool = False  # --strict-params: unknown fields are a 400 on OpenAI routes too
    tgi_compat: bool = False  # OPTION_TGI_COMPAT: /invocations answers in TGI's shapes

    def ready(self) -> AsyncEngine:
        if self.engine is None:
            raise HTTPError(503, self.load_error or "the model is still loading", hint="retry when /ping answers 200")
        return self.engine
