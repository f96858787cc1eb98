"""Producer processes against an atomic bound (shared by the single-server and cluster tests).

``check_producers_never_overshoot(url, nprocs)`` runs ``nprocs`` OS processes that together try
1,600 enqueues against ``BoundedQueue(url, maxsize=1000)`` and checks the ledger: every attempt
is either accepted or reported as ``QueueFull``, the queue holds exactly the accepted jobs, never
more than the bound, and the bound was reached.
"""

from __future__ import annotations

import json
import subprocess
import sys

import unifiedq

_PRODUCER = r"""
import json, sys
import unifiedq
from unifiedq.bounded import BoundedQueue
url, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bq = BoundedQueue(url, maxsize=1000)
assert bq.native, bq
ok = full = 0
i = 0
while i < n:
    k = min(batch, n - i)
    try:
        if k == 1:
            bq.enqueue(b"x")
        else:
            bq.enqueue_many([b"x"] * k)
        ok += k
    except unifiedq.QueueFull:
        full += k
    i += k
s = bq.stats()
assert s["accepted"] == ok and s["reject"] == full, (s, ok, full)
print(json.dumps({"ok": ok, "full": full}))
"""


def check_producers_never_overshoot(url: str, nprocs: int) -> None:
    """Run the producers and check the ledger; purge the queue afterwards."""
    per = 1600 // nprocs  # 1,600 attempts against a bound of 1,000
    # Half the producers enqueue one job at a time, half all-or-nothing batches of 5.
    procs = [subprocess.Popen([sys.executable, "-c", _PRODUCER, url, str(per),
                               str(1 + 4 * (i % 2))], stdout=subprocess.PIPE, text=True)
             for i in range(nprocs)]
    res = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        res.append(json.loads(out))
    ok = sum(r["ok"] for r in res)
    full = sum(r["full"] for r in res)
    q = unifiedq.connect(url)
    try:
        assert ok + full == nprocs * per  # every attempt accepted or reported as QueueFull
        assert q.size() == ok <= 1000  # zero overshoot
        assert ok >= 1000 - 4  # and the bound was reached (a batch of 5 may not fit the end)
    finally:
        q.purge()
        q.close()
