"""The labeling web server: a static page and a small JSON API over the store.

``create_app(store)`` builds the FastAPI app; ``serve`` runs it under uvicorn. The API is
described by FastAPI's OpenAPI document at ``/api/openapi.json``, for labelers only (the
interactive /docs page is off: it loads its scripts from a CDN, and this server works with no
network).

Access rules, in order: a ``Content-Length`` over MAX_BODY_BYTES is refused (413); every
``/api`` call except ``/api/health`` needs a labeler token (``Authorization: Bearer <token>``,
else 401), checked before a byte of the body is read; a body without ``Content-Length``
(chunked) is counted as it arrives and cut off at MAX_BODY_BYTES (413); writes also need a
same-origin request: when an ``Origin`` (or, without one, a ``Referer``) header is present its
host must equal ``Host``, else 403. A script run by another site cannot read the token (it
lives in this origin's localStorage), and the origin check refuses cross-site writes even if
one could.
"""

from __future__ import annotations

import ipaddress
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import anyio
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from tether.errors import DataError, TetherError
from tether.labeling.judgement import make_judgement
from tether.labeling.store import AlreadyAnswered, Answer, Labeler, Store, UnknownAnswer, UnknownTask
from tether.labeling.wire import (
    AnswerIn, HealthOut, MeOut, NextOut, SubmitOut, UndoIn, UndoOut, answer_out, progress_out, task_out,
)

__all__ = ["create_app", "serve", "serving", "is_loopback", "same_origin"]

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 64 * 1024  # an answer is a few hundred bytes; refuse anything absurd before parsing it
# the page loads nothing from elsewhere; the CSP makes that a rule the browser enforces
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # keyboard shortcuts + framing = clickjacking
    "Referrer-Policy": "same-origin",  # the URL may carry ?token= on first load
}
MAX_ERRORS_SHOWN, MAX_ERROR_CHARS = 3, 500  # an error message stays one short line
# the store's errors -> HTTP status; anything else user-fixable is a 422
ERROR_STATUS: dict[type[TetherError], int] = {
    UnknownTask: 404, UnknownAnswer: 404, AlreadyAnswered: 409, DataError: 422,
}


# -- API models (they are the OpenAPI document) -----------------------------------------
# -- access checks ---------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="the labeler token printed by `tether label add-labeler`")


