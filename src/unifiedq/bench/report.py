"""Bench results: the JSON document, CSV export, terminal tables and run-to-run comparison.

The JSON document (``schema: "unifiedq-bench/1"``) is the source of truth: the CSV, the chart,
the terminal table and the docs page are all rendered from it. It records the environment
(machine, Python, package and server versions) so a result can be reproduced and compared.

Terminal output uses ``rich`` when it is installed (the ``bench`` extra) and plain text
otherwise.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import importlib.metadata
import io
import json
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from .baselines import BaselineResult
from .runner import OpStats, RunResult, Verification

__all__ = [
    "SCHEMA",
    "BenchReport",
    "compare_rows",
    "environment",
    "format_us",
    "load_report",
    "print_table",
    "render_compare",
    "render_table",
    "validate_report",
    "write_csv",
]

SCHEMA = "unifiedq-bench/1"

_PACKAGES = (
    "unifiedq", "redis", "hiredis", "protobuf", "kombu", "amqp", "pyfaktory", "aioquic",
    "cryptography", "atomics", "faster-fifo", "rich", "matplotlib",
)


def environment() -> dict[str, Any]:
    """Describe this machine, interpreter and the installed package versions."""
    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    mem: int | None = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpu_model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "machine": {
            "system": platform.system(),
            "release": platform.release(),
            "arch": platform.machine(),
            "cpu": cpu_model or platform.processor() or None,
            "cpu_count": os.cpu_count(),
            "memory_bytes": mem,
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "packages": packages,
    }


@dataclasses.dataclass(slots=True)
class BenchReport:
    """Everything one bench invocation measured.

    Attributes:
        config: The parameters (loads, ops, producers, consumers, size, face, baseline).
        targets: Every driver considered, runnable or not (with the reason).
        runs: One entry per runnable driver and load.
        baselines: Raw-client baseline per ``(driver, load)``, when ``--baseline`` was given.
        env: :func:`environment` output.
        created: ISO 8601 UTC time the run started.
        command: The command line.
        elapsed_s: Wall time of the whole bench.
    """

    config: dict[str, Any]
    targets: list[dict[str, Any]]
    runs: list[RunResult] = dataclasses.field(default_factory=list)
    baselines: dict[tuple[str, int], BaselineResult] = dataclasses.field(default_factory=dict)
    env: dict[str, Any] = dataclasses.field(default_factory=environment)
    created: str = dataclasses.field(
        default_factory=lambda: _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    command: str = ""
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every run finished and verified (no loss, no reordering)."""
        return all(r.error is None and r.verify is not None and r.verify.ok for r in self.runs)

    def problems(self) -> list[str]:
        """One line per run that failed or did not verify."""
        out = []
        for r in self.runs:
            if r.error is not None:
                out.append(f"{r.driver} @ {r.load}: run failed: {r.error}")
            elif r.verify is not None and not r.verify.ok:
                out.extend(f"{r.driver} @ {r.load}: {p}" for p in r.verify.problems)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document."""
        runs = []
        for r in self.runs:
            b = self.baselines.get((r.driver, r.load))
            runs.append({
                "driver": r.driver,
                "url": r.url,
                "load": r.load,
                "face": r.face,
                "bridged": r.bridged,
                "elapsed_s": round(r.elapsed_s, 6),
                "error": r.error,
                "ops": {k: v.to_dict() for k, v in r.ops.items()},
                "verify": r.verify.to_dict() if r.verify is not None else None,
                "baseline": b.to_dict() if b is not None else None,
            })
        return {
            "schema": SCHEMA,
            "created": self.created,
            "command": self.command,
            "elapsed_s": round(self.elapsed_s, 3),
            "ok": self.ok,
            "environment": self.env,
            "config": self.config,
            "targets": self.targets,
            "runs": runs,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchReport:
        """Rebuild a report from its JSON document (see :func:`load_report`)."""
        rep = cls(config=d.get("config", {}), targets=d.get("targets", []),
                  env=d.get("environment", {}), created=d.get("created", ""),
                  command=d.get("command", ""), elapsed_s=d.get("elapsed_s", 0.0))
        for r in d.get("runs", []):
            v = r.get("verify")
            rr = RunResult(
                r["driver"], r.get("url", ""), r["load"], r.get("face", "sync"),
                bool(r.get("bridged")),
                {k: OpStats.from_dict(o) for k, o in (r.get("ops") or {}).items()},
                Verification.from_dict(v) if v is not None else None,
                error=r.get("error"), elapsed_s=r.get("elapsed_s", 0.0),
            )
            rep.runs.append(rr)
            if r.get("baseline"):
                rep.baselines[(rr.driver, rr.load)] = BaselineResult.from_dict(r["baseline"])
        return rep

    def write_json(self, path: str | Path) -> None:
        """Write the JSON document (``-`` = stdout)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        if str(path) == "-":
            sys.stdout.write(text)
        else:
            Path(path).write_text(text, encoding="utf-8")


