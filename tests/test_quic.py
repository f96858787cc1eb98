"""quic:// and `unifiedq serve`: conformance through a real server process, security, robustness,
lease release on disconnect, graceful shutdown."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import unifiedq
from unifiedq import (
    AuthenticationError,
    BackendConnectionError,
    ConfigurationError,
    InvalidArgument,
    InvalidURL,
    JobNotLeased,
    UnsupportedOperation,
)
from unifiedq.testing.quic import Pki, ServerProcess
from unifiedq.testing.suite import QueueConformance

pytest.importorskip("aioquic")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("quic-pki"))


def _server(pki: Pki, backend: str, *extra: str, name: str = "server") -> Iterator[ServerProcess]:
    log = pki.root / f"{name}-{uuid.uuid4().hex[:6]}.log"
    srv = ServerProcess(pki, backend, list(extra), log=log)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


LEASE_ARGS = ("--allow-client-option", "visibility_timeout", "--allow-client-option", "heartbeat")


@pytest.fixture(scope="session")
def memory_server(pki: Pki) -> Iterator[ServerProcess]:
    yield from _server(pki, "memory://", *LEASE_ARGS, name="memory")


@pytest.fixture(scope="session")
def redis_quic_server(pki: Pki, redis_url: str) -> Iterator[ServerProcess]:
    yield from _server(pki, redis_url, *LEASE_ARGS, name="redis")


# -- conformance ----------------------------------------------------------------------------------
class TestQuicMemory(QueueConformance):
    """memory:// behind the server, with the full set of the memory driver's flags."""

    LEASE_OPTIONS = {"backend_options": "visibility_timeout=1"}
    LEASE_SECONDS = 1.0
    DELAY_SLACK = 0.5
    CONCURRENT_JOBS = 1000

    @pytest.fixture
    def url_template(self, memory_server: ServerProcess) -> str:
        return memory_server.url("{name}", capabilities="memory")

    @pytest.fixture
    def restart_backend(self, memory_server: ServerProcess) -> Callable[[], None]:
        return memory_server.restart  # the jobs die with the server: not DURABLE


class TestQuicMemoryCore(TestQuicMemory):
    """The default capabilities=core over the same server: every lacks() test must hold."""

    CONCURRENT_JOBS = 400

    @pytest.fixture
    def url_template(self, memory_server: ServerProcess) -> str:
        return memory_server.url("{name}")

    @pytest.fixture
    def restart_backend(self) -> None:
        return None  # TestQuicMemory covers it; each run waits 10 s for nothing


class TestQuicRedis(QueueConformance):
    """redis:// (asynq) behind the server."""

    LEASE_OPTIONS = {"backend_options": "visibility_timeout=1&heartbeat=false"}
    LEASE_SECONDS = 1.0
    DELAY_SLACK = 0.5
    CONCURRENT_JOBS = 1000

    @pytest.fixture
    def url_template(self, redis_quic_server: ServerProcess) -> str:
        return redis_quic_server.url("{name}", capabilities="redis")

    @pytest.fixture
    def restart_backend(self, redis_quic_server: ServerProcess) -> Callable[[], None]:
        return redis_quic_server.restart  # Redis keeps the jobs: DURABLE


# -- a bare QUIC client, to speak to the server without the driver --------------------------------
from aioquic import tls as _tls  # noqa: E402
from aioquic.asyncio.client import connect as _quic_connect  # noqa: E402
from aioquic.asyncio.protocol import QuicConnectionProtocol  # noqa: E402
from aioquic.quic import events as _ev  # noqa: E402
from aioquic.quic.configuration import QuicConfiguration  # noqa: E402

from unifiedq.drivers.quic._common import ALPN  # noqa: E402
from unifiedq.drivers.quic.wire import (  # noqa: E402
    KIND_ERROR,
    KIND_OK,
    KIND_REQUEST,
    decode_frame,
    encode_frame,
)


