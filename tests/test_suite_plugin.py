"""A third-party project runs the shipped conformance suite with nothing but an install.

The test lays out a throwaway project in a temporary directory: its own driver (the memory
driver under its own URL scheme and name) registered through the ``unifiedq.drivers`` entry
point, and a test file that is a one-line suite subclass; no conftest.py and no marker
configuration. It installs the project into a fresh venv that sees this environment's unifiedq
and pytest (``--system-site-packages``) and runs pytest there with ``--strict-markers -W
error``. The unifiedq pytest plugin (``pytest11`` entry point) is then the only thing that
registers the suite's markers, so the same run with ``-p no:unifiedq`` must fail.

pip installs from source only through a build backend, which the venv lacks offline (this
environment's setuptools cannot build wheels on its own); so the test plays the backend: it
zips the project's module and metadata into a wheel, and pip installs that wheel.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import subprocess
import textwrap
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

_DIST = "uqdemo_driver"
_VERSION = "0.1"

_PYPROJECT = f"""\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "uqdemo-driver"
version = "{_VERSION}"
dependencies = ["unifiedq"]

[project.entry-points."unifiedq.drivers"]
uqdemo = "uqdemo_driver"

[tool.setuptools]
py-modules = ["uqdemo_driver"]
"""

_DRIVER = '''\
"""uqdemo://<queue name>: a third-party driver (the memory driver under its own name)."""

from unifiedq.drivers import memory


class DemoQueue(memory.MemoryQueue):
    """The memory driver, renamed."""

    driver = "uqdemo"


