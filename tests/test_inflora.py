"""InfLoRA: the designed, frozen down-projection keeps each new branch off earlier sessions' inputs.

Algebra first (float64, hand-made covariances), then the mechanism on a real backbone in float64:
after session 2 the new branch maps every vector of the protected subspace (as accumulated after
session 1) to zero, ``A_2`` is bit-identical to its design, and the basis grows. Then one end-to-end
run through the Runner with its checkpoint round trip, and the backbones the method refuses.
"""

from __future__ import annotations

import pytest
import torch

import pace.methods.inflora as inflora_mod
from pace.backbones.registry import build_backbone
from pace.config import BackboneConfig, validate_config
from pace.methods.base import Context, Session, Split
from pace.methods.inflora import (A_SCALE, InfLoRA, InfLoRAConfig, design_down_projection, grow_basis)
from pace.runner import Runner
from learners import restored_learner


def _orthonormal(d: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q[:, :k]


def _cov(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, d, generator=g, dtype=torch.float64) * torch.linspace(3.0, 0.1, d, dtype=torch.float64)
    return x.T @ x / 200


# ------------------------------------------------------------------------------------------ algebra


def test_first_design_is_the_top_of_the_covariance_scaled():
    c = _cov(12, 0)
    a = design_down_projection(c, torch.zeros(12, 0, dtype=torch.float64), rank=3)
    evals, evecs = torch.linalg.eigh(c)
    top = evecs[:, -3:].flip(1)
    # same rows up to sign, each of norm 1/sqrt(3)
    torch.testing.assert_close((a @ top).abs(), torch.eye(3, dtype=torch.float64) * A_SCALE, atol=1e-10, rtol=0)


def test_designed_rows_are_orthogonal_to_the_protected_basis():
    u = _orthonormal(16, 5, 1)
    a = design_down_projection(_cov(16, 2), u, rank=4)
    assert a.shape == (4, 16)
    assert float((a @ u).abs().max()) < 1e-14
    # they are the top left singular vectors of (I - U U^T) C: A A^T = I / 3
    torch.testing.assert_close(a @ a.T, torch.eye(4, dtype=torch.float64) / 3, atol=1e-12, rtol=0)
    # without the basis the design would sit inside it (what the mechanism removes)
    free = design_down_projection(_cov(16, 2), torch.zeros(16, 0, dtype=torch.float64), rank=4)
    assert float((free @ u).abs().max()) > 1e-2


def test_basis_growth_follows_the_energy_criterion():
    e = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25, 0.0], dtype=torch.float64)
    c = torch.diag(e)
    empty = torch.zeros(6, 0, dtype=torch.float64)
    # sv2 (the code): energies e^2 = 16, 4, 1, .25, .0625 of 21.3125; cumulative .751, .938, .985, ...
    # the code's first-session rule keeps #(cumulative < eps), at least one
    assert grow_basis(empty, c, 0.95, "sv2").shape[1] == 2
    assert grow_basis(empty, c, 0.5, "sv2").shape[1] == 1
    # eig (GPM on the raw inputs): 4, 2, 1, .5, .25 of 7.75; cumulative .516, .774, .903, .968
    assert grow_basis(empty, c, 0.95, "eig").shape[1] == 3
    # the code's rule stops one short of eps: #(cumulative < 1.0) = 4 of the 5 directions with energy
    assert grow_basis(empty, c, 1.0, "eig").shape[1] == 4
    # later sessions: the basis holds e_0 (16 of 21.3125 = .751); the next directions are added until
    # .95 is reached: e_1 (.938) then e_2 (.985)
    u0 = torch.eye(6, dtype=torch.float64)[:, :1]
    u = grow_basis(u0, c, 0.95, "sv2")
    assert u.shape[1] == 3 and torch.equal(u[:, :1], u0)
    torch.testing.assert_close(u.T @ u, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(u[:, 1:].abs(), torch.eye(6, dtype=torch.float64)[:, 1:3], atol=1e-12, rtol=0)
    # a basis that already holds eps of the session's energy does not grow
    assert torch.equal(grow_basis(u, c, 0.95, "sv2"), u)
    # a direction without energy is never added, whatever eps asks for (e_5 has none)
    assert grow_basis(u0, c, 1.0, "eig").shape[1] == 5


def test_threshold_schedule():
    cfg = InfLoRAConfig(eps_begin=0.95, eps_end=1.0, schedule_sessions=10)
    learner = InfLoRA.__new__(InfLoRA)
    learner.cfg = cfg
    assert [round(learner.threshold(t), 6) for t in (0, 1, 9)] == [0.95, 0.955, 0.995]
    learner.cfg = InfLoRAConfig(eps_begin=0.97)
    assert learner.threshold(5) == 0.97
    with pytest.raises(ValueError, match="eps_end"):
        InfLoRAConfig(eps_begin=0.99, eps_end=0.9)


# -------------------------------------------------------------------------------- the mechanism


def _double_backbone():
    return build_backbone(BackboneConfig(name="eat-tiny", target_frames=48)).eval().double()


def _session(bb, index: int, classes: list[int], n_per: int = 4) -> Session:
    g = torch.Generator().manual_seed(100 + index)
    y = torch.tensor([c for c in classes for _ in range(n_per)])
    # each session's clips share a class-specific offset, so sessions occupy different directions
    x = torch.randn(len(y), *bb.frontend.shape, generator=g, dtype=torch.float64)
    offsets = torch.randn(len(classes), 1, bb.frontend.shape[-1], generator=g, dtype=torch.float64)
    x = x + 2.0 * offsets.repeat_interleave(n_per, 0)
    return Session(index, classes, classes[-1] + 1, Split(x, y, [f"s{index}-{i}" for i in range(len(y))]))


def test_new_branch_is_zero_on_the_protected_subspace_and_a_stays_as_designed(monkeypatch):
    bb = _double_backbone()
    cfg = InfLoRAConfig(rank=4, train={"epochs": 1, "lr": 0.01}, eps_begin=0.99, energy="eig")
    learner = InfLoRA(cfg, bb, Context(batch_size=4))
    designed: list[dict[str, torch.Tensor]] = []
    real_train = inflora_mod.train

    def spy(*args, **kw):  # the A matrices as designed, just before training
        designed.append({n: m.lora_A[-1].detach().clone() for n, m in learner.adapter.manager.modules.items()})
        assert all(not m.lora_A[-1].requires_grad and m.lora_B[-1].requires_grad
                   for m in learner.adapter.manager.modules.values())
        return real_train(*args, **kw)

    monkeypatch.setattr(inflora_mod, "train", spy)
    learner.learn(_session(bb, 0, [0, 1]))
    u1 = {n: u.clone() for n, u in learner.bases.items()}
    first = {n: (m.lora_A[0].detach().clone(), m.lora_B[0].detach().clone())
             for n, m in learner.adapter.manager.modules.items()}
    learner.learn(_session(bb, 1, [2, 3]))

    grew = False
    for name, m in learner.adapter.manager.modules.items():
        a2, b2 = m.lora_A[1].detach(), m.lora_B[1].detach()
        assert a2.dtype == torch.float64
        assert torch.equal(a2, designed[1][name])  # training never touched A
        assert float(b2.abs().max()) > 0  # ... but did train B
        assert torch.equal(m.lora_A[0], first[name][0]) and torch.equal(m.lora_B[0], first[name][1])
        # interference-free: the new branch maps the protected subspace (after session 1) to zero
        delta2 = m.scaling(1) * (b2 @ a2)
        k1 = u1[name].shape[1]
        assert k1 >= 1
        assert float(torch.linalg.matrix_norm(delta2 @ u1[name])) <= 1e-12 * float(torch.linalg.matrix_norm(delta2))
        # so the layer's output on any input in that subspace is what it was after session 1
        x = (u1[name] @ torch.randn(k1, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))).T
        w_after_1 = m.base.weight.double() + m.scaling(0) * (first[name][1] @ first[name][0])
        torch.testing.assert_close(m(x), x @ w_after_1.T + m.base.bias, atol=1e-12, rtol=0)
        # the basis keeps its old columns and can only grow
        u2 = learner.bases[name]
        assert torch.equal(u2[:, :k1], u1[name])
        torch.testing.assert_close(u2.T @ u2, torch.eye(u2.shape[1], dtype=torch.float64), atol=1e-10, rtol=0)
        grew |= u2.shape[1] > k1
    assert grew


