"""Figures for ``pace report``: plain functions from numbers to a PNG file.

They take arrays and dicts (no MLflow, no pandas) so they can be reused on ``pace run`` outputs too.
Matplotlib's object API with a fresh ``Figure`` per plot: no pyplot state and no backend switch, so
importing this module never changes a notebook's backend; PNG output goes through Agg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

#: above this many sessions the heat map is drawn without per-cell numbers and per-session ticks
ANNOTATE_MAX = 20
DPI = 120


@dataclass(frozen=True)
class Style:
    color: tuple[float, ...]
    linestyle: str
    marker: str
    short: str  # the label drawn next to a point: the family, numbered when it has several members


_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def family_of(label: str) -> str:
    """A configuration label ``pace [lr_backbone=0.01]`` belongs to the family ``pace``."""
    return label.split(" [", 1)[0]


def styles(labels: Sequence[str], family: Callable[[str], str] = family_of) -> dict[str, Style]:
    """One colour per family (method or variant) for every figure of a report: build it once from
    every row label and pass it to each figure. Members of one family (a sweep's configurations of
    one method) share the colour and differ in line style and marker."""
    labels = sorted(dict.fromkeys(labels), key=str)
    fams = list(dict.fromkeys(family(lab) for lab in labels))
    palette = matplotlib.colormaps["tab10" if len(fams) <= 10 else "tab20"].colors
    out, seen = {}, {}
    for lab in labels:
        f = family(lab)
        k = seen[f] = seen.get(f, -1) + 1
        size = sum(family(x) == f for x in labels)
        out[lab] = Style(tuple(palette[fams.index(f) % len(palette)]), _LINESTYLES[k % len(_LINESTYLES)],
                         _MARKERS[k % len(_MARKERS)], f"{f} #{k + 1}" if size > 1 else f)
    return out


def _legend_text(label: str, st: Style) -> str:
    """``ranpac #2 [analytic.scale=0.3]``: the short name a point carries, then the parameters."""
    return st.short + label[len(family_of(label)):]


def _legend_below(fig: Figure, ax, n: int) -> None:
    """Long configuration labels go under the axes, where they cover no data."""
    if n:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)


def _figure(width: float, height: float, legend_rows: int = 0) -> Figure:
    fig = Figure(figsize=(width, height + 0.17 * legend_rows), layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure label extents (label placement)
    return fig


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
                   title: str = "", style: Mapping[str, Style] | None = None,
                   pooled: Sequence[str] = ()) -> Path:
    """One line per label: mean over runs (seeds) per session with a +-1 std band.

    ``series[label]`` holds one sequence per run, indexed by 0-based session; runs may be of
    different lengths (NaN where a run has no value), each session averages the runs that have one.
    The band is a spread over seeds of one configuration; for labels in ``pooled`` (runs that are
    not seeds of one configuration) each run is drawn as a thin line instead. ``style``: see ``styles``.
    """
    style = style or styles(list(series))
    fig = _figure(6.4, 4.2, len(series))
    ax = fig.add_subplot()
    for label, runs in series.items():
        if not runs:
            continue
        st = style.get(label) or styles([label])[label]
        T = max(len(r) for r in runs)
        grid = np.full((len(runs), T), np.nan)
        for k, r in enumerate(runs):
            grid[k, : len(r)] = r
        stats = [_mean_std(grid[:, t]) for t in range(T)]
        mean = np.array([s[0] for s in stats])
        std = np.array([s[1] for s in stats])
        x = np.arange(1, T + 1)
        what = f"n={len(runs)} runs, pooled" if label in pooled else f"n={len(runs)}"
        ax.plot(x, mean, marker=st.marker if T <= 30 else None, ms=4, label=f"{_legend_text(label, st)} ({what})",
                color=st.color, linestyle=st.linestyle)
        if label in pooled:
            for r in grid:
                ax.plot(x, r, color=st.color, linewidth=0.6, alpha=0.5)
        else:
            ax.fill_between(x, mean - std, mean + std, color=st.color, alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # sessions are whole numbers
    ax.set_xlabel("session")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax, len(series))
    return _save(fig, path)


_HATCHES = ("", "//", "..", "xx", "\\\\")


