"""The adaptation instruments: exact values on a tiny backbone, the inert flag, strict JSON, metrics."""

import json
import math

import pytest
import torch

from pace.backbones.registry import build_backbone
from pace.config import BackboneConfig, validate_config
from pace.heads.analytic import RIDGE_GRID
from pace.methods.base import Context, Split
from pace.methods.diagnostics import (diagnostic_metrics, head_accuracy, inert_flags, json_safe, lora_stats,
                                      mean_cosine)
from pace.methods.parts import Adapter, AnalyticConfig, LoRAConfig, TrainConfig, session_head, train
from pace.runner import Runner


def _tiny():
    return build_backbone(BackboneConfig(name="eat-tiny", target_frames=48), init_seed=0)


def _split(bb, n=12, classes=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *bb.frontend.shape, generator=g)
    y = torch.arange(n) % classes
    return Split(x, y, [f"k{i}" for i in range(n)])


def test_zero_init_B_gives_zero_delta_w_then_training_moves_it():
    bb = _tiny()
    for p in bb.parameters():
        p.requires_grad_(False)
    adapter = Adapter(bb, LoRAConfig(rank=4, alpha=8, targets=["q", "v"]))
    adapter.attach([0, 1])
    params = adapter.new_session(torch.Generator().manual_seed(1))
    before = lora_stats(adapter)
    # eat-tiny: fused qkv (64 -> 192) per block, so q and v map onto one layer per block
    n_layers = len(adapter.manager.modules)
    assert before["lora_trained_params"] == sum(p.numel() for p in params) == n_layers * 4 * (64 + 192)
    assert before["delta_w_norm"] == 0.0 and before["delta_w_total_norm"] == 0.0 and before["delta_w_rel"] == 0.0
    assert before["delta_w_session_rel"] == 0.0
    assert set(before["delta_w_norm_block"]) == {"0", "1"}
    base = math.sqrt(sum(float(m.base.weight.double().square().sum()) for m in adapter.manager.modules.values()))
    assert before["base_w_norm"] == pytest.approx(base, rel=1e-12)

    ctx = Context(batch_size=4)
    split = _split(bb)
    head = session_head(bb.embed_dim, 3, "linear", torch.Generator().manual_seed(2), "cpu")
    train(bb, head, split, ctx, TrainConfig(epochs=2, lr=0.5), backbone_params=params, head_lr=0.5)
    after = lora_stats(adapter)
    assert after["delta_w_norm"] > 0 and all(v > 0 for v in after["delta_w_norm_block"].values())
    # one stack only: this session's delta is all of W - W0, and the per-block norms add up in squares
    assert after["delta_w_total_norm"] == pytest.approx(after["delta_w_norm"], rel=1e-12)
    assert math.sqrt(sum(v * v for v in after["delta_w_norm_block"].values())) == pytest.approx(after["delta_w_norm"])
    expected = math.sqrt(sum(
        float((m.scaling(0) * m.lora_B[0].detach().double() @ m.lora_A[0].detach().double()).square().sum())
        for m in adapter.manager.modules.values()))
    assert after["delta_w_norm"] == pytest.approx(expected, rel=1e-12)
    # a second, untrained stack: newest delta 0 again, the total keeps the first session's
    adapter.freeze()
    adapter.new_session(torch.Generator().manual_seed(3))
    second = lora_stats(adapter)
    assert second["delta_w_norm"] == 0.0 and second["delta_w_session_rel"] == 0.0
    assert second["delta_w_rel"] == pytest.approx(after["delta_w_total_norm"] / after["base_w_norm"])
    assert second["delta_w_total_norm"] == pytest.approx(after["delta_w_total_norm"], rel=1e-12)


def test_mean_cosine_and_head_accuracy_identities():
    a = torch.randn(10, 5, generator=torch.Generator().manual_seed(0))
    assert mean_cosine(a, 3.0 * a) == pytest.approx(1.0)
    assert mean_cosine(a, -a) == pytest.approx(-1.0)
    # separable classes: perfect held-out accuracy; identical labels-free noise: chance is not 100 %
    y = torch.arange(12) % 3
    noise = torch.randn(12, 3, generator=torch.Generator().manual_seed(1))
    z = torch.nn.functional.one_hot(y, 3).float() * 10 + 0.01 * noise
    cfg = AnalyticConfig(proj_dim=64)
    acc = head_accuracy(cfg, 3, 0, torch.Generator().manual_seed(0), z, y)
    assert acc == 100.0
    # the validation path evaluates exactly the given clips
    acc_val = head_accuracy(cfg, 3, 0, torch.Generator().manual_seed(0), z, y, z_val=z[:3], y_val=(y[:3] + 1) % 3)
    assert acc_val == 0.0


