"""The conformance suite must fail drivers that lie: run it against deliberately broken ones."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

_BROKEN = '''
import heapq
from unifiedq import Capability, DriverSpec, register_driver
from unifiedq.drivers import memory
from unifiedq.testing.suite import QueueConformance


class ClaimsPeekButCannot(memory.MemoryQueue):
    driver = "liar-peek"
    capabilities = memory.MemoryQueue.capabilities  # keeps PEEK ...

    def _peek(self):
        return None  # ... but never sees anything


class IgnoresPriority(memory.MemoryQueue):
    driver = "liar-prio"

    def _add(self, req, now):
        return super()._add(req._replace(priority=None) if hasattr(req, "_replace") else
                            type(req)(req.body, req.delay, None, req.job_id, req.custom_id,
                                      req.headers), now)


class HidesPeek(memory.MemoryQueue):
    driver = "liar-nopeek"
    capabilities = memory.MemoryQueue.capabilities & ~Capability.PEEK

    def peek(self):  # says it lacks PEEK, yet peeks instead of raising
        return self._peek()


class LosesEveryHundredth(memory.MemoryQueue):
    driver = "liar-lossy"
    n = 0

    def _enqueue(self, req):
        type(self).n += 1
        if type(self).n % 100 == 0:
            return req.job_id  # reports success, keeps nothing
        return super()._enqueue(req)


for scheme, cls in [("liarpeek", ClaimsPeekButCannot), ("liarprio", IgnoresPriority),
                    ("liarnopeek", HidesPeek), ("liarlossy", LosesEveryHundredth)]:
    module = type(memory)(f"liar_{scheme}")
    module.sync_class = cls
    module.async_class = None
    import sys
    sys.modules[module.__name__] = module
    register_driver(DriverSpec(scheme, module.__name__), replace=True)


class TestLiar(QueueConformance):
    URL = "SCHEME://{name}"
'''


@pytest.mark.parametrize(
    ("scheme", "must_fail"),
    [
        ("liarpeek", "test_peek"),
        ("liarprio", "test_priority_order"),
        ("liarnopeek", "test_peek_unsupported"),
        ("liarlossy", "test_concurrent_ledger"),
    ],
)
def test_suite_fails_a_lying_driver(pytester: pytest.Pytester, scheme: str,
                                    must_fail: str) -> None:
    pytester.makepyfile(test_liar=_BROKEN.replace("SCHEME", scheme))
    # No marker configuration: the unifiedq pytest plugin registers the suite's markers.
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-k", must_fail,
                                           "--strict-markers")
    outcomes = result.parseoutcomes()
    out = result.stdout.str()
    assert outcomes.get("failed", 0) >= 1, out[-2000:]
    # It must fail on the suite's assertion, not because the broken driver crashed.
    assert "AssertionError" in out or "DID NOT RAISE" in out, out[-2000:]
    assert "errors" not in outcomes, out[-2000:]


def test_suite_passes_the_honest_reference_driver_on_the_same_tests(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_honest=(
        "from unifiedq.testing.suite import QueueConformance\n"
        "class TestHonest(QueueConformance):\n"
        "    URL = 'memory://{name}'\n"
    ))
    result = pytester.runpytest_subprocess(
        "-q", "-p", "no:cacheprovider", "--strict-markers", "-k",
        "test_peek or test_priority_order or test_concurrent_ledger")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("passed", 0) >= 4, \
        result.stdout.str()[-2000:]
