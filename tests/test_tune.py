"""``pace tune``: the equal-budget protocol (pace.study.tune).

Pure parts on hand-made inputs (the objective, ranking, flags kept out of it, the defaults file round
trip, pinned shipped defaults, every method's declared space), then one small tune on Ray: synthetic
audio, log-mel statistics, two methods x two benchmarks x three trials.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from pace.config import MethodConfig, apply_backbone_defaults, backbone_defaults, compose, validate_config
from pace.study import SpecError
from pace.study.space import SearchSpace
from pace.study.tune import (TuneFile, flags_of, load_tune_file, method_space, outcome_lines, pinned_defaults,
                             provenance, ranked, winning_values, write_defaults)
from pace.study.tune_trial import aggregate

from conftest import REPO

SYN_A = {"data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 6, "synthetic_clips_per_class": 8},
         "scenario.num_sessions": 3}
SYN_B = {"data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 4, "synthetic_clips_per_class": 8},
         "scenario.num_sessions": 2}


def _file(**kw) -> dict:
    d = {"name": "tt", "backbones": {"logmel-stats": {"target_frames": 112}},
         "base": {"scenario": {"val_fraction": 0.25}, "runtime": {"num_threads": 1}},
         "methods": {"joint": {"method.epochs": 20}, "acl": {"method.analytic.proj_dim": 256}},
         "benchmarks": {"syn-a": SYN_A, "syn-b": SYN_B}, "trials": 3, "max_concurrent": 2, "max_failures": 0}
    d.update(kw)
    return d


def _row(trial: str, objective, params=None, status="finished", **result) -> dict:
    return {"trial": trial, "status": status, "objective": objective, "params": params or {}, "labels": {},
            "sessions": "5/5", "result": result}


# ---------------------------------------------------------------------------------------------
# The objective and the ranking


def test_aggregate_mean_and_worst():
    assert aggregate([80.0, 90.0, 100.0], "mean") == 90.0
    assert aggregate([80.0, 90.0, 100.0], "worst") == 80.0
    assert math.isnan(aggregate([], "mean"))
    with pytest.raises(ValueError, match="'best'"):
        aggregate([1.0], "best")


def test_flags_stay_out_of_the_ranking():
    # t001 scores higher but raised head_acc_fell on one benchmark; it still wins: flags describe
    rows = [_row("t000", 80.0, {"method.lr": 0.1}),
            _row("t001", 85.0, {"method.lr": 0.2}, **{
                "val.a": 90.0, "val.b": 80.0, "head_acc_fell.a": 1.0, "adaptation_inert.b": 1.0,
                "inert.b": "msa: inert in all 2 session(s) it adapted, which took 11.4 s of learner time"}),
            _row("t002", 85.0, {"method.lr": 0.3}),  # tied with t001: the earlier trial wins
            _row("t003", 99.0, status="stopped early"),  # did not finish every benchmark: not ranked
            _row("t004", None, status="failed")]
    assert [r["trial"] for r in ranked(rows)] == ["t001", "t002", "t000"]
    assert flags_of(rows[1], ["a", "b"]) == {"a": ["head_acc_fell"],
                                             "b": ["adaptation_inert (msa: 2 sessions, 11.4 s)"]}
    lines = outcome_lines(rows, ["a", "b"])
    assert lines[0].startswith("best trial: t001 (val_objective 85.00)")
    assert lines[1].startswith("  runner-up t002: 0.00 points") and lines[2].startswith("  runner-up t000: -5.00")
    assert lines[-1] == ("  the winner is flagged (described, not ranked): a: head_acc_fell; "
                         "b: adaptation_inert (msa: 2 sessions, 11.4 s)")


def test_winner_values_and_provenance():
    tf = TuneFile.model_validate(_file())
    spec = tf.method_spec("joint", "sweeps/tune-x.yaml")
    rows = [_row("t000", 70.0, {"method.lr": 0.01, "method.epochs": 30}),
            _row("t001", 75.5, {"method.lr": 0.02, "method.epochs": 40}, **{"val.syn-a": 71.0, "val.syn-b": 80.0,
                                                                             "adaptation_inert.syn-b": 1.0})]
    assert winning_values(spec, rows) == {"method.lr": 0.02, "method.epochs": 40}
    text = provenance(spec, rows, "abc123", date="2026-12-07")
    for part in ("pace tune sweeps/tune-x.yaml --backbone logmel-stats", "study tt-logmel-stats-joint",
                 "MLflow parent run abc123", "2026-12-07",
                 "3 trials (the budget of every method in the file", "seeded random search",
                 "the mean of val_last_accuracy on the VALIDATION splits of syn-a, syn-b",
                 "best trial t001 75.50 (syn-a 71.00, syn-b 80.00)", "runner-up t000 -5.50 points",
                 "flagged on syn-b: adaptation_inert"):
        assert part in text, part
    with pytest.raises(SpecError, match="no trial finished"):
        winning_values(spec, [_row("t000", None, status="failed")])


# ---------------------------------------------------------------------------------------------
# The tune file and the method specs


def test_every_method_gets_the_same_budget_and_its_own_space():
    tf = TuneFile.model_validate(_file(methods=["joint", "acl"], trials=5))
    specs = [tf.method_spec(m, "f.yaml") for m in tf.methods]
    assert [s.samples for s in specs] == [5, 5]
    assert {s.searcher.seed for s in specs} == {0}
    assert set(specs[0].search) == {"method.lr", "method.epochs"}
    assert set(specs[1].search) == {"method.analytic.lam"}
    assert specs[1].base["method"]["name"] == "acl" and specs[1].name == "tt-logmel-stats-acl"
    # sessions of every benchmark: ASHA's max_t
    assert specs[0].max_sessions(specs[0].base) == 5


def test_tune_file_errors_name_the_field():
    with pytest.raises(Exception, match="unknown method 'pacee'; did you mean 'pace'"):
        TuneFile.model_validate(_file(methods=["pacee"]))
    with pytest.raises(Exception, match="trials"):
        TuneFile.model_validate(_file(trials=0))
    with pytest.raises(Exception, match="unknown backbone 'whisper-tine'"):
        TuneFile.model_validate(_file(backbones={"whisper-tine": {}}))
    with pytest.raises(Exception, match="sets name; the entry's key is the name"):
        TuneFile.model_validate(_file(backbones={"whisper-tiny": {"name": "x"}}))
    tf = TuneFile.model_validate(_file())
    with pytest.raises(SpecError, match="'pace' is not in this file's methods"):
        tf.method_spec("pace", "f.yaml")
    with pytest.raises(SpecError, match="backbone 'whisper-base' is not in this file's backbones"):
        tf.method_spec("joint", "f.yaml", "whisper-base")


def test_load_tune_file_reports_the_file(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(_file(aggregate="median")))
    with pytest.raises(SpecError, match=r"(?s)t\.yaml.*aggregate: Input should be .mean. or .worst. \(got .median.\)"):
        load_tune_file(p)


@pytest.mark.parametrize("method", MethodConfig.known())
def test_declared_space_validates_at_every_probe(method):
    """Each method's SEARCH_SPACE parses, and every bound, categorical value and conditional branch
    gives a config the method accepts."""
    space = method_space(method)
    base = {"method": {"name": method}}
    s = SearchSpace(space, base)
    for probe in s.probes() + [s.random_sample(i) for i in range(8)]:
        validate_config(compose(base, probe), f"{method} {probe}")
    for key, p in space.items():
        for cond in p.when:
            assert cond in space, f"{method}: {key} depends on {cond}, which is not searched"


def test_shipped_defaults_are_pinned_inside_their_own_search(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text(yaml.safe_dump({"bb": {"ranpac": {
        "method.fsa.train.lr": {"value": 0.5, "source": "s"},
        "method.fsa.train.epochs": {"value": 99, "source": "s"},
        "method.analytic.lam": {"value": 3.0, "source": "s"},
        "method.analytic.proj_dim": {"value": 77, "source": "s"}}}}))
    base = {"method": {"name": "ranpac", "analytic": {"proj_dim": 1024}}}
    pinned = pinned_defaults("bb", "ranpac", {"method.fsa.train.lr"}, base, f)
    # searched: set by the trial; set by the base: kept; the rest: the class default, not the shipped value
    assert pinned == {"method.fsa.train.epochs": 5, "method.analytic.lam": 1.0}


def test_write_defaults_round_trip(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text(yaml.safe_dump({"other": {"pace": {"method.lr_backbone": {"value": 0.05, "source": "kept"}}},
                                 "bb": {"joint": {"method.weight_decay": {"value": 0.1, "source": "old"}}}}))
    write_defaults(f, "bb", "joint", {"method.lr": 0.0123456, "method.epochs": 40}, "pace tune x " * 10)
    assert backbone_defaults("other", "pace", f)["method.lr_backbone"] == {"value": 0.05, "source": "kept"}
    got = backbone_defaults("bb", "joint", f)
    assert set(got) == {"method.lr", "method.epochs"}  # the method's entry is replaced whole
    assert got["method.lr"]["value"] == 0.01235 and got["method.epochs"]["value"] == 40
    raw = apply_backbone_defaults({"backbone": {"name": "bb"}, "method": {"name": "joint", "epochs": 3}}, f)
    assert raw["method"]["lr"] == 0.01235 and raw["method"]["epochs"] == 3  # an explicit value wins
    assert raw["tags"]["default.method.lr"].startswith("0.01235 (pace tune x")
    assert f.read_text().startswith("# Per-backbone method defaults.")
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------------------------------------
# End to end on Ray


@pytest.mark.ray
def test_tune_two_methods_end_to_end(tmp_path, monkeypatch, capsys):
    from pace.cli import main

    monkeypatch.chdir(tmp_path)
    spec = _file(storage_path=str(tmp_path / "ray_results"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(yaml.safe_dump({"whisper-tiny": {"pace": {"method.msa_lr": {"value": 0.1, "source": "x"}}}}))
    assert main(["tune", "tune.yaml", "--defaults", str(defaults)]) == 0
    out = capsys.readouterr().out
    assert "tuned 2 studies with 3 trials each" in out
    for method, keys in (("joint", {"method.lr", "method.epochs"}), ("acl", {"method.analytic.lam"})):
        results = []
        for trial_dir in sorted((tmp_path / "ray_results" / f"tt-logmel-stats-{method}").glob("t0*")):
            lines = (trial_dir / "result.json").read_text().splitlines()
            last = json.loads(lines[-1])
            results.append((trial_dir.name, last))
        assert len(results) == 3
        finished = [(n, r) for n, r in results if r["sessions_done"] == 5]
        for _, r in finished:  # the objective is the mean of the two benchmarks' validation accuracies
            assert r["val_objective"] == pytest.approx((r["val.syn-a"] + r["val.syn-b"]) / 2)
        best_name, best = max(finished, key=lambda nr: nr[1]["val_objective"])
        written = backbone_defaults("logmel-stats", method, defaults)
        assert set(written) == keys
        for k in keys:
            want = best["config"][k]
            assert written[k]["value"] == (float(f"{want:.4g}") if isinstance(want, float) else want)
            assert f"best trial {best_name}" in written[k]["source"]
    assert backbone_defaults("whisper-tiny", "pace", defaults)["method.msa_lr"]["value"] == 0.1  # kept

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tt-logmel-stats-joint"])
    children = runs[runs["tags.pace.role"] != "study"]
    assert set(children["tags.benchmark"]) == {"syn-a", "syn-b"}
    assert set(children["status"]) == {"FINISHED"}
    # every finished trial has one run per benchmark, tagged with its tune trial
    assert children.groupby("tags.tune_trial")["tags.benchmark"].nunique().max() == 2


def test_tune_refuses_a_method_without_a_space(monkeypatch):
    # every shipped method declares a space; an extension that declares none cannot be tuned
    import pace.study.tune as tune_mod

    tf = TuneFile.model_validate(_file(methods=["joint"]))
    monkeypatch.setattr(tune_mod, "method_space", lambda m: {})
    with pytest.raises(SpecError, match="declares no search space"):
        tf.method_spec("joint", "f.yaml")


def test_shipped_tune_file_checks_every_method(monkeypatch, fsdd):
    """sweeps/tune.yaml: every method it lists builds a study whose trial configs all
    validate on every benchmark (the data check needs the rendered instruments; the configs do not)."""
    from pace.study.tune import load_tune_file

    tf = load_tune_file(REPO / "sweeps" / "tune.yaml")
    assert tf.aggregate == "mean" and len(tf.benchmarks) >= 3
    assert set(tf.backbones) == {"whisper-tiny", "whisper-base", "crepe-tiny"}
    for method in tf.methods:
        spec = tf.method_spec(method, "sweeps/tune.yaml", "whisper-tiny")
        assert spec.samples == tf.trials and spec.search == method_space(method)
        assert spec.refusal() is None
        spec.check("sweeps/tune.yaml")
    # a prompt method on the CNN is refused with the reason, before any trial
    assert "does not support prompt" in tf.method_spec("l2p", "sweeps/tune.yaml", "crepe-tiny").refusal()
    # so are the linear-only LoRA variants (their learners refuse a conv: tests/test_sdlora.py, test_inflora.py)
    for method in ("inflora", "sdlora"):
        assert (tf.method_spec(method, "sweeps/tune.yaml", "crepe-tiny").refusal()
                == f"{method} adapts nn.Linear layers only; crepe-tiny's blocks are convolutions")
    for method in ("pace", "peft_ft", "lorasub", "slca", "ease", "mos"):  # conv LoRA or full fine-tuning
        assert tf.method_spec(method, "sweeps/tune.yaml", "crepe-tiny").refusal() is None, method


def test_inert_stage_line_is_what_the_diagnostics_write():
    """The tune summary parses the stage line of pace.methods.diagnostics.inert_flags: the two must agree."""
    from pace.methods.diagnostics import inert_flags
    from pace.study.tune_trial import INERT_STAGE

    diags = [{"adapted": 1, "stage": "fsa", "delta_w_session_rel": 0.2, "emb_cosine": 0.9},
             {"adapted": 1, "stage": "msa", "delta_w_session_rel": 1e-5, "emb_cosine": 1.0},
             {"adapted": 1, "stage": "msa", "delta_w_session_rel": 2e-5, "emb_cosine": 1.0}]
    reasons = inert_flags(diags, [30.0, 5.5, 6.0])["adaptation_inert_reasons"]
    assert [m.groups() for r in reasons if (m := INERT_STAGE.match(r))] == [("msa", "2", "11.5")]


def test_every_method_of_the_protocol_ships_whisper_tiny_defaults_from_it():
    """pace/defaults/backbones.yaml: every method the tune file lists has its Whisper tiny.en entry from
    that protocol (no hand-set or older-search values), and only keys of the method's own space."""
    from pace.study.tune import load_tune_file

    tf = load_tune_file(REPO / "sweeps" / "tune.yaml")
    for method in tf.methods:
        entries = backbone_defaults("whisper-tiny", method)
        assert entries, f"{method}: no whisper-tiny defaults"
        assert set(entries) <= set(method_space(method)), method
        for key, e in entries.items():
            src = " ".join(e["source"].split())
            assert src.startswith("pace tune sweeps/tune.yaml --backbone whisper-tiny (study tune-whisper-tiny-"), key
            assert f"{tf.trials} trials (the budget of every method in the file" in src, key
            assert "VALIDATION splits of drumkits, instruments-across, fsdd-speaker-few" in src, key
