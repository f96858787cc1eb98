"""Pins each aioquic and pyfaktory internal that ``unifiedq/_compat/`` uses, and the version caps.

One test per internal, numbered as in the compat module's docstring (``test_aioquic_*`` for
``unifiedq/_compat/aioquic.py``, ``test_pyfaktory_*`` for ``unifiedq/_compat/pyfaktory.py``);
each fails naming the installed library version. No server needed: aioquic connections
handshake in memory, and pyfaktory clients talk to a scripted fake socket.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import importlib.util
import inspect
import json
import subprocess
import sys
import textwrap
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _extra_requirement(extra: str, name: str) -> Requirement:
    reqs = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"][extra]
    found = [r for r in map(Requirement, reqs) if r.name == name]
    assert found, f"pyproject's {extra} extra does not list {name}"
    return found[0]


def _check_declared_range(extra: str, name: str, versions: str) -> None:
    req = _extra_requirement(extra, name)
    assert str(req.specifier) == str(Requirement(f"{name}{versions}").specifier), (
        f"pyproject's {extra} extra ({req}) and unifiedq/_compat/{name}.py's VERSIONS "
        f"{versions!r} must declare the same {name} range")
    assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), (
        f"cap {name} in pyproject's {extra} extra")
    version = importlib.metadata.version(name)
    assert req.specifier.contains(version, prereleases=True), (
        f"{name} {version} is outside the verified range {req}; run tests/test_compat.py and "
        f"the driver's tests on it, then widen VERSIONS in unifiedq/_compat/{name}.py and "
        "pyproject.toml")


def _params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _own_private_names(cls: type) -> set[str]:
    """Underscore names ``cls`` itself defines: class attributes and ``self._x = ...``."""
    names = {n for n in vars(cls) if n.startswith("_") and not n.startswith("__")}
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(cls)))):
        if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name) and node.value.id == "self"
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            names.add(node.attr)
    return names


# =============================================================================== aioquic
_HAVE_AIOQUIC = importlib.util.find_spec("aioquic") is not None
needs_aioquic = pytest.mark.skipif(not _HAVE_AIOQUIC, reason="aioquic is not installed")
if _HAVE_AIOQUIC:
    import aioquic
    from aioquic import tls
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import QuicServer
    from aioquic.quic import events
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from cryptography.x509.oid import NameOID

    from unifiedq._compat import aioquic as aq
    from unifiedq.testing.quic import Pki

    class _Recorder(aq.QuicProtocol):
        def __init__(self, quic: QuicConnection, **kwargs: Any) -> None:
            super().__init__(quic, **kwargs)
            self.seen: list[events.QuicEvent] = []

        def quic_event_received(self, event: events.QuicEvent) -> None:
            self.seen.append(event)


def aq_changed(what: str) -> str:
    return f"aioquic {aioquic.__version__}: {what}; update unifiedq/_compat/aioquic.py"


_CLIENT_ADDR, _SERVER_ADDR = ("10.0.0.1", 50000), ("10.0.0.2", 4433)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("compat-pki"))


def _exchange(client: QuicConnection, server: QuicConnection, now: float = 1.0) -> None:
    """Carry datagrams both ways until neither side has anything to send."""
    for _ in range(50):
        moved = False
        for data, _ in client.datagrams_to_send(now=now):
            server.receive_datagram(data, _CLIENT_ADDR, now=now)
            moved = True
        for data, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(data, _SERVER_ADDR, now=now)
            moved = True
        if not moved:
            return


def _handshake(pki: Pki, *, client_cert: bool = True,
               setup: Callable[[QuicConnection], None] | None = None,
               client_idle: float = 60.0, server_idle: float = 60.0,
               ) -> tuple[QuicConnection, QuicConnection]:
    """A client and a server connection that handshook in memory (``setup`` runs on the
    server connection before the handshake, where ``unifiedq serve`` calls the compat layer)."""
    scfg = QuicConfiguration(is_client=False, alpn_protocols=["t"], idle_timeout=server_idle)
    scfg.load_cert_chain(pki.server_cert, pki.server_key)
    ccfg = QuicConfiguration(is_client=True, alpn_protocols=["t"], server_name="127.0.0.1",
                             idle_timeout=client_idle)
    ccfg.load_verify_locations(cafile=pki.ca)
    if client_cert:
        ccfg.load_cert_chain(pki.client_cert, pki.client_key)
    client = QuicConnection(configuration=ccfg)
    client.connect(_SERVER_ADDR, now=1.0)
    server = QuicConnection(configuration=scfg,
                            original_destination_connection_id=(
                                client.original_destination_connection_id))
    if setup is not None:
        setup(server)
    _exchange(client, server)
    return client, server


def _events(quic: QuicConnection) -> list[events.QuicEvent]:
    out = []
    while (ev := quic.next_event()) is not None:
        out.append(ev)
    return out


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


@needs_aioquic
def test_aioquic_version_inside_declared_range() -> None:
    _check_declared_range("quic", "aioquic", aq.VERSIONS)


@needs_aioquic
def test_aioquic_public_replacements_hold() -> None:
    """Not internals: what QuicProtocol keeps itself must be what aioquic drives."""

    async def main() -> None:
        quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
        proto = _Recorder(quic)
        assert proto.quic is quic and proto.loop is asyncio.get_running_loop()
        proto.connection_made(_Transport())  # type: ignore[arg-type]
        proto.connect(_SERVER_ADDR, transmit=False)
        proto.transmit_soon()
        handle = proto._deferred_transmit
        proto.transmit_soon()
        assert handle is not None and proto._deferred_transmit is handle
        proto.transmit()
        assert proto._deferred_transmit is None

    asyncio.run(main())


# -- 1. QuicConnectionProtocol._process_events ------------------------------------------------
@needs_aioquic
def test_aioquic_protocol_process_events() -> None:
    fn = getattr(QuicConnectionProtocol, "_process_events", None)
    assert callable(fn), aq_changed("QuicConnectionProtocol no longer has _process_events")
    assert _params(fn) == ["self"], aq_changed("QuicConnectionProtocol._process_events() "
                                               "takes arguments now")

    async def main() -> None:
        quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
        proto = _Recorder(quic)
        proto.connection_made(_Transport())  # type: ignore[arg-type]
        proto.connect(_SERVER_ADDR)
        quic.close()
        proto.transmit()
        quic.handle_timer(now=proto.loop.time() + 1000)  # the close ends: ConnectionTerminated
        proto.process_events()
        assert [type(e) for e in proto.seen] == [events.ConnectionTerminated], aq_changed(
            "_process_events() no longer hands events to quic_event_received")
        await asyncio.wait_for(proto.wait_closed(), 1)  # and it resolved aioquic's waiter

    asyncio.run(main())


# -- 2. QuicConnectionProtocol._timer and _transmit_task ---------------------------------------
@needs_aioquic
def test_aioquic_protocol_timer_handles() -> None:
    async def main() -> None:
        quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
        proto = _Recorder(quic)
        for name in ("_timer", "_transmit_task"):
            assert hasattr(proto, name), aq_changed(f"QuicConnectionProtocol has no {name}")
        proto.connection_made(_Transport())  # type: ignore[arg-type]
        proto.connect(_SERVER_ADDR)  # transmits, which arms the loss timer
        timer = proto._timer
        assert isinstance(timer, asyncio.TimerHandle), aq_changed(
            "QuicConnectionProtocol._timer is not the loop handle of its timer")
        proto.transmit_soon()
        deferred = proto._deferred_transmit
        assert deferred is not None
        proto.cancel_timers()
        assert timer.cancelled() and deferred.cancelled()
        assert proto._timer is None and proto._transmit_task is None

    asyncio.run(main())


# -- 3. QuicConnection._idle_timeout ------------------------------------------------------------
@needs_aioquic
def test_aioquic_connection_idle_timeout(pki: Pki) -> None:
    fn = getattr(QuicConnection, "_idle_timeout", None)
    assert callable(fn), aq_changed("QuicConnection no longer has _idle_timeout")
    assert _params(fn) == ["self"], aq_changed("QuicConnection._idle_timeout() takes "
                                               "arguments now")
    client, server = _handshake(pki, client_idle=30.0, server_idle=12.0)
    assert aq.idle_timeout(client) == 12.0 == aq.idle_timeout(server), aq_changed(
        "_idle_timeout() is no longer the smaller of both peers' idle timeouts")


# -- 4. QuicConnection._local_max_streams_bidi --------------------------------------------------
@needs_aioquic
def test_aioquic_connection_local_max_streams_bidi(pki: Pki) -> None:
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
    limit = getattr(quic, "_local_max_streams_bidi", None)
    assert limit is not None, aq_changed("QuicConnection no longer has _local_max_streams_bidi")
    assert isinstance(limit.value, int) and isinstance(limit.sent, int), aq_changed(
        "_local_max_streams_bidi is no longer a Limit with value and sent")
    client, _ = _handshake(pki, setup=lambda s: aq.set_max_streams_bidi(s, 999))
    assert client._remote_max_streams_bidi == 999, aq_changed(
        "raising _local_max_streams_bidi before the handshake no longer reaches the peer")


# -- 5. QuicConnection._initialize --------------------------------------------------------------
@needs_aioquic
def test_aioquic_connection_initialize(pki: Pki) -> None:
    fn = getattr(QuicConnection, "_initialize", None)
    assert callable(fn), aq_changed("QuicConnection no longer has _initialize")
    assert _params(fn) == ["self", "peer_cid"], aq_changed(
        "the signature of QuicConnection._initialize(peer_cid)")
    calls: list[object] = []
    _, server = _handshake(
        pki, setup=lambda s: aq.check_client_certificates(s, lambda c, ch: calls.append(c)))
    assert isinstance(server.tls, aq._ClientCertificateContext), aq_changed(
        "the server's tls.Context is no longer created by _initialize")
    assert len(calls) == 1


# -- 6. tls.Context._server_handle_certificate (the context's class swapped) -------------------
@needs_aioquic
def test_aioquic_tls_server_handle_certificate(pki: Pki) -> None:
    fn = getattr(tls.Context, "_server_handle_certificate", None)
    assert callable(fn), aq_changed("tls.Context no longer has _server_handle_certificate")
    assert _params(fn) == ["self", "input_buf"], aq_changed(
        "the signature of tls.Context._server_handle_certificate(input_buf)")
    assert not hasattr(tls.Context, "__slots__"), aq_changed(
        "tls.Context has __slots__; swapping its class may no longer work")

    def refuse(cert: object, chain: object) -> None:
        raise tls.AlertBadCertificate("refused by the test")

    client, _ = _handshake(pki, setup=lambda s: aq.check_client_certificates(s, refuse))
    client.handle_timer(now=100.0)
    ended = [e for e in _events(client) if isinstance(e, events.ConnectionTerminated)]
    assert ended and ended[0].error_code == 0x100 + tls.AlertDescription.bad_certificate, \
        aq_changed("an alert raised in _server_handle_certificate no longer aborts the handshake")


# -- 7. tls.Context._request_client_certificate -------------------------------------------------
@needs_aioquic
def test_aioquic_tls_request_client_certificate(pki: Pki) -> None:
    ctx = tls.Context(is_client=False)
    assert getattr(ctx, "_request_client_certificate", None) is False, aq_changed(
        "tls.Context no longer has _request_client_certificate")
    seen: list[tuple[object, object]] = []
    _handshake(pki, setup=lambda s: aq.check_client_certificates(
        s, lambda c, ch: seen.append((c, ch))))
    assert seen and seen[0][0] is not None, aq_changed(
        "_request_client_certificate = True no longer makes the client send its certificate")
    seen.clear()
    _handshake(pki, client_cert=False, setup=lambda s: aq.check_client_certificates(
        s, lambda c, ch: seen.append((c, ch))))
    assert seen == [(None, [])], aq_changed(
        "a client without a certificate no longer reaches _server_handle_certificate")


# -- 8. tls.Context._peer_certificate and _peer_certificate_chain -------------------------------
@needs_aioquic
def test_aioquic_tls_peer_certificate(pki: Pki) -> None:
    ctx = tls.Context(is_client=False)
    for name in ("_peer_certificate", "_peer_certificate_chain"):
        assert hasattr(ctx, name), aq_changed(f"tls.Context no longer has {name}")
    seen: list[tuple[Any, Any]] = []
    _, server = _handshake(pki, setup=lambda s: aq.check_client_certificates(
        s, lambda c, ch: seen.append((c, ch))))
    cert = aq.peer_certificate(server)
    names = [] if cert is None else cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [n.value for n in names] == ["client"], \
        aq_changed("_peer_certificate is not the client's certificate after the handshake")
    assert seen[0][0] == cert and isinstance(seen[0][1], list)


@needs_aioquic
def test_aioquic_subclasses_do_not_shadow_private_names() -> None:
    """Our subclasses' own underscore names must not be aioquic's (a silent clash)."""
    from unifiedq.drivers.quic import client as quic_client
    from unifiedq.drivers.quic import server as quic_server

    async def base_names() -> dict[type, set[str]]:
        qc = QuicConnection(configuration=QuicConfiguration(is_client=True))
        scfg = QuicConfiguration(is_client=False)
        proto = QuicConnectionProtocol(qc)
        return {
            QuicConnectionProtocol: set(dir(QuicConnectionProtocol)) | set(vars(proto)),
            QuicServer: set(dir(QuicServer)) | set(vars(QuicServer(configuration=scfg))),
            tls.Context: set(dir(tls.Context)) | set(vars(tls.Context(is_client=False))),
        }

    bases = asyncio.run(base_names())
    ours: list[tuple[type, type, set[str]]] = [
        (aq.QuicProtocol, QuicConnectionProtocol, {"_timer", "_transmit_task"}),  # internal 2
        (quic_client._ClientProtocol, QuicConnectionProtocol, set()),
        (quic_server._ServerProtocol, QuicConnectionProtocol, set()),
        (quic_server._Listener, QuicServer, set()),
        (aq._ClientCertificateContext, tls.Context, {"_server_handle_certificate"}),
    ]
    for cls, base, intended in ours:
        clash = (_own_private_names(cls) & bases[base]) - intended
        assert not clash, aq_changed(f"{cls.__qualname__} defines {sorted(clash)}, which "
                                     f"{base.__name__} uses itself; rename ours")


# =============================================================================== pyfaktory
# (never ``import pyfaktory`` here: its __init__ would set this process's SIGTERM handler)
_HAVE_PYFAKTORY = importlib.util.find_spec("pyfaktory") is not None
needs_pyfaktory = pytest.mark.skipif(not _HAVE_PYFAKTORY, reason="pyfaktory is not installed")
if _HAVE_PYFAKTORY:
    from unifiedq._compat import pyfaktory as pf

    _PF_VERSION = importlib.metadata.version("pyfaktory")
    _PF_BASE: Any = pf._client.Client

    class _Fake(pf.Client):
        """A pyfaktory client over a scripted socket: records commands, plays back replies."""

        def __init__(self, role: str = "producer", replies: list[str] | None = None) -> None:
            super().__init__(faktory_url="tcp://localhost:7419", role=role, timeout=5,
                             worker_id="w" * 16 if role != "producer" else None)
            self.sent: list[str] = []
            self.replies = list(replies or [])
            self.beats = threading.Event()

        def send_command(self, command: str) -> None:
            self.sent.append(command)

        def read_reply(self) -> str:
            return self.replies.pop(0)

        def builtin_heartbeat(self) -> None:
            self.beats.set()


def pf_changed(what: str) -> str:
    return f"pyfaktory {_PF_VERSION}: {what}; update unifiedq/_compat/pyfaktory.py"


def _identified(role: str = "producer", replies: list[str] | None = None) -> _Fake:
    c = _Fake(role, replies)
    c.state = pf.State.IDENTIFIED
    return c


@needs_pyfaktory
def test_pyfaktory_version_inside_declared_range() -> None:
    _check_declared_range("faktory", "pyfaktory", pf.VERSIONS)


# -- 1. the module layout, loaded without pyfaktory/__init__ -----------------------------------
@needs_pyfaktory
def test_pyfaktory_modules_load_without_the_package() -> None:
    spec = importlib.util.find_spec("pyfaktory")
    assert spec is not None and spec.submodule_search_locations
    home = Path(next(iter(spec.submodule_search_locations))).resolve()
    for mod in (pf._client, pf._models, sys.modules[pf.State.__module__]):
        assert Path(mod.__file__ or "").resolve().parent in (home, home / "util"), mod
    # What client.py and its imports pull in: relative modules and third parties, but never
    # the consumer or pebble (which set signal handlers at import).
    for path in [home / "client.py", home / "models.py", *sorted((home / "util").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(a.name for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.split(".")[-1] in ("consumer", "pebble") or n.startswith("pebble")
                           for n in names), pf_changed(
                f"{path.name} imports {names} (the consumer or pebble)")
    members = {m.name for m in pf.State}
    needed = {"DISCONNECTED", "NOT_IDENTIFIED", "IDENTIFIED", "QUIET", "TERMINATING", "END"}
    assert needed <= members, pf_changed(f"util.enums.State lacks {sorted(needed - members)}")
    assert issubclass(pf.FaktroyWorkProtocolError, Exception), pf_changed(
        "util.exceptions.FaktroyWorkProtocolError")


_SIGNAL_PROBE = r"""
import signal, sys, threading, types
calls = []
real = signal.signal
def spy(*args):
    calls.append((threading.current_thread().name, args[0]))
    return real(*args)
