"""Buffer the request, answer when processed: a small web app in front of a worker.

``POST /summarize`` with ``{"text": "..."}`` enqueues a job and answers with the worker's
result once it is ready (``await queue.result(job_id, timeout=...)``, which waits without
polling); a request the workers cannot finish in time gets ``202`` and a ``Location`` to ask
again (``GET /jobs/<id>?wait=5``). A job that fails for good answers ``422`` with its error.
The queue absorbs bursts: the web app accepts requests as fast as it can enqueue them, and
the workers take them at their own pace.

Needs the ``web`` extra (``pip install 'unifiedq[web]'``; starlette + uvicorn)::

    python examples/results_web.py                               # memory://, worker inside
    python examples/results_web.py 'redis://localhost:6379/0?queue=summaries' --port 8000
    python examples/results_web.py 'redis://...' --no-worker     # workers run elsewhere:
    unifiedq worker examples.results_web:handle --url 'redis://...' -c 8   # (blocking handler)

    curl -s localhost:8000/summarize -d '{"text": "one two three"}'
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from unifiedq import AsyncWorker, Job, JobFailed, ResultTimeout, connect_async

#: Seconds a request waits for its result before answering 202.
WAIT = 10.0


def handle(job: Job) -> bytes:
    """The worker's handler: the bytes it returns are the job's result.

    (Return any object instead and give the Worker ``result_codec=JsonCodec()``.)
    """
    text = json.loads(job.body)["text"]
    if not text.strip():
        raise ValueError("empty text")
    words = text.split()
    return json.dumps({"words": len(words), "longest": max(words, key=len),
                       "upper": text.upper()}).encode()


async def handle_async(job: Job) -> bytes:
    """The same handler for the in-process AsyncWorker (a coroutine runs on the loop)."""
    return handle(job)


def make_app(url: str, *, worker: bool = True, concurrency: int = 8) -> Starlette:
    """The ASGI app over queue ``url``; with ``worker``, an AsyncWorker runs in-process."""
    queue = connect_async(url)

    async def summarize(request: Request) -> Response:
        try:
            payload = json.loads(await request.body())
            if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
                raise ValueError
        except ValueError:
            return JSONResponse({"error": 'send {"text": "..."}'}, status_code=400)
        job_id = await queue.enqueue(json.dumps(payload).encode())
        return await _answer(job_id, WAIT)

    async def job(request: Request) -> Response:
        wait = min(float(request.query_params.get("wait", "0")), WAIT)
        return await _answer(request.path_params["job_id"], wait)

    async def _answer(job_id: str, wait: float) -> Response:
        try:
            result = await queue.result(job_id, timeout=wait)
        except ResultTimeout:
            return JSONResponse({"id": job_id, "status": "pending"}, status_code=202,
                                headers={"Location": f"/jobs/{job_id}?wait={WAIT:g}"})
        except JobFailed as exc:
            return JSONResponse({"id": job_id, "error": exc.error}, status_code=422)
        return Response(result, media_type="application/json", headers={"X-Job-Id": job_id})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        w = None
        if worker:
            w = AsyncWorker(queue, handle_async, concurrency=concurrency, max_attempts=1)
            w.start()
        try:
            yield
        finally:
            if w is not None:
                await w.stop()
            await queue.aclose()

    return Starlette(routes=[Route("/summarize", summarize, methods=["POST"]),
                             Route("/jobs/{job_id}", job)], lifespan=lifespan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", nargs="?", default="memory://summaries")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--no-worker", action="store_true", help="workers run in other processes")
    args = ap.parse_args()
    app = make_app(args.url, worker=not args.no_worker, concurrency=args.concurrency)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
