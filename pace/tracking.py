"""MLflow layout of sweeps and ablations (docs/design.md, "MLflow layout").

One experiment per sweep/study, one parent run per sweep, one child run per trial (tag
``mlflow.parentRunId``). A child holds the flattened resolved config as params; tags method, backbone,
benchmark, seed, variant and git commit; per-session metrics at ``step`` = 0-based session index; the
final metrics; and the run's files as artifacts.

Two pieces:
- ``MlflowSink`` does every MLflow write through one ``MlflowClient``. The sweep runs one sink in a Ray
  actor on the driver's node, so trials on any node reach a server bound to 127.0.0.1 there, and an
  SQLite store has a single writer.
- ``MlflowReporter`` is a runner reporter (on_start/on_session/on_end) that sends one batch per
  session to a sink. A restarted trial passes its run id back in and continues the same run; steps
  already logged are skipped, so retries and restores never duplicate a step.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

#: per-session metric whose presence marks a step as logged (each step is one atomic log_batch)
STEP_MARKER = "acc_all"
#: files of a finished run that go to the run's artifacts (the runner writes them in ``finish``)
ARTIFACT_FILES = ("accuracy_matrix.csv", "metrics.json", "config.yaml", "sessions.json", "run_info.json")
ARTIFACT_DIRS = ("splits",)
#: MLflow limits (mlflow.utils.validation); values beyond them are truncated, not rejected
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
TERMINAL = ("FINISHED", "FAILED", "KILLED")
#: tag on a study's parent and child runs naming one start of it (a new id on --fresh)
INSTANCE_TAG = "pace.study_instance"


# ---------------------------------------------------------------------------------------------
# URIs


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    return "sqlite:///" + str((Path(cwd or os.getcwd()) / "mlflow.db").resolve())


def normalize_uri(uri: str | None, cwd: str | Path | None = None) -> str:
    """An absolute tracking URI: trial processes run in other folders, so relative paths would break."""
    if not uri:
        return default_tracking_uri(cwd)
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not path.startswith("/"):
            return "sqlite:///" + str((Path(cwd or os.getcwd()) / path).resolve())
        return uri
    if "://" not in uri or uri.startswith("file:"):
        raise ValueError(f"tracking URI {uri!r}: MLflow 3 no longer supports the file store; use "
                         "sqlite:///path/mlflow.db or http://127.0.0.1:PORT")
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail within seconds when a tracking server does not answer (MLflow's client would retry for
    minutes); an SQLite store needs a folder it can write."""
    from pace.config import ConfigError

    db = sqlite_path(uri)
    if db is not None:
        folder = next((p for p in [db.parent, *db.parents] if p.exists()), None)
        if folder is None or not os.access(folder, os.W_OK):
            raise ConfigError(f"tracking URI {uri}: cannot create or write {db} (folder not writable); "
                              "pass another --tracking-uri or --no-tracking")
        return
    reason = server_unreachable(uri, timeout_s)
    if reason is not None:
        raise ConfigError(f"tracking server {uri} is unreachable ({reason}); start it (mlflow server "
                          "--host 127.0.0.1 --port PORT), pass another --tracking-uri, or --no-tracking")