def custom(signum, frame):
    pass
real(signal.SIGTERM, custom)
signal.signal = spy
patched = []
class Watched(types.ModuleType):  # records any rebinding of signal's attributes
    def __setattr__(self, name, value):
        patched.append(name)
        super().__setattr__(name, value)
signal.__class__ = Watched
errors = []
def load():
    try:
        import unifiedq.drivers.faktory  # noqa: F401
    except BaseException as exc:
        errors.append(repr(exc))
order = sys.argv[1].split(",")
for where in order:
    if where == "thread":
        t = threading.Thread(target=load, name="importer")
        t.start()
        t.join()
    else:
        load()
assert not errors, errors
assert calls == [], f"signal.signal was called: {calls}"
assert patched == [], f"the signal module was patched: {patched}"
assert signal.getsignal(signal.SIGTERM) is custom, signal.getsignal(signal.SIGTERM)
loaded = [m for m in ("pyfaktory", "pyfaktory.consumer", "pebble") if m in sys.modules]
assert loaded == [], f"imported {loaded}"
# The probe has teeth: importing the real package does call signal.signal (via pebble).
import pyfaktory  # noqa: F401,E402
assert calls, "the spy did not see pebble's signal.signal; the probe proves nothing"
print("ok")
"""


@needs_pyfaktory
@pytest.mark.parametrize("order", ["thread,main", "main,thread"])
def test_pyfaktory_import_never_touches_signal_handlers(order: str) -> None:
    """Importing the driver sets no signal handler, on the main thread or any other."""
    out = subprocess.run([sys.executable, "-c", _SIGNAL_PROBE, order], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", pf_changed(
        f"importing unifiedq.drivers.faktory touched signal handlers: {out.stderr[-2000:]}")


# -- 2..9. Client's private commands ------------------------------------------------------------
_PRIVATE_CALLS = {
    "_send_and_receive": ["self", "command"],
    "_raise_error": ["self", "faktory_response"],
    "_set_state": ["self", "new_state"],
    "_beat": ["self", "rss_kb"],
    "_end": ["self"],
    "_push": ["self", "work_unit"],
    "_pushb": ["self", "work_units"],
    "_fetch": ["self", "queues"],
    "_ack": ["self", "jid"],
}


@needs_pyfaktory
@pytest.mark.parametrize("name", list(_PRIVATE_CALLS))
def test_pyfaktory_client_private_method_signatures(name: str) -> None:
    fn = getattr(_PF_BASE, name, None)
    assert callable(fn), pf_changed(f"Client no longer has {name}")
    assert _params(fn) == _PRIVATE_CALLS[name], pf_changed(
        f"the signature of Client.{name} is {_params(fn)}, not {_PRIVATE_CALLS[name]}")


@needs_pyfaktory
def test_pyfaktory_client_send_and_receive() -> None:  # 2
    c = _identified(replies=["+OK"])
    assert c.roundtrip("FLUSH\r\n") == "+OK" and c.sent == ["FLUSH\r\n"], pf_changed(
        "_send_and_receive no longer sends through _send and reads through _receive")


@needs_pyfaktory
def test_pyfaktory_client_raise_error() -> None:  # 3
    c = _identified()
    c.check_reply("+OK")
    with pytest.raises(pf.FaktroyWorkProtocolError) as info:
        c.check_reply("-ERR Invalid password")
    assert pf.error_text(info.value) == "-ERR Invalid password", pf_changed(
        f"_raise_error's message format: {info.value}")
    assert not pf.connection_unusable(info.value)


@needs_pyfaktory
def test_pyfaktory_client_set_state_starts_heartbeat() -> None:  # 4 and 12
    c = _Fake("consumer")
    c.set_state(pf.State.NOT_IDENTIFIED)
    c.set_state(pf.State.IDENTIFIED)
    assert c.state == pf.State.IDENTIFIED
    assert c.beats.wait(5), pf_changed(
        "entering IDENTIFIED no longer runs _heartbeat (on its thread)")
    producer = _Fake("producer")
    producer.set_state(pf.State.IDENTIFIED)
    assert not producer.beats.wait(0.2), pf_changed("a producer runs _heartbeat")


@needs_pyfaktory
def test_pyfaktory_client_beat() -> None:  # 5
    quiet = '{"state":"quiet"}'
    c = _identified("consumer", ["+OK", f"${len(quiet)}\r\n{quiet}"])
    c.beat(1234)
    sent = json.loads(c.sent[0].removeprefix("BEAT "))
    assert sent == {"wid": "w" * 16, "rss_kb": 1234}, pf_changed(f"_beat sends {c.sent[0]!r}")
    c.beat(None)
    assert c.state == pf.State.QUIET, pf_changed("_beat no longer follows a quiet reply")


@needs_pyfaktory
def test_pyfaktory_client_end() -> None:  # 6
    c = _identified()
    c.end()
    assert c.sent == ["END\r\n"] and c.state == pf.State.END, pf_changed("_end")


@needs_pyfaktory
def test_pyfaktory_client_push() -> None:  # 7
    c = _identified(replies=["+OK"])
    job = {"jid": "j1", "jobtype": "t", "args": ["a"], "queue": "q"}
    c.push(job)
    assert c.sent == [f"PUSH {json.dumps(job)}\r\n"], pf_changed(f"_push sends {c.sent!r}")
    with pytest.raises(pf.FaktroyWorkProtocolError):
        _identified("consumer", ["+OK"]).push(job)  # producer connections only


@needs_pyfaktory
def test_pyfaktory_client_pushb() -> None:  # 8
    refused = '{"j2":"bad"}'
    c = _identified(replies=["+OK", f"${len(refused)}\r\n{refused}"])
    jobs = [{"jid": "j1", "jobtype": "t", "args": []}]
    assert c.push_batch(jobs) == "+OK"
    assert c.sent == [f"PUSHB {json.dumps(jobs)}\r\n"], pf_changed(f"_pushb sends {c.sent!r}")
    assert c.push_batch(jobs) == f"${len(refused)}\r\n{refused}", pf_changed(
        "_pushb no longer returns the raw reply")


@needs_pyfaktory
def test_pyfaktory_client_fetch() -> None:  # 9 and 13
    job = json.dumps({"jid": "j1", "args": [1]})
    c = _identified("consumer", [f"${len(job)}\r\n{job}", "$-1"])
    assert c.fetch(["a", "b"]) == {"jid": "j1", "args": [1]}, pf_changed(
        "_fetch no longer parses a bulk reply in the form our read_reply returns")
    assert c.sent == ["FETCH a b\r\n"]
    assert c.fetch(["a"]) is None, pf_changed("_fetch no longer maps $-1 to None")


@needs_pyfaktory
def test_pyfaktory_client_ack() -> None:  # 9a
    c = _identified("consumer", ["+OK"])
    c.ack("j1")
    assert c.sent == ['ACK {"jid": "j1"}\r\n'], pf_changed(f"_ack sends {c.sent!r}")


# -- 10..12. the hooks pyfaktory calls ----------------------------------------------------------
@needs_pyfaktory
@pytest.mark.parametrize(("name", "params"), [
    ("_send", ["self", "command"]), ("_receive", ["self"]), ("_heartbeat", ["self"]),
])
def test_pyfaktory_client_hooks_exist(name: str, params: list[str]) -> None:
    fn = getattr(_PF_BASE, name, None)
    assert callable(fn), pf_changed(f"Client no longer has {name}, which we override")
    assert _params(fn) == params, pf_changed(f"the signature of Client.{name}")
    src = inspect.getsource(_PF_BASE)
    assert f"self.{name}(" in src or f"self.{name}," in src, pf_changed(
        f"Client no longer calls self.{name}; overriding it does nothing")


@needs_pyfaktory
def test_pyfaktory_client_info_reads_our_reply_form() -> None:  # 13
    info = json.dumps({"faktory": {"queues": {"q": 2}}})
    c = _identified(replies=[f"${len(info)}\r\n{info}"])
    assert c.info() == {"faktory": {"queues": {"q": 2}}}, pf_changed(
        "info() no longer parses the reply form our read_reply returns")


@needs_pyfaktory
def test_pyfaktory_error_messages() -> None:  # 14
    c = _identified()
    with pytest.raises(pf.FaktroyWorkProtocolError) as empty:
        c.check_reply("")
    assert pf.connection_unusable(empty.value), pf_changed(
        f"_raise_error's message for an empty reply: {empty.value}")
    d = _Fake("consumer")  # DISCONNECTED: every command is refused by the state guard
    with pytest.raises(pf.FaktroyWorkProtocolError) as state:
        d.fetch(["q"])
    assert pf.connection_unusable(state.value), pf_changed(
        f"the state guard's message: {state.value}")


@needs_pyfaktory
def test_pyfaktory_public_api_we_use() -> None:
    params = _params(_PF_BASE.__init__)
    for p in ("faktory_url", "role", "timeout", "worker_id", "labels", "beat_period"):
        assert p in params, pf_changed(f"Client() has no {p} argument")
    c = _identified("both", ["+OK", "+OK", "+OK"])
    c.mutate(pf.mutate_operation("kill", "retries", jids=["j1"]))
    c.mutate(pf.mutate_operation("discard", "scheduled", regexp='*"queue":"q"*'))
    c.queue_remove(["a", "b"])
    assert c.sent == [
        'MUTATE {"cmd":"kill","target":"retries","filter":{"jids":["j1"]}}\r\n',
        'MUTATE {"cmd":"discard","target":"scheduled","filter":{"regexp":"*\\"queue\\":\\"q\\"*"}}'
        "\r\n",
        "QUEUE REMOVE a b\r\n",
    ], pf_changed(f"mutate()/queue_remove() send {c.sent!r}")
    for attr in ("sock", "state", "rlock", "role", "timeout", "worker_id", "labels", "rss_kb"):
        assert attr in vars(c) or attr in inspect.getsource(_PF_BASE.connect), pf_changed(
            f"Client has no attribute {attr}")


@needs_pyfaktory
def test_pyfaktory_subclasses_do_not_shadow() -> None:
    """Our public names are not pyfaktory's, and our subclass' private names are not either."""
    from unifiedq.drivers import faktory

    theirs = set(dir(_PF_BASE)) | set(vars(_PF_BASE(role="both", worker_id="w" * 16)))
    ours = {n for n in vars(pf.Client) if not n.startswith("_")}
    assert not ours & theirs, pf_changed(
        f"Client now defines {sorted(ours & theirs)}, which unifiedq's subclass overrides")
    clash = _own_private_names(faktory._Conn) & theirs
    assert not clash, pf_changed(f"Client now uses {sorted(clash)} as the driver's _Conn does")
