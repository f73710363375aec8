"""The FastAPI application. It answers /ping with 503 until `ServerState.engine` is set, so
SageMaker's health check sees a live server while the model loads."""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from lmi_runtime import __version__
from lmi_runtime.metrics import Counter
from lmi_runtime.redact import redact
from lmi_runtime.server import lmi, openai_api, tgi
from lmi_runtime.server.errors import HTTPError
from lmi_runtime.server.generation import ClientGone
from lmi_runtime.server.limits import BodyLimits, max_payload_bytes
from lmi_runtime.server.state import ServerState

log = logging.getLogger("lmi_runtime.server")
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
TGI_ROUTES = ("/", "/generate", "/generate_stream")
CLIENT_CLOSED = 499  # nginx's "client closed request": counted, not logged as an error


class RequestCounter:
    """ASGI middleware counting responses by route and status (pure ASGI, so it does not get
    in the way of streaming or of noticing a client that left). The label is the matched
    route's template, never the raw path: 3,000 GETs to made-up paths add one `unmatched`
    series, not 3,000."""

    def __init__(self, app, counter: Counter, routes: list):
        self.app, self.counter, self.routes = app, counter, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # no response at all means the client left first (e.g. during the body read): a 499
        status = {"code": CLIENT_CLOSED, "started": False, "done": False}

        async def record(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                status["done"] = True
            await send(message)

        try:
            await self.app(scope, receive, record)
        except Exception as err:  # noqa: BLE001 - one request's failure stays its own
            # Answered here, not re-raised: Starlette's outermost error middleware would answer
            # and re-raise to uvicorn, which then closes the keep-alive connection under a
            # client that may already reuse it — failing the next, unrelated request on it.
            if status["started"] and not status["done"]:
                raise  # half a response: only closing the connection can tell the client
            log.exception("unexpected error")
            if not status["started"]:
                await record({"type": "http.response.start", "status": 500,
                              "headers": [(b"content-type", b"application/json")]})
                await record({"type": "http.response.body", "body": json.dumps(internal_error(err)).encode()})
        finally:
            self.counter.inc(path=route_label(scope, self.routes), status=str(status["code"]))


def internal_error(err: Exception) -> dict:
    return {"error": redact(f"internal error: {type(err).__name__}: {err}")}


def route_label(scope, routes: list) -> str:
    """The template of the route for this request (`/v1/chat/completions`), or `unmatched`;
    also for requests answered before routing (a 413 from the body limits)."""
    route = scope.get("route")
    for candidate in _flat(routes) if route is None else ():
        if candidate.matches(scope)[0] == Match.FULL:
            route = candidate
            break
    return getattr(route, "path", None) or "unmatched"


def _flat(routes: list):
    """Routes, with those of included routers listed in place of the router."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        yield from _flat(inner.routes) if inner is not None else (route,)


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="lmi-serve", version=__version__)
    requests = state.registry.add(Counter("lmi_requests_total", "HTTP requests by path and status."))
    app.add_middleware(BodyLimits, max_bytes=max_payload_bytes())
    app.add_middleware(RequestCounter, counter=requests, routes=app.router.routes)  # outermost: counts the limits' 413/400 too
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
        wrapped = HTTPError(500, redact(f"internal error: {type(err).__name__}: {err}"))
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