def server_unreachable(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why the tracking server at ``uri`` does not answer within ``timeout_s``; None when it answers
    or ``uri`` names no HTTP server (SQLite, databricks and other stores)."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return None  # it answered (a proxy or an auth layer may refuse /health)
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def ui_command(uri: str) -> str:
    if sqlite_path(uri) is not None:
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return f"open {uri} in a browser (the tracking server serves the UI)"


def open_client(uri: str):
    """An MlflowClient whose store exists. Creating or migrating an SQLite store is not safe when two
    processes do it at once (``table ... already exists``), so it happens under a file lock next to
    the database; the first query inside the lock makes MLflow create or upgrade the schema."""
    from mlflow.tracking import MlflowClient

    from pace.lock import file_lock  # the same single-flight lock as the feature store's

    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(db.with_name(db.name + ".lock")):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    return client


# ---------------------------------------------------------------------------------------------
# Params and tags


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {dotted key: string}, within MLflow's key/value length limits."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
            continue
        text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
        if len(text) > MAX_PARAM_VALUE:
            text = text[: MAX_PARAM_VALUE - 3] + "..."
        out[key[:MAX_KEY]] = text
    return out


def run_tags(cfg_dict: dict[str, Any], labels: dict[str, str], git_commit: str) -> dict[str, str]:
    """The tags every trial run carries; ablation labels (variant, benchmark, ...) win over defaults."""
    seeds = cfg_dict.get("seeds", {})
    seed_values = {seeds.get("class_order"), seeds.get("split"), seeds.get("init")}
    seed = str(seeds.get("init")) if len(seed_values) == 1 else \
        f"{seeds.get('class_order')}/{seeds.get('split')}/{seeds.get('init')}"
    data = cfg_dict.get("data", {})
    benchmark = data.get("dataset", "?") + (f"-{data['label']}" if data.get("label") else "")
    tags = {"method": cfg_dict["method"]["name"], "backbone": cfg_dict["backbone"]["name"],
            "benchmark": benchmark, "seed": seed, "variant": "default", "git_commit": git_commit}
    tags.update({str(k): str(v) for k, v in cfg_dict.get("tags", {}).items()})
    tags.update({str(k): str(v) for k, v in labels.items()})
    return {k[:MAX_KEY]: v[:MAX_TAG_VALUE] for k, v in tags.items()}


def finite_metrics(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


# ---------------------------------------------------------------------------------------------
# The sink: every MLflow write


class MlflowSink:
    """Writes to one tracking store. Stateless apart from the client, so it can live in an actor."""

    def __init__(self, tracking_uri: str):
        self.uri = tracking_uri
        self.client = open_client(tracking_uri)

    # -- experiment and parent run (driver)
    def experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        db = sqlite_path(self.uri)
        # next to the database, absolute: MLflow's default (./mlruns) would follow the cwd of whoever creates it
        location = (db.parent / "mlartifacts" / name).as_uri() if db else None
        return self.client.create_experiment(name, artifact_location=location)

    def start_parent(self, experiment_id: str, run_name: str, tags: dict[str, str],
                     params: dict[str, Any]) -> str:
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        self._log_params(run.info.run_id, {k: str(v) for k, v in params.items()})
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    # -- trial runs
    def open_trial_run(self, experiment_id: str, parent_run_id: str, trial_id: str, run_name: str,
                       tags: dict[str, str], params: dict[str, str], run_id: str | None = None
                       ) -> tuple[str, list[int]]:
        """(run id, steps already logged). Continues ``run_id``, or the run tagged with this trial id."""
        run_id = run_id or self._find_trial_run(experiment_id, parent_run_id, trial_id)
        if run_id is None:
            all_tags = {**tags, "mlflow.parentRunId": parent_run_id, "pace.trial_id": trial_id}
            run = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags)
            self._log_params(run.info.run_id, params)
            return run.info.run_id, []
        self.client.update_run(run_id, status="RUNNING")
        if not self.client.get_run(run_id).data.params:  # created, then killed before the params went in
            self._log_params(run_id, params)
        return run_id, self.logged_steps(run_id)

    def logged_steps(self, run_id: str) -> list[int]:
        return sorted({m.step for m in self.client.get_metric_history(run_id, STEP_MARKER)})

    def log_session(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k[:MAX_KEY], v, ts, step) for k, v in finite_metrics(metrics).items()]
        for i in range(0, len(batch), METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=batch[i:i + METRICS_PER_BATCH])

    def log_final(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        """Final metrics not logged yet (a retried trial may have sent them before failing)."""
        have = set(self.client.get_run(run_id).data.metrics)
        todo = {k: v for k, v in finite_metrics(metrics).items() if k not in have}
        if todo:
            self.log_session(run_id, step, todo)

    def log_files(self, run_id: str, files: dict[str, bytes]) -> None:
        """Artifacts sent as bytes (the trial may run on another node than the store's disk)."""
        if not files:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for rel, data in files.items():
                path = Path(tmp) / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            self.client.log_artifacts(run_id, tmp)

    def terminate(self, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
        for k, v in (tags or {}).items():
            self.client.set_tag(run_id, k, v)
        self.client.set_terminated(run_id, status)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    def summary(self, parent_run_id: str, key: str | None, value: float | None, tags: dict[str, str],
                files: dict[str, bytes]) -> None:
        """A study's summary on its parent run: ``key`` is logged once (a resumed study that ends
        again does not log a second value), tags and files are overwritten."""
        if key and value is not None and key not in self.run_metrics(parent_run_id):
            self.log_session(parent_run_id, 0, {key: value})
        self.set_tags(parent_run_id, tags)
        self.log_files(parent_run_id, files)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    # -- sweep end (driver)
    def child_runs(self, experiment_id: str, parent_run_id: str) -> list[dict[str, str]]:
        out, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                           max_results=1000, page_token=token)
            out += [{"run_id": r.info.run_id, "status": r.info.status,
                     "trial_id": r.data.tags.get("pace.trial_id", "")} for r in page]
            token = page.token
            if not token:
                return out

    def close_sweep(self, experiment_id: str, parent_run_id: str,
                    outcomes: dict[str, tuple[str, dict[str, str]]], parent_status: str,
                    default_status: str = "KILLED") -> dict[str, str]:
        """End every child still RUNNING (status from ``outcomes`` by trial id, else
        ``default_status``), then the parent. Returns {run_id: status} of the children closed here."""
        closed = {}
        for run in self.child_runs(experiment_id, parent_run_id):
            if run["status"] not in TERMINAL:
                status, tags = outcomes.get(run["trial_id"], (default_status, {}))
                self.terminate(run["run_id"], status, tags)
                closed[run["run_id"]] = status
        self.terminate(parent_run_id, parent_status)
        return closed

    # -- helpers
    def _find_trial_run(self, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`pace.trial_id` = '{trial_id}'",
            max_results=2, order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i:i + PARAMS_PER_BATCH])


