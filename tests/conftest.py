"""Project-wide test configuration: the real-server rig, and no silent skips under CI."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

pytest_plugins = ["unifiedq.testing.fixtures"]

# The only skips CI accepts: the conformance suite's capability pairing (a driver with PEEK
# skips "PEEK is unsupported" and vice versa), and a suite class without a restart hook.
_ALLOWED_CI_SKIPS = ("the requires(", "the lacks(", "provides no restart_backend fixture")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Under CI=true, turn any other skip (missing module, server, tool) into a failure."""
    outcome = yield
    rep = outcome.get_result()
    in_ci = os.environ.get("CI", "").strip().lower() == "true"  # as unifiedq.testing.fixtures
    if rep.skipped and in_ci and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        if not any(allowed in reason for allowed in _ALLOWED_CI_SKIPS):
            rep.outcome = "failed"
            rep.longrepr = f"skipped under CI=true, which must exercise every test: {reason}"
