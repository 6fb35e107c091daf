"""runtime.checkpoint_every: when the runner writes its resume checkpoint, and that resuming from an
older checkpoint (sessions recomputed) gives the uninterrupted run's results."""

import pytest
import torch

from pace.checkpoint_clock import CHECKPOINT_BUDGET, SMALL_CHECKPOINT_BYTES, CheckpointClock, checkpoint_due
from pace.config import ConfigError, validate_config
from pace.runner import Runner
from reporters import InterruptAfter


def test_every_n_and_always_the_last():
    assert [d for d in range(1, 8) if checkpoint_due(d, 7, 3, 0.0, 1.0)] == [3, 6, 7]
    assert [d for d in range(1, 5) if checkpoint_due(d, 4, 1, 0.0, 1.0)] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="checkpoint_every must be an integer >= 1 or 'auto', got 0"):
        checkpoint_due(1, 4, 0, 0.0, None)


def test_auto_writes_large_checkpoints_when_the_sessions_since_outweigh_the_write():
    big = SMALL_CHECKPOINT_BYTES
    clock = CheckpointClock("auto")
    assert clock.due(1, 100)  # nothing written yet: write to learn what a write costs
    clock.wrote(2.0, big)
    clock.session_took(0.5)
    assert not clock.due(2, 100)
    clock.session_took(CHECKPOINT_BUDGET * 2.0 - 0.5 - 1e-9)
    assert not clock.due(3, 100)
    clock.session_took(1e-6)
    assert clock.due(4, 100)
    clock.wrote(0.001, big)  # fast writes: every session whose work outweighs one
    clock.session_took(0.5)
    assert clock.due(5, 100)
    assert CheckpointClock("auto", since_s=0.0, last_write_s=1e9, last_bytes=big).due(100, 100)  # the last


def test_auto_writes_small_checkpoints_after_every_session_whatever_the_clock():
    clock = CheckpointClock("auto")
    clock.wrote(1e9, SMALL_CHECKPOINT_BYTES - 1)  # however slow the (busy) machine made the write
    assert clock.due(2, 100)


def test_config_names_the_field_and_what_it_takes():
    base = {"name": "t", "data": {"dataset": "synthetic"}, "backbone": {"name": "logmel-stats"},
            "method": {"name": "simplecil"}}
    for bad in (0, "sometimes"):
        with pytest.raises(ConfigError, match="checkpoint_every"):
            validate_config({**base, "runtime": {"checkpoint_every": bad}})
    assert validate_config({**base, "runtime": {"checkpoint_every": 4}}).runtime.checkpoint_every == 4
    assert validate_config(base).runtime.checkpoint_every == "auto"


def _cfg(every):
    return validate_config({
        "name": "t",
        "data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 8, "synthetic_clips_per_class": 10},
        "scenario": {"num_sessions": 4},
        "backbone": {"name": "logmel-stats", "target_frames": 112},
        "method": {"name": "ranpac", "fsa": {"enabled": False}, "analytic": {"proj_dim": 256}},
        "runtime": {"progress": False, "checkpoint_every": every},
    })


def test_resume_from_an_older_checkpoint_recomputes_to_the_same_results(tmp_path):
    full = Runner(_cfg(1), tmp_path / "full")
    full.run()
    cut = Runner(_cfg(2), tmp_path / "cut", [InterruptAfter(3)])
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    assert cut.checkpointed == 2  # session 3 finished but was not checkpointed
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["sessions_done"] == 2
    # the policy is result-neutral: the resumed run may use another one
    resumed = Runner(_cfg("auto"), tmp_path / "cut")
    resumed.run()
    assert [r.index for r in resumed.results] == [0, 1, 2, 3] and resumed.checkpointed == 4
    assert (tmp_path / "full" / "accuracy_matrix.csv").read_bytes() == \
        (tmp_path / "cut" / "accuracy_matrix.csv").read_bytes()
    assert [r.row for r in resumed.results] == [r.row for r in full.results]


def test_cli_interrupt_says_where_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: cli\ndata: {dataset: synthetic, synthetic_classes: 8, synthetic_clips_per_class: 6}\n"
                   "scenario: {num_sessions: 4}\nbackbone: {name: logmel-stats, target_frames: 112}\n"
                   "method: {name: simplecil}\nruntime: {checkpoint_every: 2}\n")
    from pace.cli import main

    real = Runner._run_session

    def ctrl_c_in_session_4(self, t):
        if t == 3:
            raise KeyboardInterrupt
        return real(self, t)

    monkeypatch.setattr(Runner, "_run_session", ctrl_c_in_session_4)
    argv = ["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 130
    assert f"{tmp_path / 'o'} holds a checkpoint after session 2" in capsys.readouterr().err
    monkeypatch.setattr(Runner, "_run_session", real)
    assert main(argv) == 0
    assert "resumed after session 2" in capsys.readouterr().out
