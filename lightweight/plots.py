"""The few plot helpers the chapters share, in one style."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, NullFormatter

STYLE = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 11,
    "legend.frameon": False,
}


def use_style() -> None:
    """Apply the course's matplotlib style (call once per notebook)."""
    plt.rcParams.update(STYLE)


def bar_chart(
    labels: Sequence[str], values: Sequence[float], ax: Axes | None = None, title: str = "",
    ylabel: str = "", fmt: str = "{:.3g}", log: bool = False, color: str | Sequence[str] = "C0",
) -> Axes:
    """Vertical bars with their values written on top."""
    if len(labels) != len(values):
        raise ValueError(f"labels and values differ in length: {len(labels)} and {len(values)}")
    ax = ax or plt.subplots()[1]
    bars = ax.bar(list(labels), list(values), color=color)
    ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=2, fontsize=9)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return ax


def curves(
    x: Sequence[float], series: Mapping[str, Sequence[float]], ax: Axes | None = None,
    title: str = "", xlabel: str = "", ylabel: str = "", baseline: float | None = None, logx: bool = False,
) -> Axes:
    """One line per named series over the same ``x``; an optional dashed baseline."""
    ax = ax or plt.subplots()[1]
    for name, ys in series.items():
        if len(ys) != len(x):
            raise ValueError(f"series {name!r} has {len(ys)} points, x has {len(x)}")
        ax.plot(list(x), list(ys), marker="o", label=name)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label="gốc (baseline)")
    if logx:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    return ax


def pareto(
    points: Mapping[str, tuple[float, float]], front: Sequence[str], ax: Axes | None = None, title: str = "",
    xlabel: str = "", ylabel: str = "", baseline: float | None = None, logx: bool = True,
) -> Axes:
    """Named points ``(x, y)``, the Pareto front joined by a line, each point labelled."""
    ax = ax or plt.subplots()[1]
    missing = [k for k in front if k not in points]
    if missing:
        raise ValueError(f"front names not among the points: {missing}")
    for name, (x, y) in points.items():
        on = name in front
        ax.scatter([x], [y], color="C3" if on else "C0", zorder=3, s=40 if on else 25)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.plot([points[k][0] for k in front], [points[k][1] for k in front], color="C3", alpha=0.6,
            label="biên Pareto")
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label="gốc (baseline)")
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    return ax


def flowchart(
    boxes: Mapping[str, tuple[float, float, str]], arrows: Sequence[tuple[str, str, str]], ax: Axes | None = None,
    leaves: Sequence[str] = (), title: str = "",
) -> Axes:
    """A decision diagram: ``boxes`` ``{name: (x, y, text)}`` in axes coordinates [0, 1], ``arrows``
    ``(from, to, label)``; boxes named in ``leaves`` are drawn as answers (green)."""
    ax = ax or plt.subplots(figsize=(13, 7.5))[1]
    unknown = [n for a in arrows for n in a[:2] if n not in boxes] + [n for n in leaves if n not in boxes]
    if unknown:
        raise ValueError(f"arrows or leaves name unknown boxes: {sorted(set(unknown))}")
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    for src, dst, label in arrows:
        (x0, y0, _), (x1, y1, _) = boxes[src], boxes[dst]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color="gray", shrinkA=18, shrinkB=18))
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, label, fontsize=8, color="dimgray", ha="center",
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none"))
    for name, (x, y, text) in boxes.items():
        colour = "#dff0d8" if name in leaves else "#e8eef7"
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5,
                bbox=dict(boxstyle="round,pad=0.4", fc=colour, ec="gray"))
    ax.set_title(title)
    return ax
