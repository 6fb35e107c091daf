"""Sweeps and ablations on Ray Tune: one trial = one continual-learning run of ``pace.runner``.

``pace sweep FILE`` searches a space (Optuna TPE / random, or a grid) for the best objective measured
on a validation split carved from training data; ``pace ablate FILE`` runs the grid variants x
benchmarks x backbones x seeds. Both:

- run each trial as a function trainable that reports after every session with a checkpoint holding
  the runner's ``checkpoint.pt`` and the trial's MLflow run id, and resumes from that checkpoint when
  Tune retries the trial (``max_failures``) or restores the sweep (``--resume``);
- track to MLflow (pace.tracking) through one sink actor on the driver's node;
- print a summary table and the command that opens the MLflow UI.

Layout: ``<storage>/<name>/`` is the Tune experiment (``Tuner.restore`` reads it), plus
``pace_study.json`` (what ``--resume`` needs: resolved base, tracking ids) and ``summary.csv``. Each
trial folder holds Tune's checkpoints and ``run/`` (the runner's outputs, synced with the trial).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from pace.config import validate_config
from pace.specs import (AblationSpec, SearchSpace, SpecError, SweepSpec, compose, get_dotted,
                        load_ablation_spec, load_sweep_spec)

STATE_FILE = "pace_study.json"
SUMMARY_FILE = "summary.csv"
#: tag on the parent and every trial run: which instance of the study (``--fresh`` starts a new one)
INSTANCE_TAG = "pace.study_instance"
#: tag on a parent run that ``--fresh`` replaced
ARCHIVED_TAG = "pace.archived"
TRACKING_FILE = "tracking.json"  # inside each Tune checkpoint: the trial's MLflow run id
RUNNER_CHECKPOINT = "checkpoint.pt"  # pace.runner.CHECKPOINT (not imported here: it pulls in torch)
#: test-only fault injection, read by the driver: {"fail_after_session": n, "marker": path, "session_delay_s": s}
FAULTS_ENV = "PACE_SWEEP_TEST_FAULTS"
#: config keys holding paths; relative ones are resolved against the launch folder (workers chdir)
#: what ASHA counts: sessions finished (not Tune's training_iteration, which restarts its count from
#: the checkpoint Tune's saved state names, while a trial resumes from the newest one on disk)
SESSIONS_DONE = "sessions_done"
#: trial work folders, one per study instance, removed when the study ends
WORK_ROOT = "pace-trials"
PATH_KEYS = ("data.root", "backbone.checkpoint", "runtime.cache_dir")
LABEL_ORDER = ("variant", "benchmark", "backbone", "seed")


# ---------------------------------------------------------------------------------------------
# What every trial gets


@dataclass
class TrialContext:
    """Constants shared by the trials of one study (passed with ``tune.with_parameters``)."""

    base: dict[str, Any]  # the resolved base run config (raw mapping)
    cwd: str  # the launch folder, for relative paths
    experiment_id: str | None = None
    parent_run_id: str | None = None
    sink: Any = None  # Ray actor handle of a pace.tracking.MlflowSink, or None (no tracking)
    cpus_per_trial: float = 1.0
    faults: dict[str, Any] = field(default_factory=dict)
    instance: str = ""  # the study instance id (pace.study_instance): names work folders, tags runs
    tags: dict[str, str] = field(default_factory=dict)  # extra tags on every trial run
    exp_path: str = ""  # the experiment folder in storage


def split_trial_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(dotted overrides, labels). Grid/ablation trials nest them under "trial"; searched trials are flat."""
    if isinstance(config.get("trial"), dict):
        return dict(config["trial"]["overrides"]), dict(config["trial"].get("labels", {}))
    return {k: v for k, v in config.items() if k != "trial"}, {}


def absolutize(raw: dict[str, Any], cwd: str) -> dict[str, Any]:
    """Relative paths that exist under the launch folder become absolute (hub ids stay as they are)."""
    out = raw
    for key in PATH_KEYS:
        value = get_dotted(raw, key)
        if isinstance(value, str) and value and not os.path.isabs(value) and "://" not in value \
                and os.path.exists(os.path.join(cwd, value)):
            out = compose(out, {key: os.path.join(cwd, value)})
    parts = get_dotted(out, "data.parts")
    if isinstance(parts, list):  # a cross-dataset sequence: each part has its own root
        fixed = []
        for p in parts:
            d = dict(p.get("data") or {})
            root = d.get("root")
            if isinstance(root, str) and root and not os.path.isabs(root) and os.path.exists(os.path.join(cwd, root)):
                d["root"] = os.path.join(cwd, root)
            fixed.append({**p, "data": d})
        out = compose(out, {"data.parts": fixed})
    return out


