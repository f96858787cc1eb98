"""pytest plugin that makes the conformance suite usable in any project.

Installing unifiedq registers this module under the ``pytest11`` entry point ``unifiedq``, so
pytest loads it in every run without a ``conftest.py`` line; ``-p no:unifiedq`` turns it off,
and ``-p unifiedq`` turns it on when ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` is set. It:

* registers the markers the suite uses, ``requires(capability)`` and ``lacks(capability)``,
  so a driver's test run passes ``--strict-markers`` and raises no unknown-marker warning;
* has pytest rewrite the asserts of :mod:`unifiedq.testing.suite`, so a failing conformance
  test shows the values it compared;
* fails a test whose ``requires``/``lacks`` mark names a :class:`~unifiedq.Capability` but is
  not gated by the suite (it would otherwise run whatever the driver can do), and a suite
  test whose mark does not name exactly one :class:`~unifiedq.Capability`.

The gating itself (skip a ``requires(X)`` test when the driver lacks X, a ``lacks(X)`` test
when it has X) is the suite's autouse fixture, because only the suite's harness knows the
driver under test. This plugin starts no server and imports no driver: the real-server
fixtures stay opt-in, through ``pytest_plugins = ["unifiedq.testing.fixtures"]``.
"""

from __future__ import annotations

import sys

import pytest

from .._capabilities import Capability

__all__ = ["GATE_FIXTURE", "MARKERS"]

#: The markers this plugin registers, as ``config.addinivalue_line("markers", ...)`` lines.
MARKERS: tuple[str, ...] = (
    "requires(capability): unifiedq conformance suite: run only when the driver has this "
    "unifiedq.Capability (skipped otherwise; the lacks() twin covers it)",
    "lacks(capability): unifiedq conformance suite: run only when the driver lacks this "
    "unifiedq.Capability (skipped otherwise; the requires() twin covers it)",
)

#: The suite's autouse fixture that applies ``requires``/``lacks`` marks.
GATE_FIXTURE = "_gate"

_GATED_MARKS = ("requires", "lacks")
_SUITE_MODULE = "unifiedq.testing.suite"

# Before the suite is first imported; pytest warns about modules imported earlier.
if _SUITE_MODULE not in sys.modules:
    pytest.register_assert_rewrite(_SUITE_MODULE)


def pytest_configure(config: pytest.Config) -> None:
    """Register the suite's markers."""
    for line in MARKERS:
        config.addinivalue_line("markers", line)


def _mark_problem(item: pytest.Item) -> str | None:
    gated = GATE_FIXTURE in getattr(item, "fixturenames", ())
    for name in _GATED_MARKS:
        for mark in item.iter_markers(name):
            names_capability = any(isinstance(arg, Capability) for arg in mark.args)
            if not gated:
                if names_capability:  # ours; a project's own requires("docker") is not
                    return (
                        f"@{name}({', '.join(map(repr, mark.args))}) only gates tests of a "
                        "unifiedq.testing.suite.QueueConformance subclass; this test would "
                        "run whatever the driver can do"
                    )
                continue
            if len(mark.args) != 1 or not names_capability or mark.kwargs:
                return (
                    f"@{name}(...) takes exactly one unifiedq.Capability, e.g. "
                    f"{name}(Capability.PEEK); got args={mark.args!r} kwargs={mark.kwargs!r}"
                )
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test whose capability mark would be ignored or could not be applied."""
    problem = _mark_problem(item)
    if problem is not None:
        pytest.fail(f"{item.nodeid}: {problem}", pytrace=False)
