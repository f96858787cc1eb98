"""Noisy neighbour: plain FIFO vs FairQueue, 10 tenants, one bursting 10x the others.

Two measurements per driver, FIFO and FairQueue side by side in one run:

A. Share while backlogged. Every tenant has a backlog (the heavy tenant 10x the others,
   arriving interleaved 10:1); one consumer takes ``10 * L`` jobs, during which every tenant
   stays backlogged under fair scheduling. Reports each tenant's share of those dequeues and
   Jain's fairness index of share/weight (1.0 = exactly proportional to the weights). Run
   twice for fair: equal weights, and tenant t1 at weight 3.

B. Waiting time under overload. Open-loop Poisson producers (seeded): 9 light tenants at
   ``r`` jobs/s each and a heavy one at ``10 r``; ``C`` consumer threads each spend ``S``
   seconds per job. Offered load is ``19 r`` against a capacity of ``C / S``: the light
   tenants alone fit (about 56%), all together do not (about 119%). Reports wait p50/p99 per
   tenant (enqueue -> dequeue) for an unloaded run (light tenants only), FIFO and fair, and
   the light tenants' p99 relative to unloaded (target: <= 2x under fair). Producers and
   consumers are threads of one process, so the harness lowers the GIL switch interval to
   0.5 ms: otherwise the interpreter's 5 ms hand-offs between 15 threads, not the queue,
   dominate the tail.

C. Across processes (``--consumer-procs N --producer-procs M``, redis only): the same two
   measurements with every consumer and producer in its own process, for FIFO, the local
   scheduler (one DRR per process) and the server scheduler (``scheduler="server"``: one DRR
   in a Redis Lua script for all processes). A: ``M`` processes fill the backlog, then ``N``
   consume it; the first ``3 L`` dequeues by wall-clock time (every tenant is backlogged
   throughout) give the shares and Jain's index. B: ``M`` producer processes (Poisson, the
   tenants split among them) against ``N`` consumer processes of one thread each,
   ``S`` seconds per job, rates scaled to the same 119% / 56% of the ``N / S`` capacity.
   Waits are enqueue -> dequeue on the machine's wall clock. ``--rounds R`` repeats B R times
   (the modes interleaved in each round) and reports each mode's p99 per round, the median and
   range of the ratio to the same round's unloaded p99, and the pooled p99. ``--oracle`` adds a
   reference that is not a fair queue: light jobs in one plain queue with strict priority over
   the heavy tenant's (what no fair scheduler can beat: the light jobs wait only for a
   consumer to finish its current, non-preemptible job, and for each other).
   ``--burst B``: the server scheduler's lag credit (``FairQueue(burst=B)``).

Usage::

    python benchmarks/noisy_neighbour.py                       # memory://
    python benchmarks/noisy_neighbour.py --redis redis://127.0.0.1:6379/0
    python benchmarks/noisy_neighbour.py --redis URL --procs 2 # + A with 2 consumer processes
    python benchmarks/noisy_neighbour.py --redis URL --consumer-procs 8 --producer-procs 4
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import unifiedq
from unifiedq.fair import FairQueue, jain_index

TENANTS = ["heavy"] + [f"t{i}" for i in range(1, 10)]
LIGHT = TENANTS[1:]


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class Backend:
    """Builds the FIFO queue and the FairQueue template for one driver."""

    def __init__(self, label: str, fifo: Callable[[str], str], tpl: Callable[[str], str]):
        self.label, self.fifo_url, self.tpl = label, fifo, tpl


def arrivals(light_n: int) -> list[str]:
    """Tenant of each arriving job: per round, 10 heavy jobs then one of each light tenant."""
    out: list[str] = []
    for _ in range(light_n):
        out += ["heavy"] * 10 + LIGHT
    return out


# -- A: shares while backlogged ---------------------------------------------------------------
def share_fifo(b: Backend, light_n: int) -> collections.Counter[str]:
    q = unifiedq.connect(b.fifo_url(f"nn-fifo-{uuid.uuid4().hex[:6]}"))
    order = arrivals(light_n)
    for i in range(0, len(order), 500):
        chunk = order[i:i + 500]
        for t in chunk:
            q.enqueue(t.encode())
    got: collections.Counter[str] = collections.Counter()
    for _ in range(3 * light_n):
        j = q.dequeue(timeout=5)
        assert j is not None
        got[j.body.decode()] += 1
        q.ack(j)
    q.purge()
    q.close()
    return got


def fill_fair(b: Backend, light_n: int, weights: dict[str, float]) -> tuple[FairQueue, str]:
    tpl = b.tpl(f"nn-fair-{uuid.uuid4().hex[:6]}")
    fq = FairQueue(tpl, tenants=TENANTS, weights=weights)
    for t in arrivals(light_n):
        fq.enqueue(t.encode(), tenant=t)
    return fq, tpl


def share_fair(b: Backend, light_n: int, weights: dict[str, float]) -> collections.Counter[str]:
    fq, _ = fill_fair(b, light_n, weights)
    got: collections.Counter[str] = collections.Counter()
    for _ in range(3 * light_n):
        j = fq.dequeue(timeout=5)
        assert j is not None
        got[fq.tenant_of(j)] += 1
        fq.ack(j)
    fq.purge()
    fq.close()
    return got


_CHILD = """
import sys
from unifiedq.fair import FairQueue
fq = FairQueue(sys.argv[1], tenants=sys.argv[2].split(","))
out = []
for _ in range(int(sys.argv[3])):
    j = fq.dequeue(timeout=10)
    out.append(fq.tenant_of(j)); fq.ack(j)
