"""``pace report``: MLflow runs -> pandas -> tables (Markdown, CSV, LaTeX) and figures.

Reads the layout ``pace.tracking`` writes (design.md, "MLflow layout"): one experiment per sweep or
study, a parent run, one child run per trial with tags (method, backbone, benchmark, seed, variant),
per-session metrics at ``step`` = session index, final metrics and the ``accuracy_matrix.csv``
artifact. Only FINISHED child runs count; anything missing is reported, never guessed.

Layers, so the arithmetic is testable without a store:
- pure: ``select_runs`` / ``tidy`` (runs frame -> one row per run), ``aggregate`` (seeds -> mean,
  sample std, n), ``build_table`` / ``compare_table`` (cells, best marks, flags, deltas) and the
  renderers ``to_markdown`` / ``to_csv`` / ``to_latex``;
- I/O: ``load_study`` (``mlflow.search_runs``), histories and artifacts, ``run_report`` /
  ``run_compare`` (write files, log them to the parent run), ``add_cli``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

#: metrics where smaller is better (best-per-column marks the minimum)
LOWER_IS_BETTER = frozenset({"forgetting", "time_s", "total_time_s", "peak_mem_mb", "drift_shift", "drift_ratio"})
MISSING = "?"
FLAG = "†"
PARENT_ARTIFACT_DIR = "report"
FORMATS = ("md", "csv", "latex")
#: tag on a study's parent and child runs naming one start of it (a new id on --fresh)
INSTANCE_TAG = "pace.study_instance"
#: the derived grouping key of a sweep's configurations (see ``configurations``)
CONFIG_KEY = "configuration"
#: params that differ between runs of one configuration: seeds, and settings that do not change results
_NOT_A_SETTING = re.compile(r"(^|[._])seeds?$|^seeds\.|^runtime\.|^tags\.|^name$")
FINAL_METRICS = frozenset({"last_accuracy", "average_incremental_accuracy", "bwt", "plasticity", "stability",
                           "first_task_accuracy", "new_task_accuracy"})


# =============================================================================================
# Pure: runs frame -> tidy rows -> cells


def key_column(df: pd.DataFrame, key: str) -> str | None:
    """The frame column a grouping key refers to: a tag first, then a param (dotted config key)."""
    for col in (key, f"tags.{key}", f"params.{key}", f"metrics.{key}"):
        if col in df.columns:
            return col
    return None


def _text(v: Any) -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)) or v == "":
        return MISSING
    return str(v)


def _tag(df: pd.DataFrame, key: str) -> pd.Series:
    col = f"tags.{key}"
    return df[col].map(_text) if col in df.columns else pd.Series(MISSING, index=df.index)


def _parents(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(each run's parent run id or ``?``, whether the run is a study's parent run)."""
    parents_ref = _tag(df, "mlflow.parentRunId")
    is_parent = (_tag(df, "pace.role") == "study") | df["run_id"].isin(set(parents_ref[parents_ref != MISSING]))
    return parents_ref, is_parent


def pick_instance(df: pd.DataFrame, all_instances: bool = False) -> tuple[pd.DataFrame, str | None, list[str]]:
    """The runs of the newest study instance: (runs, its id or None, notes).

    Each ``pace sweep``/``pace ablate`` start (a new one with ``--fresh``) tags its parent and child runs
    ``pace.study_instance``; a report describes one instance unless ``all_instances``. The newest
    instance is the tag of the newest parent run; a store whose newest parent has no tag (written
    before the tag existed) is read whole, as before.
    """
    if df.empty or f"tags.{INSTANCE_TAG}" not in df.columns:
        return df, None, []
    tag = _tag(df, INSTANCE_TAG)
    parents_ref, is_parent = _parents(df)
    parents = df[is_parent]
    if "start_time" in parents.columns:
        parents = parents.sort_values("start_time", ascending=False)
    if parents.empty or tag[parents.index[0]] == MISSING:
        return df, None, []
    known = list(dict.fromkeys(t for t in tag[parents.index] if t != MISSING))
    if all_instances:
        return df, None, ([f"runs of all {len(known)} study instances pooled (--all-instances)"]
                          if len(known) > 1 else [])
    newest = tag[parents.index[0]]
    own_parents = set(df.loc[parents.index[tag[parents.index] == newest], "run_id"])
    keep = (tag == newest) | parents_ref.isin(own_parents)
    notes = []
    left = ~keep & ~is_parent
    if left.any():
        notes.append(f"{int(left.sum())} run(s) of {len(known) - 1} earlier study instance(s) left out "
                     "(--all-instances to include them)")
    return df[keep], newest, notes


