"""Connection-string parsing and typed driver options.

A driver declares its options as a frozen dataclass; :func:`parse_options` fills it from the
URL query string and from keyword arguments to ``connect()``, converting strings to the
declared types. Unknown or malformed options raise :class:`InvalidURL` before any I/O.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
import urllib.parse
from collections.abc import Mapping
from typing import Any, TypeVar

from ._errors import InvalidURL

__all__ = ["URL", "parse_options", "parse_url"]

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True, slots=True)
class URL:
    """A parsed connection string.

    Attributes:
        raw: The URL as given (may contain a password: never log it; use ``redacted()``).
        scheme: Lower-cased scheme, e.g. ``"redis"``.
        username: Decoded user name, if any.
        password: Decoded password, if any.
        host: Host name or address, if any (None when the URL lists several hosts).
        port: Port, if any.
        path: The path with its leading ``/`` removed (percent-decoded).
        authority: The host part exactly as written (case kept, no credentials), for drivers
            whose URLs name a local object, as in ``memory://Jobs``.
        query: Query options (each key at most once).
    """

    raw: str
    scheme: str
    username: str | None
    password: str | None
    host: str | None
    port: int | None
    path: str
    authority: str
    query: Mapping[str, str]

    def redacted(self) -> str:
        """Return the URL with any password replaced by ``***``, safe to log."""
        if self.password is None:
            return self.raw
        parts = urllib.parse.urlsplit(self.raw)
        user = urllib.parse.quote(self.username or "", safe="")
        if self.host is None and self.authority:  # several hosts: keep them as written
            netloc = f"{user}:***@{parts.netloc.rpartition('@')[2]}"
            return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        netloc = f"{user}:***@{parts.hostname or ''}"
        if "[" in parts.netloc:
            netloc = f"{user}:***@[{parts.hostname}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def parse_url(url: object) -> URL:
    """Parse a connection string.

    Args:
        url: A string such as ``"redis://:secret@localhost:6379/0?queue=emails"``.

    Returns:
        The parsed URL.

    Raises:
        InvalidURL: The value is not a string, has no scheme, a bad port, or repeats an option.
    """
    if not isinstance(url, str):
        raise InvalidURL(f"queue URL must be a str such as 'memory://jobs', not {url!r}")
    if "://" not in url:
        raise InvalidURL(f"queue URL {url!r} has no scheme; expected e.g. 'memory://jobs'")
    try:
        parts = urllib.parse.urlsplit(url)
        # Several hosts (``h1:26379,h2:26379``, as Sentinel URLs list them) leave host and port
        # unset; the driver reads them from ``authority``.
        multi = "," in parts.netloc.rpartition("@")[2]
        port = None if multi else parts.port
    except ValueError as exc:
        raise InvalidURL(f"cannot parse queue URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if not scheme:
        raise InvalidURL("queue URL has an empty scheme; expected e.g. 'memory://jobs'")
    query: dict[str, str] = {}
    try:
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:  # pragma: no cover - parse_qsl is lenient without strict
        raise InvalidURL(f"cannot parse the query of the queue URL: {exc}") from exc
    for key, value in pairs:
        if key in query:
            raise InvalidURL(f"option {key!r} is given twice in the queue URL")
        query[key] = value
    return URL(
        raw=url,
        scheme=scheme,
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=urllib.parse.unquote(parts.password) if parts.password is not None else None,
        host=None if multi else parts.hostname,
        port=port,
        path=urllib.parse.unquote(parts.path.lstrip("/")),
        authority=urllib.parse.unquote(parts.netloc.rpartition("@")[2]),
        query=query,
    )


def parse_options(
    cls: type[T],
    query: Mapping[str, str],
    overrides: Mapping[str, object] | None = None,
    *,
    driver: str,
) -> T:
    """Build the options dataclass ``cls`` from URL query strings and keyword overrides.

    Args:
        cls: A dataclass whose fields are the driver's options, each with a default.
        query: Options from the URL (strings).
        overrides: Options passed to ``connect()`` as keyword arguments (typed or strings).
        driver: Driver name for error messages.

    Returns:
        An instance of ``cls``.

    Raises:
        InvalidURL: An option is unknown, or its value cannot be converted or is rejected
            by the dataclass's ``__post_init__`` (which may raise ``ValueError``).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    merged: dict[str, object] = dict(query)
    merged.update(overrides or {})
    for key, raw in merged.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(fields)) or "none"
            raise InvalidURL(
                f"unknown option {key!r} for the {driver!r} driver{hint} (known options: {known})"
            )
        values[key] = _convert(raw, hints[key], key, driver)
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise InvalidURL(f"invalid option for the {driver!r} driver: {exc}") from exc


def _convert(raw: object, hint: Any, key: str, driver: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (raw is None or (isinstance(raw, str) and
                                                   raw.lower() in ("", "none"))):
            return None
        errors: list[str] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(raw, arg, key, driver)
            except InvalidURL as exc:
                errors.append(str(exc))
        raise InvalidURL(errors[0] if errors else f"bad value for option {key!r}")
    if origin is typing.Literal:
        if raw in args:
            return raw
        choices = ", ".join(repr(a) for a in args)
        raise InvalidURL(f"option {key!r} of the {driver!r} driver must be one of {choices}, "
                         f"not {raw!r}")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return raw if isinstance(raw, hint) else hint(raw)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in hint)
            raise InvalidURL(f"option {key!r} must be one of {choices}, not {raw!r}") from None
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise InvalidURL(f"option {key!r} must be true or false, not {raw!r}")
    if hint is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw)
            except ValueError:
                pass
        raise InvalidURL(f"option {key!r} of the {driver!r} driver must be an integer, "
                         f"not {raw!r}")
    if hint is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
        raise InvalidURL(f"option {key!r} of the {driver!r} driver must be a number, not {raw!r}")
    if hint is str:
        if isinstance(raw, str):
            return raw
        raise InvalidURL(f"option {key!r} must be a string, not {raw!r}")
    if isinstance(hint, type) and isinstance(raw, hint):
        return raw
    raise InvalidURL(f"option {key!r} of the {driver!r} driver cannot take {raw!r}")
