"""`lmi-serve [ARTIFACT]`: load a model folder or artifact and serve it over HTTP.

The server starts listening at once (/ping answers 503 while the model loads, as SageMaker
expects) and loads the model in a background thread; a load failure stops the server with
the error and exit code 2.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Optional

import typer

from lmi_runtime.cli_support import stderr, user_errors
from lmi_runtime.errors import ConfigError, LmiError
from lmi_runtime.locate import resolve_location
from lmi_runtime.serve_options import engine_config, tgi_compat

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
@user_errors
def serve(
    artifact: Optional[str] = typer.Argument(None, help="Model folder or artifact; default /opt/ml/model or HF_MODEL_ID."),
    host: str = typer.Option("0.0.0.0", help="Address to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
    max_batch_size: Optional[int] = typer.Option(None, help="Running sequences at most (env MAX_BATCH_SIZE, default 256)."),
    max_concurrent_requests: Optional[int] = typer.Option(None, help="Waiting requests at most (env MAX_CONCURRENT_REQUESTS, default 1000)."),
    max_model_len: Optional[int] = typer.Option(None, help="Prompt + output tokens (env OPTION_MAX_MODEL_LEN)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Default new tokens per request (default 30)."),
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16 | float16 (env OPTION_DTYPE)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
    backend: Optional[str] = typer.Option(None, help="auto | torch | transformers."),
    kv_cache_gib: Optional[float] = typer.Option(None, help="Memory for the KV-cache pool, GiB (default: what GPU memory leaves; 2 on CPU)."),
    served_model_name: Optional[str] = typer.Option(None, help="Model name reported by /v1/models."),
    tensor_parallel_degree: Optional[str] = typer.Option(None, envvar="TENSOR_PARALLEL_DEGREE", help="Ranks to run; must match the artifact's split ('max' or unset: the artifact's)."),
    trust_remote_code: Optional[bool] = typer.Option(None, help="Allow code from the model folder (env HF_MODEL_TRUST_REMOTE_CODE)."),
    log_level: str = typer.Option("info", help="debug | info | warning | error."),
    strict_params: bool = typer.Option(False, "--strict-params", help="Refuse unknown fields on the OpenAI routes too (400)."),
) -> None:
    """Serve a model: SageMaker /ping and /invocations (LMI schema), OpenAI /v1/*, /metrics."""
    import uvicorn

    from lmi_runtime.serve import load_into
    from lmi_runtime.server.app import create_app
    from lmi_runtime.server.common import ServerState

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = {
        "max_batch_size": max_batch_size, "max_queue": max_concurrent_requests, "max_model_len": max_model_len,
        "max_new_tokens": max_new_tokens, "dtype": dtype, "device": device, "backend": backend,
        "kv_cache_gib": kv_cache_gib, "served_model_name": served_model_name, "trust_remote_code": trust_remote_code,
        "tensor_parallel_degree": _degree(tensor_parallel_degree),
    }
    engine_config(options)  # a bad option or environment variable fails here, before listening
    state = ServerState(strict_params=strict_params)
    server = uvicorn.Server(uvicorn.Config(create_app(state), host=host, port=port, log_level=log_level))
    failure: list[LmiError] = []

    def load() -> None:
        try:  # an s3:// artifact downloads here, while /ping answers 503
            location = resolve_location(artifact)
            state.tgi_compat = tgi_compat(model_dir=location)
            load_into(state, location, engine_config(options, model_dir=location))
        except Exception as err:  # noqa: BLE001 - reported below, then the server stops
            state.load_error = f"loading failed: {err}"
            failure.append(err if isinstance(err, LmiError) else LmiError(f"loading {artifact or 'the model'} failed: {err}"))
            logging.getLogger("lmi_runtime").exception("loading failed")
            server.should_exit = True

    threading.Thread(target=load, name="lmi-load", daemon=True).start()
    server.run()
    if state.engine is not None:
        state.engine.shutdown()
    if failure:
        raise failure[0]


def _degree(value: str | None) -> int | None:
    if value is None or value.strip().lower() == "max":
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise ConfigError(f"tensor parallel degree {value!r} is not valid", hint="use a whole number ≥ 1 or 'max'")
    return int(value)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        stderr.print("interrupted")
        sys.exit(130)