def select_runs(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(FINISHED child runs, parent run ids newest first, notes on what was left out).

    Children carry ``tags.mlflow.parentRunId``; a parent is a run they point to, or one tagged
    ``pace.role = study``. A store without parent/child structure (runs logged one by one) is read
    as all its non-parent runs.
    """
    notes: list[str] = []
    if df.empty:
        return df, [], ["the experiment has no runs"]
    parents_ref, is_parent = _parents(df)
    by_time = df[is_parent].sort_values("start_time", ascending=False) if "start_time" in df.columns else df[is_parent]
    parent_ids = list(by_time["run_id"])
    children = df[(parents_ref != MISSING) & ~is_parent]
    if children.empty:
        children = df[~is_parent]
        if not children.empty:
            notes.append(f"no child runs (tag mlflow.parentRunId); reading all {len(children)} non-parent runs")
    status = children["status"].map(_text)
    counts = status[status != "FINISHED"].value_counts()
    if len(counts):
        notes.append("ignored " + ", ".join(f"{n} {s} run(s)" for s, n in sorted(counts.items()))
                     + " (only FINISHED runs count)")
    finished = children[status == "FINISHED"]
    # ASHA-stopped trials end FINISHED with a partial accuracy matrix: not comparable with full runs
    col = "tags.pace.stopped_early"
    if col in finished.columns:
        stopped = finished[col].map(_text) == "true"
        if stopped.any():
            notes.append(f"ignored {int(stopped.sum())} run(s) stopped early by the scheduler "
                         "(tag pace.stopped_early; their sessions are incomplete)")
            finished = finished[~stopped]
    return finished, parent_ids, notes


def tidy(runs: pd.DataFrame, keys: Sequence[str], metric: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per run: ``run_id``, one string column per key (``?`` where missing), ``seed``, ``value``.

    Runs without the metric are left out (noted). A key or metric that no run has is an error naming
    what there is, since a typo should not produce an empty table.
    """
    notes: list[str] = []
    mcol = f"metrics.{metric}"
    if mcol not in runs.columns:
        have = sorted(c[len("metrics."):] for c in runs.columns if c.startswith("metrics."))
        hint = (" (final metrics are logged when a trial ends; a per-session metric such as acc_all gives "
                "each run's latest session, runs stopped early included)") if metric in FINAL_METRICS else ""
        raise ValueError(f"no run has metric {metric!r}; metrics present: {', '.join(have) or 'none'}{hint}")
    out = pd.DataFrame({"run_id": runs["run_id"].astype(str).to_numpy()})
    for key in keys:
        col = key_column(runs, key)
        if col is None:
            tags = sorted(c[5:] for c in runs.columns if c.startswith("tags.") and not c.startswith("tags.mlflow."))
            raise ValueError(f"no run has a tag or param {key!r}; tags present: {', '.join(tags) or 'none'} "
                             "(params: use the dotted config key, e.g. method.rho_layer)")
        vals = runs[col].map(_text).to_numpy()
        missing = int((vals == MISSING).sum())
        if missing:
            notes.append(f"{missing} run(s) have no {key!r}; grouped under {MISSING!r}")
        out[key] = vals
    seed_col = key_column(runs, "seed")
    out["seed"] = runs[seed_col].map(_text).to_numpy() if seed_col else MISSING
    out["value"] = pd.to_numeric(runs[mcol], errors="coerce").astype(float).to_numpy()
    bad = ~np.isfinite(out["value"].to_numpy())
    if bad.any():
        notes.append(f"{int(bad.sum())} finished run(s) have no {metric!r} and are left out: "
                     + ", ".join(out.loc[bad, "run_id"].str[:8]))
    return out[~bad].reset_index(drop=True), notes


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float  # sample std (ddof=1); NaN for one run
    n: int
    seeds: tuple[str, ...] = ()


def summarize(values: Sequence[float], seeds: Sequence[str] = ()) -> Cell:
    v = np.asarray(values, dtype=float)
    return Cell(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size),
                tuple(sorted(seeds, key=natural_key)))


