"""What a study ends with: one row per trial, the printed tables, ``summary.csv`` and the parent run's
summary in MLflow.

A row is a dict: trial, trial_id, status (finished / stopped early / failed / interrupted / not
started), labels, params, sessions ("done/total"), last_accuracy, average_incremental_accuracy,
forgetting, objective, path, stages_computed, stages_reused.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

import yaml

from pace.study.trial import split_trial_config

SUMMARY_FILE = "summary.csv"
LABEL_ORDER = ("variant", "benchmark", "backbone", "seed")


def collect(exp_path: str, objective: str) -> tuple[list[dict[str, Any]], dict[str, tuple[str, dict]], bool]:
    """Summary rows, MLflow outcomes by trial id, and whether the study was interrupted.

    Statuses come from the experiment state Tune saved at the end of ``fit``: after Ctrl-C the
    trials that were cut off are saved as PENDING/RUNNING (and resume from there), while the trials
    in memory all read TERMINATED.
    """
    from ray.tune import ExperimentAnalysis

    rows, outcomes, interrupted = [], {}, False
    for trial in ExperimentAnalysis(exp_path).trials:
        m = trial.last_result or {}
        overrides, labels = split_trial_config(trial.config or {})
        total = int(m.get("sessions_total", 0) or 0)
        done = int(m.get("session", -1)) + 1
        if trial.status == "TERMINATED":
            early = 0 < done < total  # stopped by the scheduler
            outcomes[trial.trial_id] = ("FINISHED", {"pace.stopped_early": "true"} if early else {})
            state = "stopped early" if early else "finished"
        elif trial.status == "ERROR":
            outcomes[trial.trial_id] = ("FAILED", {})
            state = "failed"
        else:
            interrupted = True
            outcomes[trial.trial_id] = ("KILLED", {})
            state = "interrupted"
        rows.append({
            "trial": str(trial), "trial_id": trial.trial_id, "status": state, "labels": labels,
            "params": overrides, "sessions": f"{max(done, 0)}/{total or '?'}",
            "last_accuracy": m.get("last_accuracy"),
            "average_incremental_accuracy": m.get("average_incremental_accuracy"),
            "forgetting": m.get("forgetting"), "objective": m.get(objective), "path": trial.path,
            "stages_computed": m.get("stages_computed"), "stages_reused": m.get("stages_reused"),
            "result": m})
    rows.sort(key=lambda r: r["trial"])
    return rows, outcomes, interrupted


def not_started(rows: list[dict[str, Any]], spec, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the trials an interrupted study had not created yet, so its summary lists all.

    Fixed trials are told apart by their labels, or by their overrides when they have none (a grid);
    sampled trials only by count."""
    trials = spec.trials(base)
    if trials is None:
        expected = [({}, {})] * spec.repeats
    else:
        expected = [({} if t["labels"] else t["overrides"], t["labels"]) for t in trials] * spec.repeats
    seen = [json.dumps([r["labels"], {} if r["labels"] else r["params"]], sort_keys=True) for r in rows]
    missing = []
    for params, labels in expected:
        key = json.dumps([labels, params], sort_keys=True)
        if key in seen:
            seen.remove(key)
        elif params or labels or len(missing) + len(rows) < len(expected):
            missing.append((params, labels))
    if trials is None:
        missing = missing[: max(0, spec.repeats - len(rows))]
    return [{"trial": "-", "trial_id": "", "status": "not started", "labels": labels, "params": params,
             "sessions": "0/?", "last_accuracy": None, "average_incremental_accuracy": None, "forgetting": None,
             "objective": None, "path": ""} for params, labels in missing]


def describe(row: dict[str, Any]) -> str:
    if row["labels"]:
        return " ".join(f"{k}={row['labels'][k]}" for k in LABEL_ORDER if k in row["labels"])
    return " ".join(f"{k}={_short(v)}" for k, v in row["params"].items())


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_table(rows: list[dict[str, Any]], label_column: str, objective: str) -> str:
    from pace.console import table

    head = ["trial", label_column, "status", "sessions", "last acc", "avg inc acc", "forgetting", objective]
    return table([[r["trial"], describe(r), r["status"], r["sessions"], r["last_accuracy"],
                   r["average_incremental_accuracy"], r["forgetting"], r["objective"]] for r in rows], head)


def aggregate_table(rows: list[dict[str, Any]]) -> str:
    """Ablation rows grouped by benchmark/backbone/variant, mean ± std over seeds (finished trials)."""
    from pace.console import table

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["labels"] and r["status"] == "finished":
            key = tuple(r["labels"].get(k, "") for k in ("benchmark", "backbone", "variant"))
            groups.setdefault(key, []).append(r)
    if not groups:
        return ""

    def ms(vals: list[float]) -> str:
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.fmean(vals):.2f} ± {sd:.2f}"

    body = [[*key, len(g), ms([r["last_accuracy"] for r in g]),
             ms([r["average_incremental_accuracy"] for r in g]), ms([r["forgetting"] for r in g])]
            for key, g in sorted(groups.items())]
    return table(body, ["benchmark", "backbone", "variant", "seeds", "last acc", "avg inc acc", "forgetting"])


def study_sharing_line(rows: list[dict[str, Any]]) -> str | None:
    """How much work the study shared: stages computed vs loaded from another trial's outcome."""
    computed = sum(int(r.get("stages_computed") or 0) for r in rows)
    reused = sum(int(r.get("stages_reused") or 0) for r in rows)
    if not computed + reused:
        return None
    return (f"shared work: {computed} stage(s) computed, {reused} loaded from another trial's outcome "
            f"(first-session adaptation, CKA probe; runtime.reuse_stages)")


def summary_csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "trial_id", "status", "sessions", "description", "last_accuracy",
                "average_incremental_accuracy", "forgetting", "objective"])
    for r in rows:
        w.writerow([r["trial"], r["trial_id"], r["status"], r["sessions"], describe(r), r["last_accuracy"],
                    r["average_incremental_accuracy"], r["forgetting"], r["objective"]])
    return buf.getvalue()


def finish_parent(sink, parent: str, rows: list[dict[str, Any]], spec) -> None:
    """Best objective, the summary and the spec on the parent run, once per study: the best comes
    from finished trials only (not from one cut off or stopped early), and a study whose parent
    already holds it (finished before, then resumed) does not log it again (``sink.summary``)."""
    scored = [r for r in rows if r["objective"] is not None and r["status"] == "finished"]
    best = (max if spec.mode == "max" else min)(scored, key=lambda r: r["objective"]) if scored else None
    files = {SUMMARY_FILE: summary_csv(rows).encode(),
             "spec.yaml": yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).encode()}
    sink.summary(parent, f"best_{spec.objective}" if best else None, best["objective"] if best else None,
                 {"pace.best_trial": best["trial"]} if best else {}, files)
