r"""pyfaktory, imported without its import-time side effect, and the private parts of it we use.

Verified range: pyfaktory ``>=0.2.11,<0.3`` (:data:`VERSIONS`, the same cap as the
``faktory`` extra in ``pyproject.toml``). ``tests/test_compat.py`` pins every internal below
(the ``test_pyfaktory_*`` tests), each failing with the installed version in its message; they
and the Faktory suite (``tests/test_faktory.py``, real server) pass on pyfaktory 0.2.13 and
0.2.11 (there is no 0.2.12). To allow a newer pyfaktory, run both on it, then raise the cap
here and in ``pyproject.toml``.

How pyfaktory is imported
-------------------------
``pyfaktory/__init__.py`` imports ``pyfaktory.consumer``, whose class body runs pebble's
``@sighandler(SIGTERM)``, i.e. ``signal.signal`` at import time: on the main thread that
silently replaces the host application's SIGTERM handler; on any other thread the import
fails (``ValueError: signal only works in main thread``). The driver needs only
``pyfaktory/client.py`` and what it imports (``models.py``, ``util/``), never the consumer.

So we never import the package ``pyfaktory``. :mod:`unifiedq._compat._pyfaktory_modules` is
a package of ours whose ``__path__`` is pyfaktory's installed directory (found with
``importlib.util.find_spec``, which executes nothing): the ordinary import system loads
pyfaktory's ``client.py``, ``models.py`` and ``util/*.py`` as its submodules, and their
relative imports stay inside it, while pyfaktory's ``__init__.py`` (and with it ``consumer``
and pebble) never runs. No signal handler is set or swapped on any thread, nothing global is
patched, and ``sys.modules["pyfaktory"]`` is left alone, so an application that imports
pyfaktory itself gets the real package as usual.

Rejected: swapping ``signal.signal`` for a no-op during the import (what this replaces): a
process-wide patch that other threads see while it lasts. Putting a stand-in ``pyfaktory``
package into ``sys.modules`` while importing ``pyfaktory.client``: another thread importing
pyfaktory in that window would get the stand-in. The price of our way: if the application
imports pyfaktory too, its classes (``Client``, ``State``, the exception) are distinct objects
from ours, loaded from the same files; the driver never hands them out (it translates every
pyfaktory error into unifiedq's).

Internals touched, exactly
--------------------------
Module layout:

1. ``pyfaktory/client.py`` (``Client``), ``util/enums.py`` (``State``: ``DISCONNECTED``,
   ``NOT_IDENTIFIED``, ``IDENTIFIED``, ``QUIET``, ``TERMINATING``) and ``util/exceptions.py``
   (``FaktroyWorkProtocolError``), loaded as above (with ``models.py``, whose public
   ``MutateOperation`` and ``JobFilter`` we use); ``client.py``, ``models.py`` and ``util/``
   must import neither ``consumer`` nor pebble.

``Client`` methods the driver calls (under public names on :class:`Client`):

2. ``_send_and_receive(command)`` (:meth:`Client.roundtrip`): one command and its reply under
   ``rlock``; for HELLO (pyfaktory sends the server's host name as the worker's), FAIL on any
   connection (pyfaktory allows it on consumers only) and QUEUE LATENCY (no method for it).
3. ``_raise_error(reply)`` (:meth:`Client.check_reply`): raises ``FaktroyWorkProtocolError``
   for an ``-ERR`` or empty reply.
4. ``_set_state(state)`` (:meth:`Client.set_state`): the connection's lifecycle; entering
   ``IDENTIFIED`` on a consumer starts pyfaktory's heartbeat thread, running ``_heartbeat``.
5. ``_beat(rss_kb=)`` (:meth:`Client.beat`): BEAT, which also follows the server's
   quiet/terminate reply into ``state``.
6. ``_end()`` (:meth:`Client.end`): END (public ``disconnect()`` raises before closing the
   socket when the handshake did not finish).
7. ``_push(work_unit)`` (:meth:`Client.push`): PUSH of a job dict (public ``Producer.push``
   re-validates a pydantic ``Job`` per call and adds fields we leave to the server).
8. ``_pushb(work_units)`` (:meth:`Client.push_batch`): PUSHB, returning the raw reply.
9. ``_fetch(queues)`` (:meth:`Client.fetch`): FETCH (only pyfaktory's ``Consumer`` fetches
   publicly).
9a. ``_ack(jid)`` (:meth:`Client.ack`): ACK; used only by the benchmark's raw-pyfaktory
   baseline (the driver acks through ``roundtrip``).

``Client`` methods pyfaktory calls that the driver replaces (override the hooks instead):

10. ``_send(command)`` (hook :meth:`Client.send_command`): the driver's never logs a command
    (HELLO carries the password hash).
11. ``_receive()`` (hook :meth:`Client.read_reply`): the driver's reads a RESP reply in
    linear time; it must return pyfaktory's string form of a reply (internal 13).
12. ``_heartbeat()`` (hook :meth:`Client.builtin_heartbeat`): the body of pyfaktory's
    non-daemon heartbeat thread; the driver turns it into a no-op and beats itself.

Formats:

13. A reply as ``_receive`` returns it and ``util.helper.RESP.parse_bulk_string`` (behind
    ``_fetch`` and ``info()``) reads it: a simple reply as its line (``+OK``), a bulk reply as
    ``$<n>\r\n<data>``, nil as ``$-1``.
14. pyfaktory's error messages (:func:`error_text`, :func:`connection_unusable`): the prefix
    ``"Error received from Faktory server: "`` of ``_raise_error``, its ``"Empty response"``,
    and ``"Client state is"`` of the state guard on every command.

Public API the driver uses instead of internals: ``Client(faktory_url=, role=, timeout=,
worker_id=, labels=, beat_period=)``, ``info()``, ``queue_remove(queues)`` (was
``_queue_remove``), ``mutate(MutateOperation)`` (was ``_mutate(dict)``; :func:`mutate_operation`
builds the model, same bytes on the wire), and the attributes ``sock``, ``state``, ``rlock``,
``role``, ``worker_id``, ``labels``, ``timeout`` and ``rss_kb``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "VERSIONS",
    "Client",
    "FaktroyWorkProtocolError",
    "State",
    "connection_unusable",
    "error_text",
    "mutate_operation",
]

#: pyfaktory versions this module is verified with (a PEP 440 specifier, as in pyproject.toml).
VERSIONS = ">=0.2.11,<0.3"

_PACKAGE = f"{__package__}._pyfaktory_modules"
_client = importlib.import_module(f"{_PACKAGE}.client")
_models = importlib.import_module(f"{_PACKAGE}.models")

#: The connection states (internal 1).
State: Any = importlib.import_module(f"{_PACKAGE}.util.enums").State
#: What pyfaktory raises for protocol errors and error replies (internal 1; sic).
FaktroyWorkProtocolError: type[Exception] = importlib.import_module(
    f"{_PACKAGE}.util.exceptions").FaktroyWorkProtocolError

_Base: Any = _client.Client

# Internal 14.
_SERVER_ERROR_PREFIX = "Error received from Faktory server: "
_UNUSABLE = ("Empty response", "Client state is")


class Client(_Base):  # type: ignore[misc]  # pyfaktory is untyped
    """pyfaktory's ``Client``, with every private member the driver uses under a public name.

    Subclass it and override :meth:`send_command`, :meth:`read_reply` and
    :meth:`builtin_heartbeat` to replace what pyfaktory does there (internals 10-12); call the
    other methods instead of pyfaktory's underscore names (internals 2-9).
    """

    # -- hooks pyfaktory calls ------------------------------------------------------------------
    def _send(self, command: str) -> None:
        self.send_command(command)

    def _receive(self) -> str:
        return self.read_reply()

    def _heartbeat(self) -> None:
        self.builtin_heartbeat()

    def send_command(self, command: str) -> None:
        """Write one command (internal 10; default: pyfaktory's ``_send``)."""
        super()._send(command)

    def read_reply(self) -> str:
        """Read one reply in pyfaktory's string form (internals 11, 13; default: ``_receive``)."""
        reply: str = super()._receive()
        return reply

    def builtin_heartbeat(self) -> None:
        """Body of pyfaktory's heartbeat thread (internal 12; default: ``_heartbeat``)."""
        super()._heartbeat()

    # -- private commands under public names ----------------------------------------------------
    def roundtrip(self, command: str) -> str:
        """Send ``command`` (with its CRLF) and return the reply, under ``rlock`` (internal 2)."""
        reply: str = self._send_and_receive(command)
        return reply

    def check_reply(self, reply: str) -> None:
        """Raise ``FaktroyWorkProtocolError`` for an error or empty reply (internal 3)."""
        self._raise_error(reply)

    def set_state(self, state: Any) -> None:
        """Enter a lifecycle ``State`` (internal 4)."""
        self._set_state(state)

    def beat(self, rss_kb: int | None) -> None:
        """Send BEAT; a quiet/terminate reply changes ``state`` (internal 5)."""
        self._beat(rss_kb=rss_kb)

    def end(self) -> None:
        """Send END (internal 6)."""
        self._end()

    def push(self, job: dict[str, Any]) -> None:
        """PUSH one job dict (internal 7)."""
        self._push(job)

    def push_batch(self, jobs: list[dict[str, Any]]) -> str:
        """PUSHB job dicts; return the raw reply (``+OK`` or a bulk map of refusals; 8)."""
        reply: str = self._pushb(jobs)
        return reply

    def fetch(self, queues: list[str]) -> dict[str, Any] | None:
        """FETCH from ``queues`` in order; the job as a dict, or None (internal 9)."""
        job: dict[str, Any] | None = self._fetch(queues)
        return job

    def ack(self, jid: str) -> None:
        """ACK a fetched job by id (internal 9a)."""
        self._ack(jid)


def mutate_operation(cmd: str, target: str, *, jids: list[str] | None = None,
                     regexp: str | None = None) -> Any:
    """Pyfaktory's public ``MutateOperation`` model, for ``Client.mutate``."""
    return _models.MutateOperation(
        cmd=cmd, target=target,
        filter=_models.JobFilter(jids=jids, regexp=regexp, jobtype=None),
    )


def error_text(exc: BaseException) -> str:
    """A pyfaktory error's message without the prefix of server errors (internal 14)."""
    return str(exc).replace(_SERVER_ERROR_PREFIX, "")


def connection_unusable(exc: BaseException) -> bool:
    """Whether a pyfaktory error means the connection is gone (internal 14).

    An empty reply (the server closed the connection), or a command refused because the
    connection is not in a state that allows it (e.g. after a failed handshake).
    """
    msg = str(exc)
    return any(s in msg for s in _UNUSABLE)
