"""HTTP service over an EmbeddingStore (FastAPI + uvicorn), started by `recsys serve`.

    GET  /health                 {"status": "ok", "version"}
    GET  /meta                   the live version's meta.json, candidates summary, limits
    POST /embeddings             {"ids": [...]} -> {"version", "dim", "vectors", "found"}
    POST /neighbors              {"id": ..} or {"vector": [..]}, "k", "exclude" -> ids, scores,
                                 found, short (why fewer than k, or null)
    GET  /candidates/{user_id}   exported top-K candidates of a user (when a dir is given)

Every answer comes from one store version. Request bodies are JSON sent as
`Content-Type: application/json` (another type is a 415 saying so). Errors are JSON,
`{"error": code, "message", ...}`: a request over a limit gets a 4xx naming it
(`"limit": "max_ids"`, `"max": 1000`), a bug gets a 500 without a stack trace. `serve`
refreshes the store on a timer and on SIGHUP, and the candidates too when their
`_manifest.json` changed.
"""

import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from serving.candidates import CandidateLookup
from serving.lookup import EmbeddingStore, UnknownIdError
from serving.store import StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Request limits; a request over one gets a 4xx that names it."""

    max_ids: int = 1000  # ids in one /embeddings call, and ids in `exclude`
    max_k: int = 1000  # neighbours or candidates in one answer
    max_dim: int = 4096  # values in a query vector
    max_body_bytes: int = 1 << 20  # request body


class JSONBody(Response):
    """Compact JSON; NaN/inf can't occur (the store and queries are checked finite)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


def _error(status: int, code: str, message: str, **extra: Any) -> JSONBody:
    return JSONBody({"error": code, "message": message, **extra}, status_code=status)


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. limit_exceeded, unknown_id")
    message: str
    limit: str | None = Field(None, description="the limit exceeded, e.g. max_ids")
    max: int | None = None
    ids: list[str] | None = Field(None, description="unknown ids")


class EmbeddingsBody(BaseModel):
    version: str
    dim: int
    vectors: list[list[float]] = Field(description="(n, dim), zeros where not found")
    found: list[bool]


class NeighborsBody(BaseModel):
    version: str
    ids: list[str] = Field(description="best first")
    scores: list[float]
    found: int = Field(description="len(ids); fewer than k when `short` says why")
    short: str | None = Field(description='null when k came back; "index": the faiss index '
                              'found fewer (an IVF index scans only `nprobe` lists, which may '
                              'hold fewer vectors); "excluded": the exclusions (and the query '
                              'id) left fewer in the store')


class Candidate(BaseModel):
    rank: int
    item_id: str
    score: float
    stage: str


class CandidatesBody(BaseModel):
    user_id: str
    run_id: str | None
    candidates: list[Candidate]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (404, 413, 415, 422, 503)}


def create_app(store: EmbeddingStore, candidates: CandidateLookup | None = None,
               limits: Limits = Limits()) -> FastAPI:
    """The FastAPI app; limits shape the request schemas, so they are fixed per app.

    (No `from __future__ import annotations` in this module: FastAPI must resolve the request
    classes defined in here from their annotations.)"""
    finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]

    class EmbeddingsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ids: list[str] = Field(max_length=limits.max_ids,
                               description=f"at most {limits.max_ids}; repeats allowed")

    class NeighborsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: str | None = Field(None, description="query by a stored id (left out of the answer)")
        vector: list[finite] | None = Field(None, min_length=1, max_length=limits.max_dim,
                                            description="or query by a (dim,) vector")
        k: int = Field(10, ge=1, le=limits.max_k)
        exclude: list[str] = Field(default_factory=list, max_length=limits.max_ids,
                                   description="ids to leave out of the answer")

        @model_validator(mode="after")
        def one_query(self):
            if (self.id is None) == (self.vector is None):
                raise ValueError('give exactly one of "id" and "vector"')
            return self

    app = FastAPI(title="recsys serving", version="1", summary=__doc__.splitlines()[0])
    _add_error_handlers(app, limits)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return JSONBody({"status": "ok", "version": store.version})

    @app.get("/meta")
    async def meta() -> dict[str, Any]:
        return JSONBody({**store.meta, "metric": store.metric, "limits": asdict(limits),
                         "candidates": candidates.meta if candidates is not None else None})

    @app.post("/embeddings", response_model=EmbeddingsBody, responses=ERRORS)
    async def embeddings(request: EmbeddingsRequest):
        snap = store.snapshot()
        vectors, found = snap.get(request.ids, unknown="zeros")  # (n, dim), (n,)
        return JSONBody({"version": snap.version, "dim": vectors.shape[1],
                         "vectors": vectors.tolist(), "found": found.tolist()})

    @app.post("/neighbors", response_model=NeighborsBody, responses=ERRORS)
    def neighbors(request: NeighborsRequest):  # sync: a search can take ms, so a worker thread
        snap = store.snapshot()
        query = request.id if request.id is not None else np.asarray(request.vector)
        hits = snap.nearest(query, request.k, exclude=request.exclude, metric=store.metric)
        return JSONBody({"version": hits.version, "ids": hits.ids,
                         "scores": hits.scores.tolist(), "found": len(hits.ids),
                         "short": hits.short})

    @app.get("/candidates/{user_id}", response_model=CandidatesBody, responses=ERRORS)
    def candidates_of(user_id: str, k: Annotated[int | None, Query(ge=1, le=limits.max_k)] = None):
        if candidates is None:
            return _error(404, "not_configured", "no candidates dir: start with --candidates DIR")
        rows = candidates.get(user_id, k)
        return JSONBody({"user_id": user_id, "run_id": candidates.meta["run_id"],
                         "candidates": rows})

    return app


