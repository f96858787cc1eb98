"""No module outside ``unifiedq/_compat/`` reaches into another library's private names.

A private name is a module path component or an imported name that starts with ``_`` (dunders
such as ``__version__`` are public). Checked with ``ast`` over every module under
``src/unifiedq``: ``import lib._x``, ``from lib._x import y``, ``from lib.x import _y``,
``importlib.import_module("lib._x")`` and attribute chains on an imported library module
(``lib.x._y``). Uses of private names on *objects* (``conn._push(...)``) are the compat
modules' business too, but a static check cannot tell whose object a name is; the compat
tests (``tests/test_compat*.py``) pin those.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "unifiedq"
LIBRARIES = frozenset({"aioquic", "pyfaktory", "amqp", "kombu", "redis", "atomics"})
#: Modules allowed to use private names of one library: the compat layers.
ALLOWED = {
    "_compat": LIBRARIES,  # the whole package
    "drivers/_shm_atomics.py": frozenset({"atomics"}),  # the compat layer of `atomics`
}


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _allowed(rel: str, library: str) -> bool:
    return any((rel == key or rel.startswith(f"{key}/")) and library in libs
               for key, libs in ALLOWED.items())


def _violations(path: Path, rel: str) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    aliases: dict[str, str] = {}  # local name -> dotted library module it is bound to

    def flag(node: ast.AST, what: str, library: str) -> None:
        if not _allowed(rel, library):
            found.append(f"{rel}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] in LIBRARIES:
                    aliases[a.asname or parts[0]] = a.name if a.asname else parts[0]
                    if any(map(_private, parts)):
                        flag(node, f"import {a.name}", parts[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] not in LIBRARIES:
                continue
            for a in node.names:
                if any(map(_private, parts)) or _private(a.name):
                    flag(node, f"from {node.module} import {a.name}", parts[0])
                else:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("import_module", "__import__")))):
            parts = node.args[0].value.split(".")
            if parts[0] in LIBRARIES and any(map(_private, parts)):
                flag(node, f"import_module({node.args[0].value!r})", parts[0])
    # Attribute chains rooted at a name bound to a library module: ``amqp.spec._x``.
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        base: ast.expr = node.value
        chain = [node.attr]
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        if isinstance(base, ast.Name) and base.id in aliases:
            target = aliases[base.id]
            # A private module, or a private attribute of a library module or class.
            dotted = ".".join([target, *chain])
            flag(node, dotted, target.split(".")[0])
    return found


def _scan() -> list[str]:
    out: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        out += _violations(path, rel)
    return out


def test_no_private_imports_of_other_libraries_outside_compat() -> None:
    unexpected = _scan()
    assert not unexpected, (
        "private names of other libraries used outside unifiedq/_compat/ (move each behind a "
        "function of unifiedq/_compat/<library>.py, pinned by tests/test_compat*.py):\n  "
        + "\n  ".join(unexpected))


def test_the_scan_has_teeth(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import aioquic._buffer\n"
        "import redis as r\n"
        "from amqp._x import y\n"
        "from pyfaktory.client import _helper\n"
        "from kombu.transport import virtual\n"
        "import importlib\n"
        "importlib.import_module('atomics._impl')\n"
        "x = r.connection._private\n"
        "ok = r.__version__\n"
        "from aioquic.tls import verify_certificate\n"
        "from . import _local\n"
    )
    found = _violations(bad, "drivers/bad.py")
    assert [v.split(": ", 1)[1] for v in found] == [
        "import aioquic._buffer",
        "from amqp._x import y",
        "from pyfaktory.client import _helper",
        "import_module('atomics._impl')",
        "redis.connection._private",
    ], found
    assert _violations(bad, "_compat/aioquic.py") == []
    assert len(_violations(bad, "drivers/_shm_atomics.py")) == 4  # only atomics is allowed
