"""Build a Go interop program of tests/ once per source hash, cached under ~/.cache/unifiedq."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from unifiedq.testing.fixtures import in_ci


def built_go_program(src: Path, stem: str, purpose: str) -> Path:
    """The binary of the Go module in ``src`` (go.mod, go.sum, main.go), built if needed.

    A missing Go toolchain skips locally and fails under ``CI=true`` (``purpose`` says what
    the tests needed it for).
    """
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go")
                                else None)
    if go is None:
        if in_ci():
            pytest.fail(f"CI=true but the Go toolchain is missing (needed for {purpose})")
        pytest.skip(f"Go toolchain not found; install Go to run the {purpose} tests")
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((src / name).read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unifiedq"
    target = cache / f"{stem}-{digest.hexdigest()[:16]}"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        env = dict(os.environ, GOFLAGS="-mod=mod")
        proc = subprocess.run([go, "build", "-o", str(tmp), "."], cwd=src, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, f"go build failed:\n{proc.stderr}"
        os.replace(tmp, target)
    return target
