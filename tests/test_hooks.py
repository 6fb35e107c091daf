"""Analysis hooks (pace/hooks.py) in real runner runs on generated audio."""

import pytest
import torch

from pace.config import validate_config
from pace.hooks import balanced_subset, build_hooks
from pace.runner import Runner

DRIFT = {"drift_shift", "drift_interclass", "drift_ratio"}
CKA = {"cka_block_0", "cka_block_1"}  # eat-tiny has 2 blocks


def _cfg(backbone="eat-tiny", cka=True, drift=True, sessions=3):
    return validate_config({
        "name": "hooks",
        "data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 6, "synthetic_clips_per_class": 8,
                 # clips of this file only: the first run below computes (not loads) its embeddings
                 "synthetic_seed": 4242},
        "scenario": {"num_sessions": sessions},
        "backbone": {"name": backbone, "target_frames": 128},
        "method": {"name": "simplecil"},
        "runtime": {"progress": False, "device": "cpu"},
        "analysis": {"cka": cka, "drift": drift, "max_samples": 12},
    })


def test_hooks_log_per_session_and_change_nothing(tmp_path):
    runner = Runner(_cfg(), tmp_path / "on")
    final = runner.run()
    assert [set(r.analysis) for r in runner.results] == [CKA, CKA | DRIFT, CKA | DRIFT]
    for r in runner.results:
        # simplecil never touches the backbone: every block matches the pretrained one exactly
        for k in CKA:
            assert r.analysis[k] == pytest.approx(1.0, abs=1e-6)
        assert set(r.analysis) <= set(r.metrics())  # so they reach MLflow at step = session index
    for r in runner.results[1:]:
        assert r.analysis["drift_shift"] == 0.0 and r.analysis["drift_ratio"] == 0.0  # frozen backbone
        assert r.analysis["drift_interclass"] > 0.0
    # hooks call the backbone directly: the learner's cost counters are the run's own
    assert all(r.counters == {"forward_samples": r.train_samples} for r in runner.results)
    off = Runner(_cfg(cka=False, drift=False), tmp_path / "off")
    assert off.run()["accuracy_per_session"] == final["accuracy_per_session"]
    assert off.analysis_hooks == [] and all(r.analysis == {} for r in off.results)
    matrix = "accuracy_matrix.csv"
    assert (tmp_path / "on" / matrix).read_text() == (tmp_path / "off" / matrix).read_text()


def test_hooks_see_a_changed_backbone_and_restore_state(tmp_path):
    runner = Runner(_cfg(), tmp_path)
    runner.prepare()
    cka_hook, drift_hook = runner.analysis_hooks
    bb = runner.backbone
    first = {**cka_hook(runner, 0), **drift_hook(runner, 0)}
    assert first == {"cka_block_0": pytest.approx(1.0, abs=1e-6), "cka_block_1": pytest.approx(1.0, abs=1e-6)}
    # change only the last block, as an adaptation of deep layers would
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in bb.blocks[1].parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    bb.train()
    rng, digest = torch.get_rng_state(), bb.weights_digest()
    second = {**cka_hook(runner, 1), **drift_hook(runner, 1)}
    assert bb.training and torch.equal(torch.get_rng_state(), rng) and bb.weights_digest() == digest
    assert second["cka_block_0"] == pytest.approx(1.0, abs=1e-6)  # block 0 untouched
    assert second["cka_block_1"] < 0.99
    assert second["drift_shift"] > 0.0
    assert second["drift_ratio"] == pytest.approx(second["drift_shift"] / second["drift_interclass"])


def test_blockless_backbone_gets_drift_only(tmp_path):
    runner = Runner(_cfg("logmel-stats", sessions=2), tmp_path)
    runner.run()
    assert [set(r.analysis) for r in runner.results] == [set(), DRIFT]
    assert runner.results[1].analysis["drift_shift"] == 0.0


def test_off_by_default(tmp_path):
    cfg = _cfg(cka=False, drift=False)
    assert cfg.analysis.cka is False and cfg.analysis.drift is False
    runner = Runner(cfg, tmp_path)
    runner.prepare()
    assert build_hooks(runner) == [] and runner.analysis_hooks == []


def test_balanced_subset():
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    # round robin over classes in order of appearance: 0 (class 0), 3 (class 1), 5 (class 2), 1 (class 0)
    assert balanced_subset(y, 4).tolist() == [0, 1, 3, 5]
    assert balanced_subset(y, 3).tolist() == [0, 3, 5]
    assert balanced_subset(y, 10).tolist() == [0, 1, 2, 3, 4, 5]
