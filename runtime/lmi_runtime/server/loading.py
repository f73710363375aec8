"""Loading a model into a running server: folder → backend → engine thread → ServerState."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lmi_runtime.artifact.manifest import Profile
from lmi_runtime.artifact.stream import Arrival
from lmi_runtime.backends.loader import load_backend
from lmi_runtime.backends.vendor_load import is_vendor, load_vendor_backend
from lmi_runtime.engine.backend import Backend
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.engine import AsyncEngine, LLMEngine
from lmi_runtime.engine.token_engine import TokenBackend, TokenEngine
from lmi_runtime.locate import inspect_folder
from lmi_runtime.server.state import ServerState

log = logging.getLogger("lmi_runtime.server.loading")


def load_into(state: ServerState, location: Path, config: EngineConfig, verify: bool = True,
              profile: Profile | None = None, arriving: dict[str, Arrival] | None = None) -> AsyncEngine:
    """Load the model at `location` (an artifact's `profile`; `arriving`: its weights still
    downloading) and make `state` serve it; returns the started engine. An artifact's files are
    checked against its manifest, the weights while they load."""
    started = time.perf_counter()
    files = inspect_folder(location, verify, profile=profile, arriving=arriving)
    backend = load_vendor_backend(files, config) if is_vendor(files) else load_backend(files, config)
    files.wait_verified()  # never ready (/ping 200) on weights that do not match the manifest
    engine = start_engine(state, backend, config)
    log.info(
        "loaded %s in %.1f s (%s); max batch %d, queue %d, max_model_len %d, prompt tokens per step %s",
        location, time.perf_counter() - started,
        ", ".join(f"{k} {v}" for k, v in backend.info.details.items()),
        config.max_batch_size, config.max_queue, backend.info.max_model_len,
        _prompt_budget(engine),
    )
    return engine


def _prompt_budget(engine: AsyncEngine) -> str:
    """What bounds a step's prompt tokens, as the start-up log says it."""
    if isinstance(engine.engine, TokenEngine):
        return "the engine library's"
    return str(engine.engine.prompt_budget or "unbounded")


def start_engine(state: ServerState, backend: Backend | TokenBackend, config: EngineConfig) -> AsyncEngine:
    """Start the engine thread over a loaded backend and publish it in `state` (/ping → 200)."""
    engine_cls = TokenEngine if isinstance(backend, TokenBackend) else LLMEngine
    engine = AsyncEngine(engine_cls(backend, config, state.registry)).start()
    state.info, state.tokenizer, state.engine = backend.info, backend.tokenizer, engine
    return engine