def _classifier_accuracy(cfg, in_dim, seed, generator, z, y, z_val=None, y_val=None) -> float:
    """The reference: what head_accuracy computed before the dual solve, through AnalyticClassifier."""
    from pace.methods.diagnostics import _folds
    from pace.methods.parts import AnalyticClassifier

    pairs = ([(torch.arange(len(y)), None)] if z_val is not None else
             [(a, b) for a, b in [_folds(y), _folds(y)[::-1]]])
    correct = total = 0
    for fit, held in pairs:
        clf = AnalyticClassifier(in_dim, cfg, seed=seed)
        clf.fit_session(z[fit].float(), y[fit], int(y.max()) + 1, generator)
        zt, yt = (z_val, y_val) if held is None else (z[held], y[held])
        correct += int((clf.logits(zt.float()).argmax(-1) == yt).sum())
        total += len(yt)
    return 100.0 * correct / total


@pytest.mark.parametrize("ridge", ["select", "fixed"])
@pytest.mark.parametrize("proj_dim", [512, 0])
def test_head_accuracy_equals_a_fresh_analytic_classifier(ridge, proj_dim):
    # overlapping classes, so the accuracy is neither 0 nor 100 and the lam choice matters
    g = torch.Generator().manual_seed(7)
    y = torch.arange(40) % 4
    means = torch.randn(4, 24, generator=g)
    z = means[y] + 3.0 * torch.randn(40, 24, generator=g)
    zv, yv = means[y[:12]] + 3.0 * torch.randn(12, 24, generator=g), y[:12]
    cfg = AnalyticConfig(proj_dim=proj_dim, ridge=ridge, lam=0.5, form="gram" if ridge == "select" else "auto")
    seen = set()
    for zval, yval in ((None, None), (zv, yv)):
        got = head_accuracy(cfg, 24, 3, torch.Generator().manual_seed(1), z, y, z_val=zval, y_val=yval)
        ref = _classifier_accuracy(cfg, 24, 3, torch.Generator().manual_seed(1), z, y, zval, yval)
        assert got == ref
        seen.add(got)
    assert all(0.0 < a < 100.0 for a in seen), seen


def test_inert_flags_and_metric_flattening():
    moved = {"adapted": 1, "stage": "fsa", "delta_w_session_rel": 0.05, "emb_cosine": 0.9,
             "head_acc_before": 50.0, "head_acc_after": 75.0}
    assert inert_flags([moved, {"adapted": 0}]) == {"adaptation_inert": False, "adaptation_inert_reasons": [],
                                                    "head_acc_unchanged": False, "head_acc_unchanged_reasons": [],
                                                    "head_acc_fell": False, "head_acc_fell_reasons": []}
    still = {**moved, "delta_w_session_rel": 1e-5, "emb_cosine": 0.99999, "head_acc_after": 50.0}
    flags = inert_flags([still])
    assert flags["adaptation_inert"] and len(flags["adaptation_inert_reasons"]) == 2
    assert flags["head_acc_unchanged"]
    # MSA as a stage is inert only when none of its sessions moved the features
    msa_still, msa_moved = {**still, "stage": "msa"}, {**moved, "stage": "msa"}
    assert not inert_flags([moved, msa_still, msa_moved])["adaptation_inert"]
    assert inert_flags([moved, msa_still, msa_still])["adaptation_inert_reasons"][0].startswith("session 2 (msa)")
    # with the sessions' times, an inert stage says what it cost: here MSA's two sessions, 30 s and 12.5 s
    timed = inert_flags([moved, msa_still, msa_still], [4.0, 30.0, 12.5])["adaptation_inert_reasons"]
    assert timed[-1] == "msa: inert in all 2 session(s) it adapted, which took 42.5 s of learner time"
    # saturated (100 % both) is not "no gain"; nothing adapted by configuration: no flags at all
    assert not inert_flags([{**moved, "head_acc_before": 100.0, "head_acc_after": 100.0}])["head_acc_unchanged"]
    assert inert_flags([{"adapted": 0}, {"adapted": 0}]) == {}
    # harmful: the held-out head lost more than one clip's worth (PACE's FSA at a rate searched on
    # 16-clip sessions, run on 160-clip ones: 100 -> 90 % on 40 held-out clips)
    worse = {**moved, "head_acc_before": 100.0, "head_acc_after": 90.0, "head_acc_n": 40}
    flags = inert_flags([worse])
    assert flags["head_acc_fell"] and not flags["head_acc_unchanged"] and not flags["adaptation_inert"]
    assert flags["head_acc_fell_reasons"] == [
        "session 1 (fsa): held-out analytic-head accuracy fell from 100.00 % to 90.00 % with the adaptation "
        "(40 held-out clips)"]
    one_clip = {**worse, "head_acc_after": 97.5}  # exactly one of 40 clips: within noise, not flagged
    assert not inert_flags([one_clip])["head_acc_fell"]
    assert inert_flags([{**one_clip, "head_acc_after": 97.4}])["head_acc_fell"]
    m = diagnostic_metrics({"cka_block": [0.5, float("nan")], "delta_w_norm_block": {"1": 2.0}, "stage": "fsa",
                            "msa_ran": True, "diag_time_s": 1.5})
    assert m == {"diag_cka_block_0": 0.5, "diag_delta_w_norm_block_1": 2.0, "diag_msa_ran": 1.0, "diag_time_s": 1.5}
    assert json_safe({"a": [float("nan"), 1.0], 2: float("inf")}) == {"a": [None, 1.0], "2": None}


