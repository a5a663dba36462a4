"""Which measured configuration fits a reader's constraints: a filter over benchmark rows, never a
guess. Every answer is a row that ``python -m lightweight.bench`` measured."""

from __future__ import annotations

from collections.abc import Iterable

from .bench.core import METRICS, NEEDS

GOALS = ("size", "speed")


def quality_drop(row: dict) -> float:
    """How much worse than its baseline a row is (0 or less: no worse). ``accuracy``: points lost;
    ``val_loss``, ``ppl``, ``bpb``: relative increase (0.05 = 5% higher); ``kl``: value - baseline; ``cosine`` / ``top10``: baseline - value."""
    metric, base, value = row["metric"], row["baseline"], row["value"]
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    if metric in ("val_loss", "ppl", "bpb"):
        return value / base - 1.0
    if metric == "kl":
        return value - base
    return base - value


def _worst_domain(rows: list[dict]) -> list[dict]:
    """One row per configuration: rows that differ only in ``setting["domain"]`` are replaced by the
    one with the largest quality drop (rows without a domain are kept as they are)."""
    worst: dict[tuple, dict] = {}
    for r in rows:
        key = (r["method"], tuple(sorted((k, str(v)) for k, v in r["setting"].items() if k != "domain")))
        if key not in worst or quality_drop(r) > quality_drop(worst[key]):
            worst[key] = r
    return list(worst.values())


def advise(
    rows: Iterable[dict], model: str, metric: str, max_drop: float, goal: str = "size",
    can_train: bool = True, has_calibration_data: bool = True, need_speedup: bool = False,
) -> list[dict]:
    """The rows of ``model`` / ``metric`` that fit the constraints, best first.

    Kept: ``quality_drop(row) <= max_drop``; rows that need training only if ``can_train``; rows that
    need calibration data only if ``has_calibration_data`` (training implies having data); with
    ``need_speedup``, only rows measured faster than FP32 here (``speed_ratio > 1``). Order: smallest
    ``size_ratio`` first (``goal="size"``) or fastest first (``goal="speed"``). An empty list means that
    nothing measured fits: relax a constraint or measure more. Rows measured on several text domains
    (``setting["domain"]``, chapter 6) fit only if the configuration fits on every domain; it is then
    represented by its worst domain's row.
    """
    if goal not in GOALS:
        raise ValueError(f"goal must be one of {GOALS}, got {goal!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not max_drop >= 0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}")
    allowed = {"none"} | ({"calibration"} if has_calibration_data or can_train else set()) | (
        {"training"} if can_train else set())
    rows = [r for r in rows if r["model"] == model and r["metric"] == metric]
    if not rows:
        raise ValueError(f"no measured rows for model {model!r} and metric {metric!r}")
    for r in rows:
        if r["needs"] not in NEEDS:
            raise ValueError(f"row {r['method']!r} has an unknown 'needs': {r['needs']!r}")
    fit = [r for r in _worst_domain(rows) if r["needs"] in allowed and quality_drop(r) <= max_drop
           and (not need_speedup or (r["speed_ratio"] or 0) > 1)]
    if goal == "size":  # rows whose size was not measured (speed-only rows) cannot be ranked by size
        return sorted([r for r in fit if r["size_ratio"] is not None], key=lambda r: (r["size_ratio"], quality_drop(r)))
    return sorted([r for r in fit if r["speed_ratio"] is not None],
                  key=lambda r: (-r["speed_ratio"], r["size_ratio"] if r["size_ratio"] is not None else 1.0))
