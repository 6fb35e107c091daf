"""Reading a study from MLflow: the runs frame of ``mlflow.search_runs``, narrowed to one study.

Reads the layout ``pace.tracking`` writes (docs/design.md, "MLflow layout"): one experiment per sweep or
study, a parent run, one child run per trial with tags (method, backbone, benchmark, seed, variant),
per-session metrics at ``step`` = session index, final metrics and the ``accuracy_matrix.csv``
artifact. Only FINISHED child runs count; anything left out is named in notes, never guessed.

``pick_instance`` and ``select_runs`` are pure (a frame in, a frame out) so tests can feed them frames
built by hand; ``load_study``, ``metric_history`` and ``download_matrix`` talk to the store.
"""

from __future__ import annotations

import contextlib
import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from pace.registry import did_you_mean
from pace.tracking import INSTANCE_TAG

#: a tag or param a run does not have (shown in tables, grouped like any value)
MISSING = "?"


def key_column(df: pd.DataFrame, key: str) -> str | None:
    """The frame column a grouping key refers to: a tag first, then a param (dotted config key)."""
    for col in (key, f"tags.{key}", f"params.{key}", f"metrics.{key}"):
        if col in df.columns:
            return col
    return None


def as_text(v: Any) -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)) or v == "":
        return MISSING
    return str(v)


def _tag(df: pd.DataFrame, key: str) -> pd.Series:
    col = f"tags.{key}"
    return df[col].map(as_text) if col in df.columns else pd.Series(MISSING, index=df.index)


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
    status = children["status"].map(as_text)
    counts = status[status != "FINISHED"].value_counts()
    if len(counts):
        notes.append("ignored " + ", ".join(f"{n} {s} run(s)" for s, n in sorted(counts.items()))
                     + " (only FINISHED runs count)")
    finished = children[status == "FINISHED"]
    # ASHA-stopped trials end FINISHED with a partial accuracy matrix: not comparable with full runs
    col = "tags.pace.stopped_early"
    if col in finished.columns:
        stopped = finished[col].map(as_text) == "true"
        if stopped.any():
            notes.append(f"ignored {int(stopped.sum())} run(s) stopped early by the scheduler "
                         "(tag pace.stopped_early; their sessions are incomplete)")
            finished = finished[~stopped]
    return finished, parent_ids, notes


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


def narrow(runs: pd.DataFrame, where: dict[str, list[str]] | None) -> tuple[pd.DataFrame, list[str]]:
    """The runs whose tag or param ``key`` is one of the listed values, for every key of ``where``, and
    a note saying what was kept. A key no run carries is an error naming the keys the runs do have."""
    if not where:
        return runs, []
    keep = pd.Series(True, index=runs.index)
    for key, values in where.items():
        col = key_column(runs, key)
        if col is None:
            have = sorted({c.split(".", 1)[1] for c in runs.columns if c.startswith(("tags.", "params."))})
            raise ValueError(f"--where {key}: no run has a tag or param {key!r}{did_you_mean(key, have)}")
        keep &= runs[col].map(as_text).isin([str(v) for v in values])
    said = "; ".join(f"{k} in {', '.join(map(str, v))}" for k, v in where.items())
    return runs[keep], [f"kept {int(keep.sum())} of {len(runs)} runs where {said} (--where)"]


def load_study(uri: str, name: str, all_instances: bool = False,
               where: dict[str, list[str]] | None = None) -> Study:
    """One experiment's study, or several pooled (``name`` = ``a,b``: each experiment's newest instance,
    their runs side by side, e.g. one comparison split over two studies); ``where`` narrows the runs."""
    names = [n.strip() for n in name.split(",") if n.strip()]
    if len(names) > 1:
        parts = [load_study(uri, n, all_instances) for n in names]
        runs = pd.concat([p.runs for p in parts], ignore_index=True)
        runs, n_where = narrow(runs, where)
        notes = [f"{p.name}: {n}" for p in parts for n in p.notes]
        notes.append(f"runs of {len(parts)} experiments pooled ({', '.join(names)}); the report is not logged "
                     "to a parent run")
        return Study(",".join(names), uri, ",".join(p.experiment_id for p in parts), runs, [], notes + n_where,
                     None)
    return _load_one(uri, name, all_instances, where)


def _load_one(uri: str, name: str, all_instances: bool, where: dict[str, list[str]] | None) -> Study:
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
    runs, n_where = narrow(runs, where)
    return Study(name, uri, exp.experiment_id, runs, parents, inst_notes + notes + n_where, instance)


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
