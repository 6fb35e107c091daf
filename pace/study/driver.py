"""The driver: ``run_study`` loads and checks a spec, opens (or resumes) the study's folder and its
MLflow parent run, runs the trials on Ray Tune, and ends with the summary.

Tracking goes through one journaled sink actor (pace.journal), so a tracking outage never stops a
running study, and a ``--resume`` during an outage goes on with the journal too; only a new study
needs the server, to create its experiment and parent run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from pace.study import SpecError
from pace.study.cluster import (CONNECT_TIMEOUT_S, check_resources, ensure_ray, quiet_ray,
                                remove_work_dirs_everywhere, sink_actor)
from pace.study.plugins import StudyHooks, load_plugins
from pace.study.spec import SPEC_TYPES, StudySpec, load_spec, spec_type
from pace.study.state import STATE_FILE, check_resumable, read_state, storage_root, write_file
from pace.study.summary import (LABEL_ORDER, SUMMARY_FILE, collect, describe, finish_parent, not_started,
                                study_sharing_line, summary_csv)
from pace.study.trial import ActorSink, TrialContext, split_trial_config

#: tag on a parent run that ``--fresh`` replaced
ARCHIVED_TAG = "pace.archived"


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
    #: seconds to wait for the cluster at ``address`` to answer
    connect_timeout_s: float = CONNECT_TIMEOUT_S


@dataclass
class StudyResult:
    experiment_path: str
    tracking_uri: str | None
    experiment_id: str | None
    parent_run_id: str | None
    rows: list[dict[str, Any]]
    interrupted: bool
    num_errors: int
    wall_s: float  # from run_study's start to the summary (this invocation's, when resumed)
    trial_s: float  # the trials' own time (Tune's time_total_s), summed


# ---------------------------------------------------------------------------------------------
# Tune


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
            print(f"[{trial}] started: {describe({'labels': labels, 'params': overrides})}", flush=True)

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


def _build_tuner(spec: StudySpec, base: dict[str, Any], trainable, exp_root: str, exp_path: str,
                 callbacks: list):
    from ray import tune

    return tune.Tuner(
        trainable, param_space=spec.param_space(base),
        tune_config=tune.TuneConfig(metric=spec.objective, mode=spec.mode, search_alg=spec.search_algorithm(base),
                                    scheduler=spec.trial_scheduler(base, exp_path), num_samples=spec.repeats,
                                    max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=exp_root,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            sync_config=tune.SyncConfig(sync_artifacts=True), verbose=0,
            callbacks=[_progress_callback(spec.max_failures), *callbacks]))


# ---------------------------------------------------------------------------------------------
# The study


def _check_options(opts: StudyOptions) -> None:
    """Command-line numbers, checked before anything starts (pydantic checks the spec's own)."""
    for name in ("num_samples", "max_concurrent"):
        value = getattr(opts, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SpecError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {value!r}")
    if opts.resume and opts.fresh:
        raise SpecError("--resume and --fresh contradict each other; pass one")
    if not opts.connect_timeout_s > 0:
        raise SpecError(f"--connect-timeout: expected seconds > 0, got {opts.connect_timeout_s!r}")


@dataclass
class _Study:
    """One start of a study, as ``run_study`` resolved it from the spec, the options and storage."""

    spec: StudySpec
    path: str  # the spec file, as given
    base: dict[str, Any]  # the resolved base (on --resume: as the study started)
    note: str  # which backbone, and why
    state: dict[str, Any] | None  # pace_study.json of the study resumed
    old_state: dict[str, Any] | None  # --fresh: that of the instance replaced ({} when it had none)
    exp_root: str
    exp_path: str
    cwd: str
    uri: str | None  # the tracking URI; None: not tracked
    online: bool  # whether the tracking server answered at the start
    resume: bool
    hooks: StudyHooks
    out: Callable[[str], None]
    started: float  # time.monotonic() when run_study began: the study's wall time is counted from here


def run_study(kind: str, path: str, opts: StudyOptions | None = None, out=None,
              hooks: StudyHooks | None = None, spec: StudySpec | None = None) -> StudyResult:
    """Run (or ``opts.resume``) the study of ``kind`` ("sweep" or "ablation", a ``StudySpec.kind``) in
    spec file ``path``; prints a summary. ``hooks``, and the plugins named in $PACE_STUDY_PLUGINS,
    extend the trials and the Tune run (pace.study.plugins). ``spec``: a spec already built from
    ``path`` (``pace tune`` builds one per method from its tune file)."""
    started = time.monotonic()
    out = out or (lambda s: print(s, flush=True))
    opts = opts or StudyOptions()
    quiet_ray()
    cwd = os.getcwd()
    if spec is None:
        spec, base, note = load_spec(spec_type(kind), path, check_data=True)  # every spec error surfaces here
    else:
        from pace.study.checks import DataCheck

        base, note = spec.check(path, DataCheck())
    updates = spec.option_updates(opts)
    _check_options(opts)
    spec = spec.model_copy(update=updates)
    exp_root = storage_root(spec.storage_path, opts.storage, cwd)
    exp_path = f"{exp_root}/{spec.name}"
    if spec.journals_decisions and "://" in exp_root:
        raise SpecError(f"scheduler: asha journals its decisions in the experiment folder for --resume; "
                        f"storage {exp_root!r} is not a local or shared path")

    state = read_state(exp_path)
    old_state = None
    if opts.resume:
        check_resumable(spec, state, exp_path, path)
        base = state["base"]  # as resolved when the study started (backbone choice included)
        spec = spec.model_copy(update={"objective": state["objective"], "mode": state["mode"]})
        if updates:
            out(f"note: --resume keeps the original settings; ignoring {', '.join(updates)}")
        out(f"resuming {spec.kind} {spec.name} from {exp_path}")
    elif state is not None or os.path.isdir(exp_path):
        if not opts.fresh:
            raise SpecError(f"{exp_path} already holds a {spec.kind} named {spec.name!r}: pass --resume to "
                            "continue it, --fresh to start over, or change 'name'")
        old_state, state = state or {}, None
    out(f"{spec.kind} {spec.name}: {note}")

    uri, online = None, False
    if state["track"] if state else spec.track:
        from pace.tracking import normalize_uri

        uri = normalize_uri(opts.tracking_uri or (state or {}).get("tracking_uri") or spec.tracking_uri, cwd)
        online = _tracking_online(uri, opts.resume, exp_path, cwd, spec.name, out)  # seconds, before Ray starts
    study = _Study(spec, path, base, note, state, old_state, exp_root, exp_path, cwd, uri, online, opts.resume,
                   (hooks or StudyHooks()) + load_plugins(), out, started)
    started_ray = ensure_ray(opts.address, opts.connect_timeout_s)
    try:
        check_resources(spec, out, can_grow=bool(opts.address))
        return _run(study)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _tracking_online(uri: str, resuming: bool, exp_path: str, cwd: str, name: str, out) -> bool:
    """Whether the tracking server answers. A new study needs it (it creates the experiment and the
    parent run); a resumed one knows their ids and goes on with its journal while the server is down."""
    from pace.journal import journal_folder, sync_command
    from pace.tracking import check_reachable, server_unreachable

    reason = server_unreachable(uri) if resuming else None
    if reason is None:
        check_reachable(uri)
        return True
    out(f"tracking: server {uri} is unreachable ({reason}); resuming anyway: the study's writes are kept in "
        f"{journal_folder(exp_path, cwd, name)} and sent once it answers (or with `{sync_command(exp_path)}`)")
    return False


def _archive(sink, old_parent: str, out) -> None:
    """--fresh: the earlier instance's parent run stays, marked archived (its children keep their
    pace.study_instance tag, so reports can tell the instances apart)."""
    try:
        sink.set_tags(old_parent, {ARCHIVED_TAG: "true"})
    except Exception as exc:  # deleted by hand, or another store: nothing to mark
        out(f"note: could not mark the earlier parent run {old_parent} archived ({type(exc).__name__})")


def _open_tracking(s: _Study, instance_tag: dict[str, str]):
    """(experiment id, parent run id, sink actor, journal folder) of a tracked study."""
    from pace.config import get_dotted
    from pace.journal import journal_folder, pending_journals, sync, sync_command
    from pace.provenance import git_commit
    from pace.tracking import MlflowSink

    if s.online:  # writes earlier studies here could not send (server down when they ended) go first
        earlier = [j for j in pending_journals([s.exp_root]) if j.uri == s.uri]
        if earlier:
            sync(earlier, 30, s.out)
    if s.old_state is not None:  # --fresh: never drop writes the old instance could not send yet
        if pending_journals([s.exp_path]):
            raise SpecError(f"{s.exp_path} holds tracking writes not sent yet; run `{sync_command(s.exp_path)}` "
                            "once their server answers, then --fresh")
        shutil.rmtree(s.exp_path, ignore_errors=True)
    journal = journal_folder(s.exp_path, s.cwd, s.spec.name)
    if s.state:  # resumed: the ids are known; the parent runs again once the journal reaches the server
        actor = sink_actor(s.uri, str(journal))
        ActorSink(actor).reopen(s.state["parent_run_id"])  # journaled ahead of every trial's writes
        return s.state["experiment_id"], s.state["parent_run_id"], actor, journal
    sink = MlflowSink(s.uri)  # the driver creates DB, experiment and parent before any trial writes
    exp_id = sink.experiment(s.spec.name)
    params = {"kind": s.spec.kind, "objective": s.spec.objective, "mode": s.spec.mode,
              "spec_file": os.path.abspath(s.path), "experiment_path": s.exp_path,
              **s.spec.tracking_params(s.base)}
    tags = {"pace.kind": s.spec.kind, "pace.role": "study", "git_commit": git_commit(),
            "backbone": str(get_dotted(s.base, "backbone.name")), "pace.backbone_choice": s.note, **instance_tag}
    parent = sink.start_parent(exp_id, s.spec.name, tags, params)
    old_parent = (s.old_state or {}).get("parent_run_id")
    if old_parent and (s.old_state or {}).get("tracking_uri") == s.uri:
        _archive(sink, old_parent, s.out)
    # the actor is not awaited: it starts while Tune starts; this sink has opened the URI already
    return exp_id, parent, sink_actor(s.uri, str(journal)), journal


def _run(s: _Study) -> StudyResult:
    from ray import tune

    from pace.tracking import INSTANCE_TAG

    spec = s.spec
    exp_id = parent = actor = journal = None
    # One id per study instance: kept by --resume, new after --fresh (reports tell instances apart)
    instance = (s.state or {}).get("instance") or uuid.uuid4().hex[:12]
    instance_tag = {INSTANCE_TAG: instance}
    if s.uri is not None:
        exp_id, parent, actor, journal = _open_tracking(s, instance_tag)
    elif s.old_state is not None:
        shutil.rmtree(s.exp_path, ignore_errors=True)  # --fresh, once nothing else can refuse
    state = s.state
    if not state or "instance" not in state:
        state = state or {"kind": spec.kind, "name": spec.name, "base": s.base, "track": s.uri is not None,
                          "tracking_uri": s.uri, "experiment_id": exp_id, "parent_run_id": parent,
                          "objective": spec.objective, "mode": spec.mode, "spec": spec.model_dump(mode="json"),
                          "created": time.time(), "scheduler_journal": True}
        state["instance"] = instance
        write_file(s.exp_path, STATE_FILE, json.dumps(state, indent=1))

    ctx = TrialContext(base=s.base, cwd=s.cwd, experiment_id=exp_id, parent_run_id=parent, sink=actor,
                       cpus_per_trial=spec.resources.cpu, reporters=list(s.hooks.trial_reporters),
                       instance=instance, tags=instance_tag, exp_path=s.exp_path, **spec.context_fields())
    trainable = tune.with_resources(tune.with_parameters(spec.trainable(), ctx=ctx),
                                    {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    # fast trials + num_to_keep force frequent state snapshots; Tune's warning about it is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if s.resume:
        tuner = tune.Tuner.restore(s.exp_path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = _build_tuner(spec, s.base, trainable, s.exp_root, s.exp_path, s.hooks.tune_callbacks)

    rows, interrupted, unsent = _fit(s, tuner, exp_id, parent, actor, instance)
    num_errors = sum(r["status"] == "failed" for r in rows)
    res = StudyResult(s.exp_path, s.uri, exp_id, parent, rows, interrupted, num_errors,
                      wall_s=time.monotonic() - s.started,
                      trial_s=sum(float((r.get("result") or {}).get("time_total_s") or 0.0) for r in rows))
    _print_summary(s, res, unsent, journal)
    return res


def _fit(s: _Study, tuner, exp_id, parent, actor, instance: str) -> tuple[list[dict[str, Any]], bool, int]:
    """Run the trials; close the tracked runs whatever happens. (rows, interrupted, writes unsent)."""
    outcomes: dict[str, tuple[str, dict]] = {}
    outcome = "KILLED"
    unsent = 0
    ending = ActorSink(actor) if actor is not None else None  # the end goes through the journal too
    try:
        tuner.fit()
        rows, outcomes, interrupted = collect(s.exp_path, s.spec.objective)
        if interrupted:
            rows += not_started(rows, s.spec, s.base)
        outcome = "KILLED" if interrupted else ("FAILED" if any(r["status"] == "failed" for r in rows)
                                                else "FINISHED")
        if ending is not None and not interrupted:
            finish_parent(ending, parent, rows, s.spec)
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
        remove_work_dirs_everywhere(instance)
    return rows, interrupted, unsent


def _print_summary(s: _Study, res: StudyResult, unsent: int, journal) -> None:
    from pace.journal import sync_command
    from pace.tracking import ui_command

    spec, out, rows = s.spec, s.out, res.rows
    write_file(s.exp_path, SUMMARY_FILE, summary_csv(rows))
    out("")
    out(spec.summary_table(rows))
    for line in spec.summary_lines(rows):
        out(line)
    sharing = study_sharing_line(rows)
    if sharing:
        out(sharing)
    took = "this resumed run took" if s.resume else "took"
    out(f"\n{len(rows)} trials, {res.num_errors} failed; Tune results in {s.exp_path}")
    out(f"{took} {res.wall_s / 60:.1f} min wall, {res.trial_s / 60:.1f} trial-minutes")
    if res.interrupted:
        out(f"interrupted: continue with `pace {spec.command} {s.path} --resume`")
    if s.uri is not None:
        out(f"MLflow: experiment {spec.name!r} at {s.uri}\n  open the UI with: {ui_command(s.uri)}")
        if unsent:
            commands = "/".join(f"`pace {t.command}`" for t in SPEC_TYPES.values())
            out(f"tracking: {s.uri} did not answer; {unsent} writes are kept in {journal} and sent by the next "
                f"{commands} here that reaches it, or now with `{sync_command(s.exp_path)}`")