def load_report(path: str | Path) -> BenchReport:
    """Read a JSON document written by :meth:`BenchReport.write_json`.

    Raises:
        ValueError: The file is not a unifiedq bench result.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    errors = validate_report(data)
    if errors:
        raise ValueError(f"{path} is not a valid {SCHEMA} result: " + "; ".join(errors[:5]))
    return BenchReport.from_dict(data)


_OP_FIELDS: dict[str, type | tuple[type, ...]] = {
    "op": str, "status": str, "count": int, "errors": int, "empty": int,
    "p50_us": (int, float, type(None)), "p95_us": (int, float, type(None)),
    "p99_us": (int, float, type(None)), "max_us": (int, float, type(None)),
    "mean_us": (int, float, type(None)), "total_s": (int, float, type(None)),
    "throughput": (int, float, type(None)), "error": (str, type(None)),
}
_VERIFY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "enqueued": int, "dequeued": int, "lost": int, "duplicated": int, "unexpected": int,
    "fifo_violations": int, "leftover": (int, type(None)), "ok": bool, "problems": list,
}
_STATUSES = {"ok", "unsupported", "error", "skipped"}


def validate_report(data: object) -> list[str]:
    """Check a JSON document against the ``unifiedq-bench/1`` schema; return the errors.

    Args:
        data: The parsed JSON.

    Returns:
        Human-readable problems; empty when the document is valid.
    """
    errs: list[str] = []
    if not isinstance(data, dict):
        return ["top level must be an object"]
    if data.get("schema") != SCHEMA:
        errs.append(f"schema must be {SCHEMA!r}, not {data.get('schema')!r}")
    for key, typ in (("created", str), ("environment", dict), ("config", dict),
                     ("targets", list), ("runs", list), ("ok", bool)):
        if not isinstance(data.get(key), typ):
            errs.append(f"{key!r} must be a {typ.__name__}")
    if errs:
        return errs
    env = data["environment"]
    for key in ("machine", "python", "packages"):
        if not isinstance(env.get(key), dict):
            errs.append(f"environment.{key} must be an object")
    for key in ("loads", "ops", "producers", "consumers", "size", "face"):
        if key not in data["config"]:
            errs.append(f"config.{key} is missing")
    for i, t in enumerate(data["targets"]):
        if not isinstance(t, dict) or not {"driver", "status", "reason"} <= t.keys():
            errs.append(f"targets[{i}] needs driver, status and reason")
    for i, r in enumerate(data["runs"]):
        where = f"runs[{i}]"
        if not isinstance(r, dict):
            errs.append(f"{where} must be an object")
            continue
        for key, typ2 in (("driver", str), ("load", int), ("face", str), ("ops", dict)):
            if not isinstance(r.get(key), typ2):
                errs.append(f"{where}.{key} must be a {typ2.__name__}")
        for op, st in (r.get("ops") or {}).items():
            if not isinstance(st, dict):
                errs.append(f"{where}.ops.{op} must be an object")
                continue
            for key, t3 in _OP_FIELDS.items():
                if not isinstance(st.get(key), t3):
                    errs.append(f"{where}.ops.{op}.{key} has the wrong type")
            if st.get("status") not in _STATUSES:
                errs.append(f"{where}.ops.{op}.status must be one of {sorted(_STATUSES)}")
            if st.get("status") == "ok" and st.get("p50_us") is None:
                errs.append(f"{where}.ops.{op} is ok but has no latency")
        v = r.get("verify")
        if v is None:
            if r.get("error") is None:
                errs.append(f"{where} has neither verify nor error")
        elif isinstance(v, dict):
            for key, t4 in _VERIFY_FIELDS.items():
                if not isinstance(v.get(key), t4):
                    errs.append(f"{where}.verify.{key} has the wrong type")
        else:
            errs.append(f"{where}.verify must be an object or null")
    return errs


# -- formatting ------------------------------------------------------------------------------


def format_us(v: float | None) -> str:
    """Format microseconds compactly: ``4.21``, ``87.3``, ``1,204``."""
    if v is None:
        return "-"
    if v < 10:
        return f"{v:.2f}"
    if v < 100:
        return f"{v:.1f}"
    return f"{v:,.0f}"


def _fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _ratio(ours: OpStats | None, base: OpStats | None) -> str:
    if ours is None or base is None or ours.p50_us is None or not base.p50_us:
        return "-"
    return f"{ours.p50_us / base.p50_us:.2f}x"


HEADERS = ("driver", "load", "op", "p50 µs", "p95 µs", "p99 µs", "max µs", "total s",
           "ops/s", "errors", "check")


def table_rows(rep: BenchReport, *, baseline: bool = False) -> list[list[str]]:
    """The terminal/markdown table as rows of strings (``HEADERS`` plus baseline columns)."""
    ops: Sequence[str] = rep.config.get("ops") or ["enqueue", "peek", "dequeue"]
    rows: list[list[str]] = []
    ran = {r.driver for r in rep.runs}
    for t in rep.targets:
        if t["driver"] not in ran and t["status"] != "ok":
            row = [t["driver"], "-", "-", t["status"].upper(), "", "", "", "", "", "",
                   str(t.get("reason") or "")[:90]]
            rows.append(row + (["", ""] if baseline else []))
    for r in rep.runs:
        check = "run failed" if r.error else (
            "ok" if r.verify is not None and r.verify.ok else "FAILED")
        if r.error:
            rows.append([r.driver, f"{r.load:,}", "-", "ERROR", "", "", "", "", "", "",
                         r.error[:90]] + (["", ""] if baseline else []))
            continue
        b = rep.baselines.get((r.driver, r.load))
        for op in ops:
            st = r.ops.get(op)
            if st is None:
                continue
            if st.status == "unsupported":
                cells = ["unsupported"] + [""] * 5 + ["-"]
            elif st.status != "ok":
                cells = [st.status] + [""] * 5 + [str(st.errors)]
            else:
                cells = [format_us(st.p50_us), format_us(st.p95_us), format_us(st.p99_us),
                         format_us(st.max_us), f"{st.total_s:.3f}" if st.total_s else "-",
                         _fmt_rate(st.throughput), str(st.errors)]
            name = f"{r.driver} (bridged)" if r.bridged else r.driver
            row = [name, f"{r.load:,}", op, *cells, check]
            if baseline:
                if b is None or b.status != "ok":
                    row += [b.status if b else "-", "-"]
                else:
                    bo = b.ops.get(op)
                    base_p50 = (format_us(bo.p50_us) if bo is not None and bo.status == "ok"
                                else "n/a")
                    row += [base_p50, _ratio(st, bo)]
            rows.append(row)
    return rows


def render_table(rep: BenchReport, *, baseline: bool = False, file: IO[str] | None = None) -> None:
    """Print the results table (rich if installed, else plain text) and any problems."""
    headers = list(HEADERS) + (["raw p50 µs", "ours/raw"] if baseline else [])
    rows = table_rows(rep, baseline=baseline)
    out = file or sys.stdout
    title = (f"unifiedq bench — face={rep.config.get('face')}, "
             f"producers={rep.config.get('producers')}, consumers={rep.config.get('consumers')}, "
             f"size={rep.config.get('size')} B")
    print_table(title, headers, rows, file=out, numeric=(1, *range(3, 10), 11, 12))
    if baseline:
        seen: dict[str, BaselineResult] = {}
        for (drv, _load), b in rep.baselines.items():
            if drv not in seen or b.status != "ok":
                seen[drv] = b
        for drv, b in seen.items():
            note = "" if b.status == "ok" else f" — {b.status}: {b.reason}"
            print(f"raw baseline for {drv}: {b.library}{note}", file=out)
    probs = rep.problems()
    if probs:
        _loud(probs, out)


def _loud(problems: Iterable[str], out: IO[str]) -> None:
    lines = ["!" * 78, "!! VERIFICATION FAILED: the queue did not give back what was put in", *(
        f"!!   {p}" for p in problems), "!" * 78]
    try:
        from rich.console import Console

        con = Console(file=out, stderr=False)
        for ln in lines:
            con.print(ln, style="bold red", markup=False, highlight=False)
    except ImportError:
        print("\n".join(lines), file=out)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]],
                *, file: IO[str] | None = None, numeric: Iterable[int] = ()) -> None:
    """Print a table with rich when available, else as aligned plain text.

    Args:
        title: Shown above the table.
        headers: Column names.
        rows: Cells as strings.
        file: Where to print (default stdout).
        numeric: Indexes of right-aligned (numeric) columns.
    """
    right = set(numeric)
    out = file or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
                  for i, h in enumerate(headers)]
        print(title, file=out)
        print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)), file=out)
        print("  ".join("-" * w for w in widths), file=out)
        for r in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)), file=out)
        return
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="right" if i in right else "left", overflow="fold")
    for r in rows:
        style = None
        if "FAILED" in r or "run failed" in r or "ERROR" in r:
            style = "bold red"
        elif any(c in ("UNAVAILABLE", "UNREACHABLE") for c in r):
            style = "yellow"
        table.add_row(*[str(c) for c in r], style=style)
    Console(file=out, width=max(120, _term_width())).print(table)


def _term_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 160


# -- CSV -------------------------------------------------------------------------------------

CSV_FIELDS = (
    "driver", "url", "face", "bridged", "load", "op", "status", "count", "errors", "empty",
    "p50_us", "p95_us", "p99_us", "max_us", "mean_us", "total_s", "throughput", "verified",
    "problems", "baseline_library", "baseline_p50_us", "overhead_p50",
)


def write_csv(rep: BenchReport, path: str | Path) -> None:
    """Write one row per driver x load x op (and one per driver that could not run)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    ran = {r.driver for r in rep.runs}
    for t in rep.targets:
        if t["driver"] not in ran and t["status"] != "ok":
            w.writerow({"driver": t["driver"], "url": t.get("url") or "", "status": t["status"],
                        "problems": t.get("reason") or ""})
    for r in rep.runs:
        b = rep.baselines.get((r.driver, r.load))
        base = {"driver": r.driver, "url": r.url, "face": r.face, "bridged": r.bridged,
                "load": r.load,
                "verified": r.verify.ok if r.verify is not None else False,
                "problems": "; ".join(r.verify.problems) if r.verify is not None else r.error}
        if r.error:
            w.writerow({**base, "status": "error"})
            continue
        for op, st in r.ops.items():
            row: dict[str, Any] = {**base, "op": op}
            row.update({k: getattr(st, k) for k in (
                "status", "count", "errors", "empty", "p50_us", "p95_us", "p99_us", "max_us",
                "mean_us", "total_s", "throughput")})
            if b is not None and b.status == "ok" and op in b.ops and b.ops[op].status == "ok":
                row["baseline_library"] = b.library
                row["baseline_p50_us"] = b.ops[op].p50_us
                bp = b.ops[op].p50_us
                if st.p50_us is not None and bp:
                    row["overhead_p50"] = round(st.p50_us / bp, 4)
            w.writerow(row)
    text = buf.getvalue()
    if str(path) == "-":
        sys.stdout.write(text)
    else:
        Path(path).write_text(text, encoding="utf-8")