# ---------------------------------------------------------------------------------------------
# The runner reporter


class MlflowReporter:
    """Logs one trial to its child run: one ``log_batch`` per session, final metrics, artifacts."""

    def __init__(self, sink: Any, experiment_id: str, parent_run_id: str, trial_id: str, run_name: str,
                 labels: dict[str, str] | None = None, run_id: str | None = None,
                 extra_final: Any = None, extra_tags: dict[str, str] | None = None):
        self.sink = sink
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.trial_id = trial_id
        self.run_name = run_name
        self.labels = dict(labels or {})
        self.run_id = run_id
        self.logged: set[int] = set()
        #: callable(runner) -> extra final metrics (e.g. the validation objective)
        self.extra_final = extra_final
        #: tags beyond the config's (the study instance id)
        self.extra_tags = dict(extra_tags or {})

    def on_start(self, runner) -> None:
        from pace.provenance import git_commit

        cfg = runner.cfg.to_dict()
        self.run_id, steps = self.sink.open_trial_run(
            self.experiment_id, self.parent_run_id, self.trial_id, self.run_name,
            {**run_tags(cfg, self.labels, git_commit()), **self.extra_tags}, flatten(cfg), self.run_id)
        self.logged = set(steps)

    def on_session(self, runner, result) -> None:
        if result.index in self.logged:  # a retried/restored trial recomputed a logged session
            return
        self.sink.log_session(self.run_id, result.index, result.metrics())
        self.logged.add(result.index)

    def on_end(self, runner, final: dict[str, Any]) -> None:
        per_session = set(runner.results[-1].metrics()) if runner.results else set()
        metrics = {k: v for k, v in finite_metrics(final).items() if k not in per_session}
        if self.extra_final is not None:
            metrics.update(self.extra_final(runner))
        self.sink.log_final(self.run_id, len(runner.results) - 1, metrics)
        self.sink.log_files(self.run_id, collect_artifacts(runner.out))
        self.sink.terminate(self.run_id, "FINISHED")

    def fail(self, status: str = "FAILED") -> None:
        if self.run_id is not None:
            self.sink.terminate(self.run_id, status)


def collect_artifacts(out: Path) -> dict[str, bytes]:
    files = {name: (out / name).read_bytes() for name in ARTIFACT_FILES if (out / name).is_file()}
    for d in ARTIFACT_DIRS:
        for p in sorted((out / d).rglob("*")) if (out / d).is_dir() else []:
            if p.is_file():
                files[str(p.relative_to(out))] = p.read_bytes()
    return files
