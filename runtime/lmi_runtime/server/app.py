"""The FastAPI application. It answers /ping with 503 until `ServerState.engine` is set, so
SageMaker's health check sees a live server while the model loads."""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect

from lmi_runtime import __version__
from lmi_runtime.metrics import Counter
from lmi_runtime.server import lmi, openai_api, tgi
from lmi_runtime.server.common import HTTPError, ServerState
from lmi_runtime.server.generation import ClientGone

log = logging.getLogger("lmi_runtime.server")
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
TGI_ROUTES = ("/", "/generate", "/generate_stream")
CLIENT_CLOSED = 499  # nginx's "client closed request": counted, not logged as an error


class RequestCounter:
    """ASGI middleware counting responses by path and status (pure ASGI, so it does not get
    in the way of streaming or of noticing a client that left)."""

    def __init__(self, app, counter: Counter):
        self.app, self.counter = app, counter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.counter.inc(path=scope["path"], status=str(status["code"]))


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="lmi-serve", version=__version__)
    requests = state.registry.add(Counter("lmi_requests_total", "HTTP requests by path and status."))
    app.add_middleware(RequestCounter, counter=requests)
    app.state.lmi = state

    def error_body(request: Request, err: HTTPError) -> dict:
        """OpenAI's shape on /v1, TGI's on the TGI routes (and /invocations in TGI mode), LMI's elsewhere."""
        path = request.url.path
        if path.startswith("/v1/"):
            return err.openai_body()
        if path in TGI_ROUTES or (path == "/invocations" and state.tgi_compat):
            return err.tgi_body()
        return err.lmi_body()

    @app.exception_handler(HTTPError)
    async def http_error(request: Request, err: HTTPError) -> JSONResponse:
        return JSONResponse(error_body(request, err), status_code=err.status)

    @app.exception_handler(ClientDisconnect)
    @app.exception_handler(ClientGone)
    async def client_gone(_: Request, __: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error")
        wrapped = HTTPError(500, f"internal error: {type(err).__name__}: {err}")
        return JSONResponse(error_body(request, wrapped), status_code=500)

    @app.get("/ping")
    @app.get("/health")
    @app.get("/v1/health")
    async def ping() -> JSONResponse:
        if state.engine is None:
            return JSONResponse({"status": "loading" if not state.load_error else "failed",
                                 **({"error": state.load_error} if state.load_error else {})}, status_code=503)
        return JSONResponse({"status": "healthy", "model": state.info.name if state.info else None})

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(state.registry.render(), media_type=PROMETHEUS)

    router = APIRouter()
    lmi.register(router, state)
    openai_api.register(router, state)
    tgi.register(router, state)
    app.include_router(router)
    return app
