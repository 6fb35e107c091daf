"""Writing a report: table files, figures (drawn by ``pace.figures``) and the copy on the parent run."""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pace.report.cells import Grouping
from pace.report.read import MISSING, Study, as_text, download_matrix, key_column, metric_history
from pace.report.tables import RENDER, Table, records_csv

#: folder of the study's parent run that a report is logged under
PARENT_ARTIFACT_DIR = "report"


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "x"


def write_tables(t: Table, out: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    files = []
    for f in formats:
        ext, render = RENDER[f]
        files.append(out / f"{stem}{ext}")
        files[-1].write_text(render(t))
    files.append(out / f"{stem}_long.csv")
    files[-1].write_text(records_csv(t))
    return files


def _group_labels(study: Study, g: Grouping) -> pd.DataFrame:
    """run_id, row label and column value per finished run (for the figures)."""
    out = pd.DataFrame({"run_id": study.runs["run_id"].astype(str).to_numpy()})
    parts = [study.runs[key_column(study.runs, k)].map(as_text).to_numpy() for k in g.rows]
    out["row"] = [" / ".join(p) for p in zip(*parts)] if parts else "all"
    out["col"] = study.runs[key_column(study.runs, g.column)].map(as_text).to_numpy() if g.column else ""
    seed_col = key_column(study.runs, "seed")
    out["seed"] = study.runs[seed_col].map(as_text).to_numpy() if seed_col else MISSING
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
                name = f"heatmap_{slug(r.row)}_{slug(r.col)}_seed{slug(r.seed)}_{r.run_id[:8]}.png"
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
                                                  figdir / f"heatmap_mean_{slug(row)}_{slug(col)}.png",
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
                                                figdir / f"{stem}_{slug(col or 'all')}.png", ylabel,
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
        tag = slug(col or "all")
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
        for rid, pv, col in zip(labels["run_id"], study.runs[pcol].map(as_text), labels["col"]):
            if rid in vals:
                lines.setdefault(col or metric, {}).setdefault(pv, []).append(vals[rid])
        files.append(figures.sensitivity(lines, figdir / f"sensitivity_{slug(sweep_param)}.png",
                                         sweep_param, metric, f"{metric} vs {sweep_param}"))
    return files, notes


def log_to_parent(study: Study, files: list[Path], out: Path) -> str | None:
    if not study.parent_ids:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=study.uri)
    parent = study.parent_ids[0]  # newest: a resumed study reuses its parent, so there is one
    for f in files:
        rel = f.parent.relative_to(out)
        client.log_artifact(parent, str(f), PARENT_ARTIFACT_DIR + ("" if str(rel) == "." else f"/{rel}"))
    return parent


def paired_figure(diffs: Sequence, reference: str, metric: str, path: Path) -> Path:
    """The forest plot of paired differences (``pace.report.paired.PairedDifference``, the table's own) against
    ``reference`` (pace.figures.paired_differences), largest mean difference on top."""
    from pace import figures

    order = sorted((d for d in diffs if d.n), key=lambda d: -d.mean)
    return figures.paired_differences([(d.other, list(d.units["diff"]), d.mean, d.lo, d.hi) for d in order], path,
                                      reference, metric.replace("_", " "))
