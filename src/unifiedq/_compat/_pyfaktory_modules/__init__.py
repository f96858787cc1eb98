"""pyfaktory's own modules, imported as submodules of this package (see ``_compat/pyfaktory``).

This package has no modules of its own: its ``__path__`` is pyfaktory's installed directory,
so ``import unifiedq._compat._pyfaktory_modules.client`` runs pyfaktory's ``client.py`` (and,
through its relative imports, ``models.py`` and ``util/``) while this file stands in for
pyfaktory's ``__init__.py``, which would import ``consumer.py`` and with it pebble's
``@sighandler(SIGTERM)``. Only :mod:`unifiedq._compat.pyfaktory` imports from here.
"""

from __future__ import annotations

import importlib.util

# A top-level spec lookup runs the path finders only: nothing of pyfaktory executes here.
_spec = importlib.util.find_spec("pyfaktory")
if _spec is None or not _spec.submodule_search_locations:
    raise ImportError("No module named 'pyfaktory'", name="pyfaktory")

__path__ = list(_spec.submodule_search_locations)