# -- compare ---------------------------------------------------------------------------------


def compare_rows(old: BenchReport, new: BenchReport) -> list[list[str]]:
    """Rows ``driver, load, op, old p50, new p50, ratio, old ops/s, new ops/s, ratio``.

    Ratios are new / old: a p50 ratio below 1 and a throughput ratio above 1 are improvements.
    Only (driver, face, load, op) combinations measured in both runs are compared.
    """
    def index(rep: BenchReport) -> dict[tuple[str, str, int, str], OpStats]:
        return {(r.driver, r.face, r.load, op): st
                for r in rep.runs for op, st in r.ops.items()}

    a, b = index(old), index(new)
    rows = []
    for key in sorted(a.keys() & b.keys(), key=lambda k: (k[0], k[1], k[2], k[3])):
        o, n = a[key], b[key]
        if o.status != "ok" or n.status != "ok":
            rows.append([key[0], f"{key[2]:,}", key[3], o.status, n.status, "-", "-", "-", "-"])
            continue
        lat = (f"{n.p50_us / o.p50_us:.2f}x"
               if n.p50_us is not None and o.p50_us else "-")
        thr = (f"{n.throughput / o.throughput:.2f}x"
               if n.throughput is not None and o.throughput else "-")
        rows.append([key[0], f"{key[2]:,}", key[3], format_us(o.p50_us), format_us(n.p50_us),
                     lat, _fmt_rate(o.throughput), _fmt_rate(n.throughput), thr])
    return rows


def render_compare(old: BenchReport, new: BenchReport, *, file: IO[str] | None = None) -> None:
    """Print the ratios between two runs."""
    headers = ["driver", "load", "op", "old p50 µs", "new p50 µs", "p50 new/old",
               "old ops/s", "new ops/s", "ops/s new/old"]
    rows = compare_rows(old, new)
    print_table(f"compare: {old.created} -> {new.created} (p50 ratio < 1 = faster)",
                headers, rows, file=file, numeric=range(3, 9))
    only_old = {r.driver for r in old.runs} - {r.driver for r in new.runs}
    only_new = {r.driver for r in new.runs} - {r.driver for r in old.runs}
    out = file or sys.stdout
    if only_old:
        print(f"only in the old run: {', '.join(sorted(only_old))}", file=out)
    if only_new:
        print(f"only in the new run: {', '.join(sorted(only_new))}", file=out)