print(",".join(out))
"""


def share_fair_procs(b: Backend, light_n: int, procs: int) -> collections.Counter[str]:
    fq, tpl = fill_fair(b, light_n, {})
    each = 3 * light_n // procs
    ps = [subprocess.Popen([sys.executable, "-c", _CHILD, tpl, ",".join(TENANTS), str(each)],
                           stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    got: collections.Counter[str] = collections.Counter()
    for p in ps:
        out, _ = p.communicate(timeout=300)
        got.update(out.strip().split(","))
    fq.purge()
    fq.close()
    return got


def weighted_jain(got: collections.Counter[str], weights: dict[str, float]) -> float:
    return jain_index(got[t] / weights.get(t, 1.0) for t in TENANTS)


def max_share_error(got: collections.Counter[str], weights: dict[str, float]) -> float:
    total = sum(got.values())
    wsum = sum(weights.get(t, 1.0) for t in TENANTS)
    return max(abs(got[t] / total - weights.get(t, 1.0) / wsum) for t in TENANTS)


# -- B: waits under overload ------------------------------------------------------------------
def run_load(put: Callable[[str, bytes], None], get: Callable[[], tuple[str, bytes] | None],
             ack: Callable[[], None] | None, tenants: list[str], rate: float, secs: float,
             consumers: int, service: float) -> dict[str, list[float]]:
    waits: dict[str, list[float]] = collections.defaultdict(list)
    lock = threading.Lock()
    stop = threading.Event()
    expected = sum(int(secs * rate * (10 if t == "heavy" else 1)) for t in tenants)
    done = [0]

    def producer(t: str) -> None:
        r = rate * (10 if t == "heavy" else 1)
        n = int(secs * r)
        rng = random.Random(t)  # Poisson arrivals, the same in every run
        due = time.monotonic()
        for _ in range(n):
            due += rng.expovariate(r)
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            put(t, repr(time.monotonic()).encode())

    def consumer() -> None:
        while not stop.is_set():
            got = get()
            if got is None:
                continue
            t, body = got
            w = time.monotonic() - float(body)
            with lock:
                waits[t].append(w)
                done[0] += 1
            time.sleep(service)  # the job's work

    cs = [threading.Thread(target=consumer, daemon=True) for _ in range(consumers)]
    ps = [threading.Thread(target=producer, args=(t,), daemon=True) for t in tenants]
    for th in cs + ps:
        th.start()
    for th in ps:
        th.join()
    end = time.monotonic() + 120
    while done[0] < expected and time.monotonic() < end:
        time.sleep(0.05)
    stop.set()
    for th in cs:
        th.join(5)
    return waits


def load_fifo(b: Backend, tenants: list[str], **kw: Any) -> dict[str, list[float]]:
    q = unifiedq.connect(b.fifo_url(f"nn-lf-{uuid.uuid4().hex[:6]}"))

    def put(t: str, body: bytes) -> None:
        q.enqueue(t.encode() + b"|" + body)

    def get() -> tuple[str, bytes] | None:
        j = q.dequeue(timeout=0.2)
        if j is None:
            return None
        q.ack(j)
        t, _, body = j.body.partition(b"|")
        return t.decode(), body

    try:
        return run_load(put, get, None, tenants, **kw)
    finally:
        q.purge()
        q.close()


def load_fair(b: Backend, tenants: list[str], **kw: Any) -> dict[str, list[float]]:
    fq = FairQueue(b.tpl(f"nn-lr-{uuid.uuid4().hex[:6]}"), tenants=tenants)

    def put(t: str, body: bytes) -> None:
        fq.enqueue(body, tenant=t)

    def get() -> tuple[str, bytes] | None:
        j = fq.dequeue(timeout=0.2)
        if j is None:
            return None
        fq.ack(j)
        return fq.tenant_of(j), j.body

    try:
        return run_load(put, get, None, tenants, **kw)
    finally:
        fq.purge()
        fq.close()


def bench(b: Backend, args: argparse.Namespace) -> dict[str, Any]:
    print(f"\n=== {b.label} ===")
    res: dict[str, Any] = {"driver": b.label}
    # A
    fifo = share_fifo(b, args.light_n)
    fair = share_fair(b, args.light_n, {})
    w3 = {"t1": 3.0}
    fairw = share_fair(b, args.light_n, w3)
    print(f"A. shares of the first {3 * args.light_n} dequeues, all tenants backlogged")
    print(f"{'tenant':8} {'FIFO':>8} {'fair':>8} {'fair t1=3':>10}")
    for t in TENANTS:
        tot = 3 * args.light_n
        print(f"{t:8} {fifo[t] / tot:8.1%} {fair[t] / tot:8.1%} {fairw[t] / tot:10.1%}")
    jf, jq, jw = weighted_jain(fifo, {}), weighted_jain(fair, {}), weighted_jain(fairw, w3)
    print(f"{'Jain':8} {jf:8.3f} {jq:8.3f} {jw:10.3f}   (share/weight; target >= 0.99)")
    ef, eq, ew = (max_share_error(fifo, {}), max_share_error(fair, {}),
                  max_share_error(fairw, w3))
    print(f"{'max err':8} {ef:8.1%} {eq:8.1%} {ew:10.1%}   (|share - weight share|; "
          "target <= 2%)")
    res.update(jain_fifo=jf, jain_fair=jq, jain_weighted=jw, err_fair=eq, err_weighted=ew)
    if args.procs > 1 and b.label != "memory":
        mp = share_fair_procs(b, args.light_n, args.procs)
        jm = weighted_jain(mp, {})
        print(f"fair, {args.procs} consumer processes (local DRR each): Jain {jm:.4f}, max err "
              f"{max_share_error(mp, {}):.2%}, counts {dict(mp)}")
        res["jain_procs"] = jm
    # B
    kw = dict(rate=args.rate, secs=args.secs, consumers=args.consumers, service=args.service)
    cap = args.consumers / args.service
    print(f"\nB. waits: light {args.rate:g}/s each, heavy {10 * args.rate:g}/s, capacity "
          f"{cap:g}/s (offered {19 * args.rate / cap:.0%}, light only "
          f"{9 * args.rate / cap:.0%}), {args.secs:g}s")
    unloaded = load_fifo(b, LIGHT, **kw)
    lf = load_fifo(b, TENANTS, **kw)
    lq = load_fair(b, TENANTS, **kw)
    print(f"{'tenant':8} {'unloaded p50/p99 ms':>20} {'FIFO p50/p99 ms':>20} "
          f"{'fair p50/p99 ms':>20}")
    for t in TENANTS:
        u = unloaded.get(t, [])
        cols = [f"{pct(x, 50) * 1e3:8.1f}/{pct(x, 99) * 1e3:8.1f}" if x else f"{'-':>17}"
                for x in (u, lf[t], lq[t])]
        print(f"{t:8} {cols[0]:>20} {cols[1]:>20} {cols[2]:>20}")
    def light(d: dict[str, list[float]]) -> list[float]:
        return [w for t in LIGHT for w in d.get(t, [])]

    u99, f99, q99 = pct(light(unloaded), 99), pct(light(lf), 99), pct(light(lq), 99)
    print(f"light tenants p99: unloaded {u99 * 1e3:.1f} ms, FIFO {f99 * 1e3:.1f} ms "
          f"({f99 / u99:.1f}x), fair {q99 * 1e3:.1f} ms ({q99 / u99:.2f}x; target <= 2x)")
    heavy_f, heavy_q = statistics.median(lf["heavy"]), statistics.median(lq["heavy"])
    print(f"heavy tenant p50: FIFO {heavy_f * 1e3:.0f} ms, fair {heavy_q * 1e3:.0f} ms "
          "(fair makes the burster wait, not everyone)")
    res.update(light_p99_unloaded=u99, light_p99_fifo=f99, light_p99_fair=q99,
               ratio_fifo=f99 / u99, ratio_fair=q99 / u99)
    return res


# -- C: across processes ---------------------------------------------------------------------
_PCHILD = r"""
import json, random, sys, time
import unifiedq
from unifiedq.fair import FairQueue
role, mode, url, arg = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
fair = mode in ("local", "server")
prio = mode == "priority"  # the oracle: light jobs strictly before heavy ones, two plain queues
if fair:
    opts = {"burst": arg["burst"]} if mode == "server" and arg.get("burst") is not None else {}
    q = FairQueue(url, tenants=arg["tenants"], scheduler=mode, **opts)
