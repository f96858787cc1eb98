"""Build a Go interop program of tests/ once per source hash, cached under ~/.cache/unifiedq."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from unifiedq.testing.fixtures import in_ci


def built_go_program(src: Path, stem: str, purpose: str, *,
                     files: tuple[str, ...] = ("go.mod", "go.sum", "main.go"),
                     package: str = ".", timeout: float = 600) -> Path:
    """The binary of the Go module in ``src``, built if needed (cached by a hash of ``files``).

    ``package`` is what ``go build`` builds (``.``: the module's own main package; or another
    module's command pinned by ``src``'s go.mod, as asynqmon's). A missing Go toolchain skips
    locally and fails under ``CI=true`` (``purpose`` says what the tests needed it for).
    """
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go")
                                else None)
    if go is None:
        if in_ci():
            pytest.fail(f"CI=true but the Go toolchain is missing (needed for {purpose})")
        pytest.skip(f"Go toolchain not found; install Go to run the {purpose} tests")
    digest = hashlib.sha256()
    for name in files:
        digest.update((src / name).read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unifiedq"
    target = cache / f"{stem}-{digest.hexdigest()[:16]}"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        env = dict(os.environ, GOFLAGS="-mod=mod -buildvcs=false")
        proc = subprocess.run([go, "build", "-o", str(tmp), package], cwd=src, env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert proc.returncode == 0, f"go build of {purpose} failed:\n{proc.stderr}"
        os.replace(tmp, target)
    return target