# ------------------------------------------------------------------------------ end to end


def _cfg(method: dict):
    return validate_config({
        "name": "m",
        "data": {"dataset": "synthetic", "synthetic_classes": 6, "synthetic_clips_per_class": 8},
        "scenario": {"num_sessions": 3},
        "backbone": {"name": "eat-tiny", "target_frames": 48},
        "method": method,
        "runtime": {"progress": False, "batch_size": 8},
    })


E2E = {"name": "inflora", "train": {"epochs": 6, "lr": 0.005}, "schedule_sessions": 3}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    runner = Runner(_cfg(E2E), tmp_path_factory.mktemp("inflora"))
    final = runner.run()
    return runner, final


def test_end_to_end_accuracy_is_well_above_chance(run):
    runner, final = run
    acc = final["accuracy_per_session"]
    assert len(acc) == 3
    # 6 classes after the last session: chance 16.7 %, measured 75.0 % (9 of 12 test clips); floor 50 %
    assert acc[-1] >= 50.0
    # mean over sessions: chance (50 + 25 + 16.7) / 3 = 30.6 %, measured 91.7 %; floor 75 %
    assert sum(acc) / 3 >= 75.0
    learner = runner.learner
    assert learner.adapter.num_sessions == 3
    assert all(u.shape[1] >= 1 for u in learner.bases.values())


def test_checkpoint_round_trip_gives_identical_predictions(run, tmp_path):
    runner, _ = run
    fresh = restored_learner(runner, Context())
    split = runner.test_split(2)
    x = split.x[:8]
    assert torch.equal(fresh.predict(x), runner.learner.predict(x))
    for name, u in runner.learner.bases.items():
        assert torch.equal(fresh.bases[name], u)


@pytest.mark.parametrize("name,match", [
    ("logmel-stats", "has no transformer blocks"),
    ("crepe-test", "has no attention/MLP linear layers"),
])
def test_backbones_without_linear_blocks_are_refused(name, match):
    with pytest.raises(ValueError, match=f"inflora: backbone '{name}' {match}"):
        InfLoRA(InfLoRAConfig(), build_backbone(BackboneConfig(name=name)), Context())


def test_rank_above_the_layer_width_is_refused():
    with pytest.raises(ValueError, match="rank 65 exceeds"):
        InfLoRA(InfLoRAConfig(rank=65), build_backbone(BackboneConfig(name="eat-tiny", target_frames=48)), Context())


def test_attention_that_bypasses_its_linear_layers_is_refused():
    # WavLM's attention reads q/k/v/out weights straight into a fused call: a LoRA there would do nothing
    bb = build_backbone(BackboneConfig(name="wavlm-tiny", num_samples=8000))
    with pytest.raises(ValueError, match="inflora: backbone 'wavlm-tiny' computes .* without calling that layer"):
        InfLoRA(InfLoRAConfig(rank=4), bb, Context())
    InfLoRA(InfLoRAConfig(rank=4, targets=["fc1", "fc2"]), bb, Context())  # its MLP layers are fine