def first_new_bars(data: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path,
                   title: str = "", style: Mapping[str, Style] | None = None) -> Path:
    """Paper Fig. 3: per label, bars for each quantity (e.g. first task / new tasks / all) +- std.

    Bars take their label's colour (``style``); the quantity is the hatch, so colours keep meaning
    methods across the report's figures."""
    labels = list(data)
    style = style or styles(labels)
    kinds = list(dict.fromkeys(k for d in data.values() for k in d))
    st = [style.get(lab) or styles([lab])[lab] for lab in labels]
    # what a numbered configuration is, as in the other figures' legends
    keys = [_legend_text(lab, s) for lab, s in zip(labels, st) if s.short != lab]
    fig = _figure(max(4.5, 1.3 * len(labels) + 2), 4.2, len(keys))
    ax = fig.add_subplot()
    width = 0.8 / max(len(kinds), 1)
    x = np.arange(len(labels))
    for i, kind in enumerate(kinds):
        stats = [_mean_std(data[lab].get(kind, [])) for lab in labels]
        ax.bar(x + (i - (len(kinds) - 1) / 2) * width, [s[0] for s in stats], width,
               yerr=[s[1] for s in stats], capsize=3, color=[s.color for s in st], edgecolor="black",
               linewidth=0.5, hatch=_HATCHES[i % len(_HATCHES)])
    handles = [Patch(facecolor="white", edgecolor="black", hatch=_HATCHES[i % len(_HATCHES)], label=kind)
               for i, kind in enumerate(kinds)]
    ax.set_xticks(x, [s.short for s in st], rotation=20, ha="right")
    if keys:
        ax.set_xlabel("\n".join(keys), fontsize=7, loc="left")
    ax.set_ylabel("accuracy after the last session (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))  # bars fill the axes
    return _save(fig, path)


def stability_plasticity(points: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                         title: str = "", style: Mapping[str, Style] | None = None) -> Path:
    """One point per label at (mean plasticity, mean stability) with +-std error bars over seeds.

    Each point carries its short label (``Style.short``), placed where it covers no other label or
    point; the legend below gives the full labels."""
    style = style or styles(list(points))
    fig = _figure(5.6, 4.6, len(points))
    ax = fig.add_subplot()
    placed = []
    for label, (plast, stab) in points.items():
        (px, sx), (py, sy) = _mean_std(plast), _mean_std(stab)
        if not (math.isfinite(px) and math.isfinite(py)):
            continue
        st = style.get(label) or styles([label])[label]
        ax.errorbar(px, py, xerr=sx, yerr=sy, fmt=st.marker, color=st.color, capsize=3,
                    label=_legend_text(label, st))
        placed.append((px, py, st.short, st.color))
    ax.set_xlabel("plasticity: mean accuracy on the session just learned (%)")
    ax.set_ylabel("stability: mean accuracy on earlier sessions (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.2)
    _legend_below(fig, ax, len(placed))
    place_labels(fig, ax, placed)
    return _save(fig, path)


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _text_box(ann, renderer):
    """An annotation's text alone: its leader line may cross other boxes."""
    ann.get_window_extent(renderer)  # positions the text (and sets its renderer)
    return Text.get_window_extent(ann)


def place_labels(fig: Figure, ax, points: Sequence[tuple[float, float, str, object]], fontsize: float = 8):
    """Annotate each (x, y, text, colour) next to its point where the text covers neither another
    label nor a point and stays inside the axes: nearest free spot among rings of candidate offsets,
    with a leader line when it had to move away. Returns the annotations."""
    from matplotlib.transforms import Bbox

    fig.draw_without_rendering()  # the final layout (legend, labels) fixes where the axes are
    ax.set_xlim(ax.get_xlim())  # freeze the autoscaled limits: annotations must not move the data
    ax.set_ylim(ax.get_ylim())
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pad = 5.0 * fig.dpi / 72  # half a marker, in pixels
    taken = [Bbox.from_extents(u - pad, v - pad, u + pad, v + pad)
             for u, v in (ax.transData.transform((x, y)) for x, y, _, _ in points)]
    out = []
    for x, y, text, color in points:
        best = None
        for r in (8, 16, 28, 42, 58):
            for deg in (45, 135, -45, -135, 90, -90, 0, 180, 22, 158, -22, -158):
                dx, dy = r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))
                ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                  color=color, ha="left" if dx > 1 else "right" if dx < -1 else "center",
                                  va="bottom" if dy > 1 else "top" if dy < -1 else "center",
                                  arrowprops={"arrowstyle": "-", "color": color, "lw": 0.5} if r > 8 else None)
                ann.set_in_layout(False)
                box = _text_box(ann, renderer)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                if inside and not any(_overlaps(box, t) for t in taken):
                    best = (ann, box)
                    break
                ann.remove()
            if best:
                break
        if best is None:  # nowhere free: the legend below still names the point
            continue
        taken.append(best[1])
        out.append(best[0])
    return out


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


def paired_differences(diffs: Sequence[tuple[str, Sequence[float], float, float, float]], path: str | Path,
                       reference: str, xlabel: str) -> Path:
    """A forest plot of paired differences against ``reference``: one row per method, its per-unit
    differences as dots, the mean as a square with its bootstrap interval, and a line at 0. A row whose
    interval excludes 0 (separable) is drawn solid, one whose interval includes it hollow.

    ``diffs``: (name, per-unit differences, mean, lo, hi), drawn top to bottom in the given order."""
    n = len(diffs)
    fig = _figure(6.0, 0.9 + 0.32 * max(n, 1))
    ax = fig.add_subplot()
    ax.axvline(0.0, color="0.4", lw=0.8, zorder=0)
    for i, (_name, units, mean, lo, hi) in enumerate(diffs):
        y = n - 1 - i
        pts = [u for u in units if u is not None and math.isfinite(u)]
        ax.scatter(pts, [y] * len(pts), s=9, color="0.55", zorder=1)
        if math.isfinite(mean):
            separable = len(pts) > 1 and (lo > 0 or hi < 0)
            ax.errorbar([mean], [y], xerr=[[mean - lo], [hi - mean]], fmt="s", ms=5, capsize=3, color="C0",
                        mfc="C0" if separable else "white", zorder=2)
    ax.set_yticks(range(n), [d[0] for d in reversed(diffs)])
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(f"{xlabel} − {reference} (points)")
    ax.set_title(f"paired differences against {reference} (solid: interval excludes 0)", fontsize=9)
    ax.grid(axis="x", lw=0.3)
    return _save(fig, path)
