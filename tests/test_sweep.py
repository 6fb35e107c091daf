"""Sweeps and ablations on a local Ray (2 CPUs, no dashboard), tracked to a temporary SQLite MLflow store.

One Ray session serves the module. Trials are tiny: synthetic audio, log-mel statistics, SimpleCIL or
joint, three sessions, so the whole module stays well within a couple of minutes on two cores.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import faults
from faults import REPO, wait_for
from pace.cli import build_parser, main
from pace.config import compose, validate_config
from pace.runner import Runner
from pace.study.driver import StudyOptions, run_study
from pace.study.space import SearchSpace
from pace.study.spec import load_sweep_spec
from pace.study.trial import ValidationHook, split_trial_config

pytestmark = pytest.mark.ray

BASE = {
    "name": "t",
    "data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 6, "synthetic_clips_per_class": 8},
    "scenario": {"num_sessions": 3, "val_fraction": 0.25},
    "backbone": {"name": "logmel-stats", "target_frames": 112},
    "method": {"name": "joint", "epochs": 20},
    "runtime": {"num_threads": 1},
}


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _sweep_spec(tmp: Path, name: str, uri: str | None = None, **kw) -> dict:
    spec = {
        "name": name, "base": BASE,
        "search": {"method.name": {"type": "categorical", "values": ["joint", "simplecil"]},
                   "method.lr": {"type": "log", "low": 1e-3, "high": 0.3, "when": {"method.name": "joint"}},
                   "method.epochs": {"type": "int", "low": 5, "high": 40, "when": {"method.name": "joint"}}},
        "searcher": {"type": "optuna", "seed": 2},  # proposes 3 x joint, 1 x simplecil
        "num_samples": 4, "max_concurrent": 2, "max_failures": 1,
        "storage_path": str(tmp / "ray_results"), "tracking_uri": uri or f"sqlite:///{tmp / 'mlflow.db'}",
    }
    spec.update(kw)
    return spec


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    ray = pytest.importorskip("ray")
    # workers inherit the raylet's environment: give them the session's isolated feature cache
    cache = str(tmp_path_factory.getbasetemp() / "pace-cache")
    old = os.environ.get("PACE_CACHE_DIR")
    os.environ["PACE_CACHE_DIR"] = cache
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PACE_CACHE_DIR", None)
        else:
            os.environ["PACE_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module's studies (each its own experiment): schema creation is slow."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str, name: str):
    c = _client(uri)
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return c, parents, children


def _steps(c, run_id: str, key: str = "acc_all") -> list[int]:
    return [m.step for m in sorted(c.get_metric_history(run_id, key), key=lambda m: m.step)]


# ---------------------------------------------------------------------------------------------
# Before any trial: spec errors


@pytest.mark.parametrize("patch, message", [
    ({"serach": {}}, "unknown key 'serach'; did you mean 'search'?"),
    ({"search": {"method.lr": {"type": "log", "low": 0.0, "high": 1.0}}}, "log needs low > 0"),
    ({"search": {"method.lr": {"type": "float", "low": 2.0, "high": 1.0}}}, "low (2) must be < high (1)"),
    ({"search": {"method.name": {"type": "categorical", "values": []}}}, "categorical needs a non-empty"),
    ({"search": {"method.lr": {"type": "log", "low": 0.1, "hihg": 1.0}}}, "did you mean 'high'?"),
    ({"search": {"method.lrr": {"type": "log", "low": 0.01, "high": 1.0}}},
     "unknown key 'method.lrr'; did you mean 'lr'?"),
    ({"search": {"method.epochs": {"type": "int", "low": 1, "high": 5}},
      "base": {**BASE, "scenario": {"num_sessions": 3}}},
     "objective 'val_last_accuracy' is measured on a validation split"),
    ({"objective": "val_last_acc"}, "did you mean 'val_last_accuracy'?"),
    ({"searcher": {"type": "optuna", "sed": 1}}, "unknown key 'searcher.sed'; did you mean 'seed'?"),
    ({"search": {"method.lr": {"type": "log", "low": 0.01, "high": 1.0, "when": {"method.nam": "joint"}}}},
     "when refers to 'method.nam'"),
])
def test_bad_sweep_specs_fail_before_any_trial(tmp_path, capsys, patch, message):
    spec = _write(tmp_path / "s.yaml", {**_sweep_spec(tmp_path, "bad"), **patch})
    assert main(["sweep", str(spec)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_bad_ablation_spec_and_conditional_sampling(tmp_path, capsys):
    spec = {"name": "abl", "base": BASE, "variants": {"a": {"method.epochs": 0}}, "seeds": [0]}
    assert main(["ablate", str(_write(tmp_path / "a.yaml", spec))]) == 2
    assert "method.epochs" in capsys.readouterr().err
    spec = {"name": "abl", "base": BASE, "variants": {"a": {}}, "sedes": [0]}
    assert main(["ablate", str(_write(tmp_path / "a.yaml", spec))]) == 2
    assert "did you mean 'seeds'?" in capsys.readouterr().err
    # conditional params are only set when their condition holds, and a method switch drops the
    # base method's own fields (simplecil has no 'epochs')
    spec, base, _ = load_sweep_spec(_write(tmp_path / "s.yaml", _sweep_spec(tmp_path, "ok")))
    space = SearchSpace(spec.search, base)
    grid_like = [space.sample(_Fixed({"method.name": m})) for m in ("joint", "simplecil")]
    assert set(grid_like[0]) == {"method.name", "method.lr", "method.epochs"}
    assert grid_like[1] == {"method.name": "simplecil"}
    assert compose(base, grid_like[1])["method"] == {"name": "simplecil"}


class _Fixed:
    def __init__(self, values):
        self.values = values

    def suggest_categorical(self, name, choices):
        return self.values[name]

    def suggest_float(self, name, low, high, **kw):
        return low

    def suggest_int(self, name, low, high, step=1):
        return low


def test_validation_hook_uses_only_val_splits(tmp_path):
    cfg = validate_config({**BASE, "method": {"name": "simplecil"}, "runtime": {"progress": False}})
    runner = Runner(cfg, tmp_path)
    runner.prepare()
    hook = ValidationHook()
    runner.analysis_hooks = [hook]
    runner.run()
    for t, s in enumerate(runner.scenario.sessions):
        assert s.val and not set(s.val) & set(s.test) and not set(s.val) & set(s.train)
        rows = [i for x in runner.scenario.sessions[: t + 1] for i in x.val]
        split = runner.split(rows)
        pred = runner.learner.predict(split.x).argmax(-1)
        if t == len(runner.scenario.sessions) - 1:  # the learner's state now is that after the last session
            assert runner.results[t].analysis["val_acc_all"] == pytest.approx(
                100.0 * (pred == split.y).float().mean().item())
    assert all("val_acc_all" in r.metrics() for r in runner.results)


# ---------------------------------------------------------------------------------------------
# Sweeps on Ray


def test_sweep_end_to_end_optuna_mlflow_and_retry(ray_address, store, tmp_path, monkeypatch):
    """Seeded Optuna proposals, one MLflow child per trial with steps 0..T-1, and a trial that fails
    after session 2 is retried from its checkpoint without duplicating the step it had logged."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "fault-claimed"
    path = _write(tmp_path / "s.yaml", _sweep_spec(tmp_path, "e2e", store))
    res = run_study("sweep", str(path), hooks=faults.hooks({"fail_after_session": 2, "marker": str(marker)}))
    assert not res.interrupted and res.num_errors == 0 and marker.exists()
    assert len(res.rows) == 4 and all(r["status"] == "finished" and r["sessions"] == "3/3" for r in res.rows)

    # proposals: differ across trials, follow the conditions, and repeat with the same seed
    proposed = [r["params"] for r in res.rows]
    assert len({json.dumps(p, sort_keys=True) for p in proposed}) == 4
    for p in proposed:
        assert ("method.lr" in p) == (p["method.name"] == "joint")
    spec, base, _ = load_sweep_spec(path)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    replay = OptunaSearch(space=SearchSpace(spec.search, base), metric=spec.objective, mode="max",
                          sampler=optuna.samplers.TPESampler(seed=spec.searcher.seed))
    assert [replay.suggest(f"r{i}") for i in range(4)] == proposed

    c, parents, children = _runs(res.tracking_uri, "e2e")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].info.run_id == res.parent_run_id and "best_val_last_accuracy" in parents[0].data.metrics
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    by_name = {r.info.run_name: r for r in children}
    assert sorted(by_name) == [r["trial"] for r in res.rows]
    for row in res.rows:
        run = by_name[row["trial"]]
        assert run.data.tags["mlflow.parentRunId"] == res.parent_run_id
        assert _steps(c, run.info.run_id) == [0, 1, 2]  # exactly once each, also for the retried trial
        assert _steps(c, run.info.run_id, "val_acc_all") == [0, 1, 2]
        assert run.data.metrics["val_last_accuracy"] == pytest.approx(row["objective"])
        assert run.data.metrics["last_accuracy"] == pytest.approx(row["last_accuracy"])
        assert run.data.params["method.name"] == row["params"]["method.name"]
        assert run.data.params["scenario.val_fraction"] == "0.25"
        for tag in ("method", "backbone", "benchmark", "seed", "variant", "git_commit"):
            assert run.data.tags[tag]
        arts = {a.path for a in c.list_artifacts(run.info.run_id)}
        assert {"accuracy_matrix.csv", "metrics.json", "config.yaml", "splits"} <= arts

    # the failed trial resumed from its session-1 checkpoint (Tune counts iterations since restore)
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(res.experiment_path)
    restored = [t for t in analysis.trials if t.last_result.get("iterations_since_restore") != 3]
    assert len(restored) == 1 and restored[0].last_result["iterations_since_restore"] == 2
    assert restored[0].last_result["training_iteration"] == 3
    # the run's outputs are persisted beside Tune's checkpoints
    assert (Path(res.experiment_path) / res.rows[0]["trial"] / "run" / "accuracy_matrix.csv").is_file()
    assert (Path(res.experiment_path) / "summary.csv").read_text().count("\n") == 5