sync_class = DemoQueue
async_class = None
'''

# The lease is shortened to the suite's default LEASE_SECONDS (1 s) in the URL itself.
_TEST_FILE = """\
from unifiedq.testing.suite import QueueConformance

class TestDemo(QueueConformance): URL = "uqdemo://{name}?visibility_timeout=1"
"""

_ALLOWED_SKIPS = ("the requires(", "the lacks(", "provides no restart_backend fixture")


@dataclass(frozen=True)
class ThirdParty:
    """A throwaway driver project installed in its own venv."""

    root: Path
    python: Path

    def pytest(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTEST_", "COV_CORE_")) and k != "PYTHONPATH"}
        env.update(extra_env)
        # Other installed plugins stay out: their own warnings (pytest-asyncio's about an
        # unset loop scope, say) would fail -W error in any project and prove nothing here.
        others = [arg for ep in importlib.metadata.entry_points(group="pytest11")
                  if ep.name != "unifiedq" for arg in ("-p", f"no:{ep.name}")]
        return subprocess.run(
            [str(self.python), "-m", "pytest", "--strict-markers", "-W", "error",
             "-p", "no:cacheprovider", *others, "-rs", *args],
            cwd=self.root, env=env, capture_output=True, text=True, timeout=240,
            check=False,
        )


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _build_wheel(root: Path, out: Path) -> Path:
    """Build the project's wheel by hand: its module plus the .dist-info pip needs."""
    info = f"{_DIST}-{_VERSION}.dist-info"
    files = {
        f"{_DIST}.py": (root / f"{_DIST}.py").read_bytes(),
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: uqdemo-driver\nVersion: {_VERSION}\n"
            "Requires-Dist: unifiedq\n").encode(),
        f"{info}/WHEEL": (b"Wheel-Version: 1.0\nGenerator: test_suite_plugin\n"
                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
        f"{info}/entry_points.txt": b"[unifiedq.drivers]\nuqdemo = uqdemo_driver\n",
    }
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out / f"{_DIST}-{_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


@pytest.fixture(scope="module")
def third_party(tmp_path_factory: pytest.TempPathFactory) -> ThirdParty:
    plugins = importlib.metadata.entry_points(group="pytest11")
    assert any(ep.value == "unifiedq.testing.plugin" for ep in plugins), (
        "unifiedq's pytest11 entry point is not installed; run "
        "`pip install -e . --no-deps` to refresh the package metadata")

    base = tmp_path_factory.mktemp("third-party")
    root = base / "uqdemo"
    (root / "tests").mkdir(parents=True)
    (root / "pyproject.toml").write_text(_PYPROJECT)
    (root / f"{_DIST}.py").write_text(_DRIVER)
    (root / "tests" / "test_uqdemo.py").write_text(_TEST_FILE)
    wheel = _build_wheel(root, base)
    # Installed, not importable from the project directory: the pytest run must find the
    # driver through its entry point, as it would for a real third-party package.
    (root / f"{_DIST}.py").unlink()

    env_dir = base / "venv"
    # No pip of its own (ensurepip is slow): the system pip is visible through the
    # system site-packages and installs into the venv it runs in.
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir",
         "--disable-pip-version-check", "-q", str(wheel)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    probe = subprocess.run(
        [str(python), "-c", textwrap.dedent("""\
            import sys, importlib.metadata as m
            assert sys.prefix != sys.base_prefix
            print(sorted(e.value for e in m.entry_points(group="unifiedq.drivers")))
        """)],
        cwd=base, capture_output=True, text=True, timeout=60, check=False,
    )
    assert probe.returncode == 0 and "uqdemo_driver" in probe.stdout, (
        probe.stdout + probe.stderr)
    return ThirdParty(root=root, python=python)


def test_third_party_project_runs_the_suite_with_strict_markers(
    third_party: ThirdParty,
) -> None:
    result = third_party.pytest("-q")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    outcomes = pytest.RunResult.parse_summary_nouns(result.stdout.splitlines())
    assert outcomes.get("passed", 0) >= 100, (outcomes, out[-4000:])
    for noun in ("failed", "errors", "warnings", "xpassed"):
        assert noun not in outcomes, (outcomes, out[-4000:])
    assert "PytestUnknownMarkWarning" not in out
    # The suite's gate ran there: its capability-pairing skips are the only skips.
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) >= 1 and outcomes.get("skipped", 0) >= len(skips), out[-4000:]
    for line in skips:
        assert any(allowed in line for allowed in _ALLOWED_SKIPS), line


def test_without_the_plugin_strict_markers_reject_the_suite(third_party: ThirdParty) -> None:
    result = third_party.pytest("-q", "-p", "no:unifiedq", "--co")
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-4000:]
    assert "'requires' not found in `markers` configuration option" in out, out[-4000:]


def test_with_autoload_disabled_the_plugin_is_named_by_module(
    third_party: ThirdParty,
) -> None:
    off = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = third_party.pytest("-q", "--co", **off)
    assert result.returncode != 0, (result.stdout + result.stderr)[-4000:]
    result = third_party.pytest("-q", "--co", "-p", "unifiedq.testing.plugin", **off)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "tests collected" in out and "warning" not in out, out[-4000:]


def test_plugin_rejects_capability_marks_the_suite_does_not_gate(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_marks=(
        "import pytest\n"
        "from unifiedq import Capability\n"
        "from unifiedq.testing.suite import QueueConformance, requires\n"
        "@requires(Capability.PEEK)\n"
        "def test_ungated():\n    pass\n"
        "@pytest.mark.requires('docker')\n"
        "def test_someone_elses_requires_marker():\n    pass\n"
        "class TestBadMark(QueueConformance):\n"
        "    URL = 'memory://{name}'\n"
        "    @pytest.mark.lacks('PEEK')\n"
        "    def test_string_capability(self):\n        pass\n"
    ))
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-k",
                                           "ungated or someone or string_capability")
    result.assert_outcomes(passed=1, errors=3)
    result.stdout.fnmatch_lines([
        "*test_ungated*only gates tests of a unifiedq.testing.suite.QueueConformance subclass*",
        "*test_string_capability*takes exactly one unifiedq.Capability*",
    ])
