"""Latency-vs-load chart of a bench result (matplotlib, from the ``bench`` extra).

One panel per operation, one line per driver: the median (p50) latency at each load, with
a shaded band up to the p99, both axes logarithmic. Unsupported operations are listed in the
panel rather than drawn as zero. Dashed grey lines show raw-client baselines when present.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .report import BenchReport

__all__ = ["PlotUnavailable", "plot_report"]


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def plot_report(rep: BenchReport, path: str | Path, *, ops: Sequence[str] | None = None) -> Path:
    """Draw ``rep`` to a PNG file.

    Args:
        rep: The bench result.
        path: Output file (``.png``).
        ops: Operations to draw, one panel each (default: the run's ``config.ops``).

    Returns:
        The path written.

    Raises:
        PlotUnavailable: matplotlib is missing (``pip install 'unifiedq[bench]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # headless: never try to open a window
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError as exc:
        raise PlotUnavailable(
            "the chart needs matplotlib: pip install 'unifiedq[bench]'"
        ) from exc

    panels = list(ops or rep.config.get("ops") or ["enqueue", "peek", "dequeue"])
    drivers = list(dict.fromkeys(r.driver for r in rep.runs))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    has_base = False
    for ax, op in zip(axes[0], panels, strict=True):
        unsupported: list[str] = []
        for i, drv in enumerate(drivers):
            pts = sorted(
                (r.load, r.ops[op]) for r in rep.runs
                if r.driver == drv and op in r.ops and r.error is None
            )
            ok = [(load, st) for load, st in pts if st.status == "ok" and st.p50_us]
            if not ok:
                if any(st.status == "unsupported" for _, st in pts):
                    unsupported.append(drv)
                continue
            xs = [load for load, _ in ok]
            color = cmap(i % 10)
            ax.plot(xs, [st.p50_us for _, st in ok], marker="o", color=color, label=drv)
            ax.fill_between(xs, [st.p50_us for _, st in ok],
                            [st.p99_us or st.p50_us for _, st in ok], color=color, alpha=0.07)
            base = sorted(
                (load, b.ops[op].p50_us) for (d, load), b in rep.baselines.items()
                if d == drv and b.status == "ok" and op in b.ops and b.ops[op].p50_us
            )
            if base:
                ax.plot([x for x, _ in base], [y for _, y in base], linestyle="--",
                        color=color, alpha=0.6, linewidth=1)
                has_base = True
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain = ticker.FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
        ax.set_title(op)
        ax.set_xlabel("load (operations)")
        ax.set_ylabel("latency per op, µs (p50; band to p99)")
        ax.grid(True, which="both", alpha=0.3)
        if unsupported:
            ax.text(0.02, 0.02, "unsupported: " + ", ".join(unsupported),
                    transform=ax.transAxes, fontsize=8, color="dimgray")
    machine = rep.env.get("machine", {}) if rep.env else {}
    fig.suptitle(
        f"unifiedq bench ({rep.config.get('face')} face, {rep.config.get('size')} B bodies, "
        f"{machine.get('cpu_count', '?')} CPUs) — {rep.created}", fontsize=10,
    )
    # One legend for the figure, outside the panels, so it never hides a line.
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=cmap(i % 10), marker="o", label=d)
               for i, d in enumerate(drivers)]
    if has_base:
        handles.append(Line2D([], [], color="gray", linestyle="--",
                              label="raw client (same colour)"))
    if handles:
        fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    not_run = [f"{t['driver']} ({t['status']})" for t in rep.targets
               if t.get("status") != "ok" and t["driver"] not in drivers]
    if not_run:
        fig.text(0.01, 0.005, "not run: " + ", ".join(not_run), fontsize=8, color="dimgray")
    fig.tight_layout(rect=(0, 0.03 if not_run else 0, 0.87 if handles else 1, 1))
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
