"""`sparkml-ext serve`: the Scorer behind HTTP (FastAPI on uvicorn).

POST /score takes one event, a list, or {"events": [...], "model": "torch/v2"}; GET /health
says what is served. A refused request is a 4xx whose `detail` names the field; anything the
server did not foresee is a 500 with one line, and the server goes on serving. A
`<kind>/latest` model is re-resolved every online.poll_seconds in the background and swapped
in whole; a new publish is read by the next request (the store's snapshot).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from sparkml_ext.online.errors import RequestError
from sparkml_ext.online.scorer import Scorer

_log = logging.getLogger("sparkml_ext.serve")
_BYTES_PER_EVENT = 16 << 10  # the body a request may send: max_events of these


def create_app(scorer: Scorer) -> FastAPI:
    """The HTTP app of a Scorer, following new model versions while it runs."""
    stop = threading.Event()

    def follow_models() -> None:
        while not stop.wait(scorer.cfg.online.poll_seconds):
            try:
                if scorer.refresh():
                    _log.warning("serving %s", scorer.model.stored.name)
            except Exception as err:  # noqa: BLE001 - a half-published or unreadable version: keep the one loaded
                _log.warning("model %s not refreshed: %s", scorer.reference, err)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        follower = threading.Thread(target=follow_models, name="model-follower", daemon=True)
        if scorer.reference.endswith("/latest"):
            follower.start()
        yield
        stop.set()

    app = FastAPI(title="sparkml-ext serve", lifespan=lifespan)
    limit = scorer.cfg.online.max_events * _BYTES_PER_EVENT

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        try:
            body = await _json_body(request, limit)
            return JSONResponse(await run_in_threadpool(scorer.score, body))
        except RequestError as err:
            return JSONResponse({"detail": str(err), "errors": err.errors}, status_code=err.status)
        except Exception as err:  # noqa: BLE001 - one request's failure, not the server's
            _log.exception("POST /score failed")
            return JSONResponse({"detail": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    @app.get("/health")
    def health() -> JSONResponse:
        try:
            facts = scorer.check_store()
        except Exception as err:  # noqa: BLE001 - reported, not raised
            return JSONResponse({"status": "unavailable", "detail": str(err)}, status_code=503)
        return JSONResponse({"status": "ok", "model": scorer.model.stored.name, **{
            k: facts.get(k) for k in ("feature_version", "bronze_version", "newest_event", "published_at")}})

    return app


async def _json_body(request: Request, limit: int) -> object:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {declared} bytes; at most {limit} (online.max_events × 16 KiB)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the body passes {limit} bytes (online.max_events × 16 KiB)")
    try:
        return json.loads(body)
    except ValueError as err:
        raise RequestError(400, f"the body is not JSON: {err}") from None


def serve(scorer: Scorer, host: str, port: int) -> None:
    """Serve until interrupted."""
    import uvicorn

    uvicorn.run(create_app(scorer), host=host, port=port, log_level="warning", access_log=False)
