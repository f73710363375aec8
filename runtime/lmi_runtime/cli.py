"""`lmi-serve [ARTIFACT]`: load a model folder or artifact and serve it over HTTP.

The server starts listening at once (/ping answers 503 while the model loads, as SageMaker
expects) and loads the model in a background thread; a load failure stops the server with
the error and exit code 2. On SIGTERM (SageMaker's scale-in) or Ctrl-C it drains: no new
requests (503), those in flight may finish for up to --drain-seconds, the rest then end with
an error event that says so, and the process exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Optional

import typer

from lmi_runtime.startup_log import configure_logging, quiet_environment

quiet_environment()  # before anything imports tqdm (it reads TQDM_DISABLE at import time)

from lmi_runtime.cli_support import DEBUG_HELP, as_user_error, set_debug, stderr, user_errors  # noqa: E402
from lmi_runtime.config.engine_settings import engine_config, tgi_compat  # noqa: E402
from lmi_runtime.errors import ConfigError, LmiError, debug_enabled  # noqa: E402
from lmi_runtime.artifact.profiles import PROFILE_ENV  # noqa: E402
from lmi_runtime.locate import open_location, profiles_report, served_profile  # noqa: E402

log = logging.getLogger("lmi_runtime")

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
@user_errors
def serve(
    artifact: Optional[str] = typer.Argument(None, help="Model folder or artifact; default /opt/ml/model or HF_MODEL_ID."),
    host: str = typer.Option("0.0.0.0", help="Address to listen on."),
    port: int = typer.Option(8080, min=1, max=65535, help="Port to listen on."),
    max_batch_size: Optional[int] = typer.Option(None, help="Running sequences at most (env MAX_BATCH_SIZE, default 256)."),
    max_concurrent_requests: Optional[int] = typer.Option(None, help="Waiting requests at most (env MAX_CONCURRENT_REQUESTS, default 1000)."),
    max_prefill_tokens: Optional[int] = typer.Option(None, help="Prompt tokens prefilled per step at most: a burst of long prompts joins over several steps while running requests decode (env MAX_BATCH_PREFILL_TOKENS; default: the artifact's plan, else 8192 on the torch backend)."),
    max_model_len: Optional[int] = typer.Option(None, help="Prompt + output tokens (env OPTION_MAX_MODEL_LEN)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Default new tokens per request (default 30)."),
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16 | float16 (env OPTION_DTYPE)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
    backend: Optional[str] = typer.Option(None, help="auto | torch | transformers."),
    kv_cache_gib: Optional[float] = typer.Option(None, help="Memory for the KV-cache pool, GiB (default: the artifact's planned budget, else what GPU memory leaves; 2 on CPU)."),
    enforce_eager: Optional[bool] = typer.Option(None, "--enforce-eager/--no-enforce-eager", help="No compiled layers or CUDA graphs: a faster start, a slower decode (env OPTION_ENFORCE_EAGER)."),
    served_model_name: Optional[str] = typer.Option(None, help="Model name reported by /v1/models."),
    quantize: Optional[str] = typer.Option(None, help="fp8 | static_int8: quantize a 16-bit checkpoint's layers at load, round-to-nearest per channel (awq, gptq, smoothquant need calibration: lmi-compile) (env OPTION_QUANTIZE)."),
    quantized_kernels: Optional[str] = typer.Option(None, help="auto | on | off: serve quantized layers packed, through quantized matmuls (auto: on CUDA; on CPU dequantized) (env OPTION_QUANTIZED_KERNELS)."),
    kernel_cache: Optional[str] = typer.Option(None, help="Folder of compiled kernels: loaded when it holds a cache built for this GPU and these library versions, else filled by this start ('none': compile at every start; default: the artifact's kernel_cache/ if it ships one) (env OPTION_KERNEL_CACHE)."),
    recompile: Optional[bool] = typer.Option(None, "--recompile/--no-recompile", help="Rebuild a kernel cache built for another GPU arch or library versions instead of refusing it (env OPTION_RECOMPILE)."),
    tensor_parallel_degree: Optional[str] = typer.Option(None, envvar="TENSOR_PARALLEL_DEGREE", help="Ranks to run; must match the artifact's split ('max' or unset: the artifact's)."),
    trust_remote_code: Optional[bool] = typer.Option(None, help="Allow code from the model folder (env HF_MODEL_TRUST_REMOTE_CODE)."),
    log_level: str = typer.Option("info", help="debug | info | warning | error."),
    strict_params: bool = typer.Option(False, "--strict-params", help="Refuse unknown fields on the OpenAI routes too (400)."),
    skip_verify: bool = typer.Option(False, "--skip-verify", help="Load an artifact without checking its files' sha256 against the manifest (you accept tampered or corrupt weights)."),
    drain_seconds: float = typer.Option(30.0, "--drain-seconds", min=0, max=3600, help="On SIGTERM, how long requests in flight may still run."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", min=0.1, max=600, help="Seconds a client may take to send its request headers (slow clients are dropped)."),
    profile: Optional[str] = typer.Option(None, "--profile", envvar=PROFILE_ENV, help="Serve this profile of the artifact (env LMI_PROFILE); default: the best one for this machine."),
    list_profiles: bool = typer.Option(False, "--list-profiles", help="Print the artifact's profiles grouped as runnable here / too little memory / incompatible, and exit."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Serve a model: SageMaker /ping and /invocations (LMI schema), OpenAI /v1/*, /metrics."""
    set_debug(debug)
    configure_logging(log_level)
    if profile:
        os.environ[PROFILE_ENV] = profile  # the s3 download and tensor-parallel workers read it too
    if list_profiles:
        typer.echo(profiles_report(artifact))
        return
    import uvicorn

    from lmi_runtime.server.app import create_app
    from lmi_runtime.server.limits import uvicorn_limits
    from lmi_runtime.server.loading import load_into
    from lmi_runtime.server.state import ServerState
    options = {
        "max_batch_size": max_batch_size, "max_queue": max_concurrent_requests, "max_prefill_tokens": max_prefill_tokens,
        "max_model_len": max_model_len,
        "max_new_tokens": max_new_tokens, "dtype": dtype, "device": device, "backend": backend,
        "kv_cache_gib": kv_cache_gib, "served_model_name": served_model_name, "trust_remote_code": trust_remote_code,
        "enforce_eager": enforce_eager, "quantized_kernels": quantized_kernels, "quantize": quantize,
        "kernel_cache": kernel_cache, "recompile": recompile,
        "tensor_parallel_degree": _degree(tensor_parallel_degree),
    }
    engine_config(options)  # a bad option or environment variable fails here, before listening
    state = ServerState(strict_params=strict_params)
    config = uvicorn.Config(create_app(state), host=host, port=port, log_level=log_level,
                            **uvicorn_limits(header_timeout))
    server = DrainingServer(config, state, drain_seconds)
    failure: list[LmiError] = []

    def load() -> None:
        try:  # an s3:// artifact downloads here, while /ping answers 503
            log.info("loading %s", artifact or "the default model location")
            location = open_location(artifact)  # an s3:// artifact's weights go on arriving while they load
            folder = location.path
            state.tgi_compat = tgi_compat(model_dir=folder)
            chosen = served_profile(folder)  # None for a plain model folder
            load_into(state, folder, engine_config(options, model_dir=folder, profile=chosen),
                      verify=not skip_verify, profile=chosen, arriving=location.arriving)
        except Exception as err:  # noqa: BLE001 - reported below, then the server stops
            error = as_user_error(err)
            state.load_error = f"loading failed: {error.message}"
            failure.append(error)
            log.error("loading failed: %s", error.message, exc_info=debug_enabled())
            server.should_exit = True

    threading.Thread(target=load, name="lmi-load", daemon=True).start()
    server.run()
    if state.engine is not None:
        state.engine.shutdown()
    if failure:
        raise failure[0]


