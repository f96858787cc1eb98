"""The dashboard's ASGI app: a sampler per queue, a JSON API under ``/api``, a static page."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hmac
import ipaddress
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ._sources import FairSource, Sample, Source

__all__ = ["Dashboard", "Settings", "is_loopback"]

log = logging.getLogger("unifiedq.dashboard")

#: The header the page sends with every action, after the user confirmed it. A cross-site
#: form or script cannot send a custom header without a CORS preflight, which this app never
#: answers: the header is what stops another site from posting actions through a browser.
ACTION_HEADER = "x-unifiedq-confirm"

_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}

_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def is_loopback(host: str) -> bool:
    """True when ``host`` (a bind address or Host header name) is a loopback address."""
    h = host.strip("[]").lower()
    if h in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass
class Settings:
    """How the dashboard behaves.

    Attributes:
        allow_actions: Serve the dead-letter retry and delete actions (default: read-only).
        token: When set, every ``/api`` request needs ``Authorization: Bearer <token>``.
        loopback_only: Answer only requests whose Host header is a loopback name or address
            (guards a loopback-bound server against DNS rebinding). Set when bound to loopback.
        interval: Seconds between two readings of a queue.
        history: Readings kept per queue (the chart's width: ``history * interval`` seconds).
        dead_limit: Dead jobs listed per queue (newest first).
        share_window: Readings over which tenants' observed shares are computed.
        rate_window: Seconds over which the rates shown as figures are averaged (the chart
            plots each interval's own rate).
    """

    allow_actions: bool = False
    token: str | None = None
    loopback_only: bool = True
    interval: float = 2.0
    history: int = 300
    dead_limit: int = 50
    share_window: int = 30
    rate_window: float = 10.0


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _stock(s: Sample) -> float | None:
    """Jobs anywhere in the queue but the completed set (None when a count is unknown)."""
    vals = [_num(s.fields.get(k)) for k in ("pending", "active", "scheduled", "retry", "dead")]
    return None if any(v is None for v in vals) else sum(v for v in vals if v is not None)


def _rates(a: Sample, b: Sample) -> dict[str, float | None]:
    """Per-second rates between two readings.

    ``settle``: attempts finished (acked or failed), from the backend's counter.
    ``enqueue``: by conservation, jobs added = growth of the stock + jobs acked; exact while
    nothing is purged or deleted (those make it read low; it is never negative).
    ``net``: the growth of the depth (every driver).
    """
    dt = b.t - a.t
    out: dict[str, float | None] = {"enqueue": None, "settle": None, "net": None}
    if dt <= 0 or a.error or b.error:
        return out
    da, db = _num(a.fields.get("depth")), _num(b.fields.get("depth"))
    if da is not None and db is not None:
        out["net"] = (db - da) / dt
    ca, cb = a.counters, b.counters
    if ca and cb and cb["processed"] >= ca["processed"] and cb["failed"] >= ca["failed"]:
        out["settle"] = (cb["processed"] - ca["processed"]) / dt
        sa, sb = _stock(a), _stock(b)
        if sa is not None and sb is not None:
            acked = (cb["processed"] - cb["failed"]) - (ca["processed"] - ca["failed"])
            out["enqueue"] = max(0.0, (sb - sa + acked) / dt)
    return out


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class Dashboard:
    """The sampler and the app over a list of :class:`Source`.

    Args:
        sources: The watched queues, in display order.
        settings: Behaviour (see :class:`Settings`).
    """

    def __init__(self, sources: Sequence[Source], settings: Settings | None = None) -> None:
        self.sources = list(sources)
        self.settings = settings or Settings()
        self.history: list[collections.deque[Sample]] = [
            collections.deque(maxlen=max(2, self.settings.history)) for _ in self.sources]
        self.started = time.time()

    # -- sampling ---------------------------------------------------------------------------
    async def sample(self, i: int) -> Sample:
        """Read queue ``i`` now (in a worker thread) and keep the reading."""
        s = await anyio.to_thread.run_sync(self.sources[i].sample)
        self.history[i].append(s)
        return s

    async def _loop(self, i: int) -> None:
        # One loop per queue: a slow or frozen backend delays only its own readings.
        while True:
            start = time.monotonic()
            await self.sample(i)
            await anyio.sleep(max(0.05, self.settings.interval - (time.monotonic() - start)))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Run the samplers while the app serves; close every handle after."""
        async with anyio.create_task_group() as tg:
            for i in range(len(self.sources)):
                tg.start_soon(self._loop, i)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        for s in self.sources:
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(s.close)

    # -- views ------------------------------------------------------------------------------
    def _tenants(self, i: int, last: Sample) -> list[dict[str, Any]] | None:
        src = self.sources[i]
        if not isinstance(src, FairSource) or last.tenants is None:
            return None
        hist = list(self.history[i])
        first = next((h for h in hist[-self.settings.share_window:]
                      if h.tenants is not None and not h.error), last)
        settled: dict[str, float | None] = {}
        for t, s in last.tenants.items():
            old = (first.tenants or {}).get(t)
            # Attempts settled within the window; unknown for a tenant first seen inside it.
            if s.counters is None or first is last or old is None or old.counters is None:
                settled[t] = None
            else:
                settled[t] = max(0, s.counters["processed"] - old.counters["processed"])
        backlogged = {t for t, s in last.tenants.items()
                      if (_num(s.fields.get("depth")) or 0) > 0}
        wsum = sum(src.weight(t) for t in backlogged)
        known = [v for v in settled.values() if v is not None]
        total = sum(known) if len(known) == len(settled) else None
        rows = []
        for t, s in last.tenants.items():
            got = settled[t]
            rows.append({
                "tenant": t, "weight": src.weight(t),
                "depth": s.fields.get("depth"), "active": s.fields.get("active"),
                "oldest_age": _clean(s.fields.get("oldest_age")),
                "backlogged": t in backlogged,
                "expected_share": (src.weight(t) / wsum) if t in backlogged and wsum else None,
                "settled": got,
                "observed_share": (got / total) if got is not None and total else None,
            })
        return rows

    def _window_rates(self, hist: list[Sample]) -> dict[str, Any]:
        """Rates between the last reading and the oldest one within ``rate_window`` seconds."""
        ok = [h for h in hist if not h.error]
        if len(ok) < 2 or hist[-1].error:
            return {"enqueue": None, "settle": None, "net": None, "seconds": None}
        last = ok[-1]
        first = next((h for h in ok[:-1] if last.t - h.t <= self.settings.rate_window), ok[-2])
        return {**{k: _clean(v) for k, v in _rates(first, last).items()},
                "seconds": last.t - first.t}

    def queue_view(self, i: int) -> dict[str, Any]:
        """Everything the page shows about queue ``i`` (JSON-ready)."""
        src, hist = self.sources[i], list(self.history[i])
        last = hist[-1] if hist else None
        series = []
        for a, b in itertools.pairwise(hist):
            r = _rates(a, b)
            series.append({"t": b.t, "depth": None if b.error else b.fields.get("depth"),
                           **{k: _clean(v) for k, v in r.items()}})
        return {
            "id": i, "label": src.label, "driver": src.driver, "kind": src.kind,
            "sampled_at": last.t if last else None,
            "error": last.error if last else None,
            "fields": {k: _clean(v) for k, v in last.fields.items()} if last else {},
            "counters": last.counters if last else None,
            "rates": self._window_rates(hist),
            "series": series,
            "tenants": self._tenants(i, last) if last and not last.error else None,
        }

    # -- HTTP -------------------------------------------------------------------------------
    def _source(self, request: Request) -> int:
        try:
            i = int(request.path_params["qid"])
        except ValueError:
            i = -1
        if not 0 <= i < len(self.sources):
            raise _HTTPError(404, "no such queue")
        return i

    async def api_config(self, request: Request) -> Response:
        """``GET /api/config``: what the page may do."""
        st = self.settings
        return JSONResponse({"actions": st.allow_actions, "interval": st.interval,
                             "token": st.token is not None, "dead_limit": st.dead_limit,
                             "queues": len(self.sources)})

    async def api_queues(self, request: Request) -> Response:
        """``GET /api/queues``: every queue's latest reading, rates and chart series."""
        return JSONResponse({"now": time.time(), "actions": self.settings.allow_actions,
                             "queues": [self.queue_view(i) for i in range(len(self.sources))]})

    async def api_queue(self, request: Request) -> Response:
        """``GET /api/queues/{qid}``: one queue."""
        return JSONResponse(self.queue_view(self._source(request)))

    async def api_dead(self, request: Request) -> Response:
        """``GET /api/queues/{qid}/dead``: the newest dead jobs, or ``supported: false``."""
        i = self._source(request)
        src = self.sources[i]
        try:
            jobs = await anyio.to_thread.run_sync(src.dead_letters, self.settings.dead_limit)
        except Exception as exc:
            return JSONResponse({"supported": None, "jobs": [], "error": _err(src, exc)},
                                status_code=502)
        if jobs is None:
            return JSONResponse({"supported": False, "jobs": []})
        return JSONResponse({"supported": True,
                             "jobs": [dataclasses.asdict(j) for j in jobs]})

    async def _act(self, request: Request, what: str) -> Response:
        if not self.settings.allow_actions:
            raise _HTTPError(403, "actions are disabled (start with --allow-actions)")
        if request.headers.get(ACTION_HEADER) != "yes":
            raise _HTTPError(403, f"an action needs the {ACTION_HEADER}: yes header")
        i = self._source(request)
        src, jid = self.sources[i], request.path_params["jid"]
        fn = src.retry_dead if what == "retry" else src.delete_dead
        try:
            done = await anyio.to_thread.run_sync(fn, jid)
        except NotImplementedError as exc:
            raise _HTTPError(405, str(exc)) from None
        except Exception as exc:
            return JSONResponse({"ok": False, "error": _err(src, exc)}, status_code=502)
        log.info("dashboard: %s dead job %r of %s: %s", what, jid, src.label,
                 "done" if done else "not dead")
        if not done:
            raise _HTTPError(404, f"job {jid!r} is not dead (any more)")
        # A fresh reading, so the page shows the effect at its next poll.
        await self.sample(i)
        return JSONResponse({"ok": True, "action": what, "id": jid})

    async def api_retry(self, request: Request) -> Response:
        """``POST /api/queues/{qid}/dead/{jid}/retry``: a dead job back to ready."""
        return await self._act(request, "retry")

    async def api_delete(self, request: Request) -> Response:
        """``POST /api/queues/{qid}/dead/{jid}/delete``: a dead job deleted for good."""
        return await self._act(request, "delete")

    async def page(self, request: Request) -> Response:
        """``GET /`` and ``GET /static/<file>``: the page (no data in it)."""
        name = request.path_params.get("name", "index.html")
        types = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
        ext = name[name.rfind("."):] if "." in name else ""
        if ext not in types or "/" in name or name.startswith("."):
            raise _HTTPError(404, "not found")
        try:
            body = resources.files("unifiedq.dashboard").joinpath("static", name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise _HTTPError(404, "not found") from None
        return Response(body, media_type=types[ext], headers={"cache-control": "no-cache"})

    def app(self) -> ASGIApp:
        """The ASGI app (samplers run in its lifespan)."""
        routes = [
            Route("/", self.page),
            Route("/static/{name}", self.page),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
            Route("/api/config", self.api_config),
            Route("/api/queues", self.api_queues),
            Route("/api/queues/{qid}", self.api_queue),
            Route("/api/queues/{qid}/dead", self.api_dead),
            Route("/api/queues/{qid}/dead/{jid:path}/retry", self.api_retry, methods=["POST"]),
            Route("/api/queues/{qid}/dead/{jid:path}/delete", self.api_delete, methods=["POST"]),
        ]
        inner = Starlette(routes=routes, lifespan=self.lifespan,
                          exception_handlers={_HTTPError: _http_error})
        return _Guard(inner, self.settings)


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _HTTPError)
    return JSONResponse({"error": exc.detail}, status_code=exc.status)


def _err(src: Source, exc: BaseException) -> str:
    from ._sources import _scrub

    return _scrub(f"{type(exc).__name__}: {exc}", src.url)


class _Guard:
    """Host check, token check and security headers around the app (plain ASGI)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        st = self.settings
        if st.loopback_only:
            host = headers.get("host", "")
            name = host.rsplit("]", 1)[0] + "]" if host.startswith("[") else host.split(":")[0]
            if not is_loopback(name):
                await _plain(send, 421, "this dashboard answers loopback Host names only")
                return
        if st.token is not None and scope["path"].startswith("/api/"):
            got = headers.get("authorization", "")
            want = f"Bearer {st.token}"
            if not hmac.compare_digest(got.encode(), want.encode()):
                await _plain(send, 401, "a token is needed: Authorization: Bearer <token>")
                return

        async def secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"content-security-policy", _CSP.encode()),
                         (b"x-content-type-options", b"nosniff"),
                         (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY")]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, secured)


async def _plain(send: Callable[[Any], Awaitable[None]], status: int, text: str) -> None:
    body = json.dumps({"error": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
