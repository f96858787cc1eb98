"""``unifiedq dashboard``: a web dashboard over queues of every driver (the ``dashboard`` extra).

Per queue it shows the depth (ready, delayed, leased, dead where the driver knows them), the
oldest job's age, enqueue and settle rates over time (sampled server side), dead letters with
retry and delete actions (read-only unless actions are allowed), and a fair queue's tenants
with their weights and shares. See ``docs/dashboard.md``.

Use it from the command line (``unifiedq dashboard URL ...``) or embed the ASGI app::

    from unifiedq.dashboard import create_app
    app = create_app(["redis://localhost:6379/0?queue=emails"])   # serve with any ASGI server
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._app import Dashboard, Settings, is_loopback
from ._sources import DeadLetter, FairSource, QueueSource, Sample, Source, mask_url

__all__ = ["Dashboard", "DeadLetter", "FairSource", "QueueSource", "Sample", "Settings",
           "Source", "create_app", "is_loopback", "make_sources", "mask_url"]


def make_sources(urls: Sequence[str], *, tenants: Sequence[str] = (),
                 weights: Mapping[str, float] | None = None) -> list[Source]:
    """One source per URL: a URL with ``{tenant}`` is a fair queue's template.

    Args:
        urls: Queue URLs (opened lazily, at the first reading).
        tenants: Tenants of every fair-queue template (others are found on redis).
        weights: Tenant weights as the fair queue was given them (default 1.0).
    """
    out: list[Source] = []
    for url in urls:
        if "{tenant}" in url:
            out.append(FairSource(url, tenants=list(tenants), weights=weights))
        else:
            out.append(QueueSource(url))
    return out


def create_app(urls: Sequence[str] | Sequence[Source],
               settings: Settings | None = None) -> Dashboard:
    """Build the dashboard over ``urls`` (or ready-made sources).

    Args:
        urls: Queue URLs (see :func:`make_sources`) or :class:`Source` objects.
        settings: Behaviour; the default is read-only, loopback-only, a reading every 2 s.

    Returns:
        The :class:`Dashboard`; its ``app()`` is the ASGI app to serve.
    """
    sources = [u if isinstance(u, Source) else make_sources([u])[0] for u in urls]
    return Dashboard(sources, settings)