class _RawProto(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffers: dict[int, bytearray] = {}
        self.waiters: dict[int, asyncio.Future[tuple[str, bytes]]] = {}
        self.terminated: _ev.ConnectionTerminated | None = None

    def quic_event_received(self, event: _ev.QuicEvent) -> None:
        if isinstance(event, _ev.StreamDataReceived):
            self.buffers.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream:
                self._resolve(event.stream_id, ("data", bytes(self.buffers.pop(event.stream_id))))
        elif isinstance(event, _ev.StreamReset):
            self._resolve(event.stream_id, ("reset", b""))
        elif isinstance(event, _ev.ConnectionTerminated):
            self.terminated = event
            for sid in list(self.waiters):
                self._resolve(sid, ("closed", b""))

    def _resolve(self, sid: int, value: tuple[str, bytes]) -> None:
        fut = self.waiters.pop(sid, None)
        if fut is not None and not fut.done():
            fut.set_result(value)


class RawClient:
    """Sends arbitrary bytes, one stream each, and returns what came back."""

    def __init__(self, port: int, pki: Pki, *, cert: str | None = "", key: str | None = "",
                 tls12_only: bool = False) -> None:
        self.port, self.pki = port, pki
        self.cert = pki.client_cert if cert == "" else cert
        self.key = pki.client_key if key == "" else key
        self.tls12_only = tls12_only
        self._cm: Any = None
        self.proto: _RawProto | None = None

    async def __aenter__(self) -> RawClient:
        cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="127.0.0.1",
                                max_data=1 << 26, max_stream_data=1 << 25)
        cfg.load_verify_locations(cafile=self.pki.ca)
        if self.cert:
            cfg.load_cert_chain(self.cert, self.key)
        tls12 = self.tls12_only

        def make(quic: Any, **kw: Any) -> _RawProto:
            if tls12:
                original = quic._initialize

                def init(cid: bytes) -> None:
                    original(cid)
                    quic.tls._supported_versions = [_tls.TLS_VERSION_1_2]

                quic._initialize = init
            return _RawProto(quic, **kw)

        self._cm = _quic_connect("127.0.0.1", self.port, configuration=cfg,
                                 create_protocol=make)
        self.proto = await asyncio.wait_for(self._cm.__aenter__(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.wait_for(self._cm.__aexit__(None, None, None), 10)

    async def send(self, data: bytes, *, end: bool = True,
                   timeout: float = 10) -> tuple[str, bytes]:
        proto = self.proto
        assert proto is not None
        sid = proto._quic.get_next_available_stream_id()
        fut = proto._loop.create_future()
        proto.waiters[sid] = fut
        proto._quic.send_stream_data(sid, data, end_stream=end)
        proto.transmit()
        return await asyncio.wait_for(fut, timeout)

    async def call(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        what, data = await self.send(encode_frame(KIND_REQUEST, payload))
        assert what == "data", what
        return decode_frame(data)

    async def hello(self, token: str | None = None) -> None:
        kind, resp = await self.call({"op": "hello", "version": 1, "token": token})
        assert kind == KIND_OK, resp


def _log_is_clean(srv: ServerProcess) -> None:
    log = srv.read_log()
    assert "Traceback" not in log, log[-4000:]
    assert srv.alive


# -- security --------------------------------------------------------------------------------------
def _expect_refused(srv: ServerProcess, url: str, **good_params: str) -> None:
    name = url.split("/")[3].split("?")[0]
    with unifiedq.connect(url, connect_timeout=10) as bad, pytest.raises(AuthenticationError):
        bad.enqueue(b"must not land")
    with unifiedq.connect(srv.url(name, **good_params)) as good:
        assert good.size() == 0  # nothing ran for the refused client
        good.purge()


class TestSecurity:
    def test_no_client_certificate(self, memory_server: ServerProcess, pki: Pki) -> None:
        url = f"quic://127.0.0.1:{memory_server.port}/sec-nocert?ca={pki.ca}"
        _expect_refused(memory_server, url)

    def test_certificate_from_another_ca(self, memory_server: ServerProcess, pki: Pki) -> None:
        _expect_refused(memory_server, memory_server.url(
            "sec-otherca", cert=pki.other_cert, key=pki.other_key))

    def test_expired_certificate(self, memory_server: ServerProcess, pki: Pki) -> None:
        _expect_refused(memory_server, memory_server.url(
            "sec-expired", cert=pki.expired_cert, key=pki.expired_key))

    def test_certificate_not_for_clients(self, memory_server: ServerProcess, pki: Pki) -> None:
        _expect_refused(memory_server, memory_server.url(
            "sec-eku", cert=pki.server_only_cert, key=pki.server_only_key))

    def test_client_verifies_the_server(self, memory_server: ServerProcess, pki: Pki) -> None:
        # Trusting another CA than the one that signed the server: the client refuses.
        url = memory_server.url("sec-srv").replace(f"ca={pki.ca}", f"ca={pki.other_cert}")
        _expect_refused(memory_server, url)

    def test_tls_1_2_is_refused(self, memory_server: ServerProcess, pki: Pki) -> None:
        async def main() -> None:
            client = RawClient(memory_server.port, pki, tls12_only=True)
            with pytest.raises(ConnectionError):
                await client.__aenter__()

        asyncio.run(main())
        _log_is_clean(memory_server)

    def test_verb_before_hello_is_refused(self, memory_server: ServerProcess, pki: Pki) -> None:
        async def main() -> None:
            async with RawClient(memory_server.port, pki) as raw:
                kind, resp = await raw.call({"op": "enqueue", "queue": "sec-nohello",
                                             "body": b"x"})
                assert kind == KIND_ERROR and resp["type"] == "AuthenticationError"
                await asyncio.sleep(1.0)
                assert raw.proto is not None and raw.proto.terminated is not None

        asyncio.run(main())
        with unifiedq.connect(memory_server.url("sec-nohello")) as good:
            assert good.size() == 0

    def test_unknown_option_over_the_wire_and_declared_caps(
            self, memory_server: ServerProcess) -> None:
        with unifiedq.connect(memory_server.url("sec-opt", backend_options="maxsize=1")) as q, \
                pytest.raises(InvalidURL, match="maxsize"):
            q.size()
        # redis' flags include DURABLE; a memory server cannot keep that promise.
        with unifiedq.connect(memory_server.url("sec-caps", capabilities="redis")) as q, \
                pytest.raises(ConfigurationError, match="DURABLE"):
            q.size()


@pytest.fixture(scope="module")
def token_server(pki: Pki) -> Iterator[ServerProcess]:
    yield from _server(pki, "memory://", "--token", "s3cret-token", name="token")


class TestToken:
    def test_wrong_or_missing_token(self, token_server: ServerProcess) -> None:
        _expect_refused(token_server, token_server.url("tok-none"), token="s3cret-token")
        _expect_refused(token_server, token_server.url("tok-wrong", token="nope"),
                        token="s3cret-token")

    def test_right_token(self, token_server: ServerProcess, pki: Pki) -> None:
        with unifiedq.connect(token_server.url("tok-ok", token="s3cret-token")) as q:
            q.enqueue(b"a")
            assert q.size() == 1
            assert "s3cret" not in repr(q)
        url = f"quic://:s3cret-token@127.0.0.1:{token_server.port}/tok-ok?{pki.query()}"
        with unifiedq.connect(url) as q:
            assert q.size() == 1
            assert "s3cret" not in repr(q)
            q.purge()


# -- bounded backend handles -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def few_queues_server(pki: Pki) -> Iterator[ServerProcess]:
    yield from _server(pki, "memory://", "--max-queues", "3", name="fewq")


class TestQueueHandleBound:
    def test_idle_handles_are_recycled_without_losing_jobs(
        self, few_queues_server: ServerProcess
    ) -> None:
        srv = few_queues_server
        with unifiedq.connect(srv.url("bound-keep", capabilities="memory")) as q:
            q.enqueue(b"kept")
        for i in range(10):  # many more queues than the bound: idle handles get closed
            with unifiedq.connect(srv.url(f"bound-{i}", capabilities="memory")) as q:
                q.enqueue(b"x")
                job = q.dequeue(timeout=5)
                assert job is not None
                q.ack(job)
        with unifiedq.connect(srv.url("bound-keep", capabilities="memory")) as q:
            job = q.dequeue(timeout=5)  # its handle was closed and reopened; the job stayed
            assert job is not None and job.body == b"kept"
            q.ack(job)

    def test_busy_handles_stay_open_and_the_excess_is_refused(
        self, few_queues_server: ServerProcess
    ) -> None:
        srv = few_queues_server
        qs = [unifiedq.connect(srv.url(f"busy-{i}", capabilities="memory")) for i in range(3)]
        try:
            held = []
            for q in qs:  # a leased job keeps its queue's handle busy
                q.enqueue(b"held")
                job = q.dequeue(timeout=5)
                assert job is not None
                held.append(job)
            with unifiedq.connect(srv.url("busy-extra", capabilities="memory")) as extra:
                with pytest.raises(unifiedq.BackendError, match="--max-queues"):
                    extra.enqueue(b"no room")
                for q, job in zip(qs, held, strict=True):
                    q.ack(job)  # the busy handles were never closed under their leases
                extra.enqueue(b"now it fits")
                assert extra.size() == 1
                extra.purge()
        finally:
            for q in qs:
                q.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_listen_without_host_serves_ipv4_and_ipv6(pki: Pki) -> None:
    """``--listen :PORT`` binds every interface of both families on one port."""
    srv = ServerProcess(pki, "memory://", ["--listen", ":0"],
                        log=pki.root / f"dual-{uuid.uuid4().hex[:6]}.log")
    srv.start()
    try:
        hosts = ["127.0.0.1"] + (["[::1]"] if _ipv6_loopback() else [])
        for host in hosts:
            url = f"quic://{host}:{srv.port}/dual?{pki.query(capabilities='memory')}"
            with unifiedq.connect(url) as q:
                q.enqueue(host.encode())
        with unifiedq.connect(srv.url("dual", capabilities="memory")) as q:
            assert sorted(j.body for j in q.dequeue_many(5)) == sorted(h.encode() for h in hosts)
    finally:
        srv.stop()


# -- robustness ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_server(pki: Pki) -> Iterator[ServerProcess]:
    yield from _server(pki, "memory://", "--max-frame", "65536", name="small")


def _still_serves(srv: ServerProcess, queue: str) -> None:
    with unifiedq.connect(srv.url(queue, capabilities="memory")) as q:
        q.enqueue(b"alive")
        job = q.dequeue(timeout=5)
        assert job is not None and job.body == b"alive"
        q.ack(job)


class TestRobustness:
    def test_truncated_oversized_and_garbage_frames(self, small_server: ServerProcess,
                                                    pki: Pki) -> None:
        good = encode_frame(KIND_REQUEST, {"op": "size", "queue": "rob-a"})

        async def main() -> None:
            async with RawClient(small_server.port, pki) as raw:
                await raw.hello()
                cases = [
                    b"",  # empty stream
                    good[:5],  # header cut short
                    good[:-1],  # payload cut short
                    good + b"\x00",  # trailing byte
                    b"XX" + good[2:],  # bad magic
                    good[:2] + b"\x09" + good[3:],  # unknown version
                    good[:3] + b"\x07" + good[4:],  # unknown kind
                    good[:3] + bytes([KIND_OK]) + good[4:],  # a response where a request belongs
                    struct.pack(">2sBBI", b"UQ", 1, 1, 65537) + b"\x00" * 1000,  # too big
                    struct.pack(">2sBBI", b"UQ", 1, 1, 70000) + b"\x08" + b"\x00" * 69999,
                    struct.pack(">2sBBI", b"UQ", 1, 1, 5) + b"\x08\xff\xff\xff\xff",  # lying count
                    encode_frame(KIND_REQUEST, {"op": "nope"}),
                    encode_frame(KIND_REQUEST, {"op": "enqueue", "queue": 5, "body": "str"}),
                    encode_frame(KIND_REQUEST, {"op": "enqueue", "queue": "a/b?c", "body": b"x"}),
                    encode_frame(KIND_REQUEST, {"op": "dequeue", "queue": "rob-a", "max": -1,
                                                "timeout": 0}),
                    encode_frame(KIND_REQUEST, {"op": "dequeue", "queue": "rob-a",
                                                "timeout": float("nan")}),
                    encode_frame(KIND_REQUEST, {"op": "ack", "queue": "rob-a", "lease": "forged"}),
                    encode_frame(KIND_REQUEST, {"op": "enqueue", "queue": "rob-a", "body": b"x",
                                                "priority": 99, "delay": -1}),
                    encode_frame(KIND_REQUEST, {"op": "enqueue_many", "queue": "rob-a",
                                                "bodies": [b"x", 3]}),
                ]
                for data in cases:
                    what, reply = await raw.send(data)
                    assert what in ("data", "reset"), (data[:20], what)
                    if what == "data":
                        kind, resp = decode_frame(reply)
                        assert kind == KIND_ERROR, (data[:20], resp)
                        assert resp["type"] in ("ProtocolError", "InvalidArgument", "InvalidBody",
                                                "JobNotLeased", "AuthenticationError",
                                                "LimitExceeded")
                # The same connection still works after all of it.
                kind, resp = await raw.call({"op": "size", "queue": "rob-a"})
                assert (kind, resp) == (KIND_OK, {"n": 0})

        asyncio.run(main())
        _still_serves(small_server, "rob-a")
        _log_is_clean(small_server)

    def test_hypothesis_frames(self, small_server: ServerProcess, pki: Pki) -> None:
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        from unifiedq.drivers.quic._common import OPS

        loop = asyncio.new_event_loop()
        raw = RawClient(small_server.port, pki)
        loop.run_until_complete(raw.__aenter__())
        loop.run_until_complete(raw.hello())
        scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
                            st.floats(), st.text(max_size=30), st.binary(max_size=64))
        values = st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                              | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
        fields = st.fixed_dictionaries(
            {"op": st.sampled_from(sorted(OPS - {"hello"}))},
            optional={k: values for k in ("queue", "body", "bodies", "timeout", "max", "lease",
                                          "delay", "priority", "headers", "job_id", "requeue",
                                          "seconds", "options")},
        ).map(lambda d: {**d, "queue": "rob-h"} if isinstance(d.get("queue"), int) else d)
        frames = st.one_of(
            st.binary(max_size=200),
            fields.map(lambda d: encode_frame(KIND_REQUEST, d)),
            fields.map(lambda d: encode_frame(KIND_REQUEST, d)).flatmap(
                lambda f: st.integers(0, len(f)).map(lambda n: f[:n])),
        )

        @settings(max_examples=300, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(frames)
        def check(frame: bytes) -> None:
            # timeout values may ask the server to wait; cap the wait on our side.
            what, reply = loop.run_until_complete(raw.send(frame, timeout=30))
            assert what in ("data", "reset")
            if what == "data":
                kind, resp = decode_frame(reply)
                assert kind in (KIND_OK, KIND_ERROR)
                if kind == KIND_ERROR:
                    assert resp["type"] != "BackendError", resp  # every failure is typed

        try:
            check()
            loop.run_until_complete(raw.call({"op": "purge", "queue": "rob-h"}))
        finally:
            loop.run_until_complete(raw.__aexit__())
            loop.close()
        _still_serves(small_server, "rob-h2")
        _log_is_clean(small_server)

    def test_other_clients_keep_working_during_abuse(self, small_server: ServerProcess,
                                                      pki: Pki) -> None:
        async def abuse() -> None:
            async with RawClient(small_server.port, pki) as raw:
                await raw.hello()
                big = struct.pack(">2sBBI", b"UQ", 1, 1, 60000) + os.urandom(60000)
                await asyncio.gather(*(raw.send(big) for _ in range(50)))

        async def work() -> int:
            url = small_server.url("rob-w", capabilities="memory")
            async with unifiedq.connect_async(url) as q:
                ids = await asyncio.gather(*(q.enqueue(b"%d" % i) for i in range(100)))
                n = await q.size()
                await q.purge()
                return n if len(ids) == 100 else -1

        async def main() -> None:
            _, n = await asyncio.gather(abuse(), work())
            assert n == 100

        asyncio.run(main())
        _log_is_clean(small_server)


# -- leases and lifecycle --------------------------------------------------------------------------
def _child_takes_and_dies(url: str) -> None:
    q = unifiedq.connect(url)
    job = q.dequeue(timeout=10)
    assert job is not None
    os._exit(0)  # no close, no goodbye: the server only notices the silence


@pytest.fixture(scope="module")
def short_idle_server(pki: Pki) -> Iterator[ServerProcess]:
    yield from _server(pki, "memory://", "--idle-timeout", "2", name="idle")


class TestLeases:
    def test_close_returns_held_jobs(self, memory_server: ServerProcess) -> None:
        url = memory_server.url(f"lease-{uuid.uuid4().hex[:8]}", capabilities="memory")
        with unifiedq.connect(url) as a:
            jid = a.enqueue(b"held")
            assert a.dequeue(timeout=5) is not None
        with unifiedq.connect(url) as b:
            job = b.dequeue(timeout=5)  # long before the 30 s lease would expire
            assert job is not None and job.id == jid and job.attempt == 2
            b.ack(job)

    def test_dead_client_leases_come_back(self, short_idle_server: ServerProcess) -> None:
        url = short_idle_server.url(f"dead-{uuid.uuid4().hex[:8]}", capabilities="memory")
        with unifiedq.connect(url) as q:
            jid = q.enqueue(b"orphan")
            ctx = multiprocessing.get_context("spawn")
            child = ctx.Process(target=_child_takes_and_dies, args=(url,))
            child.start()
            child.join(60)
            assert child.exitcode == 0
            assert q.size() == 0  # leased by the dead child
            job = q.dequeue(timeout=30)  # back after the idle timeout (2 s), not the 30 s lease
            assert job is not None and job.id == jid and job.attempt == 2
            q.ack(job)

    def test_idle_connection_survives_via_keepalive(self, short_idle_server: ServerProcess) -> None:
        url = short_idle_server.url(f"idle-{uuid.uuid4().hex[:8]}", capabilities="memory")

        async def main() -> None:
            async with unifiedq.connect_async(url) as q:
                await q.enqueue(b"x")
                job = await q.dequeue(timeout=5)
                assert job is not None
                await asyncio.sleep(5)  # longer than the idle timeout
                await q.ack(job)  # same connection, lease still ours

        asyncio.run(main())

    def test_cancelled_dequeue_loses_nothing(self, memory_server: ServerProcess) -> None:
        url = memory_server.url(f"cancel-{uuid.uuid4().hex[:8]}", capabilities="memory")

        async def main() -> None:
            async with unifiedq.connect_async(url) as q, unifiedq.connect_async(url) as p:
                for _ in range(5):
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(q.dequeue(timeout=None), 0.3)
                await p.enqueue(b"one")
                job = await p.dequeue(timeout=10)
                assert job is not None and job.body == b"one"
                await p.ack(job)

        asyncio.run(main())

    def test_many_requests_in_flight(self, memory_server: ServerProcess) -> None:
        # 600 at once: past aioquic's default of 128 streams (the server grants 1024), and
        # enough for the server's read-ahead batches and early sends to interleave.
        url = memory_server.url(f"many-{uuid.uuid4().hex[:8]}", capabilities="memory")

        async def main() -> None:
            async with unifiedq.connect_async(url) as q:
                bodies = [b"%d" % i for i in range(600)]
                ids = await asyncio.gather(*(q.enqueue(b) for b in bodies))
                assert len(set(ids)) == 600
                from unifiedq.drivers.quic.client import QuicQueue

                assert isinstance(q, QuicQueue) and q._proto is not None
                assert q._proto._quic._remote_max_streams_bidi >= 1024  # what the server grants
                jobs = await asyncio.gather(*(q.dequeue(timeout=10) for _ in range(600)))
                assert sorted(j.body for j in jobs if j is not None) == sorted(bodies)
                await asyncio.gather(*(q.ack(j) for j in jobs if j is not None))
                assert await q.size() == 0

        asyncio.run(main())

    def test_typed_errors_cross_the_wire(self, memory_server: ServerProcess) -> None:
        with unifiedq.connect(memory_server.url("typed-e", capabilities="memory")) as q:
            q.enqueue(b"a")
            job = q.dequeue(timeout=5)
            assert job is not None
            q.ack(job)
            with pytest.raises(JobNotLeased):
                q.ack(job)
            with pytest.raises(InvalidArgument):
                q.extend_lease(job, -1)  # caught client-side
        with unifiedq.connect(memory_server.url("typed-e")) as core, \
                pytest.raises(UnsupportedOperation):
            core.peek()
        with unifiedq.connect("quic://127.0.0.1:9/none", connect_timeout=1) as gone, \
                pytest.raises(BackendConnectionError):
            gone.size()

    def test_bad_server_limits(self, pki: Pki) -> None:
        from unifiedq.drivers.quic.server import ServeConfig

        for bad in (0, 1 << 17):
            with pytest.raises(ConfigurationError):
                ServeConfig(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca,
                            max_streams=bad)

    def test_bad_urls(self, pki: Pki) -> None:
        for url in ("quic:///q", "quic://h:1/", "quic://h:1/a b", "quic://u@h:1/q",
                    "quic://h:1/q?capabilities=NOPE", "quic://h:1/q?capabilities=BOUNDED",
                    "quic://h:1/q?capabilities=nosuchdriver", "quic://h:1/q?key=k.pem"):
            with pytest.raises(InvalidURL):
                unifiedq.connect(url)


class TestShutdown:
    def test_graceful_shutdown_drains(self, pki: Pki, redis_url: str, tmp_path: Path) -> None:
        srv = ServerProcess(pki, redis_url, ["--drain-timeout", "10"], log=tmp_path / "s.log")
        srv.start()
        name = f"drain-{uuid.uuid4().hex[:8]}"
        url = srv.url(name, capabilities="redis")
        outcome: dict[str, Any] = {}

        async def main() -> None:
            async with unifiedq.connect_async(url) as q:
                await q.enqueue(b"leased")
                held = await q.dequeue(timeout=5)
                assert held is not None
                waiter = asyncio.ensure_future(q.dequeue(timeout=None))
                await asyncio.sleep(0.3)
                enqueues = [asyncio.ensure_future(q.enqueue(b"%d" % i)) for i in range(200)]
                await asyncio.sleep(0.01)
                rc = await asyncio.to_thread(srv.stop)
                res = await asyncio.gather(*enqueues, return_exceptions=True)
                outcome["rc"] = rc
                outcome["ok"] = [r for r in res if isinstance(r, str)]
                outcome["failed"] = [r for r in res if not isinstance(r, str)]
                outcome["waiter"] = await asyncio.gather(waiter, return_exceptions=True)

        asyncio.run(main())
        assert outcome["rc"] == 0 and "stopped" in srv.tail
        assert all(isinstance(e, BackendConnectionError) for e in outcome["failed"])
        assert isinstance(outcome["waiter"][0], BackendConnectionError)
        # Straight to Redis: every acknowledged enqueue is there, and the leased job came back.
        with unifiedq.connect(redis_url + f"?queue={name}") as direct:
            bodies = set()
            while (job := direct.dequeue(timeout=0)) is not None:
                bodies.add(job.body)
                direct.ack(job)
        assert b"leased" in bodies
        assert {b"%d" % i for i in range(200)} >= bodies - {b"leased"}
        assert len(bodies - {b"leased"}) >= len(outcome["ok"])
        assert "Traceback" not in srv.read_log()