def _run(tmp_path, method, sessions=2):
    cfg = validate_config({
        "name": "d",
        "data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 4, "synthetic_clips_per_class": 8},
        "scenario": {"num_sessions": sessions},
        "backbone": {"name": "eat-tiny", "target_frames": 48},
        "method": method,
        "runtime": {"progress": False, "batch_size": 4},
    })
    runner = Runner(cfg, tmp_path)
    return runner, runner.run()


PACE_FAST = {"name": "pace", "fsa_epochs": 3, "msa_epochs": 1, "n_views": 4, "loss_views": 1, "cka_samples": 16,
             "layer_selection": "all", "boundary_loss": False, "analytic": {"proj_dim": 128}}


def test_pace_inert_when_lr_is_negligible(tmp_path, capsys):
    runner, final = _run(tmp_path, {**PACE_FAST, "lr_backbone": 1e-12, "msa": False})
    d = runner.results[0].diagnostics
    assert d["adapted"] == 1 and d["stage"] == "fsa" and d["l_tune"] == 0
    assert d["delta_w_session_rel"] < 1e-9 and d["emb_cosine"] > 0.999999
    assert final["adaptation_inert"] is True and final["adaptation_inert_reasons"]
    assert "WARNING" in capsys.readouterr().err
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["adaptation_inert"] is True
    assert runner.results[1].diagnostics == {"adapted": 0, "stage": "none", "msa_ran": 0,
                                             "ridge_lam": runner.learner.classifier.last_lam,
                                             "ridge_lam_used": runner.learner.classifier.head.lam_used}


