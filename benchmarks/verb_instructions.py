"""Instructions per hot-path verb pair, counted by valgrind (deterministic on a noisy machine).

    python benchmarks/verb_instructions.py [--tree DIR ...] [--n 20000]

For each tree (a checkout: its ``src`` goes first on PYTHONPATH; default: this one) it runs
``enqueue`` + ``dequeue`` (+ ``ack`` on memory://) ``n`` times under ``valgrind
--tool=callgrind`` and once with ``n = 0``, and prints the difference per iteration. Use it to
compare two commits (``git worktree add /tmp/old <rev>``; copy the compiled
``src/unifiedq/drivers/_shmring*.so`` into the old tree) when a change must not slow a hot
path: wall-clock numbers on a shared 2-core machine swing by ±30%, instruction counts do not.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import asyncio, sys, unifiedq
n, url, face = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ack = url.startswith("memory")
if face == "sync":
    q = unifiedq.connect(url)
    for _ in range(n):
        q.enqueue(b"x" * 64)
        j = q.dequeue()
        if ack:
            q.ack(j)
    q.purge(); q.close()
else:
    async def main() -> None:
        q = unifiedq.connect_async(url)
        for _ in range(n):
            await q.enqueue(b"x" * 64)
            j = await q.dequeue()
            if ack:
                await q.ack(j)
        await q.purge(); await q.aclose()
    asyncio.run(main())
if url.startswith("shm"):
    from unifiedq.drivers import shm
    shm.unlink(url.split("//")[1])
"""


def count(tree: Path, n: int, url: str, face: str) -> int:
    """Instructions valgrind counts for one child run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "cg.out")
        env = {**os.environ, "PYTHONPATH": str(tree / "src")}
        r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                            sys.executable, "-c", _CHILD, str(n), url, face],
                           env=env, capture_output=True, text=True, check=True, cwd=tmp)
    m = re.search(r"Collected : (\d+)", r.stderr)
    if m is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{r.stderr[-2000:]}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", type=Path, default=[])
    ap.add_argument("--n", type=int, default=20000)
    a = ap.parse_args()
    trees = a.tree or [Path(__file__).resolve().parent.parent]
    cases = [("memory", "sync"), ("shm", "sync"), ("shm", "async"), ("memory", "async")]
    print(f"instructions per enqueue+dequeue(+ack), n={a.n}")
    for scheme, face in cases:
        cells = []
        for i, tree in enumerate(trees):
            url = f"{scheme}://vi-{os.getpid()}-{i}"
            per = (count(tree, a.n, url, face) - count(tree, 0, url, face)) / a.n
            cells.append(f"{tree}: {per:,.0f}")
        print(f"  {scheme:7} {face:5} " + "   ".join(cells))


if __name__ == "__main__":
    main()
