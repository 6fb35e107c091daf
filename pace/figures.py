"""Figures for ``pace report``: plain functions from numbers to a PNG file.

They take arrays and dicts (no MLflow, no pandas) so they can be reused on ``pace run`` outputs too.
Matplotlib's object API with a fresh ``Figure`` per plot: no pyplot state and no backend switch, so
importing this module never changes a notebook's backend; PNG output goes through Agg.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: above this many sessions the heat map is drawn without per-cell numbers and per-session ticks
ANNOTATE_MAX = 20
DPI = 120


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")  # layout="constrained" already fits labels: one draw, not two
    return path


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def accuracy_heatmap(matrix: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Paper Fig. 9 style: row i = after session i, column j = accuracy on session j's test set.

    The upper triangle (sessions not seen yet) is blank; the lower triangle is annotated when small.
    """
    m = np.asarray(matrix, dtype=float)
    T = m.shape[0]
    masked = np.ma.masked_invalid(np.where(np.triu(np.ones_like(m, dtype=bool), 1), np.nan, m))
    side = min(2.0 + 0.55 * T, 14.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(masked, cmap="viridis", vmin=0.0, vmax=100.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy (%)")
    if T <= ANNOTATE_MAX:
        ticks = np.arange(T)
        ax.set_xticks(ticks, [str(i + 1) for i in ticks])
        ax.set_yticks(ticks, [str(i + 1) for i in ticks])
        for i in range(T):
            for j in range(i + 1):
                if math.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", fontsize=8,
                            color="black" if m[i, j] > 60 else "white")
    ax.set_xlabel("evaluated on session")
    ax.set_ylabel("after training session")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def session_curves(series: Mapping[str, Sequence[Sequence[float]]], path: str | Path, ylabel: str,
                   title: str = "") -> Path:
    """One line per label: mean over runs (seeds) per session with a +-1 std band.

    ``series[label]`` holds one sequence per run, indexed by 0-based session; runs may be of
    different lengths (NaN where a run has no value), each session averages the runs that have one.
    """
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    # more lines than the default 10 colours: cycle tab20 and vary the line style so no two look alike
    colors = matplotlib.colormaps["tab20"].colors
    for k_line, (label, runs) in enumerate(series.items()):
        if not runs:
            continue
        T = max(len(r) for r in runs)
        grid = np.full((len(runs), T), np.nan)
        for k, r in enumerate(runs):
            grid[k, : len(r)] = r
        stats = [_mean_std(grid[:, t]) for t in range(T)]
        mean = np.array([s[0] for s in stats])
        std = np.array([s[1] for s in stats])
        x = np.arange(1, T + 1)
        (line,) = ax.plot(x, mean, marker="o" if T <= 30 else None, ms=3, label=f"{label} (n={len(runs)})",
                          color=colors[(2 * k_line) % 20 + (k_line // 10) % 2],
                          linestyle=("-", "--", ":")[(k_line // 10) % 3])
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # sessions are whole numbers
    ax.set_xlabel("session")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def first_new_bars(data: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path,
                   title: str = "") -> Path:
    """Paper Fig. 3: per label, bars for each quantity (e.g. first task / new tasks / all) +- std."""
    labels = list(data)
    kinds = list(dict.fromkeys(k for d in data.values() for k in d))
    fig = Figure(figsize=(max(4.5, 1.3 * len(labels) + 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(kinds), 1)
    x = np.arange(len(labels))
    for i, kind in enumerate(kinds):
        stats = [_mean_std(data[lab].get(kind, [])) for lab in labels]
        ax.bar(x + (i - (len(kinds) - 1) / 2) * width, [s[0] for s in stats], width,
               yerr=[s[1] for s in stats], capsize=3, label=kind)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel("accuracy after the last session (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))  # bars fill the axes
    return _save(fig, path)


def stability_plasticity(points: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                         title: str = "") -> Path:
    """One point per label at (mean plasticity, mean stability) with +-std error bars over seeds."""
    fig = Figure(figsize=(5.2, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for label, (plast, stab) in points.items():
        (px, sx), (py, sy) = _mean_std(plast), _mean_std(stab)
        if not (math.isfinite(px) and math.isfinite(py)):
            continue
        ax.errorbar(px, py, xerr=sx, yerr=sy, fmt="o", capsize=3, label=label)
        ax.annotate(label, (px, py), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("plasticity: mean accuracy on the session just learned (%)")
    ax.set_ylabel("stability: mean accuracy on earlier sessions (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def sensitivity(lines: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, xlabel: str,
                ylabel: str, title: str = "") -> Path:
    """Paper Fig. 7 / Table 12: metric vs a swept value, one line per benchmark, +-std over seeds.

    ``lines[benchmark][value]`` holds the runs' metric values. Numeric values go on a numeric axis;
    if any value is not a number (``None``, ``w/o``) all are placed as ordered categories.
    """
    values = list(dict.fromkeys(v for d in lines.values() for v in d))
    numeric = all(_to_float(v) is not None for v in values)
    values.sort(key=lambda v: (_to_float(v) is None, _to_float(v) or 0.0, str(v)))
    pos = {v: (_to_float(v) if numeric else float(i)) for i, v in enumerate(values)}
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for bench, by_value in lines.items():
        xs = [v for v in values if v in by_value]
        stats = [_mean_std(by_value[v]) for v in xs]
        ax.errorbar([pos[v] for v in xs], [s[0] for s in stats], yerr=[s[1] for s in stats],
                    marker="o", capsize=3, label=bench)
    if not numeric:
        ax.set_xticks([pos[v] for v in values], [str(v) for v in values])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _to_float(v: object) -> float | None:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