class DrainingServer:
    """uvicorn's Server whose exit signal drains the engine first (see the module docstring).

    uvicorn re-raises a captured SIGTERM after its shutdown, which would end the process with
    -15; the no-op handler installed around `run` absorbs it, so a drained server exits 0."""

    def __init__(self, config, state, drain_seconds: float):
        import uvicorn

        self.state, self.drain_seconds = state, drain_seconds
        self.server = uvicorn.Server(config)
        self.server.handle_exit = self._handle_exit  # type: ignore[method-assign]
        self._draining = False

    @property
    def should_exit(self) -> bool:
        return self.server.should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self.server.should_exit = value

    def run(self) -> None:
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.server.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle_exit(self, sig: int, frame) -> None:
        engine = self.state.engine
        if self._draining or engine is None:  # a second signal, or nothing loaded: stop now
            self.server.should_exit = True
            return
        self._draining = True
        log.info("received %s: draining (up to %g s for requests in flight)", signal.Signals(sig).name, self.drain_seconds)
        threading.Thread(target=self._drain, args=(engine,), name="lmi-drain", daemon=True).start()

    def _drain(self, engine) -> None:
        failed = engine.drain(self.drain_seconds)
        if failed:
            log.warning("drain deadline reached: %d request(s) ended with an error event", failed)
        threading.Event().wait(0.5)  # let the handlers write those final events
        self.server.should_exit = True


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
