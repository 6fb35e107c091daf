"""Every method runs end to end; every PACE switch changes what runs; PACE resumes exactly."""

import pytest

from pace.config import validate_config
from pace.methods.pace import PACEConfig, adapts_session, last_adapted_session
from pace.runner import Runner
from reporters import InterruptAfter

TINY_PACE = {"fsa_epochs": 1, "msa_epochs": 1, "n_views": 4, "loss_views": 2, "cka_samples": 16,
             "analytic": {"proj_dim": 256}}


def _cfg(method: dict, backbone="eat-tiny", sessions=3):
    return validate_config({
        "name": "m",
        "data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 6, "synthetic_clips_per_class": 6},
        "scenario": {"num_sessions": sessions},
        "backbone": {"name": backbone, "target_frames": 48},
        "method": method,
        "runtime": {"progress": False, "batch_size": 8},
    })


def _run(tmp_path, method, **kw):
    runner = Runner(_cfg(method, **kw), tmp_path)
    final = runner.run()
    return runner, final


def test_n_stop_rule_matches_the_paper():
    # TIMIT-2: 2 speakers x 8 utterances per session; TIMIT-3: 3 x 8 (pace_method.md 1.3)
    assert last_adapted_session([16] * 315, 220) == 14
    assert last_adapted_session([24] * 210, 220) == 10
    cfg = PACEConfig()
    adapted = [t for t in range(20) if adapts_session(t, 16 * t, cfg)]
    assert adapted == list(range(1, 14))  # sessions 2..14 get MSA; session 1 is FSA
    assert not adapts_session(3, 0, PACEConfig(msa=False))
    assert [t for t in range(6) if adapts_session(t, 0, PACEConfig(msa_stop="fixed", t3=3))] == [1, 2]


@pytest.mark.parametrize("method", [
    {"name": "simplecil"},
    {"name": "simplecil", "fsa": {"enabled": True, "train": {"epochs": 1}}},
    {"name": "joint", "epochs": 20},
    {"name": "ranpac", "fsa": {"enabled": False}, "analytic": {"proj_dim": 256}},
    {"name": "ranpac", "fsa": {"train": {"epochs": 1}}, "analytic": {"proj_dim": 256}},
    {"name": "acl", "analytic": {"proj_dim": 256, "form": "recursive", "ridge": "fixed"}},
    {"name": "peft_ft", "train": {"epochs": 1}},
    {"name": "lorasub", "train": {"epochs": 1}},
    {"name": "joint_lora", "train": {"epochs": 1}},
    {"name": "pace", **TINY_PACE},
], ids=lambda m: m["name"] + ("-fsa" if m.get("fsa", {}).get("train") else ""))  # simplecil-fsa = APER
def test_every_method_runs_end_to_end(tmp_path, method):
    runner, final = _run(tmp_path, method)
    assert len(final["accuracy_per_session"]) == 3
    assert all(0.0 <= a <= 100.0 for a in final["accuracy_per_session"])
    assert (tmp_path / "metrics.json").exists()


def _trace(tmp_path, **switches):
    runner, _ = _run(tmp_path, {"name": "pace", **TINY_PACE, **switches})
    return runner.learner


def test_pace_default_runs_every_component(tmp_path):
    L = _trace(tmp_path)
    assert L.trace[0] == "probe" and len(L.cka) == 2
    assert "head_warmup:1" in L.trace and "projection:2" in L.trace and "projection:3" in L.trace
    assert any(e.startswith("boundary:1:") for e in L.trace)
    assert L.adapted_sessions == [0, 1, 2]  # 3 sessions of 8 clips stay under N_stop = 220
    assert L.adapter.num_sessions == 3


@pytest.mark.parametrize("switches,check", [
    ({"fsa": False, "msa": False}, lambda L: L.adapter.manager is None and L.adapted_sessions == []),
    ({"fsa": False}, lambda L: L.adapted_sessions == [1, 2] and "probe" in L.trace),
    ({"layer_selection": "fixed", "freeze_first": 1}, lambda L: L.adapter.blocks == [1] and "probe" not in L.trace),
    ({"layer_selection": "all"}, lambda L: L.adapter.blocks == [0, 1] and "probe" not in L.trace),
    ({"head_strategy": "same_lr"}, lambda L: not any(e.startswith("head_warmup") for e in L.trace)),
    ({"head_strategy": "low_lr"}, lambda L: "lora:1:blocks=1-1:head=low_lr:boundary" in L.trace),
    ({"msa": False}, lambda L: L.adapted_sessions == [0] and L.adapter.num_sessions == 1),
    ({"projection": False}, lambda L: not any(e.startswith("projection") for e in L.trace)),
    ({"boundary_loss": False}, lambda L: not any(e.startswith("boundary") for e in L.trace)),
    ({"msa_stop": "fixed", "t3": 2}, lambda L: L.adapted_sessions == [0, 1]),
    ({"n_stop": 0}, lambda L: L.adapted_sessions == [0]),  # 8 clips already exceed N_stop = 0
    ({"perturbation": "noise"}, lambda L: any(e.startswith("boundary:") for e in L.trace)),
    ({"perturbation": "pitch"}, lambda L: any(e.startswith("boundary:") for e in L.trace)),
    ({"projection_mode": "onto"}, lambda L: "projection:2" in L.trace),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_each_pace_switch_changes_what_runs(tmp_path, switches, check):
    assert check(_trace(tmp_path, **switches))


def test_pace_resume_equals_uninterrupted(tmp_path):
    method = {"name": "pace", **TINY_PACE}
    _, full = _run(tmp_path / "full", method)
    with pytest.raises(KeyboardInterrupt):
        Runner(_cfg(method), tmp_path / "cut", [InterruptAfter(2)]).run()
    runner = Runner(_cfg(method), tmp_path / "cut")
    resumed = runner.run()
    assert resumed["accuracy_per_session"] == full["accuracy_per_session"]
    assert runner.learner.adapter.num_sessions == 3


def test_peft_needs_a_transformer_backbone(tmp_path):
    with pytest.raises(ValueError, match="has no blocks"):
        _run(tmp_path, {"name": "peft_ft"}, backbone="logmel-stats")


@pytest.mark.parametrize("method", [
    {"name": "peft_ft", "train": {"epochs": 1}},
    {"name": "lorasub", "train": {"epochs": 1}},
    {"name": "ranpac", "fsa": {"train": {"epochs": 1}}, "analytic": {"proj_dim": 256}},
], ids=lambda m: m["name"])
def test_lora_baselines_resume_equals_uninterrupted(tmp_path, method):
    _, full = _run(tmp_path / "full", method)
    with pytest.raises(KeyboardInterrupt):
        Runner(_cfg(method), tmp_path / "cut", [InterruptAfter(2)]).run()
    resumed = Runner(_cfg(method), tmp_path / "cut").run()
    assert resumed["accuracy_per_session"] == full["accuracy_per_session"]
