"""PNG figures of the report (matplotlib, Agg canvas; no pyplot global state).

- fig2_rho.png: distribution of the compression ratio rho per (teacher, compressor), and the ECDF
  of trace lengths before/after compression in tokens (chars when no token counts; paper Fig. 2).
- fig3_loss.png: training loss curves, one panel per (teacher, student, method), one line per source;
  log-scale loss axis, each curve's final loss marked and listed in the panel.
- fig4_acc_vs_length.png: overall accuracy against median reasoning length; marker = data source,
  colour = student, hollow = LoRA (paper Fig. 4).
- fig5_pareto.png: accuracy against inference cost (avg completion tokens) and against each
  cell's total measured cost from the cost ledger (train + evaluate + its share of generation and
  compression; one panel per resource: GPU-hours, CPU core-hours; report/ledger.py), with the
  Pareto front highlighted.

Each figure function returns False (and writes nothing) when its data is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from .ledger import cost_axes
from .model import CellInfo, ReportData, num

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DPI = 130


def _colors(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(max(n, 1))]


def _new(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # headless: render with Agg regardless of the process's default backend
    return fig


def _save(fig: Figure, path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return True


def fig_rho(d: ReportData, path: Path) -> bool:
    by: dict[tuple[str, str], list[tuple[float, float]]] = {}
    lengths: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (raw, compressed) tokens when recorded
    for r in d.compression_rows:
        raw_c, comp_c = num(r.get("raw_chars")), num(r.get("compressed_chars"))
        if raw_c and raw_c > 0 and comp_c is not None and r.get("usable") is not False:
            by.setdefault((str(r["teacher"]), str(r["compressor"])), []).append((raw_c, comp_c))
            raw_t, comp_t = num(r.get("raw_tokens")), num(r.get("compressed_tokens"))
            lengths.setdefault((str(r["teacher"]), str(r["compressor"])), []).append(
                (raw_t if raw_t is not None else -1.0, comp_t if comp_t is not None else -1.0))
    if not by:
        return False
    # The paper plots trace lengths in tokens; characters only when the artifact has no token counts.
    in_tokens = all(a >= 0 and b >= 0 for pts in lengths.values() for a, b in pts)
    unit = "tokens" if in_tokens else "chars"
    if not in_tokens:
        lengths = by
    fig = _new(12, 4.6)
    ax1, ax2 = fig.subplots(1, 2)
    colors = _colors(len(by))
    rhos_all = [c / r for pts in by.values() for r, c in pts]
    bins = np.linspace(0, max(1.0, max(rhos_all)), 31)
    raw_seen: set[str] = set()
    for (teacher, comp), col in zip(sorted(by), colors, strict=False):
        pts = np.array(by[(teacher, comp)])
        rho = pts[:, 1] / pts[:, 0]
        who = f"{d.label(comp)}" + (f" ({d.label(teacher)})" if len({t for t, _ in by}) > 1 else "")
        ax1.hist(rho, bins=bins, histtype="step", linewidth=2, color=col, density=True,
                 label=f"{who}: mean ρ={rho.mean():.3f}")
        ax1.axvline(rho.mean(), color=col, linestyle=":", linewidth=1.2)
        lp = np.array(lengths[(teacher, comp)])
        xs = np.sort(lp[:, 1])
        ax2.plot(xs, np.arange(1, len(xs) + 1) / len(xs), color=col, linewidth=2, label=f"{who} compressed")
        if teacher not in raw_seen:  # raw lengths once per teacher (they are the same input for each compressor)
            raw_seen.add(teacher)
            xr = np.sort(lp[:, 0])
            ax2.plot(xr, np.arange(1, len(xr) + 1) / len(xr), color="black", linewidth=2,
                     linestyle="--" if len(raw_seen) == 1 else "-.", label=f"raw ({d.label(teacher)})")
    ax1.set(title="Per-trace compression ratio ρ = compressed / raw chars", xlabel="ρ", ylabel="density")
    ax1.legend(fontsize=8)
    ax2.set(title="Trace length before and after compression (ECDF)", xlabel=f"reasoning length ({unit})",
            ylabel="fraction of traces ≤ x", ylim=(0, 1.02))
    if max(p[0] for pts in lengths.values() for p in pts) > 20 * max(1.0, min(p[1] for pts in lengths.values()
                                                                              for p in pts)):
        ax2.set_xscale("log")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="lower right")
    fig.suptitle("Fig. 2 — Compression ratio distribution", fontweight="bold")
    return _save(fig, path)


def _smooth(y: np.ndarray) -> tuple[np.ndarray, bool]:
    """Moving average for long noisy curves (mini-world steps are batches of 32)."""
    w = len(y) // 40
    if w < 3:
        return y, False
    kernel = np.ones(w) / w
    head = np.cumsum(y[: w - 1]) / np.arange(1, w)  # partial windows keep the curve's start
    return np.concatenate([head, np.convolve(y, kernel, mode="valid")]), True


def loss_figure(d: ReportData) -> Figure | None:
    """Fig. 3 as a Figure (None without loss curves); `fig_loss` writes it."""
    configs = [cfg for cfg in d.configs if any(c.cell in d.loss for c in d.in_config(cfg))]
    if not configs:
        return None
    ncols = min(3, len(configs))
    nrows = (len(configs) + ncols - 1) // ncols
    fig = _new(4.6 * ncols, 3.4 * nrows + 0.6)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    colors = dict(zip(d.data_order, _colors(len(d.data_order)), strict=True))
    smoothed_any = False
    for ax, cfg in zip(axes, configs, strict=False):
        positive = True
        finals: list[str] = []
        for c in d.in_config(cfg):
            pts = d.loss.get(c.cell)
            if not pts:
                continue
            x = np.array([p[0] for p in pts])
            y, smoothed = _smooth(np.array([p[1] for p in pts]))
            smoothed_any |= smoothed
            ax.plot(x, y, color=colors[c.data], linewidth=1.6, label=d.label(c.data))
            # The final loss, marked and listed: on a linear axis the late, small losses of all
            # sources collapse onto one line at the bottom, and close values overlap as labels.
            ax.plot([x[-1]], [y[-1]], marker="o", markersize=4, color=colors[c.data])
            finals.append(f"{d.label(c.data)}: {y[-1]:.3g}")
            positive &= bool(np.all(y > 0))
        title = f"{d.label(cfg[1])} · {d.label(cfg[2])}"
        ax.set_title(title + (f" ({d.label(cfg[0])})" if len({k[0] for k in configs}) > 1 else ""), fontsize=10)
        ax.set_xlabel("step")
        if positive:  # cross-entropy is > 0; a log axis keeps the final losses apart
            ax.set_yscale("log")
            for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis(LogFormatter(labelOnlyBase=False))  # "3", "0.5": not "3×10^0"
        ax.set_ylabel("training loss" + (" (log scale)" if positive else ""))
        ax.text(0.98, 0.97, "final loss\n" + "\n".join(finals), transform=ax.transAxes, ha="right", va="top",
                fontsize=7, bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "#bbb"})
        ax.grid(alpha=0.3, which="both")
    for ax in axes[len(configs):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colors[x], linewidth=2, label=d.label(x)) for x in d.data_order]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=9)
    fig.suptitle("Fig. 3 — Training loss per cell" + (" (moving average)" if smoothed_any else ""),
                 fontweight="bold")
    return fig


def fig_loss(d: ReportData, path: Path) -> bool:
    fig = loss_figure(d)
    return fig is not None and _save(fig, path)


def _style(d: ReportData) -> tuple[dict[str, str], dict[str, tuple[float, float, float, float]]]:
    markers = {x: MARKERS[i % len(MARKERS)] for i, x in enumerate(d.data_order)}
    students = list(dict.fromkeys(c.student for c in d.cells))
    return markers, dict(zip(students, _colors(len(students)), strict=True))


def _legends(ax: Axes, d: ReportData, used: Sequence[CellInfo]) -> None:
    markers, colors = _style(d)
    data = [x for x in d.data_order if any(c.data == x for c in used)]
    students = list(dict.fromkeys(c.student for c in used))
    h = [Line2D([], [], linestyle="", marker=markers[x], color="gray", markersize=8, label=d.label(x)) for x in data]
    h += [Line2D([], [], linestyle="", marker="o", color=colors[s], markersize=8, label=d.label(s))
          for s in students]
    if any(c.method_kind == "lora" for c in used):
        h.append(Line2D([], [], linestyle="", marker="o", markerfacecolor="none", color="gray", markersize=8,
                        label="hollow = LoRA"))
    ax.legend(handles=h, fontsize=8, loc="best", framealpha=0.85)


def _scatter(ax: Axes, d: ReportData, pts: list[tuple[CellInfo, float, float]]) -> None:
    markers, colors = _style(d)
    for c, x, y in pts:
        m = d.metrics[c.cell]
        face = "none" if c.method_kind == "lora" else colors[c.student]
        ax.errorbar(x, y, yerr=m.accuracy_se or 0, fmt=markers[c.data], color=colors[c.student],
                     markerfacecolor=face, markersize=9, markeredgewidth=1.6, capsize=3, linewidth=1)


def fig_acc_vs_length(d: ReportData, path: Path) -> bool:
    use_tokens = any(m.median_reasoning_tokens is not None for m in d.metrics.values())
    pts = []
    for c in d.cells:
        m = d.metrics.get(c.cell)
        x = (m.median_reasoning_tokens if use_tokens else m.median_reasoning_chars) if m else None
        if m is not None and m.accuracy is not None and x is not None:
            pts.append((c, x, m.accuracy))
    if not pts:
        return False
    fig = _new(8.5, 5.6)
    ax = fig.subplots()
    _scatter(ax, d, pts)
    xs = [p[1] for p in pts]
    if min(xs) >= 0 and max(xs) > 30 * max(1.0, min(x for x in xs if x > 0) if any(xs) else 1.0):
        ax.set_xscale("symlog", linthresh=10)
    ax.set(xlabel=f"median reasoning {'tokens' if use_tokens else 'characters'} at inference",
           ylabel="overall accuracy (± SE)",
           title="Fig. 4 — Accuracy vs. median reasoning length")
    ax.grid(alpha=0.3)
    _legends(ax, d, [p[0] for p in pts])
    return _save(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower cost, higher accuracy), in increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -float("inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _pareto_panel(ax: Axes, d: ReportData, cost: Callable[[CellInfo], float | None], xlabel: str) -> bool:
    pts = []
    for c in d.cells:
        m = d.metrics.get(c.cell)
        x = cost(c)
        if m is not None and m.accuracy is not None and x is not None:
            pts.append((c, x, m.accuracy))
    if not pts:
        ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return False
    _scatter(ax, d, pts)
    front = [pts[i] for i in pareto_front([(p[1], p[2]) for p in pts])]
    ax.plot([p[1] for p in front], [p[2] for p in front], color="black", linewidth=1.2, linestyle="--",
            drawstyle="steps-post", zorder=0, label="Pareto front")
    ax.scatter([p[1] for p in front], [p[2] for p in front], s=260, facecolors="none", edgecolors="black",
               linewidths=1.2, zorder=3)
    for i, (c, x, y) in enumerate(front):
        last = i == len(front) - 1 and len(front) > 1  # the costliest sits at the right edge: label leftwards
        ax.annotate(f"{d.label(c.student)}/{d.label(c.method)}/{d.label(c.data)}", (x, y), fontsize=7,
                    xytext=(-8 if last else 8, -12), textcoords="offset points", ha="right" if last else "left")
    if min(p[1] for p in pts) > 0 and max(p[1] for p in pts) > 30 * min(p[1] for p in pts):
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="overall accuracy (± SE)")
    ax.grid(alpha=0.3)
    _legends(ax, d, [p[0] for p in pts])
    return True


def pareto_figure(d: ReportData) -> Figure | None:
    """The accuracy-cost figure (None without accuracies); `fig_pareto` writes it."""
    if not any(m.accuracy is not None for m in d.metrics.values()):
        return None
    # One panel per resource of the ledger's totals (never GPU-hours and core-hours on one axis);
    # a "not available" panel when no cell's total is measured in one resource.
    axes = cost_axes(d)
    fig = _new(6.5 * (1 + len(axes)), 5.4)
    ax1, *rest = fig.subplots(1, 1 + len(axes))
    ok = _pareto_panel(ax1, d, lambda c: d.metrics[c.cell].avg_completion_tokens if c.cell in d.metrics else None,
                       "avg. completion tokens per answer (inference cost)")
    ax1.set_title("Accuracy vs. inference cost")
    for ax, axis in zip(rest, axes, strict=True):
        ok |= _pareto_panel(ax, d, axis.at, axis.label)
        ax.set_title("Accuracy vs. training time" if axis.unit == "hours" else
                     f"Accuracy vs. total cost ({axis.unit or 'not available'})")
    if not ok:
        return None
    fig.suptitle("Accuracy–cost trade-off (circled: Pareto front, higher accuracy at lower cost)",
                 fontweight="bold")
    return fig


def fig_pareto(d: ReportData, path: Path) -> bool:
    fig = pareto_figure(d)
    return fig is not None and _save(fig, path)


FIGURES: list[tuple[str, str, Callable[[ReportData, Path], bool]]] = [
    ("fig2_rho.png", "Fig. 2 — distribution of the compression ratio ρ and trace lengths", fig_rho),
    ("fig3_loss.png", "Fig. 3 — training loss curves per cell", fig_loss),
    ("fig4_acc_vs_length.png", "Fig. 4 — accuracy vs. median reasoning length", fig_acc_vs_length),
    ("fig5_pareto.png", "Accuracy vs. inference cost and vs. each cell's total measured cost (Table 12), "
                        "Pareto front", fig_pareto),
]


def write_figures(d: ReportData, out_dir: Path) -> list[tuple[Path, str]]:
    """Write every figure that has data; returns (path, caption) pairs."""
    out = []
    for name, caption, fn in FIGURES:
        path = out_dir / name
        if fn(d, path):
            out.append((path, caption))
    return out