def test_pace_not_inert_when_adaptation_moves_features(tmp_path, capsys):
    runner, final = _run(tmp_path, {**PACE_FAST, "lr_backbone": 0.5, "layer_selection": "cka", "rho_layer": 0.999,
                                      "msa_epochs": 4})
    d1, d2 = runner.results[0].diagnostics, runner.results[1].diagnostics
    assert final["adaptation_inert"] is False, final["adaptation_inert_reasons"]
    assert "WARNING: adaptation inert" not in capsys.readouterr().err
    assert d1["delta_w_rel"] > 1e-3 and d1["emb_cosine"] < 0.999
    assert len(d1["cka_block"]) == 2 and d1["l_tune"] in (0, 1) and d1["cka_fallback"] in (0, 1)
    assert d1["emb_cosine_session1"] == d1["emb_cosine"]
    assert d1["lora_trained_params"] > 0 and d1["msa_ran"] == 0
    assert d2["msa_ran"] == 1 and d2["stage"] == "msa" and set(d2["basis_rank_block"]) == {str(b) for b in
                                                                                            range(d1["l_tune"], 2)}
    assert all(0 < r <= d2["basis_dim"] for r in d2["basis_rank_block"].values())
    assert d2["delta_w_total_norm"] > d2["delta_w_norm"] > 0
    assert d1["ridge_lam"] in RIDGE_GRID and d2["ridge_lam"] in RIDGE_GRID
    # strict JSON on disk, numbers in the tracker metrics
    rows = json.loads((tmp_path / "sessions.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert rows[0]["diagnostics"]["stage"] == "fsa"
    metrics = runner.results[1].metrics()
    assert metrics["diag_msa_ran"] == 1.0 and "diag_delta_w_norm" in metrics
    assert all(isinstance(v, float) for k, v in metrics.items() if k.startswith("diag_"))


def test_ranpac_fsa_records_and_frozen_ranpac_is_not_flagged(tmp_path):
    runner, final = _run(tmp_path / "fsa", {"name": "ranpac", "fsa": {"train": {"epochs": 2, "lr": 0.5}},
                                           "analytic": {"proj_dim": 128}})
    d = runner.results[0].diagnostics
    assert d["stage"] == "fsa" and d["delta_w_rel"] > 1e-3 and 0 <= d["head_acc_before"] <= 100
    assert d["head_acc_eval"] == "cv2" and final["adaptation_inert"] is False
    runner, final = _run(tmp_path / "frozen", {"name": "ranpac", "fsa": {"enabled": False},
                                              "analytic": {"proj_dim": 128}})
    assert "adaptation_inert" not in final
    assert runner.results[0].diagnostics == {"adapted": 0, "stage": "none",
                                             "ridge_lam": runner.learner.classifier.last_lam,
                                             "ridge_lam_used": runner.learner.classifier.head.lam_used}


def test_fsa_that_hurts_the_head_is_flagged_head_acc_fell(tmp_path, capsys):
    """RanPAC's FSA at a rate far too high for these sessions: the features still move (not inert), but a
    fresh analytic head does worse on them than on the pretrained ones, and the run says so."""
    runner, final = _run(tmp_path, {"name": "ranpac", "fsa": {"train": {"epochs": 5, "lr": 0.3}},
                                    "analytic": {"proj_dim": 128}})
    d = runner.results[0].diagnostics
    assert d["head_acc_n"] == len(runner.scenario.sessions[0].train)  # cv2: every training clip held out once
    assert d["head_acc_before"] - d["head_acc_after"] > 100.0 / d["head_acc_n"]
    assert final["head_acc_fell"] is True and final["adaptation_inert"] is False
    assert "WARNING: held-out head accuracy fell with the adaptation: session 1 (fsa): held-out analytic-head " \
        "accuracy fell from" \
        in capsys.readouterr().err
    assert json.loads((tmp_path / "metrics.json").read_text())["head_acc_fell_reasons"] == \
        final["head_acc_fell_reasons"]


def test_pace_temp_head_switch_changes_what_trains(tmp_path):
    """temp_head: cosine trains LoRA through RanPAC's cosine head: it runs, and it moves LoRA differently."""
    lin, _ = _run(tmp_path / "lin", {**PACE_FAST, "lr_backbone": 0.5, "msa": False})
    cos, _ = _run(tmp_path / "cos", {**PACE_FAST, "lr_backbone": 0.5, "msa": False, "temp_head": "cosine"})
    assert "temp_head:1:linear" in lin.learner.trace and "temp_head:1:cosine" in cos.learner.trace
    d_lin, d_cos = lin.results[0].diagnostics, cos.results[0].diagnostics
    assert d_lin["delta_w_norm"] > 0 and d_cos["delta_w_norm"] > 0
    assert d_lin["delta_w_norm"] != pytest.approx(d_cos["delta_w_norm"], rel=1e-6)


def test_pace_memory_basis_holds_the_learned_sessions_input_covariance(tmp_path):
    from pace.peft.projection import collect_input_covariances

    method = {**PACE_FAST, "lr_backbone": 0.5, "layer_selection": "all", "msa_epochs": 2,
              "projection_basis": "memory", "rho_svd": 0.9}
    runner, _ = _run(tmp_path, {**method, "msa_stop": "fixed", "t3": 2}, sessions=2)
    pace = runner.learner
    assert "memory:1" in pace.trace and "projection:2" in pace.trace and "memory:2" not in pace.trace  # t3 = 2
    # memory = session 1's layer-input covariance under the backbone as it was after session 1:
    # recompute it with the session-2 stack switched off (its A, B frozen; zero B gives W after session 1)
    x1 = runner.session(0).train.x
    for m in pace.adapter.manager.modules.values():
        m.lora_B[-1].data.zero_()
    again = collect_input_covariances(pace.adapter.manager, pace.backbone, x1, 64, subtracted=False)
    assert set(again) == set(pace.memory) and pace.memory_n == len(x1)
    for name, c in again.items():
        # float32 roundoff apart: with a second stack present the first is folded into W (pace.peft.lora)
        assert torch.allclose(pace.memory[name], c, rtol=1e-5, atol=1e-6 * float(c.abs().max()))
    assert runner.results[1].diagnostics["delta_w_norm"] > 0
