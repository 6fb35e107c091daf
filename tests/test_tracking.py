"""MLflow layout without Ray: the sink and the runner reporter against a temporary SQLite store."""

from __future__ import annotations

import pytest

from pace.config import validate_config
from pace.runner import Runner
from reporters import InterruptAfter
from pace.tracking import (MAX_PARAM_VALUE, MlflowReporter, MlflowSink, flatten, normalize_uri, run_tags,
                           ui_command)

CFG = {
    "name": "t",
    "data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 6, "synthetic_clips_per_class": 8},
    "scenario": {"num_sessions": 3},
    "backbone": {"name": "logmel-stats", "target_frames": 112},
    "method": {"name": "simplecil"},
    "runtime": {"progress": False},
    "tags": {"variant": "v1"},
}


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    # one store for the module: creating an MLflow SQLite schema takes seconds
    return MlflowSink(normalize_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"))


def test_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert normalize_uri("sqlite:///x/m.db") == f"sqlite:///{tmp_path / 'x' / 'm.db'}"
    assert normalize_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert normalize_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    with pytest.raises(ValueError, match="file store"):
        normalize_uri("./mlruns")
    assert "--host 127.0.0.1" in ui_command(normalize_uri(None))


def test_flatten_respects_mlflow_limits():
    flat = flatten({"a": {"b": 1, "c": [1, 2], "d": {}}, "long": "x" * 10_000, "none": None})
    assert flat["a.b"] == "1" and flat["a.c"] == "[1, 2]" and flat["a.d"] == "{}" and flat["none"] == "None"
    assert len(flat["long"]) == MAX_PARAM_VALUE and flat["long"].endswith("...")


def test_tags_defaults_and_labels():
    cfg = validate_config(CFG).to_dict()
    tags = run_tags(cfg, {"benchmark": "syn", "seed": "4"}, "abc")
    assert tags == {"method": "simplecil", "backbone": "logmel-stats", "benchmark": "syn", "seed": "4",
                    "variant": "v1", "git_commit": "abc"}
    cfg["seeds"] = {"class_order": 1, "split": 2, "init": 3}
    assert run_tags(cfg, {}, "abc")["seed"] == "1/2/3" and run_tags(cfg, {}, "abc")["benchmark"] == "synthetic-fine"


def test_interrupted_run_continues_without_duplicate_steps(sink, tmp_path):
    exp = sink.experiment("study-a")
    parent = sink.start_parent(exp, "study", {"pace.role": "study"}, {"kind": "sweep"})
    cfg = validate_config(CFG)

    first = MlflowReporter(sink, exp, parent, "trial-a", "t001", {"seed": "0"})
    with pytest.raises(KeyboardInterrupt):  # after session 2 is logged, before it is "checkpointed"
        Runner(cfg, tmp_path / "a", [first, InterruptAfter(after=2)]).run()
    assert sink.client.get_run(first.run_id).info.status == "RUNNING"
    assert sink.logged_steps(first.run_id) == [0, 1]

    # the runner resumes after session 2; a reporter without the run id finds the run by trial id
    second = MlflowReporter(sink, exp, parent, "trial-a", "t001", {"seed": "0"})
    Runner(cfg, tmp_path / "a", [second]).run()
    assert second.run_id == first.run_id
    hist = sink.client.get_metric_history(first.run_id, "acc_all")
    assert sorted(m.step for m in hist) == [0, 1, 2]

    # recomputing a logged session (as a Tune retry from an older checkpoint does) is skipped
    (tmp_path / "a" / "checkpoint.pt").unlink()
    third = MlflowReporter(sink, exp, parent, "trial-a", "t001", {"seed": "0"}, run_id=first.run_id)
    Runner(cfg, tmp_path / "a", [third]).run()
    run = sink.client.get_run(first.run_id)
    assert sorted(m.step for m in sink.client.get_metric_history(first.run_id, "acc_all")) == [0, 1, 2]
    assert len(sink.client.get_metric_history(first.run_id, "last_accuracy")) == 1
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["variant"] == "v1"
    assert run.data.params["method.name"] == "simplecil" and run.data.params["scenario.num_sessions"] == "3"
    for key in ("last_accuracy", "average_incremental_accuracy", "forgetting", "bwt", "plasticity", "stability"):
        assert key in run.data.metrics
    arts = {a.path for a in sink.client.list_artifacts(first.run_id)}
    assert {"accuracy_matrix.csv", "metrics.json", "config.yaml", "splits"} <= arts
    assert "checkpoint.pt" not in arts
    db_dir = sink.uri[len("sqlite:///"):].rsplit("/", 1)[0]
    assert sink.client.get_experiment(exp).artifact_location == f"file://{db_dir}/mlartifacts/study-a"


def test_close_sweep_leaves_nothing_running(sink):
    exp = sink.experiment("study-b")
    parent = sink.start_parent(exp, "study", {}, {})
    runs = {}
    for trial in ("a", "b", "c"):
        runs[trial], _ = sink.open_trial_run(exp, parent, trial, trial, {}, {"x": "1"})
    sink.terminate(runs["c"], "FINISHED")
    closed = sink.close_sweep(exp, parent, {"a": ("FINISHED", {"pace.stopped_early": "true"})}, "KILLED")
    assert closed == {runs["a"]: "FINISHED", runs["b"]: "KILLED"}
    status = {t: sink.client.get_run(r).info.status for t, r in runs.items()}
    assert status == {"a": "FINISHED", "b": "KILLED", "c": "FINISHED"}
    assert sink.client.get_run(runs["a"]).data.tags["pace.stopped_early"] == "true"
    assert sink.client.get_run(parent).info.status == "KILLED"
    # a reopened study sets its parent running again
    sink.reopen(parent)
    assert sink.client.get_run(parent).info.status == "RUNNING"


def test_study_summary_comes_from_finished_trials_once(sink):
    """The parent's best objective ignores trials cut off or stopped early, and a resumed study that
    finishes again does not log it a second time."""
    from types import SimpleNamespace

    from pace.study.summary import finish_parent

    exp = sink.experiment("study-c")
    parent = sink.start_parent(exp, "study", {}, {})
    rows = [{"trial": t, "trial_id": t, "status": st, "labels": {}, "params": {}, "sessions": s,
             "last_accuracy": v, "average_incremental_accuracy": v, "forgetting": 0.0, "objective": v}
            for t, st, s, v in (("t0", "interrupted", "2/5", 90.0), ("t1", "finished", "5/5", 70.0),
                                ("t2", "stopped early", "1/5", 95.0), ("t3", "finished", "5/5", 60.0))]
    spec = SimpleNamespace(objective="val_last_accuracy", mode="max", model_dump=lambda mode: {})
    finish_parent(sink, parent, rows, spec)
    finish_parent(sink, parent, rows, spec)  # interrupted, resumed, finished again
    hist = sink.client.get_metric_history(parent, "best_val_last_accuracy")
    assert [(m.step, m.value) for m in hist] == [(0, 70.0)]
    assert sink.client.get_run(parent).data.tags["pace.best_trial"] == "t1"


def test_journaled_writes_are_sent_once_even_when_sent_again(sink, tmp_path, monkeypatch):
    """A trial's writes go to the journal; sending them, then sending them all again (a kill between
    sending and recording what was sent), leaves one run with each step once and nothing RUNNING."""
    from pace.journal import JournaledSink, Sender, drain

    monkeypatch.setattr(JournaledSink, "_loop", lambda self: None)  # no sender thread: sent by hand below
    journaled = JournaledSink(sink.uri, str(tmp_path / "journal"))
    exp = sink.experiment("study-d")
    parent = sink.start_parent(exp, "study", {}, {})
    reporter = MlflowReporter(journaled, exp, parent, "trial-d", "t000", {"seed": "0"},
                              extra_tags={"pace.study_instance": "abc"})
    Runner(validate_config(CFG), tmp_path / "run", [reporter]).run()
    journaled.close_sweep(exp, parent, {}, "FINISHED")
    assert sink.child_runs(exp, parent) == []  # nothing sent yet: the trial never waited for the store
    journal = journaled.journal
    for _ in range(2):
        assert drain(journal, Sender(sink.uri), deadline=float("inf")) == 0
        journal.mark_sent(0)
    (run,) = sink.child_runs(exp, parent)
    assert run["status"] == "FINISHED" and run["trial_id"] == "trial-d"
    assert sink.logged_steps(run["run_id"]) == [0, 1, 2]
    assert len(sink.client.get_metric_history(run["run_id"], "acc_all")) == 3
    assert len(sink.client.get_metric_history(run["run_id"], "last_accuracy")) == 1
    got = sink.client.get_run(run["run_id"])
    assert got.data.tags["pace.study_instance"] == "abc" and "accuracy_matrix.csv" in \
        {a.path for a in sink.client.list_artifacts(run["run_id"])}
    assert sink.client.get_run(parent).info.status == "FINISHED"
