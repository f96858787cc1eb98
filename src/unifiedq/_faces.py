"""Loading the two faces of a public module on first use.

A public module such as ``unifiedq.fair`` holds the code both faces share and re-exports the two
face classes, whose modules (``_async/fair.py`` and the generated ``_sync/fair.py``) import that
shared code from it. Importing the faces at the top of the public module would make a cycle, so
the public module's ``__getattr__`` loads them on first access through :func:`load_face`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["load_face"]


def load_face(namespace: dict[str, Any], name: str, faces: Mapping[str, str]) -> Any:
    """Import the face class ``name`` from its module in ``faces``, cache it and return it.

    Args:
        namespace: The public module's ``globals()``; the class is stored there.
        name: The attribute asked for.
        faces: Class name -> module, relative to the public module's package.

    Raises:
        AttributeError: ``name`` is not one of ``faces``.
    """
    module = faces.get(name)
    if module is None:
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, namespace["__package__"]), name)
    namespace[name] = value
    return value