def trial_config(ctx: TrialContext, config: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    overrides, labels = split_trial_config(config)
    raw = compose(ctx.base, overrides)
    raw.setdefault("runtime", {}).setdefault("progress", False)  # quiet trials unless the spec asks
    if labels:
        raw["tags"] = {**raw.get("tags", {}), **labels}
    return validate_config(absolutize(raw, ctx.cwd), f"trial {overrides}"), labels


# ---------------------------------------------------------------------------------------------
# Trial-side hooks and reporters


class ValidationHook:
    """Accuracy on the union of the seen sessions' ``val`` splits (never the test split).

    Runs as a runner analysis hook, so its numbers land in ``SessionResult.analysis``: they are
    checkpointed with the session and reach every reporter through ``SessionResult.metrics()``.
    """

    def __call__(self, runner, t: int) -> dict[str, float]:
        import torch

        sessions = runner.scenario.sessions[: t + 1]
        rows = [i for s in sessions for i in s.val]
        if not rows:
            return {}
        new = set(sessions[-1].val)
        split = runner.split(rows)
        was_training = runner.backbone.training
        runner.backbone.eval()
        with torch.inference_mode():
            hit = runner.learner.predict_split(split).argmax(-1).cpu() == split.y
        runner.backbone.train(was_training)
        is_new = torch.tensor([r in new for r in rows])
        out = {"val_acc_all": 100.0 * hit.float().mean().item()}
        if is_new.any():
            out["val_acc_new"] = 100.0 * hit[is_new].float().mean().item()
        return out


def val_summary(runner) -> dict[str, float]:
    """Validation objectives over the sessions so far (all sessions must have a val number)."""
    vals = [r.analysis.get("val_acc_all") for r in runner.results]
    if not vals or any(v is None for v in vals):
        return {}
    return {"val_last_accuracy": vals[-1], "val_average_incremental_accuracy": statistics.fmean(vals)}


def stage_counts(runner) -> dict[str, int]:
    """Learner stages (pace.methods.stages) this trial computed and loaded, over its sessions so far."""
    flags = [v for r in runner.results for k, v in r.diagnostics.items() if k.startswith("stage_reused_")]
    return {"stages_computed": sum(1 for v in flags if not v), "stages_reused": sum(1 for v in flags if v)}


def study_sharing_line(rows: list[dict[str, Any]]) -> str | None:
    """How much work the study shared: stages computed vs loaded from another trial's outcome."""
    computed = sum(int(r.get("stages_computed") or 0) for r in rows)
    reused = sum(int(r.get("stages_reused") or 0) for r in rows)
    if not computed + reused:
        return None
    return (f"shared work: {computed} stage(s) computed, {reused} loaded from another trial's outcome "
            f"(first-session adaptation, CKA probe; runtime.reuse_stages)")


def trial_metrics(runner, result) -> dict[str, float]:
    """What a trial reports to Tune after each session: the session's numbers, the CL summary of the
    accuracy matrix so far (last_accuracy, average_incremental_accuracy, forgetting, bwt, ...) and the
    validation objectives. Only finite numbers (Optuna and ASHA cannot rank NaN)."""
    from pace import metrics

    t = result.index
    out: dict[str, Any] = {**result.metrics(), "session": t, SESSIONS_DONE: t + 1,
                           "sessions_total": len(runner.scenario.sessions)}
    out.update(metrics.summary(runner.matrix, runner.test_sizes()[: t + 1]))
    out.update(val_summary(runner))
    out.update(stage_counts(runner))
    return {k: float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


class TuneReporter:
    """``tune.report`` after each session, with the runner checkpoint and the MLflow run id.

    The last session is reported from ``on_end``, after the MLflow reporter has logged the final
    metrics and artifacts and the outputs are saved: a scheduler (ASHA at max_t) may stop the trial
    inside that last ``tune.report``, and nothing after it would run.
    """

    def __init__(self, tracker=None, before_final: Callable[[], None] | None = None):
        self.tracker = tracker
        self.before_final = before_final
        self._last = None

    def on_start(self, runner) -> None: ...

    def on_session(self, runner, result) -> None:
        if result.index + 1 == len(runner.scenario.sessions):
            self._last = result  # reported from on_end
            return
        self._report(runner, result)

    def on_end(self, runner, final) -> None:
        if self.before_final is not None:
            self.before_final()
        if self._last is not None:
            self._report(runner, self._last)

    def _report(self, runner, result) -> None:
        from ray import tune

        from pace.runner import CHECKPOINT

        if runner.checkpointed != result.index + 1:
            # runtime.checkpoint_every skipped this session: report the metrics alone, so a retry resumes
            # from the last checkpoint Tune holds and recomputes the sessions after it (ASHA counts
            # sessions_done, MLflow skips steps it has)
            tune.report(trial_metrics(runner, result))
            return
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy2(runner.out / CHECKPOINT, Path(tmp) / CHECKPOINT)
            run_id = self.tracker.run_id if self.tracker is not None else None
            (Path(tmp) / TRACKING_FILE).write_text(json.dumps({"run_id": run_id}))
            # report uploads the checkpoint to storage before returning, so the temp dir can go
            tune.report(trial_metrics(runner, result), checkpoint=tune.Checkpoint.from_directory(tmp))


class FaultInjector:
    """Test-only: sleep after each session, raise once per study after a given session, or park.

    It sits between the MLflow and Tune reporters, so the failed session is logged to MLflow but not
    checkpointed in Tune: the retry recomputes it and must not log the step twice. Each entry of
    ``blocks`` ({"trial": name prefix, "after": session, "marker": path, "release": path}) parks the
    trial after that session, logged but not yet reported, until ``release`` exists: a test then
    interrupts the study at a known point instead of racing it.
    """

    def __init__(self, faults: dict[str, Any], trial_name: str = ""):
        self.fail_after = faults.get("fail_after_session")
        self.marker = faults.get("marker")
        self.delay = float(faults.get("session_delay_s", 0.0))
        self.blocks = list(faults.get("blocks", []))
        self.trial_name = trial_name

    def on_start(self, runner) -> None: ...

    def on_session(self, runner, result) -> None:
        if self.delay:
            time.sleep(self.delay)
        if self.fail_after == result.index + 1 and self.marker and _claim(self.marker):
            raise RuntimeError(f"injected test fault after session {result.index + 1}")
        for b in self.blocks:
            if b["after"] == result.index + 1 and self.trial_name.startswith(b.get("trial", "")) \
                    and _claim(b["marker"]):
                while not os.path.exists(b["release"]):
                    time.sleep(0.05)

    def on_end(self, runner, final) -> None: ...


def _claim(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


class ActorSink:
    """Calls a sink actor's methods synchronously (the order of a trial's writes matters)."""

    def __init__(self, handle):
        self.handle = handle

    def __getattr__(self, name: str) -> Callable[..., Any]:
        import ray

        method = getattr(self.handle, name)
        return lambda *a, **kw: ray.get(method.remote(*a, **kw))


def _complete(ckpt_dir: Path) -> bool:
    """A checkpoint folder whose runner checkpoint is a whole zip (torch.save's format) and whose
    tracking file parses: a folder cut off mid-copy fails one or the other."""
    import zipfile

    try:
        with zipfile.ZipFile(ckpt_dir / RUNNER_CHECKPOINT) as z:
            if z.testzip() is not None:
                return False
        if (ckpt_dir / TRACKING_FILE).is_file():
            json.loads((ckpt_dir / TRACKING_FILE).read_text())
        return True
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def newest_checkpoint(trial_dir: Path) -> Path | None:
    """The trial's newest complete checkpoint folder on disk. Tune's saved experiment state may name
    an older one (it is written every few seconds, the checkpoints at every report)."""
    found = [p for p in trial_dir.glob("checkpoint_*") if p.is_dir() and p.name[11:].isdigit()]
    for p in sorted(found, key=lambda p: int(p.name[11:]), reverse=True):
        if _complete(p):
            return p
    return None


def _stopped_before(ctx: TrialContext, trial_id: str) -> bool:
    if not ctx.exp_path or "://" in ctx.exp_path:
        return False
    from pace.schedulers import JOURNAL_FILE, read_decisions

    return "STOP" in read_decisions(f"{ctx.exp_path}/{JOURNAL_FILE}").get(trial_id, {}).values()


def work_dir(instance: str, trial_id: str) -> Path:
    return Path(tempfile.gettempdir()) / WORK_ROOT / instance / trial_id


def remove_work_dirs(instance: str) -> None:
    """Remove this study instance's trial work folders on this node (whatever a kill left behind)."""
    if instance:
        shutil.rmtree(Path(tempfile.gettempdir()) / WORK_ROOT / instance, ignore_errors=True)


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune function trainable: one CL run, resumed from the trial's newest checkpoint."""
    import logging

    import torch
    from ray import tune

    from pace.runner import CHECKPOINT, Runner
    from pace.tracking import MlflowReporter

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # "Checkpoint successfully created" per session

    tc = tune.get_context()
    if _stopped_before(ctx, tc.get_trial_id()):
        return  # ASHA stopped it before an interruption that Tune's saved state missed: same decision
    cfg, labels = trial_config(ctx, config)
    if cfg.runtime.num_threads is None:  # concurrent trials must not each take every core
        torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
    # Work outside the trial folder: Tune syncs that folder while the runner renames temp files in it.
    # The finished outputs are copied there at the end (and synced to storage with the trial).
    out = work_dir(ctx.instance, tc.get_trial_id())
    out.mkdir(parents=True, exist_ok=True)
    # A checkpoint folder is the truth: a local checkpoint.pt may be ahead of it (killed before report)
    (out / CHECKPOINT).unlink(missing_ok=True)
    run_id = None
    # the trial's folder in storage (where Tune persists its checkpoints; shared on a cluster)
    stored = Path(ctx.exp_path) / Path(tc.get_trial_dir()).name
    src = newest_checkpoint(stored) if ctx.exp_path and "://" not in ctx.exp_path else None
    ckpt = tune.get_checkpoint()
    if src is None and ckpt is not None:  # storage not on a local/shared path: Tune's own
        with ckpt.as_directory() as d:
            shutil.copytree(d, out / "_restore", dirs_exist_ok=True)
        src = out / "_restore"
    if src is not None:
        shutil.copy2(src / CHECKPOINT, out / CHECKPOINT)
        if (src / TRACKING_FILE).is_file():
            run_id = json.loads((src / TRACKING_FILE).read_text()).get("run_id")
        shutil.rmtree(out / "_restore", ignore_errors=True)

    tracker = None
    if ctx.sink is not None:
        tracker = MlflowReporter(ActorSink(ctx.sink), ctx.experiment_id, ctx.parent_run_id,
                                 tc.get_trial_id(), tc.get_trial_name(), labels, run_id,
                                 extra_final=val_summary, extra_tags=ctx.tags)
    def save_outputs() -> None:
        shutil.copytree(out, Path(tc.get_trial_dir()) / "run", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(CHECKPOINT, "*.tmp"))

    faults = FaultInjector(ctx.faults, tc.get_trial_name()) if ctx.faults else None
    reporters = [r for r in (tracker, faults, TuneReporter(tracker, before_final=save_outputs)) if r is not None]
    runner = Runner(cfg, out, reporters)
    runner.prepare()
    runner.analysis_hooks.append(ValidationHook())
    try:
        runner.run(resume=True)
    except Exception:
        if tracker is not None:
            tracker.fail("FAILED")  # a retry sets it RUNNING again and continues the same run
        raise
    finally:  # also when the scheduler stops the trial; a retry starts from its checkpoint anyway
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Driver


def _trial_index(trial) -> int:
    head = str(getattr(trial, "experiment_tag", "") or "0").split("_")[0]
    return int(head) if head.isdigit() else 0


def trial_name(trial) -> str:
    """``t003`` for searched trials, ``t003-variant-benchmark-s0`` for grid/ablation trials."""
    cfg = trial.config.get("trial") if isinstance(trial.config, dict) else None
    labels = cfg.get("labels", {}) if isinstance(cfg, dict) else {}
    parts = [f"t{_trial_index(trial):03d}"]
    parts += [("s" if k == "seed" else "") + str(labels[k]) for k in LABEL_ORDER if k in labels]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(parts))[:120]


def _progress_callback(max_failures: int = 0):
    """One line per trial event instead of Tune's boxed tables (defined lazily: importing
    ray.tune at module import would slow every ``pace`` command)."""
    from ray import tune

    class Progress(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            overrides, labels = split_trial_config(trial.config)
            print(f"[{trial}] started: {_describe({'labels': labels, 'params': overrides})}", flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            val = f"  val {result['val_acc_all']:.2f}" if "val_acc_all" in result else ""
            print(f"[{trial}] session {int(result.get('session', 0)) + 1}/{int(result.get('sessions_total', 0))}: "
                  f"acc {result.get('acc_all', float('nan')):.2f}{val}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            print(f"[{trial}] done", flush=True)

        def on_trial_recover(self, iteration, trials, trial, **info):
            allowed = "unlimited" if max_failures < 0 else str(max_failures)
            print(f"[{trial}] error; retrying from its last checkpoint (failure {trial.num_failures}, "
                  f"max_failures {allowed})", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            where = getattr(trial, "error_file", None)
            print(f"[{trial}] failed; no retries left (max_failures {max_failures})"
                  + (f"; error in {where}" if where else ""), flush=True)

    return Progress()


def _driver_faults() -> list:
    """Test-only: ``freeze_driver`` ({"when": path, "frozen": path}) parks the driver's Tune loop
    between steps once ``when`` exists, so a test kills it at a known point, not mid-write."""
    faults = json.loads(os.environ[FAULTS_ENV]) if os.environ.get(FAULTS_ENV) else {}
    freeze = faults.get("freeze_driver")
    if not freeze:
        return []
    from ray import tune

    class Freeze(tune.Callback):
        def on_step_begin(self, iteration, trials, **info):
            if os.path.exists(freeze["when"]) and _claim(freeze["frozen"]):
                while True:
                    time.sleep(1)

    return [Freeze()]


def _storage_root(spec_storage: str | None, cli_storage: str | None, cwd: str) -> str:
    root = cli_storage or spec_storage or "ray_results"
    return root if "://" in root else str((Path(cwd) / root).resolve())


def _read_state(exp_path: str) -> dict[str, Any] | None:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(exp_path) if "://" in exp_path else (pafs.LocalFileSystem(), exp_path)
    target = f"{path}/{STATE_FILE}"
    if fs.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as f:
        return json.loads(f.read().decode())


def _write_file(exp_path: str, name: str, text: str) -> None:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(exp_path) if "://" in exp_path else (pafs.LocalFileSystem(), exp_path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{name}") as f:
        f.write(text.encode())


def _quiet_ray() -> None:
    """Ray's output that says nothing about the study: Tune's boxed header and TensorBoard hint (the
    legacy output engine honours verbose=0), "operation took 0.5 s" lines (threshold read when
    ray.tune is imported), and the token-auth notice of a local cluster pace starts and stops itself."""
    import logging

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "10")
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def _ensure_ray(address: str | None) -> bool:
    """Start local Ray (all cores, no dashboard) or connect to ``address``; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = "" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else (
                "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give its token "
                "(RAY_AUTH_TOKEN, or the file ~/.ray/auth_token or RAY_AUTH_TOKEN_PATH)")
            raise SpecError(f"--address {address}: cannot connect to the Ray cluster ({first[:300]}){hint}") from None
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init(num_cpus=cpus, include_dashboard=False)
    return True


def _sink_actor(uri: str, journal: str):
    """The MLflow sink as an actor pinned to this (the driver's) node: a server bound to 127.0.0.1
    here is reachable, and an SQLite store gets one writer."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pace.journal import JournaledSink

    node = ray.get_runtime_context().get_node_id()
    # Not awaited: it starts (seconds: importing mlflow) while Tune starts; the driver's own sink has
    # already opened the same URI, so a bad URI has failed by now.
    return ray.remote(JournaledSink).options(
        num_cpus=0, max_concurrency=1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)).remote(uri, journal)


@dataclass
class StudyOptions:
    resume: bool = False
    fresh: bool = False
    tracking_uri: str | None = None
    storage: str | None = None
    max_concurrent: int | None = None
    num_samples: int | None = None
    address: str | None = None
    track: bool | None = None


@dataclass
class StudyResult:
    experiment_path: str
    tracking_uri: str | None
    experiment_id: str | None
    parent_run_id: str | None
    rows: list[dict[str, Any]]
    interrupted: bool
    num_errors: int


def _load(kind: str, path: str) -> tuple[SweepSpec | AblationSpec, dict[str, Any], str, list | None]:
    if kind == "sweep":
        spec, base, note = load_sweep_spec(path, check_data=True)
        return spec, base, note, None
    spec, base, note, trials = load_ablation_spec(path, check_data=True)
    return spec, base, note, trials


def _num_sessions(spec, base: dict[str, Any]) -> int:
    n = int(validate_config(base).scenario.num_sessions)
    p = getattr(spec, "search", {}).get("scenario.num_sessions")
    if p is not None:
        n = int(max(p.values) if p.type == "categorical" else p.high)
    return n


def _build_tuner(kind: str, spec, base: dict[str, Any], trials: list | None, trainable, exp_root: str,
                 exp_path: str):
    from ray import tune

    search_alg, param_space, num_samples, scheduler = None, {}, 1, None
    if kind == "ablation":
        param_space = {"trial": tune.grid_search(trials)}
    elif spec.searcher.type == "grid":
        grid = SearchSpace(spec.search, base).grid()
        param_space = {"trial": tune.grid_search([{"overrides": g, "labels": {}} for g in grid])}
        num_samples = spec.samples
    else:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        # seed the sampler itself: OptunaSearch ignores seed= when a sampler is given
        sampler = (optuna.samplers.TPESampler(seed=spec.searcher.seed) if spec.searcher.type == "optuna"
                   else optuna.samplers.RandomSampler(seed=spec.searcher.seed))
        search_alg = OptunaSearch(space=SearchSpace(spec.search, base), metric=spec.objective,
                                  mode=spec.mode, sampler=sampler)
        num_samples = spec.samples
    if kind == "sweep" and spec.scheduler is not None:
        from pace.schedulers import JOURNAL_FILE, JournaledASHA

        scheduler = JournaledASHA(f"{exp_path}/{JOURNAL_FILE}", time_attr=SESSIONS_DONE,
                                  max_t=_num_sessions(spec, base), grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor)
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=spec.objective, mode=spec.mode, search_alg=search_alg,
                                    scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=exp_root,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            sync_config=tune.SyncConfig(sync_artifacts=True), verbose=0,
            callbacks=[_progress_callback(spec.max_failures), *_driver_faults()]))


def run_study(kind: str, path: str, opts: StudyOptions | None = None, out=None) -> StudyResult:
    """Run (or ``opts.resume``) the sweep/ablation in spec file ``path``; prints a summary."""
    out = out or (lambda s: print(s, flush=True))
    opts = opts or StudyOptions()
    _quiet_ray()
    cwd = os.getcwd()
    spec, base, note, trials = _load(kind, path)  # every spec error surfaces here, before Ray starts
    updates = {k: v for k, v in (("max_concurrent", opts.max_concurrent), ("track", opts.track)) if v is not None}
    if kind == "sweep" and opts.num_samples is not None:
        updates["num_samples"] = opts.num_samples
    _check_options(opts)
    spec = spec.model_copy(update=updates)
    exp_root = _storage_root(spec.storage_path, opts.storage, cwd)
    exp_path = f"{exp_root}/{spec.name}"
    if getattr(spec, "scheduler", None) is not None and "://" in exp_root:
        raise SpecError(f"scheduler: asha journals its decisions in the experiment folder for --resume; "
                        f"storage {exp_root!r} is not a local or shared path")

    state = _read_state(exp_path)
    old_state = None
    if opts.resume:
        from ray import tune

        if state is None or state.get("kind") != kind or not tune.Tuner.can_restore(exp_path):
            raise SpecError(f"nothing to resume at {exp_path}; run `pace {kind} {path}` without --resume")
        damaged = _damaged_tune_state(exp_path)
        if damaged:
            raise SpecError(f"{damaged}: Tune's saved state was cut off mid-write (the driver was killed while "
                            "saving it), so Tune would silently start over; start over with --fresh")
        if (state.get("spec") or {}).get("scheduler") and not state.get("scheduler_journal"):
            raise SpecError(f"{exp_path}: this study's ASHA scheduler was started by an older pace that did not "
                            "journal its decisions, so a resume would decide differently; start over with --fresh")
        base = state["base"]  # as resolved when the study started (backbone choice included)
        spec = spec.model_copy(update={"objective": state["objective"], "mode": state["mode"]})
        if updates:
            out(f"note: --resume keeps the original settings; ignoring {', '.join(updates)}")
        out(f"resuming {kind} {spec.name} from {exp_path}")
    elif state is not None or os.path.isdir(exp_path):
        if not opts.fresh:
            raise SpecError(f"{exp_path} already holds a {kind} named {spec.name!r}: pass --resume to continue "
                            "it, --fresh to start over, or change 'name'")
        old_state, state = state or {}, None
    out(f"{kind} {spec.name}: {note}")

    if state["track"] if state else spec.track:
        from pace.tracking import check_reachable, normalize_uri

        check_reachable(normalize_uri(opts.tracking_uri or (state or {}).get("tracking_uri") or spec.tracking_uri,
                                      cwd))  # seconds, before Ray starts
    started_ray = _ensure_ray(opts.address)
    try:
        _check_resources(spec, out, can_grow=bool(opts.address))
        return _run(kind, path, spec, base, note, trials, state, exp_root, exp_path, cwd, opts, out, old_state)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _damaged_tune_state(exp_path: str) -> str | None:
    """The newest experiment state or searcher state file that does not load, if any (local storage)."""
    import glob

    if "://" in exp_path:
        return None
    for pattern, load in (("experiment_state-*.json", lambda b: json.loads(b)),
                          ("searcher-state-*.pkl", lambda b: __import__("pickle").loads(b))):
        files = sorted(glob.glob(os.path.join(exp_path, pattern)))
        if files:
            try:
                with open(files[-1], "rb") as f:
                    load(f.read())
            except Exception:  # noqa: BLE001 - any failure to load is damage
                return files[-1]
    return None


def _check_options(opts: StudyOptions) -> None:
    """Command-line numbers, checked before anything starts (pydantic checks the spec's own)."""
    for name in ("num_samples", "max_concurrent"):
        value = getattr(opts, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SpecError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {value!r}")
    if opts.resume and opts.fresh:
        raise SpecError("--resume and --fresh contradict each other; pass one")


def _check_resources(spec, out, can_grow: bool = False) -> None:
    """A trial asking for more of a resource than any node has would wait forever: say so now. On a
    cluster (``--address``) an autoscaler may still add such a node: a note, not an error."""
    import ray

    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for key, amount in need.items():
        if amount and not any(r.get(key, 0) >= amount for r in nodes):
            best = max((r.get(key, 0) for r in nodes), default=0)
            if can_grow:
                out(f"note: each trial asks for {amount:g} {key} and no node has that many now (largest: "
                    f"{best:g}); trials wait until the autoscaler adds such a node")
                continue
            raise SpecError(f"resources.{key.lower()}: each trial asks for {amount:g} {key}, but no node of the "
                            f"Ray cluster has that many (largest: {best:g}); lower resources.{key.lower()} "
                            "in the spec or add such a node")


def _run(kind, path, spec, base, note, trials, state, exp_root, exp_path, cwd, opts, out,
         old_state=None) -> StudyResult:
    from ray import tune

    from pace.provenance import git_commit
    from pace.tracking import MlflowSink, check_reachable, normalize_uri, ui_command

    import uuid

    track = state["track"] if state else spec.track
    uri = exp_id = parent = sink = actor = None
    # One id per study instance: kept by --resume, new after --fresh (reports tell instances apart)
    instance = (state or {}).get("instance") or uuid.uuid4().hex[:12]
    instance_tag = {INSTANCE_TAG: instance}
    if track:
        from pace.journal import journal_folder, pending_journals, sync

        uri = normalize_uri(opts.tracking_uri or (state or {}).get("tracking_uri") or spec.tracking_uri, cwd)
        check_reachable(uri)  # seconds, not MLflow's minutes of retries
        # writes earlier studies here could not send (server down when they ended) go first
        earlier = [j for j in pending_journals([exp_root]) if j.uri == uri]
        if earlier:
            sync(earlier, 30, out)
        if old_state is not None:  # --fresh: never drop writes the old instance could not send yet
            if pending_journals([exp_path]):
                raise SpecError(f"{exp_path} holds tracking writes not sent yet; run `pace tracking sync "
                                f"{exp_path}` once their server answers, then --fresh")
            shutil.rmtree(exp_path, ignore_errors=True)
        sink = MlflowSink(uri)  # the driver creates DB, experiment and parent before any trial writes
        if state:
            exp_id, parent = state["experiment_id"], state["parent_run_id"]
            sink.reopen(parent)
        else:
            exp_id = sink.experiment(spec.name)
            params = {"kind": kind, "objective": spec.objective, "mode": spec.mode,
                      "spec_file": os.path.abspath(path), "experiment_path": exp_path}
            if kind == "sweep":
                params.update(searcher=spec.searcher.type, seed=spec.searcher.seed, num_samples=spec.samples)
            else:
                params.update(num_trials=len(trials))
            tags = {"pace.kind": kind, "pace.role": "study", "git_commit": git_commit(),
                    "backbone": str(get_dotted(base, "backbone.name")), "pace.backbone_choice": note,
                    **instance_tag}
            parent = sink.start_parent(exp_id, spec.name, tags, params)
            old_parent = (old_state or {}).get("parent_run_id")
            if old_parent and (old_state or {}).get("tracking_uri") == uri:
                _archive(sink, old_parent, out)
        journal = journal_folder(exp_path, cwd, spec.name)
        actor = _sink_actor(uri, str(journal))

    if old_state is not None and not track:
        shutil.rmtree(exp_path, ignore_errors=True)  # --fresh, once nothing else can refuse
    if not state or "instance" not in state:
        state = state or {"kind": kind, "name": spec.name, "base": base, "track": bool(track), "tracking_uri": uri,
                          "experiment_id": exp_id, "parent_run_id": parent, "objective": spec.objective,
                          "mode": spec.mode, "spec": spec.model_dump(mode="json"), "created": time.time(),
                          "scheduler_journal": True}
        state["instance"] = instance
        _write_file(exp_path, STATE_FILE, json.dumps(state, indent=1))

    faults = json.loads(os.environ[FAULTS_ENV]) if os.environ.get(FAULTS_ENV) else {}
    ctx = TrialContext(base=base, cwd=cwd, experiment_id=exp_id, parent_run_id=parent, sink=actor,
                       cpus_per_trial=spec.resources.cpu, faults=faults, instance=instance, tags=instance_tag,
                       exp_path=exp_path)
    trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx),
                                    {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    # fast trials + num_to_keep force frequent state snapshots; Tune's warning about it is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

    if opts.resume:
        tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = _build_tuner(kind, spec, base, trials, trainable, exp_root, exp_path)

    outcomes: dict[str, tuple[str, dict]] = {}
    outcome = "KILLED"
    unsent = 0
    ending = ActorSink(actor) if actor is not None else None  # the end goes through the journal too
    try:
        tuner.fit()
        rows, outcomes, interrupted = _collect(exp_path, spec.objective)
        if interrupted:
            rows += _not_started(rows, kind, spec, base, trials)
        num_errors = sum(r["status"] == "failed" for r in rows)
        outcome = "KILLED" if interrupted else ("FAILED" if num_errors else "FINISHED")
        if ending is not None and not interrupted:
            _finish_parent(ending, parent, rows, spec)
    except BaseException as exc:
        if ending is not None:  # whatever still runs was cut off with the driver
            ending.close_sweep(exp_id, parent, {}, "FAILED" if isinstance(exc, Exception) else "KILLED")
            ending = None
        raise
    finally:
        if ending is not None:
            ending.close_sweep(exp_id, parent, outcomes, outcome)
        if actor is not None:
            import ray

            try:
                from pace.journal import FLUSH_DEFAULT_S, FLUSH_ENV

                unsent = ray.get(actor.flush.remote(float(os.environ.get(FLUSH_ENV, FLUSH_DEFAULT_S))))
            finally:
                ray.kill(actor)
        _remove_work_dirs_everywhere(instance)

    _write_file(exp_path, SUMMARY_FILE, _csv(rows))
    out("")
    out(summary_table(rows, kind, spec.objective))
    if kind == "sweep":
        from pace.reporting import best_trial_line

        out(best_trial_line(rows, spec.objective, spec.mode, _describe))
    if kind == "ablation":
        agg = aggregate_table(rows)
        if agg:
            out("\nmean ± std over seeds:\n" + agg)
    sharing = study_sharing_line(rows)
    if sharing:
        out(sharing)
    out(f"\n{len(rows)} trials, {num_errors} failed; Tune results in {exp_path}")
    if interrupted:
        out(f"interrupted: continue with `pace {'ablate' if kind == 'ablation' else kind} {path} --resume`")
    if track:
        out(f"MLflow: experiment {spec.name!r} at {uri}\n  open the UI with: {ui_command(uri)}")
        if unsent:
            out(f"tracking: {uri} did not answer; {unsent} writes are kept in {journal} and sent by the next "
                f"`pace sweep`/`pace ablate` here that reaches it, or now with `pace tracking sync {exp_path}`")
    return StudyResult(exp_path, uri, exp_id, parent, rows, interrupted, num_errors)


def _collect(exp_path: str, objective: str) -> tuple[list[dict[str, Any]], dict[str, tuple[str, dict]], bool]:
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
            "stages_computed": m.get("stages_computed"), "stages_reused": m.get("stages_reused")})
    rows.sort(key=lambda r: r["trial"])
    return rows, outcomes, interrupted


def _archive(sink, old_parent: str, out) -> None:
    """--fresh: the earlier instance's parent run stays, marked archived (its children keep their
    pace.study_instance tag, so reports can tell the instances apart)."""
    try:
        sink.set_tags(old_parent, {ARCHIVED_TAG: "true"})
    except Exception as exc:  # deleted by hand, or another store: nothing to mark
        out(f"note: could not mark the earlier parent run {old_parent} archived ({type(exc).__name__})")


def _remove_work_dirs_everywhere(instance: str) -> None:
    """Trial work folders of this instance on every live node (a killed trial never removes its own)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remove_work_dirs(instance)
    try:
        task = ray.remote(remove_work_dirs).options(num_cpus=0)
        refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(instance) for n in ray.nodes() if n.get("Alive")]
        ray.wait(refs, num_returns=len(refs), timeout=30)
    except Exception:  # Ray already going down (Ctrl-C twice): the local folder is gone at least
        pass


def _not_started(rows: list[dict[str, Any]], kind: str, spec, base: dict[str, Any], trials: list | None
                 ) -> list[dict[str, Any]]:
    """Rows for the trials an interrupted study had not created yet, so its summary lists all."""
    if kind == "ablation":
        expected = [({}, t["labels"]) for t in trials]
    elif spec.searcher.type == "grid":
        expected = [(g, {}) for g in SearchSpace(spec.search, base).grid()] * spec.samples
    else:
        expected = [({}, {})] * spec.samples
    seen = [json.dumps([r["labels"], r["params"] if kind != "ablation" else {}], sort_keys=True) for r in rows]
    missing = []
    for params, labels in expected:
        key = json.dumps([labels, params], sort_keys=True)
        if key in seen:
            seen.remove(key)
        elif params or labels or len(missing) + len(rows) < len(expected):
            missing.append((params, labels))
    if kind != "ablation" and spec.searcher.type != "grid":
        missing = missing[: max(0, spec.samples - len(rows))]
    return [{"trial": "-", "trial_id": "", "status": "not started", "labels": labels, "params": params,
             "sessions": "0/?", "last_accuracy": None, "average_incremental_accuracy": None, "forgetting": None,
             "objective": None, "path": ""} for params, labels in missing]


def _describe(row: dict[str, Any]) -> str:
    if row["labels"]:
        return " ".join(f"{k}={row['labels'][k]}" for k in LABEL_ORDER if k in row["labels"])
    return " ".join(f"{k}={_short(v)}" for k, v in row["params"].items())


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_table(rows: list[dict[str, Any]], kind: str, objective: str) -> str:
    from pace.reporting import table

    head = ["trial", "variant" if kind == "ablation" else "params", "status", "sessions", "last acc",
            "avg inc acc", "forgetting", objective]
    return table([[r["trial"], _describe(r), r["status"], r["sessions"], r["last_accuracy"],
                   r["average_incremental_accuracy"], r["forgetting"], r["objective"]] for r in rows], head)


def aggregate_table(rows: list[dict[str, Any]]) -> str:
    """Ablation rows grouped by benchmark/backbone/variant, mean ± std over seeds (finished trials)."""
    from pace.reporting import table

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


def _csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "trial_id", "status", "sessions", "description", "last_accuracy",
                "average_incremental_accuracy", "forgetting", "objective"])
    for r in rows:
        w.writerow([r["trial"], r["trial_id"], r["status"], r["sessions"], _describe(r), r["last_accuracy"],
                    r["average_incremental_accuracy"], r["forgetting"], r["objective"]])
    return buf.getvalue()


def _finish_parent(sink, parent: str, rows: list[dict[str, Any]], spec) -> None:
    """Best objective, the summary and the spec on the parent run, once per study: the best comes
    from finished trials only (not from one cut off or stopped early), and a study whose parent
    already holds it (finished before, then resumed) does not log it again (``sink.summary``)."""
    scored = [r for r in rows if r["objective"] is not None and r["status"] == "finished"]
    best = (max if spec.mode == "max" else min)(scored, key=lambda r: r["objective"]) if scored else None
    files = {SUMMARY_FILE: _csv(rows).encode(),
             "spec.yaml": yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).encode()}
    sink.summary(parent, f"best_{spec.objective}" if best else None, best["objective"] if best else None,
                 {"pace.best_trial": best["trial"]} if best else {}, files)


# ---------------------------------------------------------------------------------------------
# CLI


def _add_common(p) -> None:
    p.add_argument("--resume", action="store_true", help="continue an interrupted study (finished trials are kept)")
    p.add_argument("--fresh", action="store_true", help="delete an earlier study of this name (Tune results only)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--storage", help="Tune storage path (default: ./ray_results; shared path or s3:// on a cluster)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument("--address", help="Ray cluster to join (e.g. auto); default: start local Ray on all cores")
    p.add_argument("--no-tracking", dest="track", action="store_false", default=None,
                   help="do not log to MLflow")


def cmd_sweep(args) -> int:
    res = run_study("sweep", args.spec, StudyOptions(
        resume=args.resume, fresh=args.fresh, tracking_uri=args.tracking_uri, storage=args.storage,
        max_concurrent=args.max_concurrent, num_samples=args.num_samples, address=args.address, track=args.track))
    return 130 if res.interrupted else (1 if res.num_errors else 0)


def cmd_ablate(args) -> int:
    res = run_study("ablation", args.spec, StudyOptions(
        resume=args.resume, fresh=args.fresh, tracking_uri=args.tracking_uri, storage=args.storage,
        max_concurrent=args.max_concurrent, address=args.address, track=args.track))
    return 130 if res.interrupted else (1 if res.num_errors else 0)


def add_cli(sub) -> None:
    s = sub.add_parser("sweep", help="hyperparameter search on Ray Tune (Optuna/random/grid), tracked in MLflow")
    s.add_argument("spec", help="sweep spec YAML (sweeps/*.yaml)")
    _add_common(s)
    s.add_argument("--num-samples", type=int, help="trials to sample (grid: repeats)")
    s.set_defaults(func=cmd_sweep)
    a = sub.add_parser("ablate", help="grid of variants x benchmarks x backbones x seeds on Ray Tune")
    a.add_argument("spec", help="ablation spec YAML")
    _add_common(a)
    a.set_defaults(func=cmd_ablate)


if __name__ == "__main__":  # pragma: no cover
    from pace.cli import main

    sys.exit(main())
