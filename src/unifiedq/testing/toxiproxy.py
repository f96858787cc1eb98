"""Toxiproxy for fault injection: a managed ``toxiproxy-server`` and a small client of its API.

`Toxiproxy <https://github.com/Shopify/toxiproxy>`_ is a TCP proxy whose links can be given
*toxics* at run time: latency, a stall that drops every byte (``timeout``), a reset, a
connection cut after N bytes (``limit_data``), a bandwidth cap, sliced writes. The fault
matrix (``benchmarks/fault_matrix.py``) and :mod:`unifiedq.testing.faults` put it between a
driver and its real server to produce the faults a peak brings (a congested or partitioned
network, a reply cut in the middle).

Example:
    >>> with ToxiproxyServer() as toxi, RedisServer() as redis:  # doctest: +SKIP
    ...     proxy = toxi.client.create_proxy("redis", redis.host, redis.port)
    ...     url = proxied_url(redis.url, proxy)          # redis://127.0.0.1:<proxy port>/0
    ...     with proxy.toxic("timeout", timeout=0):      # every byte dropped: a stall
    ...         ...                                      # a verb must still keep its deadline

Toxiproxy proxies **TCP only**. ``quic://`` runs over UDP, so its faults come from freezing
the ``unifiedq serve`` process (``SIGSTOP``) instead; :func:`proxied_url` refuses it.

Only the standard library is used (``urllib.request`` and JSON), like the rest of the rig.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from .servers import LOOPBACK, ManagedServer, ServerBinaryMissing, find_binary, find_free_port

__all__ = [
    "TOXIPROXY_HINT",
    "Proxy",
    "Stream",
    "Toxic",
    "ToxicType",
    "ToxiproxyClient",
    "ToxiproxyError",
    "ToxiproxyServer",
    "proxied_url",
]

#: How to install the server binary (used in skip messages and errors).
TOXIPROXY_HINT = (
    "run `bash scripts/install.sh` from the repository root (builds Toxiproxy v2.5.0's server "
    "with Go into /usr/local/bin/toxiproxy-server), or `go install "
    "github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0` and put it on PATH as toxiproxy-server"
)

#: Which direction a toxic acts on: ``downstream`` = server → client (replies),
#: ``upstream`` = client → server (requests).
Stream = Literal["upstream", "downstream"]

#: Toxic types of Toxiproxy 2.5 and their attributes (times in milliseconds unless noted):
#: ``latency`` (latency, jitter), ``timeout`` (timeout; 0 = drop data and never close),
#: ``reset_peer`` (timeout; then a TCP RST), ``limit_data`` (bytes; then close),
#: ``bandwidth`` (rate, KB/s), ``slicer`` (average_size, size_variation bytes, delay µs),
#: ``slow_close`` (delay).
ToxicType = Literal[
    "latency", "timeout", "reset_peer", "limit_data", "bandwidth", "slicer", "slow_close"
]

# Schemes whose connections are plain TCP and so can go through a proxy.
_TCP_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "faktory", "faktory+tls"})


class ToxiproxyError(RuntimeError):
    """The Toxiproxy API refused a request.

    Attributes:
        status: HTTP status code (0 when the server could not be reached).
    """

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ToxiproxyServer(ManagedServer):
    """A private ``toxiproxy-server`` whose HTTP API listens on a free loopback port.

    Args:
        **kwargs: See :class:`~unifiedq.testing.servers.ManagedServer`.
    """

    binary_name = "toxiproxy-server"
    kind = "toxiproxy"
    default_startup_timeout = 15.0

    @property
    def url(self) -> str:
        """Base URL of the HTTP API, ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def client(self) -> ToxiproxyClient:
        """A client of this server's API."""
        return ToxiproxyClient(self.url)

    def binary_path(self) -> str:
        """Return the absolute path of ``toxiproxy-server``.

        Raises:
            ServerBinaryMissing: If it is not installed (the message says how to install it).
        """
        try:
            return find_binary(self.binary_name)
        except ServerBinaryMissing:
            raise ServerBinaryMissing(self.binary_name, TOXIPROXY_HINT) from None

    def binary_version(self) -> str:
        """Return the server's version, e.g. ``"v2.5.0"`` (``"git"`` for an unstamped build)."""
        out = subprocess.run(
            [self.binary_path(), "-version"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False,
        )
        text = (out.stdout + out.stderr).decode(errors="replace")
        match = re.search(r"version\s+(\S+)", text)
        if match is None:
            raise RuntimeError(f"cannot parse the toxiproxy-server version from {text.strip()!r}")
        return match.group(1)

    def _command(self) -> list[str]:
        return [self.binary_path(), "-host", self.host, "-port", str(self.port)]

    def _probe(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/version", timeout=2.0) as reply:
            return bool(reply.status == 200)


@dataclasses.dataclass(frozen=True)
class Toxic:
    """A toxic as the API reports it.

    Attributes:
        name: Unique name within its proxy.
        type: Toxic type, e.g. ``"latency"``.
        stream: ``"downstream"`` (server → client) or ``"upstream"``.
        toxicity: Probability (0..1) that a new connection gets this toxic.
        attributes: Type-specific settings (see :data:`ToxicType`).
    """

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: Mapping[str, Any]


class ToxiproxyClient:
    """A typed client of Toxiproxy's REST API (stdlib only).

    Args:
        base_url: The API's base URL, e.g. ``http://127.0.0.1:8474``.
        timeout: Seconds per HTTP request.
    """

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """Send one API request and return its decoded JSON reply (None when empty).

        Args:
            method: HTTP method.
            path: Path below the base URL, e.g. ``"/proxies"``.
            body: JSON body, if any.

        Returns:
            The decoded reply.

        Raises:
            ToxiproxyError: On an HTTP error status or when the server cannot be reached.
        """
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            raise ToxiproxyError(
                f"toxiproxy {method} {path}: HTTP {exc.code}: {detail}", status=exc.code
            ) from exc
        except OSError as exc:
            raise ToxiproxyError(f"toxiproxy {method} {path}: {exc}") from exc
        if not raw.strip():
            return None
        text = raw.decode()
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    def version(self) -> str:
        """Return the server's version string."""
        return str(self.request("GET", "/version"))

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self.request("POST", "/reset")

    def proxies(self) -> dict[str, Proxy]:
        """Return every proxy by name."""
        listing = self.request("GET", "/proxies") or {}
        return {name: self._proxy(info) for name, info in listing.items()}

    def create_proxy(
        self, name: str, upstream_host: str, upstream_port: int, *, listen_port: int | None = None
    ) -> Proxy:
        """Create an enabled proxy from a free loopback port to ``upstream_host:upstream_port``.

        Args:
            name: Unique proxy name.
            upstream_host: Host of the real server.
            upstream_port: Port of the real server.
            listen_port: Port to listen on; a free one is chosen when omitted.

        Returns:
            The new proxy.

        Raises:
            ToxiproxyError: If the name is taken or the port cannot be bound.
        """
        port = listen_port if listen_port is not None else find_free_port(LOOPBACK)
        info = self.request("POST", "/proxies", {
            "name": name,
            "listen": f"{LOOPBACK}:{port}",
            "upstream": f"{upstream_host}:{upstream_port}",
            "enabled": True,
        })
        return self._proxy(info)

    def get_proxy(self, name: str) -> Proxy:
        """Return the proxy called ``name``.

        Raises:
            ToxiproxyError: If there is none (status 404).
        """
        return self._proxy(self.request("GET", f"/proxies/{_quote(name)}"))

    def delete_proxy(self, name: str) -> None:
        """Delete a proxy, closing its connections.

        Raises:
            ToxiproxyError: If there is none (status 404).
        """
        self.request("DELETE", f"/proxies/{_quote(name)}")

    def _proxy(self, info: Mapping[str, Any]) -> Proxy:
        host, _, port = str(info["listen"]).rpartition(":")
        return Proxy(
            client=self, name=str(info["name"]), listen_host=host or LOOPBACK,
            listen_port=int(port), upstream=str(info["upstream"]),
        )


@dataclasses.dataclass(frozen=True)
class Proxy:
    """One proxy: clients connect to ``listen_host:listen_port``, it forwards to ``upstream``.

    Attributes:
        client: The API client that manages it.
        name: Proxy name.
        listen_host: Address clients connect to.
        listen_port: Port clients connect to.
        upstream: ``host:port`` of the real server.
    """

    client: ToxiproxyClient
    name: str
    listen_host: str
    listen_port: int
    upstream: str

    @property
    def _path(self) -> str:
        return f"/proxies/{_quote(self.name)}"

    @property
    def enabled(self) -> bool:
        """Whether the proxy accepts and forwards connections."""
        return bool(self.client.request("GET", self._path)["enabled"])

    def enable(self) -> None:
        """Accept connections again."""
        self.client.request("POST", self._path, {"enabled": True})

    def disable(self) -> None:
        """Close every connection and refuse new ones (a server that went away)."""
        self.client.request("POST", self._path, {"enabled": False})

    def toxics(self) -> list[Toxic]:
        """Return the toxics on this proxy."""
        return [
            Toxic(
                name=str(t["name"]), type=str(t["type"]), stream=str(t["stream"]),
                toxicity=float(t["toxicity"]), attributes=dict(t.get("attributes") or {}),
            )
            for t in self.client.request("GET", f"{self._path}/toxics") or []
        ]

    def add_toxic(
        self,
        type: ToxicType,
        *,
        name: str | None = None,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
        **attributes: int,
    ) -> str:
        """Add a toxic; it acts on open connections too, from now on.

        Args:
            type: Toxic type (see :data:`ToxicType` for the attributes of each).
            name: Toxic name (default ``<type>_<stream>``).
            stream: ``"downstream"`` (replies) or ``"upstream"`` (requests).
            toxicity: Probability (0..1) that a connection is affected.
            **attributes: Type-specific settings, e.g. ``latency=50`` (ms) or ``bytes=100``.

        Returns:
            The toxic's name (for :meth:`remove_toxic`).

        Raises:
            ToxiproxyError: On an unknown type, a taken name or bad attributes.
        """
        toxic_name = name or f"{type}_{stream}"
        self.client.request("POST", f"{self._path}/toxics", {
            "name": toxic_name, "type": type, "stream": stream,
            "toxicity": toxicity, "attributes": attributes,
        })
        return toxic_name

    def remove_toxic(self, name: str) -> None:
        """Remove a toxic by name.

        Raises:
            ToxiproxyError: If there is none (status 404).
        """
        self.client.request("DELETE", f"{self._path}/toxics/{_quote(name)}")

    def clear(self) -> None:
        """Remove every toxic and enable the proxy."""
        for toxic in self.toxics():
            with contextlib.suppress(ToxiproxyError):
                self.remove_toxic(toxic.name)
        self.enable()

    @contextlib.contextmanager
    def toxic(
        self,
        type: ToxicType,
        *,
        name: str | None = None,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
        **attributes: int,
    ) -> Iterator[str]:
        """``with proxy.toxic("latency", latency=100): ...`` applies a toxic for the block.

        Args:
            type: Toxic type.
            name: Toxic name (default ``<type>_<stream>``).
            stream: ``"downstream"`` or ``"upstream"``.
            toxicity: Probability (0..1) that a connection is affected.
            **attributes: Type-specific settings.

        Yields:
            The toxic's name.
        """
        toxic_name = self.add_toxic(
            type, name=name, stream=stream, toxicity=toxicity, **attributes
        )
        try:
            yield toxic_name
        finally:
            with contextlib.suppress(ToxiproxyError):
                self.remove_toxic(toxic_name)

    def delete(self) -> None:
        """Delete this proxy (its connections are closed)."""
        with contextlib.suppress(ToxiproxyError):
            self.client.delete_proxy(self.name)


def proxied_url(url: str, proxy: Proxy) -> str:
    """Return ``url`` with its host and port replaced by the proxy's listen address.

    Credentials, path and query are kept, so ``redis://:pw@127.0.0.1:6379/0?queue=q``
    becomes ``redis://:pw@127.0.0.1:<proxy port>/0?queue=q``.

    Args:
        url: A ``redis://``, ``amqp://`` or ``faktory://`` URL (and their TLS variants).
        proxy: The proxy to go through.

    Returns:
        The rewritten URL.

    Raises:
        ValueError: For a scheme that is not plain TCP: ``quic://`` is UDP, which Toxiproxy
            cannot carry (freeze the ``unifiedq serve`` process instead), and ``memory://`` /
            ``shm://`` have no network at all.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in _TCP_SCHEMES:
        raise ValueError(
            f"{parts.scheme}:// cannot go through Toxiproxy: it proxies TCP only "
            "(quic:// is UDP; memory:// and shm:// have no network)"
        )
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{proxy.listen_host}:{proxy.listen_port}"
    if userinfo:
        netloc = f"{userinfo}@{netloc}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")