elif prio:
    q = unifiedq.connect(url.replace("{tenant}", "light"))
    qh = unifiedq.connect(url.replace("{tenant}", "heavy"))
else:
    q = unifiedq.connect(url)
print("ready", flush=True)  # imports done, queue open: the parent may start the clock
if role == "fill":
    for t, n in arg["fill"]:
        for _ in range(n):
            if fair:
                q.enqueue(b"%d" % time.time_ns(), tenant=t)
            else:
                q.enqueue(t.encode() + b"|%d" % time.time_ns())
elif role == "produce":
    rngs = {t: random.Random(t) for t in arg["rates"]}
    start = float(sys.stdin.readline())  # sent once every process is ready
    due = {t: start + rngs[t].expovariate(r) for t, r in arg["rates"].items()}
    end = start + arg["secs"]
    while due:
        t = min(due, key=due.get)
        d = due[t] - time.time()
        if d > 0:
            time.sleep(d)
        if fair:
            q.enqueue(b"%d" % time.time_ns(), tenant=t)
        else:
            (qh if prio and t == "heavy" else q).enqueue(t.encode() + b"|%d" % time.time_ns())
        due[t] += rngs[t].expovariate(arg["rates"][t])
        if due[t] >= end:
            del due[t]
else:  # consume: until idle for arg["idle"] s after the first job (or arg["max"] jobs)
    out = []
    last = None
    while len(out) < arg["max"]:
        src = q
        if prio:  # light first, then heavy, then wait briefly for a light one
            j = q.dequeue(timeout=0.0)
            if j is None:
                j, src = qh.dequeue(timeout=0.0), qh
            if j is None:
                j, src = q.dequeue(timeout=0.005), q
        else:
            j = q.dequeue(timeout=0.2)
        now = time.time_ns()
        if j is None:
            if last is not None and time.monotonic() - last > arg["idle"]:
                break
            continue
        last = time.monotonic()
        if fair:
            t, sent = q.tenant_of(j), int(j.body)
        else:
            tb, _, sb = j.body.partition(b"|")
            t, sent = tb.decode(), int(sb)
        src.ack(j)
        out.append((now, t, (now - sent) / 1e9))
        if arg["service"]:
            time.sleep(arg["service"])
    print(json.dumps(out))
