"""The few plot helpers the chapters share, in one style."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

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