# pydantic error types that mean "over a limit", by the field they hit
_LIMITED = {("ids", "too_long"): "max_ids", ("exclude", "too_long"): "max_ids",
            ("vector", "too_long"): "max_dim", ("k", "less_than_equal"): "max_k"}


def _add_error_handlers(app: FastAPI, limits: Limits) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in err.errors()]
        media = _non_json_media_type(request)
        if media and any(e["loc"][:1] == ["body"] for e in detail):  # FastAPI did not parse it
            return _error(415, "unsupported_media_type", "send the body as JSON with "
                          f"Content-Type: application/json, not {media} (curl -d sends "
                          "application/x-www-form-urlencoded: add -H 'Content-Type: "
                          "application/json')", detail=detail)
        for e in detail:  # name the limit when one was hit
            limit = _LIMITED.get((e["loc"][-1] if e["loc"] else "", e["type"]))
            if limit:
                return _error(422, "limit_exceeded", f"{limit} is {getattr(limits, limit)}: "
                              f"{e['msg']}", limit=limit, max=getattr(limits, limit),
                              detail=detail)
        message = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in detail[:5])
        return _error(422, "invalid_request", message, detail=detail)

    @app.exception_handler(UnknownIdError)
    async def unknown(request: Request, err: UnknownIdError):
        return _error(404, "unknown_id", str(err), ids=[str(i) for i in err.ids[:100]])

    @app.exception_handler(StoreError)
    async def store_error(request: Request, err: StoreError):
        return _error(503, "store_unavailable", str(err))

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, err: ValueError):
        return _error(422, "invalid_request", str(err))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        response = _error(err.status_code, code, str(err.detail))
        response.headers.update(err.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception):  # the server logs the traceback
        return _error(500, "internal_error", "internal server error (logged on the server)")


def _non_json_media_type(request: Request) -> str | None:
    """The request's media type if it names one FastAPI does not parse as JSON, else None.
    (A body without a Content-Type is parsed as JSON; so is application/json or */*+json.)"""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not media or media == "application/json" or media.endswith("+json"):
        return None
    return media


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets a JSON 413 naming the limit,
    whether it says its Content-Length or streams chunks. Bodies are small, so it buffers."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client gone
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        response = _error(413, "limit_exceeded", f"request body over max_body_bytes "
                          f"({self.max_bytes} bytes)", limit="max_body_bytes", max=self.max_bytes)
        response.headers["connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)


class Refresher(threading.Thread):
    """Calls store.refresh() (and candidates.refresh(), when given) every `every` seconds
    (None: never) and on `trigger()` (SIGHUP). Each is refreshed on its own: a failed refresh
    is logged and the old version of that one keeps serving. A failure that repeats with the
    same message is logged once, not on every tick."""

    def __init__(self, store: EmbeddingStore, every: float | None,
                 candidates: CandidateLookup | None = None):
        super().__init__(name="store-refresh", daemon=True)
        self.store, self.every, self.candidates = store, every, candidates
        self._wake, self._stopped = threading.Event(), False
        self._failing: dict[int, str] = {}  # id(store or candidates) -> last failure logged

    def trigger(self) -> None:  # safe in a signal handler: only sets an event
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def run(self) -> None:
        while True:
            self._wake.wait(self.every)
            if self._stopped:
                return
            self._wake.clear()
            self._refresh(self.store, lambda: f"version {self.store.version}")
            if self.candidates is not None:
                self._refresh(self.candidates, lambda: "candidates {path} of run {run_id}"
                              .format(**self.candidates.meta))

    def _refresh(self, what: EmbeddingStore | CandidateLookup,
                 serving: Callable[[], str]) -> None:
        try:
            if what.refresh():
                log.info("refreshed: now serving %s", serving())
            self._failing.pop(id(what), None)
        except StoreError as err:
            if self._failing.get(id(what)) != str(err):
                log.warning("refresh failed, still serving %s: %s", serving(), err)
            self._failing[id(what)] = str(err)
        except Exception:
            log.exception("refresh crashed, still serving %s", serving())


def serve(store_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          candidates_dir: str | Path | None = None, refresh_seconds: float | None = None,
          limits: Limits = Limits(), metric: str = "ip", access_log: bool = True,
          sockets: list | None = None) -> None:
    """Open the store (and candidates), then serve HTTP until SIGINT/SIGTERM."""
    import uvicorn

    # one OpenMP thread per faiss search: requests run side by side, and a single query split
    # across cores only spins against them (read when faiss loads, so before the store opens)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if refresh_seconds is not None and refresh_seconds <= 0:
        raise ValueError(f"refresh_seconds must be > 0, got {refresh_seconds}")
    store = EmbeddingStore(store_dir, unknown="zeros", metric=metric)
    candidates = CandidateLookup(candidates_dir) if candidates_dir else None
    app = create_app(store, candidates, limits)
    refresher = Refresher(store, refresh_seconds, candidates)
    refresher.start()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGHUP, lambda *_: refresher.trigger()) if in_main else None
    log.info("serving store %s version %s (%d x %d) on http://%s:%d", store.path, store.version,
             len(store), store.meta["dim"], host, port)
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, lifespan="off",
                            server_header=False, log_config=None)
    try:
        uvicorn.Server(config).run(sockets=sockets)
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the Ctrl-C
        log.info("stopped")
    finally:
        refresher.stop()
        if in_main:
            signal.signal(signal.SIGHUP, previous)
