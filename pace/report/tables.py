"""Cells -> tables (``mean ± std (n)``, best per column, missing-seed flags, deltas) and their formats.

Pure: ``build_table`` / ``compare_table`` return a ``Table`` of plain text cells plus one numeric
record per cell; ``to_markdown`` / ``to_csv`` / ``to_latex`` / ``records_csv`` render it.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pace.report.cells import Cell, natural_key
from pace.report.read import MISSING

#: metrics where smaller is better (best-per-column marks the minimum)
LOWER_IS_BETTER = frozenset({"forgetting", "time_s", "total_time_s", "peak_mem_mb", "drift_shift", "drift_ratio"})
FLAG = "†"
FORMATS = ("md", "csv", "latex")


@dataclass
class Table:
    title: str
    corner: str  # header of the row-label column
    columns: list[str]
    rows: list[str]
    cells: list[list[str]]  # plain text, flags included, no markup
    best: list[list[bool]]
    footnotes: list[str] = field(default_factory=list)
    #: one numeric record per cell, for the long CSV
    records: list[dict[str, Any]] = field(default_factory=list)


def fmt_cell(c: Cell | None) -> str:
    if c is None or c.n == 0:
        return "–"
    if c.n == 1:
        return f"{c.mean:.2f} ({c.n})"
    return f"{c.mean:.2f} ± {c.std:.2f} ({c.n})"


def _row_label(rk: tuple[str, ...]) -> str:
    return " / ".join(rk) if rk else "all"


def _best_flags(means: list[float], lower: bool) -> list[bool]:
    finite = [m for m in means if math.isfinite(m)]
    if not finite:
        return [False] * len(means)
    target = min(finite) if lower else max(finite)
    return [math.isfinite(m) and math.isclose(m, target, rel_tol=0, abs_tol=1e-9) for m in means]


def build_table(cells: dict[tuple[tuple[str, ...], str], Cell], metric: str, corner: str = "variant",
                baseline: str | None = None, avg: bool = False, title: str = "") -> Table:
    """Rows x columns of ``mean ± std (n)``, best per column marked, short cells flagged.

    A cell lacking seeds that other cells of the table have gets ``†`` and a footnote naming them, so
    an average over fewer seeds is never passed off as a full one (without seed tags: fewer runs than
    the largest cell). With
    ``baseline`` (a row label) every other row shows ``Δ`` (points) and the relative change (%) vs
    the baseline's mean in the same column. ``avg`` adds a column of the mean over columns (paper
    Table 12), only for rows that have every column.
    """
    row_keys = sorted({rk for rk, _ in cells}, key=lambda rk: tuple(natural_key(x) for x in rk))
    cols = sorted({ck for _, ck in cells}, key=natural_key)
    labels = [_row_label(rk) for rk in row_keys]
    if baseline is not None:
        if baseline not in labels:
            raise ValueError(f"baseline {baseline!r} is not a row; rows: {', '.join(labels)}")
        i = labels.index(baseline)
        row_keys.insert(0, row_keys.pop(i))
        labels.insert(0, labels.pop(i))
    lower = metric in LOWER_IS_BETTER
    max_n = max((c.n for c in cells.values()), default=0)
    all_seeds = sorted({s for c in cells.values() for s in c.seeds if s != MISSING}, key=natural_key)
    grid = [[cells.get((rk, ck)) for ck in cols] for rk in row_keys]
    base = grid[0] if baseline is not None else None

    text, short, records = [], [], []
    for label, row in zip(labels, grid):
        line = []
        for ck, c, b in zip(cols, row, base or [None] * len(cols)):
            s = fmt_cell(c)
            rec = {"row": label, "column": ck, "mean": c.mean if c else math.nan,
                   "std": c.std if c else math.nan, "n": c.n if c else 0, "flagged": False,
                   "missing_seeds": "", "delta": math.nan, "delta_pct": math.nan}
            # flagged only for seeds that other cells have and this one lacks; with no seed tags, by count
            missing = [x for x in all_seeds if x not in c.seeds] if c is not None else []
            if c is not None and (missing or (not all_seeds and c.n < max_n)):
                s += FLAG
                rec.update(flagged=True, missing_seeds=" ".join(missing))
                short.append(f"{label} on {ck or metric} " + (
                    f"has no run for seed {', '.join(missing)} (its mean covers {len(all_seeds) - len(missing)} of "
                    f"the table's {len(all_seeds)} seeds)" if missing
                    else f"has {c.n} run(s), the largest cell {max_n} (runs carry no seed tag)"))
            if b is not None and c is not None and label != labels[0]:
                d = c.mean - b.mean
                rec["delta"] = d
                s += f" Δ {d:+.2f}"
                if b.mean != 0:
                    rec["delta_pct"] = 100.0 * d / abs(b.mean)
                    s += f" ({rec['delta_pct']:+.2f}%)"
            line.append(s)
            records.append(rec)
        text.append(line)
    means = [[c.mean if c else math.nan for c in row] for row in grid]
    columns = [ck or metric for ck in cols]
    if avg and len(cols) > 1:
        columns.append("avg")
        for line, row in zip(text, means):
            line.append(f"{np.mean(row):.2f}" if all(math.isfinite(m) for m in row) else "–")
            row.append(float(np.mean(row)) if all(math.isfinite(m) for m in row) else math.nan)
    best_cols = [_best_flags([row[j] for row in means], lower) for j in range(len(columns))]
    best = [[best_cols[j][i] for j in range(len(columns))] for i in range(len(labels))]
    notes = []
    if short:
        notes.append(f"{FLAG} missing seeds: " + "; ".join(short) + ".")
    if baseline is not None:
        notes.append(f"Δ: difference to {baseline!r} in points (relative change in %).")
    return Table(title or metric, corner, columns, labels, text, best, notes, records)


def compare_table(cells_a: dict, cells_b: dict, name_a: str, name_b: str, metric: str,
                  corner: str = "variant") -> Table:
    """Two studies side by side per column, plus ``B - A`` of the means (B = the second study)."""
    ta = build_table(cells_a, metric, corner)
    tb = build_table(cells_b, metric, corner)
    cols = sorted(set(ta.columns) | set(tb.columns), key=natural_key)
    rows = sorted(set(ta.rows) | set(tb.rows), key=lambda r: tuple(natural_key(x) for x in r.split(" / ")))
    mean = {}
    for t, side in ((ta, "a"), (tb, "b")):
        for rec in t.records:
            mean[(side, rec["row"], rec["column"])] = rec["mean"]

    def lookup(t: Table, r: str, c: str) -> tuple[str, bool]:
        if r in t.rows and c in t.columns:
            i, j = t.rows.index(r), t.columns.index(c)
            return t.cells[i][j], t.best[i][j]
        return "–", False

    columns, text, best, records = [], [[] for _ in rows], [[] for _ in rows], []
    for c in cols:
        columns += [f"{c} [{name_a}]", f"{c} [{name_b}]", f"{c} Δ (B−A)"]
        for i, r in enumerate(rows):
            (sa, ba), (sb, bb) = lookup(ta, r, c), lookup(tb, r, c)
            ma, mb = mean.get(("a", r, c), math.nan), mean.get(("b", r, c), math.nan)
            d = mb - ma
            text[i] += [sa, sb, f"{d:+.2f}" if math.isfinite(d) else "–"]
            best[i] += [ba, bb, False]
            records.append({"row": r, "column": c, "mean_a": ma, "mean_b": mb, "diff": d})
    notes = [f"A = {name_a}, B = {name_b}; Δ = mean(B) − mean(A) in points."]
    notes += [f"[{name_a}] {n}" for n in ta.footnotes] + [f"[{name_b}] {n}" for n in tb.footnotes]
    return Table(f"{metric}: {name_b} vs {name_a}", corner, columns, rows, text, best, notes, records)


# =============================================================================================
# Formats


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def to_markdown(t: Table) -> str:
    head = [t.corner] + t.columns
    lines = ["| " + " | ".join(_md_escape(h) for h in head) + " |",
             "|" + "|".join(["---"] + ["---:"] * len(t.columns)) + "|"]
    for label, row, best in zip(t.rows, t.cells, t.best):
        cells = [f"**{_md_escape(c)}**" if b else _md_escape(c) for c, b in zip(row, best)]
        lines.append("| " + " | ".join([_md_escape(label)] + cells) + " |")
    legend = "mean ± sample std (ddof=1) over seeds, (n) runs; best per column in bold."
    return "\n".join([f"**{t.title}**", ""] + lines + ["", legend] + t.footnotes) + "\n"


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([t.corner] + t.columns)
    for label, row, best in zip(t.rows, t.cells, t.best):
        w.writerow([label] + [c + "*" if b else c for c, b in zip(row, best)])
    return buf.getvalue()


def records_csv(t: Table) -> str:
    """The numbers behind a table, one line per cell, for further processing."""
    return pd.DataFrame(t.records).to_csv(index=False)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "†": r"\textsuperscript{\dag}", "Δ": r"$\Delta$", "−": "-", "–": "--",
                  "≠": r"$\neq$", "‡": r"\textsuperscript{\ddag}", "≪": r"$\ll$", "η": r"$\eta$", "→": r"$\to$",
                  "ρ": r"$\rho$"}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(t: Table) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``); best per column in bold."""
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + latex_escape(t.title) + "}",
             r"\begin{tabular}{l" + "r" * len(t.columns) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in [t.corner] + t.columns) + r" \\", r"\midrule"]
    for label, row, best in zip(t.rows, t.cells, t.best):
        cells = [r"\textbf{" + latex_escape(c) + "}" if b else latex_escape(c) for c, b in zip(row, best)]
        lines.append(" & ".join([latex_escape(label)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for note in ["mean ± sample std over seeds, (n) runs; best per column in bold."] + t.footnotes:
        lines.append(r"\par{\footnotesize " + latex_escape(note) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


RENDER = {"md": (".md", to_markdown), "csv": (".csv", to_csv), "latex": (".tex", to_latex)}