def test_retry_resumes_from_the_last_checkpoint_when_sessions_between_were_not_checkpointed(
        ray_address, store, tmp_path, monkeypatch):
    """runtime.checkpoint_every: 2 over 4 sessions: the trial fails after session 3 (logged, never
    checkpointed), Tune restores the session-2 checkpoint, session 3 is recomputed and logged once, and
    the result is an uninterrupted run's."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "fault-claimed"
    base = {**BASE, "data": {**BASE["data"], "synthetic_classes": 8}, "scenario": {"num_sessions": 4},
            "runtime": {"num_threads": 1, "checkpoint_every": 2}}
    spec = {"name": "ckpt-every", "base": base, "objective": "last_accuracy", "variants": {"joint": {}},
            "seeds": [0], "max_failures": 1, "storage_path": str(tmp_path / "ray_results"), "tracking_uri": store}
    res = run_study("ablation", str(_write(tmp_path / "a.yaml", spec)),
                    hooks=faults.hooks({"fail_after_session": 3, "marker": str(marker)}))
    assert marker.exists() and res.num_errors == 0 and res.rows[0]["sessions"] == "4/4"
    c, _, children = _runs(res.tracking_uri, "ckpt-every")
    assert _steps(c, children[0].info.run_id) == [0, 1, 2, 3]
    from ray.tune import ExperimentAnalysis

    trial = ExperimentAnalysis(res.experiment_path).trials[0]
    assert trial.last_result["iterations_since_restore"] == 2  # sessions 3 and 4 after the restore
    direct = Runner(validate_config({**base, "runtime": {"num_threads": 1}}), tmp_path / "direct").run()
    run_dir = Path(res.experiment_path) / res.rows[0]["trial"] / "run"
    assert (run_dir / "accuracy_matrix.csv").read_bytes() == (tmp_path / "direct" / "accuracy_matrix.csv").read_bytes()
    assert res.rows[0]["last_accuracy"] == pytest.approx(direct["last_accuracy"])


def test_ablation_grid_tags_and_seeds(ray_address, store, tmp_path):
    spec = {
        "name": "abl", "base": BASE, "objective": "last_accuracy",
        "variants": {"ncm": {"method.name": "simplecil"}, "joint20": {"method.epochs": 20}},
        "benchmarks": {"syn-fine": {}},
        "seeds": [0, 1], "max_concurrent": 2,
        "storage_path": str(tmp_path / "ray_results"), "tracking_uri": store,
    }
    res = run_study("ablation", str(_write(tmp_path / "a.yaml", spec)))
    assert res.num_errors == 0 and len(res.rows) == 4
    c, parents, children = _runs(res.tracking_uri, "abl")
    assert len(parents) == 1 and parents[0].data.tags["pace.kind"] == "ablation"
    got = sorted((r.data.tags["variant"], r.data.tags["seed"], r.data.tags["benchmark"], r.data.tags["backbone"],
                  r.data.tags["method"], r.data.params["seeds.class_order"], r.data.params["seeds.init"])
                 for r in children)
    assert got == [("joint20", "0", "syn-fine", "logmel-stats", "joint", "0", "0"),
                   ("joint20", "1", "syn-fine", "logmel-stats", "joint", "1", "1"),
                   ("ncm", "0", "syn-fine", "logmel-stats", "simplecil", "0", "0"),
                   ("ncm", "1", "syn-fine", "logmel-stats", "simplecil", "1", "1")]
    assert all(r.info.status == "FINISHED" and _steps(c, r.info.run_id) == [0, 1, 2] for r in children)
    assert sorted(r["trial"] for r in res.rows) == sorted(r.info.run_name for r in children)
    assert "ncm" in res.rows[0]["trial"] or "joint20" in res.rows[0]["trial"]


def test_ablation_variants_downstream_of_fsa_share_it_and_the_study_says_so(ray_address, store, tmp_path):
    """Two RanPAC variants that differ only in the analytic head, run at once: one trial computes the
    first-session adaptation, the other waits for it (single flight) and loads it."""
    base = {**BASE, "backbone": {"name": "eat-tiny", "target_frames": 48},
            "method": {"name": "ranpac", "fsa": {"train": {"epochs": 1}}, "analytic": {"proj_dim": 64}},
            "runtime": {"num_threads": 1, "batch_size": 8}}
    spec = {"name": "share", "base": base, "objective": "last_accuracy",
            "variants": {"ridge_select": {}, "ridge_fixed": {"method.analytic.ridge": "fixed"}},
            "seeds": [0], "max_concurrent": 2,
            "storage_path": str(tmp_path / "ray_results"), "tracking_uri": store}
    lines = []
    res = run_study("ablation", str(_write(tmp_path / "s.yaml", spec)), out=lines.append)
    assert res.num_errors == 0 and len(res.rows) == 2
    assert sorted((r["stages_computed"], r["stages_reused"]) for r in res.rows) == [(0, 1), (1, 0)]
    assert any("shared work: 1 stage(s) computed, 1 loaded" in line for line in lines)
    # the study's cost is printed: its wall time and the sum of its trials' times, to the tenth of a minute
    took = [line for line in lines if line.startswith("took ")]
    trial_min = sum(r["result"]["time_total_s"] for r in res.rows) / 60
    assert len(took) == 1 and took[0].endswith(f", {trial_min:.1f} trial-minutes"), lines[-4:]


def _checkpointed(exp: Path) -> set[str]:
    """Trials whose checkpoint Tune's saved experiment state knows about (what a restore resumes from)."""
    from ray.tune import ExperimentAnalysis

    try:
        return {str(t) for t in ExperimentAnalysis(str(exp)).trials if t.checkpoint is not None}
    except Exception:  # not written yet, or caught mid-write
        return set()