q.close()
"""


def _spawn(role: str, mode: str, url: str, arg: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _PCHILD, role, mode, url, json.dumps(arg)],
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)


def _ready(ps: list[subprocess.Popen[str]]) -> None:
    """Wait until every child has imported and opened its queue (a loaded machine makes
    that take seconds: a clock started earlier would turn arrivals into a burst)."""
    for p in ps:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a child failed to start")


def _collect(ps: list[subprocess.Popen[str]]) -> list[tuple[int, str, float]]:
    rows: list[tuple[int, str, float]] = []
    for p in ps:
        out, _ = p.communicate(timeout=600)
        if p.returncode:
            raise RuntimeError(f"a child failed ({p.returncode})")
        last = [ln for ln in out.splitlines() if ln.strip() and ln.strip() != "ready"]
        if last:
            rows += [(int(r[0]), str(r[1]), float(r[2])) for r in json.loads(last[-1])]
    return rows


def _url_for(base: str, mode: str) -> str:
    name = f"nnp-{mode}-{uuid.uuid4().hex[:6]}"
    return f"{base}?queue={name}" if mode == "fifo" else f"{base}?queue={name}.{{tenant}}"


def procs_shares(base: str, mode: str, light_n: int, ncons: int, nprod: int,
                 burst: float | None = None) -> dict[str, Any]:
    url = _url_for(base, mode)
    order = arrivals(light_n)
    fills: list[list[tuple[str, int]]] = [[] for _ in range(nprod)]
    for i, t in enumerate(order):  # round robin: every producer interleaves every tenant
        fills[i % nprod].append((t, 1))
    _collect([_spawn("fill", mode, url, {"tenants": TENANTS, "fill": f, "burst": burst})
              for f in fills])
    take = 3 * light_n
    each = -(-take // ncons)
    rows = _collect([_spawn("consume", mode, url, {"tenants": TENANTS, "max": 2 * each,
                                                   "idle": 2.0, "service": 0, "burst": burst})
                     for _ in range(ncons)])
    rows.sort()
    got = collections.Counter(t for _, t, _ in rows[:take])
    q = FairQueue(url, tenants=TENANTS) if mode != "fifo" else unifiedq.connect(url)
    q.purge()
    q.close()
    return {"jain": weighted_jain(got, {}), "err": max_share_error(got, {}),
            "shares": {t: got[t] / take for t in TENANTS}, "n": take}


def procs_waits(base: str, mode: str, tenants: list[str], args: argparse.Namespace
                ) -> dict[str, list[float]]:
    url = _url_for(base, mode)
    ncons, nprod = args.consumer_procs, args.producer_procs
    cap = ncons / args.service
    r = 1.19 * cap / 19  # light tenants' rate; heavy 10x (offered 119%, light alone 56%)
    cons = [_spawn("consume", mode, url, {"tenants": TENANTS, "max": 10**9, "idle": 2.0,
                                          "service": args.service, "burst": args.burst})
            for _ in range(ncons)]
    groups: list[dict[str, float]] = [{} for _ in range(nprod)]
    for i, t in enumerate(tenants):
        groups[i % nprod][t] = r * (10 if t == "heavy" else 1)
    prods = [_spawn("produce", mode, url, {"tenants": TENANTS, "rates": g, "secs": args.secs,
                                           "burst": args.burst}) for g in groups if g]
    _ready(cons + prods)  # everyone up before the clock starts
    time.sleep(0.5)
    start = time.time() + 0.2
    for p in prods:
        assert p.stdin is not None
        p.stdin.write(f"{start!r}\n")
        p.stdin.flush()
    _collect(prods)
    rows = _collect(cons)
    if mode == "priority":
        for t in ("light", "heavy"):
            q = unifiedq.connect(url.replace("{tenant}", t))
            q.purge()
            q.close()
    waits: dict[str, list[float]] = collections.defaultdict(list)
    for _, t, w in rows:
        waits[t].append(w)
    # What the consumers achieved while producers ran: below the nominal capacity, the
    # machine (not the queue) is the bottleneck and the waits measure that.
    span = [ts / 1e9 for ts, _, _ in rows if start <= ts / 1e9 <= start + args.secs]
    waits["_throughput"] = [len(span) / args.secs]
    return waits


def bench_procs(base: str, args: argparse.Namespace) -> dict[str, Any]:
    n, m = args.consumer_procs, args.producer_procs
    print(f"\n=== redis, {n} consumer processes, {m} producer processes ===")
    res: dict[str, Any] = {"consumer_procs": n, "producer_procs": m}
    modes = ["fifo", "local", "server"]
    if not args.skip_shares:
        print(f"A. shares of the first {3 * args.light_n} dequeues (by time), all tenants "
              "backlogged")
        sh = {mode: procs_shares(base, mode, args.light_n, n, m, args.burst) for mode in modes}
        print(f"{'tenant':8} " + " ".join(f"{mode:>8}" for mode in modes))
        for t in TENANTS:
            print(f"{t:8} " + " ".join(f"{sh[mode]['shares'][t]:8.1%}" for mode in modes))
        print(f"{'Jain':8} " + " ".join(f"{sh[mode]['jain']:8.4f}" for mode in modes))
        print(f"{'max err':8} " + " ".join(f"{sh[mode]['err']:8.2%}" for mode in modes))
        res["shares"] = sh
    cap = n / args.service
    print(f"\nB. waits: {n} consumer processes x {args.service * 1e3:g} ms jobs (capacity "
          f"{cap:g}/s), offered 119% (light alone 56%), {args.secs:g}s, {m} producer processes, "
          f"{args.rounds} round(s)")
    bmodes = modes + (["priority"] if args.oracle else [])

    def light(d: dict[str, list[float]]) -> list[float]:
        return [w for t in LIGHT for w in d.get(t, [])]

    rounds: list[dict[str, dict[str, list[float]]]] = []
    for i in range(args.rounds):
        rnd = {"unloaded": procs_waits(base, "fifo", LIGHT, args)}
        rnd.update({mode: procs_waits(base, mode, TENANTS, args) for mode in bmodes})
        rounds.append(rnd)
        print(f"round {i + 1}: light p99 " + "  ".join(
            f"{k} {pct(light(v), 99) * 1e3:.1f}ms" for k, v in rnd.items()), flush=True)
    cols = ["unloaded", *bmodes]
    pooled = {k: [w for rnd in rounds for w in light(rnd[k])] for k in cols}
    ratios = {k: [pct(light(rnd[k]), 99) / pct(light(rnd["unloaded"]), 99) for rnd in rounds]
              for k in cols}
    u99 = pct(pooled["unloaded"], 99)
    print(f"{'':10} " + " ".join(f"{k:>10}" for k in cols))
    print(f"{'light p50':10} " + " ".join(f"{pct(pooled[k], 50) * 1e3:8.1f}ms" for k in cols))
    print(f"{'light p99':10} " + " ".join(f"{pct(pooled[k], 99) * 1e3:8.1f}ms" for k in cols)
          + "   (pooled over the rounds)")
    print(f"{'p99/unl.':10} " + " ".join(f"{pct(pooled[k], 99) / u99:9.2f}x" for k in cols)
          + "   (pooled p99 / pooled unloaded p99)")
    if args.rounds > 1:
        print(f"{'median':10} " + " ".join(f"{statistics.median(ratios[k]):9.2f}x" for k in cols)
              + "   (per round: p99 / that round's unloaded p99)")
        print(f"{'range':10} " + " ".join(
            f"{min(ratios[k]):4.2f}-{max(ratios[k]):4.2f}x".rjust(10) for k in cols))
    print(f"{'heavy p50':10} {'-':>10} " + " ".join(
        f"{pct([w for rnd in rounds for w in rnd[k]['heavy']], 50) * 1e3:8.0f}ms"
        for k in bmodes))
    tput = {k: statistics.median(rnd[k]["_throughput"][0] for rnd in rounds) for k in cols}
    print(f"{'jobs/s':10} " + " ".join(f"{tput[k]:10.1f}" for k in cols)
          + f"   (served while producing, median of rounds; nominal capacity {cap:g}/s, "
            f"offered {1.19 * cap:.1f}/s, light alone {9 * 1.19 * cap / 19:.1f}/s)")
    res["waits"] = {"rounds": args.rounds, "burst": args.burst,
                    "light_p99_unloaded": u99, "unloaded_served_per_s": tput["unloaded"],
                    "unloaded_p99_per_round": [pct(light(r["unloaded"]), 99) for r in rounds],
                    **{mode: {"light_p50": pct(pooled[mode], 50),
                              "light_p99": pct(pooled[mode], 99),
                              "ratio": pct(pooled[mode], 99) / u99,
                              "ratio_per_round": ratios[mode],
                              "p99_per_round": [pct(light(r[mode]), 99) for r in rounds],
                              "heavy_p50": pct([w for r in rounds for w in r[mode]["heavy"]], 50),
                              "served_per_s": tput[mode],
                              "jobs": sum(len(v) for r in rounds
                                          for k, v in r[mode].items() if k[0] != "_")}
                       for mode in bmodes}}
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--redis", help="also run on this Redis server, e.g. redis://127.0.0.1/0")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--light-n", type=int, default=100, help="backlog per light tenant in A")
    p.add_argument("--rate", type=float, default=25.0, help="jobs/s per light tenant in B")
    p.add_argument("--secs", type=float, default=4.0)
    p.add_argument("--consumers", type=int, default=4)
    p.add_argument("--service", type=float, default=0.01, help="seconds of work per job")
    p.add_argument("--procs", type=int, default=1, help="consumer processes for A (redis)")
    p.add_argument("--consumer-procs", type=int, default=0,
                   help="C: consumer processes (redis; runs only C)")
    p.add_argument("--producer-procs", type=int, default=1, help="C: producer processes")
    p.add_argument("--rounds", type=int, default=1, help="C: repetitions of B (interleaved)")
    p.add_argument("--oracle", action="store_true",
                   help="C: add B's strict-priority reference (light jobs first)")
    p.add_argument("--burst", type=float, default=None,
                   help="C: the server scheduler's burst (lag credit, rounds)")
    p.add_argument("--skip-shares", action="store_true", help="C: run only B")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    args = p.parse_args()
    if args.consumer_procs:
        if not args.redis:
            p.error("--consumer-procs needs --redis")
        res = bench_procs(args.redis.split("?")[0], args)
        if args.json:
            print(json.dumps(res))
        return
    sys.setswitchinterval(0.0005)  # see the module docstring
    backends = []
    if not args.no_memory:
        backends.append(Backend("memory", lambda n: f"memory://{n}",
                                lambda n: f"memory://{n}.{{tenant}}"))
    if args.redis:
        r = args.redis.split("?")[0]
        backends.append(Backend("redis", lambda n: f"{r}?queue={n}",
                                lambda n: f"{r}?queue={n}.{{tenant}}"))
    results = [bench(b, args) for b in backends]
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
