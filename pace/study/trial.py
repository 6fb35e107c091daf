"""The trial body: what runs in Tune's worker processes, one continual-learning run per trial.

``train_trial`` is the function trainable. It reports after every session with a checkpoint holding
the runner's checkpoint and the trial's MLflow run id, and resumes from the newest complete checkpoint
on disk when Tune retries the trial or restores the study. Everything a trial needs from the driver
comes in a ``TrialContext`` (``tune.with_parameters`` ships it to the workers).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pace.config import compose, get_dotted, validate_config

TRACKING_FILE = "tracking.json"  # inside each Tune checkpoint: the trial's MLflow run id
#: what ASHA counts: sessions finished (not Tune's training_iteration, which restarts its count from
#: the checkpoint Tune's saved state names, while a trial resumes from the newest one on disk)
SESSIONS_DONE = "sessions_done"
#: trial work folders, one per study instance, removed when the study ends
WORK_ROOT = "pace-trials"
#: config keys holding paths; relative ones are resolved against the launch folder (workers chdir)
PATH_KEYS = ("data.root", "backbone.checkpoint", "runtime.cache_dir")


@dataclass
class TrialContext:
    """Constants shared by the trials of one study (passed with ``tune.with_parameters``)."""

    base: dict[str, Any]  # the resolved base run config (raw mapping)
    cwd: str  # the launch folder, for relative paths
    experiment_id: str | None = None
    parent_run_id: str | None = None
    sink: Any = None  # Ray actor handle of a pace.journal.JournaledSink, or None (no tracking)
    cpus_per_trial: float = 1.0
    #: factories (trial name -> runner reporter) of reporters added between the MLflow and the Tune
    #: reporter (pace.study.plugins); pickled with the context, so they must pickle
    reporters: list[Callable[[str], Any]] = field(default_factory=list)
    instance: str = ""  # the study instance id (pace.study_instance): names work folders, tags runs
    tags: dict[str, str] = field(default_factory=dict)  # extra tags on every trial run
    exp_path: str = ""  # the experiment folder in storage
    #: pace tune: benchmark name -> overrides, all run by every trial, and how their accuracies combine
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)
    aggregate: str = "mean"


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
# What a trial measures and reports


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

        from pace.runfolder import CHECKPOINT

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


class ActorSink:
    """Calls a sink actor's methods synchronously (the order of a trial's writes matters)."""

    def __init__(self, handle):
        self.handle = handle

    def __getattr__(self, name: str) -> Callable[..., Any]:
        import ray

        method = getattr(self.handle, name)
        return lambda *a, **kw: ray.get(method.remote(*a, **kw))


# ---------------------------------------------------------------------------------------------
# Checkpoints and work folders


def _complete(ckpt_dir: Path) -> bool:
    """A checkpoint folder whose runner checkpoint is a whole zip (torch.save's format) and whose
    tracking file parses: a folder cut off mid-copy fails one or the other."""
    import zipfile

    from pace.runfolder import CHECKPOINT  # trial side: torch is loaded here anyway

    try:
        with zipfile.ZipFile(ckpt_dir / CHECKPOINT) as z:
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


# ---------------------------------------------------------------------------------------------
# The trainable


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

    extra = [make(tc.get_trial_name()) for make in ctx.reporters]
    reporters = [r for r in (tracker, *extra, TuneReporter(tracker, before_final=save_outputs)) if r is not None]
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
