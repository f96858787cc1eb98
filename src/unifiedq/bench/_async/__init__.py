# unasync: the blocking twin of this package, _sync/, is generated from it.
"""One face of the bench's run: ``_async/`` is the source, ``_sync/`` is generated.

``scripts/generate_sync.py`` writes each ``_sync`` module from its ``_async`` source; a test fails
when one is stale. Edit the ``_async`` files only; see docs/contributing.md.
"""