async def reading_labeler(
    request: Request, _credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Labeler:
    """Dependency of every read: the labeler GuardMiddleware found for the token (it answers
    401 itself, before reading the body). ``_bearer`` is there to put the scheme in OpenAPI."""
    return request.state.labeler


async def writing_labeler(
    request: Request, _credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Labeler:
    """Dependency of every write: the authenticated labeler and a same-origin request (403).
    Async, as is ``reading_labeler``: a sync dependency is one more hop through the thread pool."""
    if not same_origin(request.headers.get("host"), request.headers.get("origin"), request.headers.get("referer")):
        raise HTTPException(403, "cross-origin write refused: Origin/Referer does not match Host")
    return request.state.labeler


def needs_token(path: str) -> bool:
    return path.startswith("/api/") and path != "/api/health"


def bearer_token(authorization: bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, token = (authorization or b"").decode("latin-1").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def same_origin(host: str | None, origin: str | None, referer: str | None) -> bool:
    """True when the request's Origin (else Referer) names the host it was sent to, or when
    neither header is there (curl, scripts: no browser, so no cross-site request to fear)."""
    source = origin if origin is not None else referer
    if source is None:
        return True
    if host is None or source == "null":  # "null": sandboxed frames, file:// pages
        return False
    return urlsplit(source).netloc.lower() == host.lower()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the app ---------------------------------------------------------------------------
def create_app(store: Store) -> FastAPI:
    app = FastAPI(
        title="tether labeling",
        version="1",
        description=(
            "Collect human preferences between model responses. "
            "All /api routes except /api/health need a labeler token."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.store = store
    app.add_middleware(GuardMiddleware)
    _add_error_handlers(app)
    _add_routes(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _add_routes(app: FastAPI) -> None:
    def store_of(request: Request) -> Store:
        return request.app.state.store

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/api/health", response_model=HealthOut, tags=["meta"])
    def health(request: Request) -> HealthOut:
        return HealthOut(ok=True, schema_version=store_of(request).schema_version())

    @app.get("/api/me", response_model=MeOut, tags=["labeling"])
    def me(request: Request, labeler: Labeler = Depends(reading_labeler)) -> MeOut:
        return MeOut(labeler=labeler.name, progress=progress_out(store_of(request).progress(labeler)))

    @app.get("/api/next", response_model=NextOut, tags=["labeling"])
    def next_task(request: Request, labeler: Labeler = Depends(reading_labeler)) -> NextOut:
        """The first task, in file order, this labeler has not answered."""
        store = store_of(request)
        task = store.next_task(labeler)
        return NextOut(task=task_out(task) if task else None, progress=progress_out(store.progress(labeler)))

    @app.post("/api/answers", response_model=SubmitOut, status_code=201, tags=["labeling"],
              responses={200: {"description": "a retry: this request_id was stored before"}, 404: {}, 409: {}, 422: {}})
    def submit(
        body: AnswerIn, request: Request, response: Response, labeler: Labeler = Depends(writing_labeler)
    ) -> SubmitOut:
        """Store one answer. It is committed to disk before this returns."""
        store = store_of(request)
        submitted = store.submit(labeler, body.task_id, body.choice, body.ranking, body.reason, body.request_id)
        if not submitted.created:
            if not _same_answer(store, body, submitted.answer):
                raise HTTPException(  # "already answered": the page then moves on to the next task
                    409, f"request_id {body.request_id!r} already answered task {body.task_id!r} with a different "
                    f"answer (answer {submitted.answer.id}, choice {submitted.answer.choice!r}): a retry must repeat "
                    "it; undo it to change it",
                )
            response.status_code = 200
        return SubmitOut(
            answer=answer_out(submitted.answer), created=submitted.created, progress=progress_out(submitted.progress)
        )

    @app.post("/api/undo", response_model=UndoOut, tags=["labeling"])
    def undo(request: Request, body: UndoIn | None = None, labeler: Labeler = Depends(writing_labeler)) -> UndoOut:
        """Undo an answer (the latest by default); its task comes back as the next one."""
        store = store_of(request)
        answer = store.undo(labeler, body.answer_id if body else None)
        task = store.task(answer.task_id) if answer else None
        return UndoOut(answer=answer_out(answer) if answer else None, task=task_out(task) if task else None,
                       progress=progress_out(store.progress(labeler)))


class GuardMiddleware:
    """Refuses oversized bodies and missing or bad tokens before the app reads the body, and
    adds the security and cache headers to every response. The app (FastAPI) reads the whole
    body before it runs any dependency, so both checks live here: a client without a token,
    or with a chunked body of any size, costs the server at most MAX_BODY_BYTES.
    Plain ASGI rather than ``@app.middleware("http")``: that wrapper costs a task and a
    stream per request, which shows when eight clients write at once on two cores."""

    def __init__(self, app) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # answers and tokens must not sit in caches; the page is revalidated so upgrades show
        cache = b"no-store" if scope["path"].startswith("/api/") else b"no-cache"
        extra = [*self.headers, (b"cache-control", cache)]

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            await _refuse(413, f"request body over {MAX_BODY_BYTES} bytes", scope, receive, send_with_headers)
            return
        if needs_token(scope["path"]):
            token = bearer_token(headers.get(b"authorization"))
            if token is None:
                await _refuse(401, MISSING_TOKEN, scope, receive, send_with_headers)
                return
            labeler = await anyio.to_thread.run_sync(scope["app"].state.store.labeler_for_token, token)
            if labeler is None:
                await _refuse(401, "invalid token", scope, receive, send_with_headers)
                return
            scope.setdefault("state", {})["labeler"] = labeler
        received = 0

        async def bounded_receive():
            # counted as it arrives: a chunked body has no Content-Length to check up front
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes", headers=CLOSE)
            return message

        await self.app(scope, bounded_receive, send_with_headers)


# a refusal that leaves the body unread closes the connection: the server then reads no more of it
CLOSE = {"Connection": "close"}
MISSING_TOKEN = "missing token: send Authorization: Bearer <token>"


async def _refuse(status: int, message: str, scope, receive, send) -> None:
    headers = {**CLOSE, "WWW-Authenticate": "Bearer"} if status == 401 else CLOSE
    await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)


def _add_error_handlers(app: FastAPI) -> None:
    # one shape for every error: {"error": "<one line a person can act on>"}
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": _bounded(str(exc.detail))}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(TetherError)
    async def tether_error(request: Request, exc: TetherError) -> JSONResponse:
        status = next((code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls)), 422)
        return JSONResponse({"error": _bounded(str(exc))}, status_code=status)


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for err in errors[:MAX_ERRORS_SHOWN]:
        if err.get("type") == "json_invalid":
            parts.append(f"malformed JSON: {err.get('ctx', {}).get('error', 'cannot decode')}")
            continue
        field = ".".join(str(p) for p in err.get("loc", ())[1:]) or "body"
        parts.append(f"{field}: {err.get('msg', 'invalid')}")
    more = f"; and {len(errors) - MAX_ERRORS_SHOWN} more errors" if len(errors) > MAX_ERRORS_SHOWN else ""
    return _bounded("; ".join(parts) + more)


def _bounded(message: str) -> str:
    """An error names what is wrong without echoing a large input back (a 60 KB ranking
    would otherwise come back in full, or as one error per element)."""
    if len(message) <= MAX_ERROR_CHARS:
        return message
    half = (MAX_ERROR_CHARS - 5) // 2  # both ends: the field comes first, what is wrong with it last
    return f"{message[:half]} ... {message[-half:]}"


def _same_answer(store: Store, body: AnswerIn, stored: Answer) -> bool:
    """True when ``body`` is a retry of ``stored``: the same answer once normalised as the
    store does (``rank`` of two responses is stored as a / b, a reason is stripped)."""
    task = store.task(body.task_id)
    try:
        judgement = make_judgement(body.choice, body.ranking, len(task.responses))
    except DataError:
        return False
    reason = (body.reason.strip() or None) if body.reason else None
    return (judgement.choice, judgement.ranking, reason) == (stored.choice, stored.ranking, stored.reason)


def serve(store: Store, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run until Ctrl+C. No access log: the first page load carries ``?token=`` in its URL."""
    import uvicorn

    uvicorn.run(create_app(store), host=host, port=port, log_level="warning", access_log=False)


@contextmanager
def serving(store: Store, host: str = "127.0.0.1", port: int = 8765, start_timeout_s: float = 30.0) -> Iterator[str]:
    """The page served from a background thread while the block runs, for a command that does
    other work meanwhile (``tether rlhf`` waits for a round's labels); yields its URL. The
    thread's server installs no signal handlers (uvicorn does so only in the main thread), so
    Ctrl+C still reaches the command."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(store), host=host, port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, name="tether-labeling-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:  # a port in use ends uvicorn's thread with an error line of its own
        server.should_exit = True
        raise TetherError(f"could not serve the labeling page on {host}:{port} (is the port in use? set another port)")
    try:
        yield f"http://{host}:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