def aggregate(rows: pd.DataFrame, row_keys: Sequence[str], col_key: str | None
              ) -> dict[tuple[tuple[str, ...], str], Cell]:
    """{(row key values, column value): Cell} over the tidy rows (one per run = one seed)."""
    out = {}
    by = list(row_keys) + ([col_key] if col_key else [])
    groups = rows.groupby(by, sort=False) if by else [((), rows)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        rk = tuple(key[: len(row_keys)])
        ck = key[len(row_keys)] if col_key else ""
        out[(rk, ck)] = summarize(g["value"].tolist(), g["seed"].tolist())
    return out


def duplicate_seed_notes(rows: pd.DataFrame, row_keys: Sequence[str], col_key: str | None) -> list[str]:
    """Groups holding several runs with one seed: usually different configs mixed in one cell."""
    by = list(row_keys) + ([col_key] if col_key else []) + ["seed"]
    sizes = rows[rows["seed"] != MISSING].groupby(by).size()
    dup = sizes[sizes > 1]
    if dup.empty:
        return []
    where = "; ".join(" / ".join(map(str, k if isinstance(k, tuple) else (k,))) + f": {n} runs"
                      for k, n in dup.items())
    return [f"several runs share a seed in one cell ({where}); they are all averaged. If they differ in a "
            "swept parameter, group by it (--group-by KEY or --sweep-param KEY)"]


def varied_params(runs: pd.DataFrame, keys: Sequence[str]) -> dict[tuple[str, ...], list[str]]:
    """Per group of runs sharing ``keys`` (e.g. method and benchmark): the config params (dotted keys)
    whose values differ between its runs, i.e. the hyperparameters a sweep searched. Seeds and
    runtime settings do not count; groups whose runs agree are left out."""
    params = [c for c in runs.columns if c.startswith("params.") and not _NOT_A_SETTING.search(c[7:])]
    cols = [key_column(runs, k) for k in keys]
    if not params or runs.empty or any(c is None for c in cols):
        return {}
    text = runs[params].apply(lambda col: col.map(_text))
    label = runs[cols].apply(lambda col: col.map(_text)) if cols else pd.DataFrame(index=runs.index)
    out = {}
    for key, idx in (label.groupby(list(label.columns), sort=False).groups.items() if cols
                     else [((), runs.index)]):
        n = text.loc[idx].nunique(dropna=False)
        varied = [c[7:] for c in n.index[n > 1]]
        if varied:
            out[key if isinstance(key, tuple) else (key,)] = sorted(varied)
    return out


def _short_value(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return v
    return v if f.is_integer() else f"{f:.3g}"


def configurations(runs: pd.DataFrame, row_keys: Sequence[str], column: str | None) -> pd.Series | None:
    """One label per run naming its configuration: the row label plus, where runs of one row differ
    in searched parameters, their values (``pace [lr_backbone=0.0169, rho_layer=0.951]``), so a sweep's
    configurations become rows of their own instead of one pooled cell. None when nothing differs."""
    keys = list(row_keys) + ([column] if column else [])
    varied = varied_params(runs, keys)
    if not varied:
        return None
    cols = [key_column(runs, k) for k in row_keys]
    rows = [" / ".join(p) for p in zip(*[runs[c].map(_text) for c in cols])] if cols else ["all"] * len(runs)
    by_row: dict[str, set[str]] = {}
    for key, names in varied.items():
        by_row.setdefault(" / ".join(key[: len(row_keys)]) or "all", set()).update(names)

    def labels(short: bool) -> list[str]:
        out = []
        for i, row in zip(runs.index, rows):
            names = sorted(by_row.get(row, ()))
            vals = [_text(runs.at[i, f"params.{n}"]) if f"params.{n}" in runs.columns else MISSING for n in names]
            parts = [f"{n.removeprefix('method.')}={_short_value(v) if short else v}" for n, v in zip(names, vals)]
            out.append(row + (f" [{', '.join(parts)}]" if parts else ""))
        return out

    short, full = labels(True), labels(False)
    # shortened values must not merge two configurations
    if len(set(zip(short, full))) != len(set(short)):
        short = full
    return pd.Series(short, index=runs.index)


# =============================================================================================
# Pure: cells -> table


def natural_key(s: str) -> tuple:
    """Numbers in numeric order before text: 0.9 < 0.92 < 1 < 'None' < 'w/o'."""
    try:
        return (0, float(s), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(s))


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
    for label, rk, row in zip(labels, row_keys, grid):
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
# Pure: renderers


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
                  "±": r"$\pm$", "†": r"\textsuperscript{\dag}", "Δ": r"$\Delta$", "−": "-", "–": "--"}


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


# =============================================================================================
# I/O: reading a study from MLflow


@dataclass
class Study:
    name: str
    uri: str
    experiment_id: str
    runs: pd.DataFrame  # FINISHED child runs as mlflow.search_runs returns them
    parent_ids: list[str]
    notes: list[str]
    instance: str | None = None  # the study instance read (tag pace.study_instance); None: every run


def resolve_uri(uri: str | None) -> str:
    from pace.tracking import normalize_uri, sqlite_path

    uri = normalize_uri(uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():  # MLflow would silently create an empty store
        raise FileNotFoundError(f"no MLflow store at {db} (pass --tracking-uri)")
    return uri


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """``mlflow.search_runs`` reads the global tracking URI; set it for the call only."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def load_study(uri: str, name: str, all_instances: bool = False) -> Study:
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no experiment {name!r} in {uri}; experiments: {', '.join(names) or 'none'}")
    with _tracking_uri(uri):
        df = mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="pandas")
    df, instance, inst_notes = pick_instance(df, all_instances)
    runs, parents, notes = select_runs(df)
    return Study(name, uri, exp.experiment_id, runs, parents, inst_notes + notes, instance)


def metric_history(client, run_id: str, key: str) -> np.ndarray:
    """Values by 0-based step (NaN gaps); a step logged twice keeps its latest value."""
    latest: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        if m.step not in latest or m.timestamp >= latest[m.step][0]:
            latest[m.step] = (m.timestamp, m.value)
    if not latest:
        return np.empty(0)
    out = np.full(max(latest) + 1, np.nan)
    for step, (_, v) in latest.items():
        out[step] = v
    return out


def read_matrix_csv(path: str | Path) -> np.ndarray:
    """``accuracy_matrix.csv`` (header session_1..session_T, blank above the diagonal) -> T x T."""
    rows = list(csv.reader(Path(path).open()))
    if not rows or not rows[0] or not rows[0][0].startswith("session_"):
        raise ValueError(f"{path}: not an accuracy matrix (header session_1..session_T)")
    T = len(rows[0])
    m = np.full((T, T), np.nan)
    for i, row in enumerate(rows[1:T + 1]):
        for j, v in enumerate(row[:T]):
            if v.strip():
                m[i, j] = float(v)
    return m


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """MLflow draws a progress bar per downloaded file; one per run would flood the terminal."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def download_matrix(client, run_id: str, tmp: Path) -> np.ndarray | None:
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_downloads():
            local = client.download_artifacts(run_id, "accuracy_matrix.csv", str(tmp))
    except Exception:  # noqa: BLE001  (MLflow raises several types for a missing artifact)
        return None
    return read_matrix_csv(local)


# =============================================================================================
# I/O: the report


@dataclass
class Grouping:
    rows: list[str]
    column: str | None


def choose_grouping(runs: pd.DataFrame, group_by: Sequence[str] | None, column: str = "benchmark",
                    sweep_param: str | None = None) -> Grouping:
    """Row and column keys. Default: rows = variant (or method, when every run has one variant and
    methods differ; or the swept parameter), columns = benchmark when runs carry one."""
    def distinct(key: str) -> int:
        col = key_column(runs, key)
        return 0 if col is None else runs[col].map(_text).nunique()

    if group_by:
        keys = list(group_by)
        # runs of different benchmarks are never averaged together, even if --group-by omits the column key
        col = column if column in keys or distinct(column) > 1 else None
        return Grouping([k for k in keys if k != col], col)
    col = column if distinct(column) else None
    if sweep_param:
        return Grouping([sweep_param], col)
    if distinct("variant") <= 1 and distinct("method") > 1:
        return Grouping(["method"], col)
    return Grouping(["variant"] if distinct("variant") else [], col)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "x"


def _write_tables(t: Table, out: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    files = []
    for f in formats:
        ext, render = RENDER[f]
        files.append(out / f"{stem}{ext}")
        files[-1].write_text(render(t))
    files.append(out / f"{stem}_long.csv")
    files[-1].write_text(records_csv(t))
    return files


@dataclass
class ReportResult:
    files: list[Path]
    tables: dict[str, Table]
    notes: list[str]
    logged_to: str | None = None
    instance: str | None = None


def _group_labels(study: Study, g: Grouping) -> pd.DataFrame:
    """run_id, row label and column value per finished run (for the figures)."""
    out = pd.DataFrame({"run_id": study.runs["run_id"].astype(str).to_numpy()})
    parts = [study.runs[key_column(study.runs, k)].map(_text).to_numpy() for k in g.rows]
    out["row"] = [" / ".join(p) for p in zip(*parts)] if parts else "all"
    out["col"] = study.runs[key_column(study.runs, g.column)].map(_text).to_numpy() if g.column else ""
    seed_col = key_column(study.runs, "seed")
    out["seed"] = study.runs[seed_col].map(_text).to_numpy() if seed_col else MISSING
    return out


def _final(study: Study, key: str) -> dict[str, float]:
    col = f"metrics.{key}"
    if col not in study.runs.columns:
        return {}
    vals = pd.to_numeric(study.runs[col], errors="coerce").astype(float).to_numpy()
    return {rid: v for rid, v in zip(study.runs["run_id"].astype(str), vals) if math.isfinite(v)}


def make_figures(study: Study, g: Grouping, out: Path, metric: str, sweep_param: str | None = None,
                 max_heatmaps: int = 20) -> tuple[list[Path], list[str]]:
    """Every figure of the report; returns (files, notes). One figure per column value (benchmark)
    where the quantity is per benchmark, since session counts differ between benchmarks."""
    from mlflow.tracking import MlflowClient

    from pace import figures

    client = MlflowClient(tracking_uri=study.uri)
    labels = _group_labels(study, g)
    style = figures.styles(sorted(set(labels["row"])))  # one colour per method/variant in every figure
    # rows whose runs repeat a seed pool several configurations: no seed band for them
    pooled = set(labels[labels["seed"] != MISSING].groupby(["row", "col"]).filter(
        lambda d: d["seed"].duplicated().any())["row"])
    files: list[Path] = []
    notes: list[str] = []
    figdir = out / "figures"

    # accuracy-matrix heat maps: per trial (up to max_heatmaps) and the seed mean per cell
    mats: dict[tuple[str, str], list[np.ndarray]] = {}
    missing = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, r in enumerate(labels.itertuples()):
            m = download_matrix(client, r.run_id, Path(tmp) / r.run_id)
            if m is None:
                missing.append(r.run_id[:8])
                continue
            mats.setdefault((r.row, r.col), []).append(m)
            if k < max_heatmaps:
                name = f"heatmap_{_slug(r.row)}_{_slug(r.col)}_seed{_slug(r.seed)}_{r.run_id[:8]}.png"
                files.append(figures.accuracy_heatmap(m, figdir / name,
                                                      f"{r.row} | {r.col} | seed {r.seed} ({r.run_id[:8]})"))
    if missing:
        notes.append(f"{len(missing)} run(s) have no accuracy_matrix.csv artifact: {', '.join(missing)}")
    if len(labels) > max_heatmaps:
        notes.append(f"per-trial heat maps for the first {max_heatmaps} of {len(labels)} runs (--max-heatmaps)")
    for (row, col), ms in mats.items():
        shapes = {m.shape for m in ms}
        if len(ms) > 1 and len(shapes) == 1:
            files.append(figures.accuracy_heatmap(np.mean(np.stack(ms), axis=0),
                                                  figdir / f"heatmap_mean_{_slug(row)}_{_slug(col)}.png",
                                                  f"{row} | {col} | mean of {len(ms)} runs"))

    # per-session curves with a seed band
    for key, ylabel, stem in (("acc_all", "accuracy on all seen classes (%)", "accuracy_curves"),
                              ("forgetting", "forgetting so far (points)", "forgetting_curves")):
        per_col: dict[str, dict[str, list[np.ndarray]]] = {}
        for r in labels.itertuples():
            h = metric_history(client, r.run_id, key)
            if h.size:
                per_col.setdefault(r.col, {}).setdefault(r.row, []).append(h)
        if not per_col:
            notes.append(f"no run has a per-session {key!r} history; no {stem} figure")
        for col, series in per_col.items():
            files.append(figures.session_curves(dict(sorted(series.items())),
                                                figdir / f"{stem}_{_slug(col or 'all')}.png", ylabel,
                                                f"{key} per session" + (f" | {col}" if col else ""),
                                                style, sorted(pooled)))

    # first task vs new tasks (Fig. 3) and the stability-plasticity plane, from final metrics
    first, new, last = (_final(study, k) for k in ("first_task_accuracy", "new_task_accuracy", "last_accuracy"))
    plast, stab = _final(study, "plasticity"), _final(study, "stability")
    for col, sub in labels.groupby("col", sort=True):
        bars: dict[str, dict[str, list[float]]] = {}
        plane: dict[str, tuple[list[float], list[float]]] = {}
        for r in sub.itertuples():
            b = bars.setdefault(r.row, {"first task": [], "new tasks": [], "all (last acc.)": []})
            for name, src in (("first task", first), ("new tasks", new), ("all (last acc.)", last)):
                if r.run_id in src:
                    b[name].append(src[r.run_id])
            if r.run_id in plast and r.run_id in stab:
                p = plane.setdefault(r.row, ([], []))
                p[0].append(plast[r.run_id])
                p[1].append(stab[r.run_id])
        tag = _slug(col or "all")
        if any(v for b in bars.values() for v in b.values()):
            files.append(figures.first_new_bars(dict(sorted(bars.items())), figdir / f"first_vs_new_{tag}.png",
                                                "first task vs new tasks" + (f" | {col}" if col else ""), style))
        else:
            notes.append(f"no first/new task metrics{' for ' + col if col else ''}; no first-vs-new figure")
        if plane:
            files.append(figures.stability_plasticity(dict(sorted(plane.items())),
                                                      figdir / f"stability_plasticity_{tag}.png",
                                                      "stability vs plasticity" + (f" | {col}" if col else ""),
                                                      style))
        else:
            notes.append(f"no plasticity/stability metrics{' for ' + col if col else ''}; no plane figure")

    if sweep_param:
        vals = _final(study, metric)
        pcol = key_column(study.runs, sweep_param)
        lines: dict[str, dict[str, list[float]]] = {}
        for rid, pv, col in zip(labels["run_id"], study.runs[pcol].map(_text), labels["col"]):
            if rid in vals:
                lines.setdefault(col or metric, {}).setdefault(pv, []).append(vals[rid])
        files.append(figures.sensitivity(lines, figdir / f"sensitivity_{_slug(sweep_param)}.png",
                                         sweep_param, metric, f"{metric} vs {sweep_param}"))
    return files, notes


def _cells(study: Study, g: Grouping, metric: str) -> tuple[dict, list[str]]:
    keys = g.rows + ([g.column] if g.column else [])
    rows, notes = tidy(study.runs, keys, metric)
    return aggregate(rows, g.rows, g.column), notes + duplicate_seed_notes(rows, g.rows, g.column)


def _log_to_parent(study: Study, files: list[Path], out: Path) -> str | None:
    if not study.parent_ids:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=study.uri)
    parent = study.parent_ids[0]  # newest: a resumed study reuses its parent, so there is one
    for f in files:
        rel = f.parent.relative_to(out)
        client.log_artifact(parent, str(f), PARENT_ARTIFACT_DIR + ("" if str(rel) == "." else f"/{rel}"))
    return parent


def run_report(uri: str, experiment: str, out: Path, metrics: Sequence[str] = ("last_accuracy",),
               group_by: Sequence[str] | None = None, column: str = "benchmark",
               formats: Sequence[str] = FORMATS, baseline: str | None = None, sweep_param: str | None = None,
               figures: bool = True, log: bool = True, max_heatmaps: int = 20,
               all_instances: bool = False) -> ReportResult:
    study = load_study(uri, experiment, all_instances)
    if study.runs.empty:
        raise ValueError(f"experiment {experiment!r} has no FINISHED runs to report"
                         + (f" ({'; '.join(study.notes)})" if study.notes else ""))
    g = choose_grouping(study.runs, group_by, column, sweep_param)
    notes, files, tables = list(study.notes), [], {}
    corner = " / ".join(g.rows) or "runs"
    if not group_by and not sweep_param:
        g, corner, n = _split_configurations(study, g, corner)
        notes += n
    out.mkdir(parents=True, exist_ok=True)
    where = [f"runs of study instance {study.instance} (tag {INSTANCE_TAG})"] if study.instance else []
    for metric in metrics:
        cells, n = _cells(study, g, metric)
        notes += n
        t = build_table(cells, metric, corner, baseline=baseline, avg=bool(sweep_param),
                        title=f"{experiment}: {metric}")
        t.footnotes += where
        tables[metric] = t
        files += _write_tables(t, out, f"table_{_slug(metric)}", formats)
    if figures:
        fig_files, n = make_figures(study, g, out, metrics[0], sweep_param, max_heatmaps)
        files += fig_files
        notes += n
    logged = _log_to_parent(study, files, out) if log else None
    return ReportResult(files, tables, list(dict.fromkeys(notes)), logged, study.instance)


def _split_configurations(study: Study, g: Grouping, corner: str) -> tuple[Grouping, str, list[str]]:
    """A sweep's runs of one method differ in searched parameters: make each configuration a row
    (a derived ``configuration`` column on the runs) rather than pooling them as if they were seeds."""
    labels = configurations(study.runs, g.rows, g.column)
    if labels is None:
        return g, corner, []
    study.runs = study.runs.assign(**{CONFIG_KEY: labels})
    names = sorted({n for v in varied_params(study.runs, g.rows + ([g.column] if g.column else [])).values()
                    for n in v})
    note = (f"runs of one {corner} differ in searched parameters ({', '.join(names)}): one row per "
            f"configuration, never pooled (--group-by {','.join(g.rows) or 'KEY'} pools them)")
    return Grouping([CONFIG_KEY], g.column), f"{corner} [configuration]", [note]


def run_compare(uri: str, exp_a: str, exp_b: str, out: Path, metrics: Sequence[str] = ("last_accuracy",),
                group_by: Sequence[str] | None = None, column: str = "benchmark",
                formats: Sequence[str] = FORMATS, all_instances: bool = False) -> ReportResult:
    a, b = load_study(uri, exp_a, all_instances), load_study(uri, exp_b, all_instances)
    for s in (a, b):
        if s.runs.empty:
            raise ValueError(f"experiment {s.name!r} has no FINISHED runs to compare")
    # one grouping for both sides, so rows line up
    g = choose_grouping(pd.concat([a.runs, b.runs], ignore_index=True), group_by, column)
    out.mkdir(parents=True, exist_ok=True)
    notes = [f"[{s.name}] study instance {s.instance} (tag {INSTANCE_TAG})" for s in (a, b) if s.instance]
    notes += [f"[{exp_a}] {n}" for n in a.notes] + [f"[{exp_b}] {n}" for n in b.notes]
    files, tables = [], {}
    for metric in metrics:
        (ca, na), (cb, nb) = _cells(a, g, metric), _cells(b, g, metric)
        notes += [f"[{exp_a}] {n}" for n in na] + [f"[{exp_b}] {n}" for n in nb]
        t = compare_table(ca, cb, exp_a, exp_b, metric, " / ".join(g.rows) or "runs")
        tables[metric] = t
        files += _write_tables(t, out, f"compare_{_slug(metric)}", formats)
    return ReportResult(files, tables, list(dict.fromkeys(notes)))


# =============================================================================================
# CLI


def _list(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def cmd_report(args) -> int:
    uri = resolve_uri(args.tracking_uri)
    formats = _list(args.format) or list(FORMATS)
    bad = [f for f in formats if f not in RENDER]
    if bad:
        raise ValueError(f"--format: unknown {', '.join(bad)} (choose from {', '.join(FORMATS)})")
    metrics = _list(args.metric) or ["last_accuracy"]
    if args.compare:
        if args.baseline or args.sweep_param:
            raise ValueError("--baseline and --sweep-param apply to --experiment, not to --compare")
        a, b = args.compare
        out = Path(args.out or Path("reports") / f"{_slug(a)}_vs_{_slug(b)}")
        res = run_compare(uri, a, b, out, metrics, _list(args.group_by), args.columns, formats,
                          args.all_instances)
    else:
        out = Path(args.out or Path("reports") / _slug(args.experiment))
        res = run_report(uri, args.experiment, out, metrics, _list(args.group_by), args.columns, formats,
                         args.baseline, args.sweep_param, not args.no_figures, not args.no_log,
                         args.max_heatmaps, args.all_instances)
        if res.instance:
            print(f"study instance {res.instance} of {args.experiment} (the newest; --all-instances for every one)\n")
    for t in res.tables.values():
        print(to_markdown(t))
    for n in res.notes:
        print(f"note: {n}", file=sys.stderr)
    print(f"wrote {len(res.files)} file(s) to {out}"
          + (f"; logged to parent run {res.logged_to} under {PARENT_ARTIFACT_DIR}/" if res.logged_to else ""))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("report", help="tables and figures from a study's MLflow runs (mean ± std over seeds)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", metavar="NAME", help="MLflow experiment (one per sweep/ablation study)")
    which.add_argument("--compare", nargs=2, metavar=("EXP_A", "EXP_B"),
                       help="two experiments side by side with the differences B - A")
    p.add_argument("--group-by", metavar="KEYS",
                   help="comma-separated tags or dotted params, e.g. variant,benchmark,backbone; the "
                        "--columns key becomes the columns, the rest the rows (default: variant or method)")
    p.add_argument("--columns", default="benchmark", metavar="KEY", help="key spread over columns (default benchmark)")
    p.add_argument("--metric", default="last_accuracy", metavar="NAMES",
                   help="final metric(s), comma-separated; one table each (default last_accuracy)")
    p.add_argument("--format", default=",".join(FORMATS), metavar="FORMATS", help="md,csv,latex (default all)")
    p.add_argument("--out", metavar="DIR", help="output folder (default reports/<experiment>)")
    p.add_argument("--baseline", metavar="ROW", help="row label (e.g. a variant) to show deltas against")
    p.add_argument("--sweep-param", metavar="KEY",
                   help="swept config key (e.g. method.rho_layer): rows by its value, an avg column, and a "
                        "sensitivity figure (metric vs value, one line per benchmark)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow store (default sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--all-instances", action="store_true",
                   help="pool every start of the study (default: only the newest, tag pace.study_instance)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the study's parent run")
    p.add_argument("--max-heatmaps", type=int, default=20, metavar="N",
                   help="per-trial accuracy-matrix heat maps to draw (default 20; seed means are always drawn)")
    p.set_defaults(func=cmd_report)
