"""The HTTP error every handler raises, with its body in each API family's shape (rendered
per route family in app.py)."""

from __future__ import annotations


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
