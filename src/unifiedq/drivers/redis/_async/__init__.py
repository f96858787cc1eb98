# unasync: the blocking twin of this package, _sync/, is generated from it.
"""The two faces of the redis:// driver: ``_async/`` is the source, ``_sync/`` is generated."""
