"""The body of a ``pace tune`` trial: one sampled configuration run on every benchmark in turn.

After every session it reports the tune objective (pace.study.tune.aggregate over the benchmarks
finished, at their validation last accuracy, and the one in progress, at its current validation
accuracy), ``sessions_done`` counted across benchmarks (what ASHA schedules on), and, once a benchmark
ends, ``val.<benchmark>``, its flags ``<flag>.<benchmark>`` (1.0 raised, 0.0 not) and, when a stage
was inert, ``inert.<benchmark>`` (which stage, in how many sessions, at what learner time). Each benchmark
is its own MLflow child run (tags ``benchmark`` and ``tune_trial``).

A tune trial keeps no mid-trial checkpoint: a retried or resumed trial runs its benchmarks again
from the start (tuning runs are short; the Tune study itself resumes with ``--resume``).
"""

from __future__ import annotations

import re
import shutil
import statistics
from typing import Any

from pace.config import compose, validate_config
from pace.study.trial import (SESSIONS_DONE, ActorSink, TrialContext, ValidationHook, absolutize,
                              split_trial_config, trial_metrics, val_summary, work_dir)

#: what a tune trial reports as its objective (``pace.study.spec.REPORTED_METRICS`` lists it)
OBJECTIVE = "val_objective"
#: the flags a trial reports per benchmark (pace.methods.diagnostics); never part of the objective
FLAGS = ("adaptation_inert", "head_acc_fell", "head_acc_unchanged")


#: the per-stage line of ``adaptation_inert_reasons`` (pace.methods.diagnostics.inert_flags)
INERT_STAGE = re.compile(r"(\w+): inert in all (\d+) session\(s\) it adapted, which took ([\d.]+) s")


def aggregate(values: list[float], how: str) -> float:
    """The tune objective over benchmark accuracies: their mean, or the worst (lowest) of them."""
    if not values:
        return float("nan")
    if how == "mean":
        return statistics.fmean(values)
    if how == "worst":
        return min(values)
    raise ValueError(f"aggregate {how!r}: expected 'mean' or 'worst'")


class _Progress:
    """Reports to Tune after each session of one benchmark, with what the finished ones scored."""

    def __init__(self, done: dict[str, float], offset: int, total: int, how: str, finished: dict[str, Any]):
        self.done, self.offset, self.total, self.how = done, offset, total, how
        self.finished = finished  # val.<bench>, <flag>.<bench> of the benchmarks before this one
        self.last_metrics: dict[str, float] | None = None

    def on_start(self, runner) -> None: ...

    def on_session(self, runner, result) -> None:
        m = trial_metrics(runner, result)
        current = m.get("val_acc_all")
        values = list(self.done.values()) + ([current] if current is not None else [])
        m.update({OBJECTIVE: aggregate(values, self.how), SESSIONS_DONE: float(self.offset + result.index + 1),
                  "session": float(self.offset + result.index), "sessions_total": float(self.total)})
        m.update(self.finished)
        self.last_metrics = m
        last_of_trial = self.offset + result.index + 1 == self.total
        if not last_of_trial:  # the trial's last report comes from the caller, with every benchmark's flags
            from ray import tune

            tune.report(m)

    def on_end(self, runner, final) -> None: ...


def train_tune_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune function trainable of ``pace tune``."""
    import logging

    import torch
    from ray import tune

    from pace.runner import Runner
    from pace.tracking import MlflowReporter

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    tc = tune.get_context()
    overrides, _ = split_trial_config(config)
    cfgs = {}
    for bench, ovr in ctx.benchmarks.items():
        raw = compose(compose(ctx.base, ovr), overrides)
        raw.setdefault("runtime", {}).setdefault("progress", False)
        cfgs[bench] = validate_config(absolutize(raw, ctx.cwd), f"trial {overrides} on {bench}")
    total = sum(c.scenario.num_sessions for c in cfgs.values())
    done: dict[str, float] = {}
    extra: dict[str, Any] = {}  # val.<bench>, <flag>.<bench> and inert.<bench> of the finished benchmarks
    offset = 0
    root = work_dir(ctx.instance, tc.get_trial_id())
    progress = None
    try:
        for bench, cfg in cfgs.items():
            if cfg.runtime.num_threads is None:  # concurrent trials must not each take every core
                torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
            out = root / bench
            shutil.rmtree(out, ignore_errors=True)  # a retried trial starts the benchmark over
            out.mkdir(parents=True)
            tracker = None
            if ctx.sink is not None:
                tracker = MlflowReporter(ActorSink(ctx.sink), ctx.experiment_id, ctx.parent_run_id,
                                         f"{tc.get_trial_id()}-{bench}", f"{tc.get_trial_name()}-{bench}",
                                         {"benchmark": bench, "tune_trial": tc.get_trial_name()}, None,
                                         extra_final=val_summary, extra_tags=ctx.tags)
            progress = _Progress(dict(done), offset, total, ctx.aggregate, extra)
            runner = Runner(cfg, out, [r for r in (tracker, progress) if r is not None])
            runner.prepare()
            runner.analysis_hooks.append(ValidationHook())
            try:
                final = runner.run()
            except Exception:
                if tracker is not None:
                    tracker.fail("FAILED")
                raise
            if tracker is not None:
                tracker.sink.terminate(tracker.run_id, "FINISHED")
            done[bench] = float(val_summary(runner)["val_last_accuracy"])
            extra[f"val.{bench}"] = done[bench]
            for flag in FLAGS:
                extra[f"{flag}.{bench}"] = 1.0 if final.get(flag) else 0.0
            # which stage did nothing, in how many sessions, at what learner time (the defaults' source says it)
            stages = [r for r in final.get("adaptation_inert_reasons") or [] if INERT_STAGE.match(r)]
            if stages:
                extra[f"inert.{bench}"] = "; ".join(stages)
            offset += cfg.scenario.num_sessions
        last = dict(progress.last_metrics or {})
        last.update(extra)
        last[OBJECTIVE] = aggregate(list(done.values()), ctx.aggregate)
        tune.report(last)
    finally:
        shutil.rmtree(root, ignore_errors=True)
