"""`sparkml-ext serve`: the Scorer behind HTTP (FastAPI on uvicorn).

POST /score takes one event, a list, or {"events": [...], "model": "torch/v2"}; GET /health
says what is served. A refused request is a 4xx whose `detail` names the field; anything the
server did not foresee is a 500 with one line, and the server goes on serving. A
`<kind>/latest` model is re-resolved every online.poll_seconds in the background and swapped
in whole; a new publish is read by the next request (the store's snapshot).

Requests that arrive while one scoring call runs wait and are then scored together in the
next (`Batcher`, what Ray Serve's @serve.batch and Triton's dynamic batching do): the work
is Python and numpy under one GIL, so concurrent calls only fight for it, while one call
for several requests shares the store read, the feature computation and the model call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sparkml_ext.online.errors import RequestError
from sparkml_ext.online.scorer import Scorer

_log = logging.getLogger("sparkml_ext.serve")
_BYTES_PER_EVENT = 16 << 10  # the body a request may send: max_events of these


class Batcher:
    """Scores queued request bodies in one `Scorer.score_many` call at a time, on a worker
    thread, taking whole requests up to max_events events per call (at least one)."""

    def __init__(self, scorer: Scorer):
        self.scorer, self.limit = scorer, scorer.cfg.online.max_events
        self.queue: list[tuple[object, int, asyncio.Future]] = []
        self.arrived = asyncio.Event()

    async def score(self, body: object) -> dict:
        answer = asyncio.get_running_loop().create_future()
        self.queue.append((body, _events_in(body), answer))
        self.arrived.set()
        result = await answer
        if isinstance(result, BaseException):
            raise result
        return result

    async def run(self) -> None:
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            while self.queue:
                taken, events = 0, 0
                while taken < len(self.queue) and (taken == 0 or events + self.queue[taken][1] <= self.limit):
                    events += self.queue[taken][1]
                    taken += 1
                batch, self.queue = self.queue[:taken], self.queue[taken:]
                try:
                    answers = await anyio.to_thread.run_sync(self.scorer.score_many, [b for b, _, _ in batch])
                except Exception as err:  # noqa: BLE001 - every request of the call gets it
                    answers = [err] * len(batch)
                for (_, _, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)


def _events_in(body: object) -> int:
    """How many events a body carries, before validation (to size a scoring call)."""
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        return len(body["events"])
    return len(body) if isinstance(body, list) else 1


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

    batcher: Batcher | None = None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal batcher
        follower = threading.Thread(target=follow_models, name="model-follower", daemon=True)
        if scorer.reference.endswith("/latest"):
            follower.start()
        batcher = Batcher(scorer)
        worker = asyncio.create_task(batcher.run())
        yield
        stop.set()
        worker.cancel()

    app = FastAPI(title="sparkml-ext serve", lifespan=lifespan)
    limit = scorer.cfg.online.max_events * _BYTES_PER_EVENT

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        try:
            body = await _json_body(request, limit)
            return JSONResponse(await batcher.score(body))
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
    """Serve until interrupted, torch on one thread (one scoring call at a time, batches of a
    few requests: a second thread only adds handoffs on a 2-core host)."""
    import torch
    import uvicorn

    torch.set_num_threads(1)
    uvicorn.run(create_app(scorer), host=host, port=port, log_level="warning", access_log=False)