def _kill_frozen(proc, exp: Path, frozen: Path) -> None:
    """SIGKILL the driver once it is parked between Tune steps and its saved state has reached the
    experiment folder whole (Tune uploads it in the background): a kill, not a torn file."""
    from pace.study.state import damaged_tune_state

    try:
        _wait(frozen, proc)
        wait_for(lambda: not damaged_tune_state(str(exp)) and list(exp.glob("experiment_state-*.json")),
                 f"a whole experiment state in {exp}", alive=proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _wait(marker: Path, proc) -> None:
    """Until a parked trial has written its marker (the driver must still be alive)."""
    wait_for(marker.exists, f"{marker.name} (a parked trial or a frozen driver)", timeout_s=600, alive=proc)


def test_resume_after_killed_driver(ray_address, store, tmp_path):
    """SIGKILL the `pace sweep` driver while Tune's saved experiment state names an older checkpoint
    of the first trial than the one on disk, then --resume: it goes on from its newest checkpoint (no session
    recomputed), every trial finishes once, runs continue (no duplicate steps, no RUNNING left), and
    the results equal fresh runs."""
    spec = _sweep_spec(tmp_path, "resume", store, num_samples=3, max_concurrent=1,
                       search={"method.lr": {"type": "log", "low": 1e-3, "high": 0.3}})
    path = _write(tmp_path / "r.yaml", spec)
    m1, r1, m2 = tmp_path / "parked-1", tmp_path / "release-1", tmp_path / "parked-2"
    blocks = [{"after": 2, "marker": str(m1), "release": str(r1)},  # the first trial, twice
              {"after": 3, "marker": str(m2), "release": str(tmp_path / "never")}]
    frozen = tmp_path / "frozen"
    # TUNE_GLOBAL_CHECKPOINT_S=0: Tune saves its experiment state at every step
    env = faults.env({"blocks": blocks, "freeze_driver": {"when": str(m2), "frozen": str(frozen)}},
                     TUNE_GLOBAL_CHECKPOINT_S="0")
    proc = subprocess.Popen([sys.executable, "-m", "pace.cli", "sweep", str(path), "--address", ray_address],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    exp = tmp_path / "ray_results" / "resume"
    try:
        _wait(m1, proc)  # session 1 reported (checkpoint_000000), t000 parked after session 2

        def whole_state() -> dict:  # a whole state file (read while Tune may be rewriting it) naming that checkpoint
            snap = {p: p.read_bytes() for p in exp.glob("experiment_state-*.json")}
            try:
                return snap if snap and all(json.loads(b) for b in snap.values()) and _checkpointed(exp) else {}
            except ValueError:
                return {}

        lagging = wait_for(whole_state, "Tune's saved state naming the first checkpoint", alive=proc)
        r1.touch()
    finally:  # then: session 2 reported (checkpoint_000001), parked after session 3, the driver frozen
        _kill_frozen(proc, exp, frozen)
    (first,) = [p.parent.parent.name for p in exp.glob("t*/checkpoint_000001/checkpoint.pt")]
    for p in exp.glob("experiment_state-*.json"):  # the state as saved before checkpoint_000001
        p.unlink()
    for p, data in lagging.items():
        p.write_bytes(data)
    reported = {first}
    c, _, before = _runs(store, "resume")  # what the journal had sent before the kill (RUNNING)

    res = run_study("sweep", str(path), StudyOptions(resume=True))
    assert not res.interrupted and res.num_errors == 0
    # trials that had reported went on from their checkpoint, not from session 1
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(res.experiment_path).trials
    assert reported <= {str(t) for t in trials}
    for t in trials:
        if str(t) in reported:  # from checkpoint_000001 (2 sessions), not the state's checkpoint_000000
            assert t.last_result["iterations_since_restore"] == 1 and t.last_result["sessions_done"] == 3
    assert len(res.rows) == 3 and all(r["status"] == "finished" for r in res.rows)
    c, parents, children = _runs(res.tracking_uri, "resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and {r.info.run_id for r in before} <= {r.info.run_id for r in children}
    for r in children:
        assert r.info.status == "FINISHED" and _steps(c, r.info.run_id) == [0, 1, 2]
    # same numbers as an uninterrupted run of each trial's config
    for row in res.rows:
        overrides, _ = split_trial_config(row["params"])
        cfg = validate_config(compose(spec["base"], {**overrides, "runtime.progress": False}))
        fresh = Runner(cfg, tmp_path / "fresh" / row["trial"]).run()
        assert row["last_accuracy"] == pytest.approx(fresh["last_accuracy"])
        assert row["average_incremental_accuracy"] == pytest.approx(fresh["average_incremental_accuracy"])


def test_resume_needs_a_study_and_refuses_to_overwrite(ray_address, tmp_path, capsys):
    path = _write(tmp_path / "s.yaml", _sweep_spec(tmp_path, "none"))
    assert main(["sweep", str(path), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    (tmp_path / "ray_results" / "none").mkdir(parents=True)
    assert main(["sweep", str(path)]) == 2
    assert "pass --resume to continue it, --fresh to start over" in capsys.readouterr().err



def test_backbone_fallback(tmp_path):
    spec = _sweep_spec(tmp_path, "fb", backbone_fallback=[
        {"name": "whisper-tiny", "requires": ["no_such_weights_package"], "backbone": {"seconds": 1.0}},
        {"name": "logmel-stats", "backbone": {"target_frames": 96}}])
    spec, base, note = load_sweep_spec(_write(tmp_path / "s.yaml", spec))
    assert base["backbone"] == {"name": "logmel-stats", "target_frames": 96}
    assert "fallback" in note and "whisper-tiny (needs no_such_weights_package)" in note


def test_shipped_specs_validate():
    spec, base, note = load_sweep_spec(REPO / "sweeps" / "quickstart.yaml")
    assert spec.samples == 6 and spec.max_concurrent == 2 and base["scenario"]["val_fraction"] > 0
    assert note.startswith("backbone: ") and base["backbone"]["name"] in ("whisper-tiny", "logmel-stats")
    from pace.study.spec import load_ablation_spec

    spec, base, _, trials = load_ablation_spec(REPO / "sweeps" / "paper_table2.yaml")
    assert len(trials) == len(spec.variants) * 6 * 3 and spec.resources.gpu == 1
    assert {t["labels"]["benchmark"] for t in trials} == {"esc50", "us8k", "sc2", "timit2", "timit3", "vocalset"}


def test_ctrl_c_leaves_no_run_running(ray_address, store, tmp_path):
    """Ctrl-C (SIGINT) on `pace sweep` while the first trial is parked after session 2 (session 1 reported):
    Tune stops gracefully, the cut-off trial's run and the parent are KILLED, nothing stays RUNNING,
    and the exit code says interrupted."""
    spec = _sweep_spec(tmp_path, "sigint", store, num_samples=2, max_concurrent=1,
                       search={"method.lr": {"type": "log", "low": 1e-3, "high": 0.3}})
    path = _write(tmp_path / "c.yaml", spec)
    parked = tmp_path / "parked"
    env = faults.env({"blocks": [{"after": 2, "marker": str(parked), "release": str(tmp_path / "never")}]})
    proc = subprocess.Popen([sys.executable, "-m", "pace.cli", "sweep", str(path), "--address", ray_address],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait(parked, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted" in out and "--resume" in out
    table = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| trial")]
    assert len(table) == 2 and "| interrupted " in table[0] and "| not started " in table[1], out[-3000:]
    assert "TensorBoard" not in out and "operation took" not in out and "Token authentication" not in out
    c, parents, children = _runs(store, "sigint")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert children and all(r.info.status in ("KILLED", "FINISHED") for r in children)
    assert any(r.info.status == "KILLED" for r in children)


def _decisions(exp: Path) -> dict[str, dict[float, str]]:
    """ASHA's journaled decisions by trial name (trial ids differ between studies)."""
    from ray.tune import ExperimentAnalysis

    from pace.schedulers import JOURNAL_FILE, read_decisions

    names = {t.trial_id: str(t) for t in ExperimentAnalysis(str(exp)).trials}
    return {names[k]: v for k, v in read_decisions(str(exp / JOURNAL_FILE)).items()}


def _leftover_work_dirs(exp: Path) -> list[Path]:
    import tempfile

    from ray.tune import ExperimentAnalysis

    ids = {t.trial_id for t in ExperimentAnalysis(str(exp)).trials}
    root = Path(tempfile.gettempdir()) / "pace-trials"
    return [p for p in root.rglob("*") if p.name in ids] if root.is_dir() else []


@pytest.mark.slow
def test_killed_asha_sweep_resumes_with_the_same_decisions(ray_address, store, tmp_path):
    """ASHA stops t001 before the driver is SIGKILLed (while t002 is parked after its first session)
    and must stop t002 and t003 after --resume, exactly as an uninterrupted sweep does; no trial work
    folder is left behind."""
    spec = _sweep_spec(tmp_path, "asha", store, num_samples=1, max_concurrent=1,
                       search={"method.lr": {"type": "categorical", "values": [0.1, 1e-7, 2e-7, 3e-7]}},
                       searcher={"type": "grid"}, scheduler={"type": "asha", "grace_period": 1,
                                                             "reduction_factor": 2})
    path = _write(tmp_path / "asha.yaml", spec)
    reference = run_study("sweep", str(_write(tmp_path / "ref.yaml", {**spec, "name": "asha-ref"})))
    expected = [(r["trial"], r["status"], r["sessions"]) for r in reference.rows]
    assert [e[1] for e in expected] == ["finished", "stopped early", "stopped early", "stopped early"]

    blocked, frozen = tmp_path / "blocked", tmp_path / "frozen"
    # TUNE_GLOBAL_CHECKPOINT_S=0: the saved state knows every trial so far (a lag is the other test's case)
    env = faults.env({"blocks": [{"trial": "t002", "after": 1, "marker": str(blocked),
                                  "release": str(tmp_path / "never")}],
                      "freeze_driver": {"when": str(blocked), "frozen": str(frozen)}}, TUNE_GLOBAL_CHECKPOINT_S="0")
    proc = subprocess.Popen([sys.executable, "-m", "pace.cli", "sweep", str(path), "--address", ray_address],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    exp = tmp_path / "ray_results" / "asha"
    _kill_frozen(proc, exp, frozen)  # t000 finished, t001 stopped, t002 parked: now kill the driver
    assert _decisions(exp)["t001"] == {1.0: "STOP"}

    res = run_study("sweep", str(path), StudyOptions(resume=True))
    assert [(r["trial"], r["status"], r["sessions"]) for r in res.rows] == expected
    assert _decisions(exp) == _decisions(Path(reference.experiment_path))
    assert _leftover_work_dirs(exp) == [] and _leftover_work_dirs(Path(reference.experiment_path)) == []
    c, parents, children = _runs(store, "asha")
    assert [p.info.status for p in parents] == ["FINISHED"]
    instance = json.loads((exp / "pace_study.json").read_text())["instance"]  # kept by --resume
    assert {r.data.tags["pace.study_instance"] for r in parents + children} == {instance}
    assert sorted((r.info.run_name, r.info.status, tuple(_steps(c, r.info.run_id))) for r in children) == \
        [("t000", "FINISHED", (0, 1, 2)), ("t001", "FINISHED", (0,)), ("t002", "FINISHED", (0,)),
         ("t003", "FINISHED", (0, 1))]


def test_fresh_starts_a_new_study_instance(ray_address, store, tmp_path):
    """Every run of a study carries its instance id (pace_study.json, kept by --resume); --fresh starts
    a new instance, and marks the earlier parent run archived, so the two stay distinguishable."""
    spec = _sweep_spec(tmp_path, "inst", store, num_samples=1, max_concurrent=1,
                       search={"method.name": {"type": "categorical", "values": ["simplecil"]}})
    path = _write(tmp_path / "i.yaml", spec)
    state = tmp_path / "ray_results" / "inst" / "pace_study.json"
    first = run_study("sweep", str(path))
    old = json.loads(state.read_text())["instance"]
    second = run_study("sweep", str(path), StudyOptions(fresh=True))
    new = json.loads(state.read_text())["instance"]
    assert old and new and old != new
    c, parents, children = _runs(store, "inst")
    by_id = {p.info.run_id: p for p in parents}
    assert by_id[first.parent_run_id].data.tags["pace.study_instance"] == old
    assert by_id[first.parent_run_id].data.tags["pace.archived"] == "true"
    assert by_id[second.parent_run_id].data.tags["pace.study_instance"] == new
    assert "pace.archived" not in by_id[second.parent_run_id].data.tags
    assert sorted((r.data.tags["mlflow.parentRunId"], r.data.tags["pace.study_instance"]) for r in children) == \
        sorted([(first.parent_run_id, old), (second.parent_run_id, new)])


@pytest.mark.slow
def test_tracking_outage_never_stops_the_study(ray_address, tmp_path, capsys):
    """The tracking server goes away while the first trial is parked after session 1: both trials
    finish anyway, their writes are kept in the study's journal, and once the server is back
    `pace tracking sync` sends them: one run per trial, steps 0..2 once each, nothing RUNNING."""
    from test_study_faults import MlflowServer

    server = MlflowServer(tmp_path / "server")
    server.start()
    try:
        _outage_study(server, ray_address, tmp_path)
    finally:
        server.stop()  # also when an assertion failed: no server left behind


def _outage_study(server, ray_address: str, tmp_path: Path) -> None:
    spec = _sweep_spec(tmp_path, "outage", server.uri, num_samples=2, max_concurrent=1,
                       search={"method.lr": {"type": "log", "low": 1e-3, "high": 0.3}})
    path = _write(tmp_path / "o.yaml", spec)
    parked, release = tmp_path / "parked", tmp_path / "release"
    env = faults.env({"blocks": [{"after": 1, "marker": str(parked), "release": str(release)}]},
                     PACE_TRACKING_FLUSH_S="2")
    proc = subprocess.Popen([sys.executable, "-m", "pace.cli", "sweep", str(path), "--address", ray_address],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait(parked, proc)
        server.down()
        release.touch()
        out = proc.communicate(timeout=600)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "2 trials, 0 failed" in out and "pace tracking sync" in out, out[-3000:]

    server.up()
    exp = tmp_path / "ray_results" / "outage"
    assert main(["tracking", "sync", str(exp)]) == 0
    assert main(["tracking", "sync", str(exp)]) == 0  # nothing left: sends nothing twice
    c, parents, children = _runs(server.uri, "outage")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert "best_val_last_accuracy" in parents[0].data.metrics
    assert len(children) == 2
    for r in children:
        assert r.info.status == "FINISHED" and _steps(c, r.info.run_id) == [0, 1, 2]
        assert len(c.get_metric_history(r.info.run_id, "last_accuracy")) == 1
        assert "accuracy_matrix.csv" in {a.path for a in c.list_artifacts(r.info.run_id)}


def test_bad_options_resources_and_data_fail_before_any_trial(ray_address, tmp_path, capsys):
    """Command-line numbers, resources no node has, an unreachable tracking server and a variant
    whose classes do not fill its sessions: one `pace: error:` line each, exit 2, no study left."""
    from test_study_faults import _free_port

    path = _write(tmp_path / "s.yaml", _sweep_spec(tmp_path, "bad"))
    for flag, value in (("--num-samples", "0"), ("--num-samples", "-1"), ("--max-concurrent", "-3")):
        assert main(["sweep", str(path), flag, value]) == 2
        assert f"{flag}: expected an integer >= 1, got {int(value)}" in capsys.readouterr().err
    gpu = _write(tmp_path / "g.yaml", _sweep_spec(tmp_path, "bad", resources={"gpu": 1}))
    assert main(["sweep", str(gpu)]) == 2
    assert "resources.gpu: each trial asks for 1 GPU, but no node of the Ray cluster has that many" \
        in capsys.readouterr().err
    # nothing listens there: refused at once by the pre-flight probe (pytest-timeout bounds a hang)
    assert main(["sweep", str(path), "--tracking-uri", f"http://127.0.0.1:{_free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "is unreachable" in err and "--no-tracking" in err
    spec = {"name": "bad", "base": {**BASE, "data": {**BASE["data"], "synthetic_classes": 4},
                                    "scenario": {"num_sessions": 2}},
            "variants": {"ok": {}, "three": {"scenario.num_sessions": 3}},
            "storage_path": str(tmp_path / "ray_results"), "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    assert main(["ablate", str(_write(tmp_path / "a.yaml", spec))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pace: error:") and "variant=three" in err and "4 classes do not split into 3" in err
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------------------------------------
# Entry points: resume during an outage, the commands messages name, joining a cluster


def _hint(err: str) -> list[str]:
    """The arguments of the `pace ...` command an error message names."""
    found = re.search(r"`pace ([^`]+)`", err)
    assert found, err
    return shlex.split(found.group(1))


def test_resume_messages_name_commands_the_parser_knows(ray_address, tmp_path, capsys):
    """Nothing there yet, then a driver killed before Tune's first save: each --resume refusal names a
    command that parses as the same study's command, and the second one starts the study over."""
    spec = {"name": "early", "base": BASE, "objective": "last_accuracy", "variants": {"joint": {}}, "seeds": [0],
            "track": False, "storage_path": str(tmp_path / "ray_results")}
    path = _write(tmp_path / "a.yaml", spec)
    assert main(["ablate", str(path), "--resume"]) == 2
    args = build_parser().parse_args(_hint(capsys.readouterr().err))
    assert (args.func.__name__, args.spec, args.resume, args.fresh) == ("cmd_ablate", str(path), False, False)

    when, frozen = tmp_path / "now", tmp_path / "frozen"
    when.touch()  # the driver parks at Tune's first step, before Tune has saved anything
    proc = subprocess.Popen([sys.executable, "-m", "pace.cli", "ablate", str(path), "--address", ray_address],
                            cwd=tmp_path, env=faults.env({"freeze_driver": {"when": str(when), "frozen": str(frozen)}}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait(frozen, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    exp = tmp_path / "ray_results" / "early"
    assert (exp / "pace_study.json").is_file() and not list(exp.glob("experiment_state-*.json"))
    assert main(["ablate", str(path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "before Tune saved its first state" in err
    hint = _hint(err)
    args = build_parser().parse_args(hint)
    assert (args.func.__name__, args.spec, args.fresh) == ("cmd_ablate", str(path), True)
    assert main(hint) == 0


def test_joining_a_cluster_that_does_not_answer_ends_at_its_deadline(tmp_path):
    """--address where nothing listens: one error line naming the address and what to check, once
    --connect-timeout has passed (not Ray's minutes of retries); nothing is left behind."""
    from test_study_faults import _free_port

    path = _write(tmp_path / "s.yaml", _sweep_spec(tmp_path, "far"))
    address = f"127.0.0.1:{_free_port()}"
    proc = subprocess.run([sys.executable, "-m", "pace.cli", "sweep", str(path), "--address", address,
                           "--connect-timeout", "1"], cwd=tmp_path, env=faults.env(), capture_output=True,
                          text=True, timeout=600)  # a safety net only: the deadline under test is 1 s
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"pace: error: --address {address}: no Ray cluster answered at ")
    assert "within 1 s" in lines[0] and "ray status" in lines[0] and "--connect-timeout" in lines[0]
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_resume_during_a_tracking_outage_goes_on_with_the_journal(ray_address, tmp_path, monkeypatch):
    """An ablation interrupted (Ctrl-C) while its tracking server was up, resumed while the server is
    down: the resume says so, finishes every trial, keeps the writes in the study's journal, and
    `pace tracking sync` sends them once the server is back: every run FINISHED, steps once each."""
    from test_study_faults import MlflowServer

    server = MlflowServer(tmp_path / "server")
    server.start()
    try:
        _resume_during_outage(server, ray_address, tmp_path, monkeypatch)
    finally:
        server.stop()  # also when an assertion failed: no server left behind


def _resume_during_outage(server, ray_address: str, tmp_path: Path, monkeypatch) -> None:
    spec = {"name": "outage-resume", "base": BASE, "objective": "last_accuracy",
            "variants": {"a": {}, "b": {"method.epochs": 10}}, "seeds": [0], "max_concurrent": 1,
            "storage_path": str(tmp_path / "ray_results"), "tracking_uri": server.uri}
    path = _write(tmp_path / "o.yaml", spec)
    parked = tmp_path / "parked"
    env = faults.env({"blocks": [{"after": 2, "marker": str(parked), "release": str(tmp_path / "never")}]})
    proc = subprocess.Popen([sys.executable, "-m", "pace.cli", "ablate", str(path), "--address", ray_address],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait(parked, proc)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=600)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]

    server.down()
    monkeypatch.setenv("PACE_TRACKING_FLUSH_S", "2")  # the server stays down: do not wait a minute for it
    lines: list[str] = []
    res = run_study("ablation", str(path), StudyOptions(resume=True), out=lines.append)
    text = "\n".join(lines)
    assert not res.interrupted and res.num_errors == 0 and len(res.rows) == 2, text
    assert all(r["status"] == "finished" and r["sessions"] == "3/3" for r in res.rows), text
    exp = tmp_path / "ray_results" / "outage-resume"
    assert f"tracking: server {server.uri} is unreachable" in text and "resuming anyway" in text
    assert str(exp / "tracking-journal") in text and "did not answer" in text

    server.up()
    assert main(["tracking", "sync", str(exp)]) == 0
    c, parents, children = _runs(server.uri, "outage-resume")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 2
    for r in children:
        assert r.info.status == "FINISHED" and _steps(c, r.info.run_id) == [0, 1, 2]
