"""Runs -> cells: one tidy row per run, grouped into ``Cell`` (mean, sample std, n over seeds).

Pure pandas, no store: ``tidy`` picks a metric and the grouping keys off the runs frame,
``aggregate`` reduces the rows of each (row, column) group, ``choose_grouping`` decides the keys, and
``configurations`` / ``varied_params`` keep a sweep's differently-configured runs apart.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from pace.report.read import MISSING, as_text, key_column

#: the derived grouping key of a sweep's configurations (see ``configurations``)
CONFIG_KEY = "configuration"
#: params that differ between runs of one configuration: seeds, and settings that do not change results
_NOT_A_SETTING = re.compile(r"(^|[._])seeds?$|^seeds\.|^runtime\.|^tags\.|^name$")
FINAL_METRICS = frozenset({"last_accuracy", "average_incremental_accuracy", "bwt", "plasticity", "stability",
                           "first_task_accuracy", "new_task_accuracy"})


def natural_key(s: str) -> tuple:
    """Numbers in numeric order before text: 0.9 < 0.92 < 1 < 'None' < 'w/o'."""
    try:
        return (0, float(s), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(s))


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
        vals = runs[col].map(as_text).to_numpy()
        missing = int((vals == MISSING).sum())
        if missing:
            notes.append(f"{missing} run(s) have no {key!r}; grouped under {MISSING!r}")
        out[key] = vals
    seed_col = key_column(runs, "seed")
    out["seed"] = runs[seed_col].map(as_text).to_numpy() if seed_col else MISSING
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
    text = runs[params].apply(lambda col: col.map(as_text))
    label = runs[cols].apply(lambda col: col.map(as_text)) if cols else pd.DataFrame(index=runs.index)
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
    rows = [" / ".join(p) for p in zip(*[runs[c].map(as_text) for c in cols])] if cols else ["all"] * len(runs)
    by_row: dict[str, set[str]] = {}
    for key, names in varied.items():
        by_row.setdefault(" / ".join(key[: len(row_keys)]) or "all", set()).update(names)

    def labels(short: bool) -> list[str]:
        out = []
        for i, row in zip(runs.index, rows):
            names = sorted(by_row.get(row, ()))
            vals = [as_text(runs.at[i, f"params.{n}"]) if f"params.{n}" in runs.columns else MISSING for n in names]
            parts = [f"{n.removeprefix('method.')}={_short_value(v) if short else v}" for n, v in zip(names, vals)]
            out.append(row + (f" [{', '.join(parts)}]" if parts else ""))
        return out

    short, full = labels(True), labels(False)
    # shortened values must not merge two configurations
    if len(set(zip(short, full))) != len(set(short)):
        short = full
    return pd.Series(short, index=runs.index)


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
        return 0 if col is None else runs[col].map(as_text).nunique()

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
