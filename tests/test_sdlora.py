"""SD-LoRA: per-session directions frozen after their session, every magnitude still learning.

The wrapper on hand-made layers (float64): the effective weight is ``W0 + sum_k alpha_k B_k A_k /
||B_k A_k||_F``, finalising a stack keeps the layer's function, gradients reach the old magnitudes
and nothing else of old stacks. Then the mechanism on a real backbone in float64 (session 1's
direction bit-identical after session 2 while its magnitude moved; the whole backbone equals one
with plain linear layers of that effective weight), an end-to-end run with its checkpoint round
trip, and the backbones the method refuses.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pace.backbones.registry import build_backbone
from pace.config import BackboneConfig, validate_config
from pace.heads.linear import LinearHead
from pace.methods.base import Context, Session, Split
from pace.methods.sdlora import SDLoRA, SDLoRAConfig
from pace.peft.lora import _set_submodule
from pace.peft.lora_variants import DecoupledLoRALinear, DecoupledLoRAManager
from pace.runner import Runner
from learners import restored_learner

F64 = torch.float64


def _reference_weight(m: DecoupledLoRALinear) -> torch.Tensor:
    """W0 + sum_k alpha_k B_k A_k / ||B_k A_k||_F for finalised stacks (+ alpha_t B_t A_t while training),
    computed here from the parameters alone."""
    w = m.base.weight.detach().to(F64).clone()
    for k in range(m.num_sessions):
        ba = m.lora_B[k].detach().to(F64) @ m.lora_A[k].detach().to(F64)
        alpha = float(m.magnitudes[k].detach())
        if m.newest_trainable and k == m.num_sessions - 1:
            w += alpha * ba
        else:
            w += alpha * ba / torch.linalg.matrix_norm(ba)
    return w


def _toy(shared=False, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).to(F64)
    return model, DecoupledLoRAManager(model, ["0", "2"], shared=shared)


def _train_b(manager, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # stands in for a session's training: B moves away from zero
        for m in manager.modules.values():
            m.lora_B[-1].copy_(torch.randn(m.lora_B[-1].shape, generator=g, dtype=F64))


# ---------------------------------------------------------------------------------- the wrapper


def test_effective_weight_is_w0_plus_magnitudes_times_normalised_directions():
    model, manager = _toy()
    x = torch.randn(7, 6, dtype=F64)
    manager.add_session(3, 0.8, torch.Generator().manual_seed(1))
    _train_b(manager, 2)
    before = model(x)
    manager.finalize("product", keep_function=True)
    # finalising keeps the function: alpha_1 <- alpha_1 ||B_1 A_1||_F
    torch.testing.assert_close(model(x), before, atol=1e-12, rtol=0)
    manager.add_session(2, 0.8, torch.Generator().manual_seed(3))
    _train_b(manager, 4)
    with torch.no_grad():
        for m in manager.modules.values():
            m.magnitudes[0].mul_(1.7)  # a later session moved the old magnitude
    for m in manager.modules.values():
        xin = torch.randn(5, m.in_features, dtype=F64)
        torch.testing.assert_close(m(xin), xin @ _reference_weight(m).T + m.base.bias, atol=1e-12, rtol=0)
    manager.finalize("product", keep_function=True)
    for m in manager.modules.values():
        ref = _reference_weight(m)
        torch.testing.assert_close(m.effective_weight(), ref, atol=1e-12, rtol=0)
        xin = torch.randn(5, m.in_features, dtype=F64)
        torch.testing.assert_close(m(xin), xin @ ref.T + m.base.bias, atol=1e-12, rtol=0)
        assert [a.shape[0] for a in m.lora_A] == [3, 2]
        torch.testing.assert_close(torch.linalg.matrix_norm(m.direction(0)), torch.tensor(1.0, dtype=F64))


def test_gradients_reach_old_magnitudes_but_not_old_directions():
    model, manager = _toy()
    manager.add_session(2, 0.8, torch.Generator().manual_seed(1))
    _train_b(manager, 2)
    manager.finalize("product", keep_function=True)
    manager.add_session(2, 0.8, torch.Generator().manual_seed(3))
    params = manager.trainable_parameters()
    old = [m for m in manager.modules.values()]
    assert all(not m.lora_A[0].requires_grad and not m.lora_B[0].requires_grad for m in old)
    assert len(params) == 2 * 2 + 2 * 2  # new A, B per layer + two magnitudes per layer
    model(torch.randn(3, 6, dtype=F64)).square().sum().backward()
    for m in old:
        assert m.magnitudes[0].grad is not None and float(m.magnitudes[0].grad.abs()) > 0
        assert m.lora_A[0].grad is None and m.lora_B[0].grad is None
        assert m.lora_B[1].grad is not None


def test_shared_magnitudes_and_the_official_norm_and_reset():
    model, manager = _toy(shared=True)
    manager.add_session(2, 0.8, torch.Generator().manual_seed(1))
    _train_b(manager, 2)
    layers = list(manager.modules.values())
    assert layers[0].magnitudes[0] is layers[1].magnitudes[0] and len(manager.magnitudes()) == 1
    manager.finalize("factors", keep_function=True)  # shared: cannot follow per-layer norms, kept
    assert float(manager.magnitudes()[0].detach()) == pytest.approx(0.8)
    for m in layers:
        a, b = m.lora_A[0].detach(), m.lora_B[0].detach()
        assert float(m.norms[0]) == pytest.approx(float(torch.linalg.matrix_norm(b) * torch.linalg.matrix_norm(a)),
                                                  rel=1e-14)
    with torch.no_grad():
        manager.magnitudes()[0].fill_(0.3)
    manager.reset_magnitudes(0.8)
    assert float(manager.magnitudes()[0].detach()) == 0.8
    # the state round trip keeps one shared object per session
    state = manager.state_dict()
    model2, manager2 = _toy(shared=True)
    manager2.load_state_dict(state)
    l2 = list(manager2.modules.values())
    assert l2[0].magnitudes[0] is l2[1].magnitudes[0]
    x = torch.randn(4, 6, dtype=F64)
    model2[0].base.load_state_dict(model[0].base.state_dict())
    model2[2].base.load_state_dict(model[2].base.state_dict())
    assert torch.equal(model2(x), model(x))


def test_session_ranks_give_sd_lora_rr():
    cfg = SDLoRAConfig(session_ranks=[10, 10, 10, 10, 8, 8, 8, 8, 6])
    assert [cfg.rank_of(t) for t in (0, 3, 4, 7, 8, 15)] == [10, 10, 8, 8, 6, 6]
    assert SDLoRAConfig(rank=5).rank_of(9) == 5


# -------------------------------------------------------------------------------- the mechanism


def _double_backbone():
    return build_backbone(BackboneConfig(name="eat-tiny", target_frames=48)).eval().double()


def _session(bb, index: int, classes: list[int], n_per: int = 4) -> Session:
    g = torch.Generator().manual_seed(200 + index)
    y = torch.tensor([c for c in classes for _ in range(n_per)])
    x = torch.randn(len(y), *bb.frontend.shape, generator=g, dtype=F64)
    offsets = torch.randn(len(classes), 1, bb.frontend.shape[-1], generator=g, dtype=F64)
    x = x + 2.0 * offsets.repeat_interleave(n_per, 0)
    return Session(index, classes, classes[-1] + 1, Split(x, y, [f"s{index}-{i}" for i in range(len(y))]))


def test_old_direction_is_frozen_while_its_magnitude_learns():
    bb = _double_backbone()
    cfg = SDLoRAConfig(session_ranks=[4, 2], train={"epochs": 1, "lr": 0.05})
    learner = SDLoRA(cfg, bb, Context(batch_size=4))
    learner.learn(_session(bb, 0, [0, 1]))
    layers = learner.manager.modules
    first = {n: (m.lora_A[0].detach().clone(), m.lora_B[0].detach().clone(), m.direction(0),
                 float(m.magnitudes[0])) for n, m in layers.items()}
    head1 = learner.heads.heads[0].weight.detach().clone()
    learner.learn(_session(bb, 1, [2, 3]))

    for name, m in layers.items():
        a1, b1, d1, alpha1 = first[name]
        assert torch.equal(m.lora_A[0], a1) and torch.equal(m.lora_B[0], b1)
        assert torch.equal(m.direction(0), d1)  # session 1's direction, bit for bit
        assert float(m.magnitudes[0]) != alpha1  # ... while its magnitude kept learning
        assert [a.shape[0] for a in m.lora_A] == [4, 2]  # SD-LoRA-RR ranks
        torch.testing.assert_close(m.effective_weight(), _reference_weight(m), atol=1e-12, rtol=0)
    # the backbone equals one whose adapted layers are plain linears of W0 + sum_k alpha_k B_k A_k / ||B_k A_k||_F
    plain = copy.deepcopy(bb)
    for name, m in layers.items():
        lin = nn.Linear(m.in_features, m.out_features).to(F64)
        with torch.no_grad():
            lin.weight.copy_(_reference_weight(m))
            lin.bias.copy_(m.base.bias)
        _set_submodule(plain, name, lin)
    x = _session(bb, 5, [0, 1], n_per=2).train.x
    with torch.no_grad():
        torch.testing.assert_close(bb(x).pooled, plain(x).pooled, atol=1e-10, rtol=0)
    # classifier (the official code's): a linear head grown per session, CE over the session's classes,
    # so the first session's rows get no gradient in the second
    assert [type(h) for h in learner.heads.heads] == [LinearHead, LinearHead] and learner.heads.sizes == [2, 2]
    assert torch.equal(learner.heads.heads[0].weight, head1)


# ------------------------------------------------------------------------------ end to end


E2E = {"name": "sdlora", "train": {"epochs": 6, "optimizer": "adamw", "lr": 0.005}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = validate_config({
        "name": "m",
        "data": {"dataset": "synthetic", "synthetic_classes": 6, "synthetic_clips_per_class": 8},
        "scenario": {"num_sessions": 3},
        "backbone": {"name": "eat-tiny", "target_frames": 48},
        "method": E2E,
        "runtime": {"progress": False, "batch_size": 8},
    })
    runner = Runner(cfg, tmp_path_factory.mktemp("sdlora"))
    return runner, runner.run()


def test_end_to_end_accuracy_is_well_above_chance(run):
    runner, final = run
    acc = final["accuracy_per_session"]
    assert len(acc) == 3
    # 6 classes after the last session: chance 16.7 %, measured 41.7 % (5 of 12 test clips); floor 33.3 %.
    # Old sessions fall to ~0 on this random tiny backbone: the official per-session masked CE leaves the
    # heads of different sessions uncalibrated against each other, and nothing protects old features.
    assert acc[-1] >= 33.3
    # mean over sessions: chance (50 + 25 + 16.7) / 3 = 30.6 %, measured 63.9 %; floor 50 %
    assert sum(acc) / 3 >= 50.0
    assert runner.learner.manager.num_sessions == 3


def test_checkpoint_round_trip_gives_identical_predictions(run, tmp_path):
    runner, _ = run
    fresh = restored_learner(runner, Context())
    x = runner.test_split(2).x[:8]
    assert torch.equal(fresh.predict(x), runner.learner.predict(x))


@pytest.mark.parametrize("name,match", [
    ("logmel-stats", "has no transformer blocks"),
    ("crepe-test", "has no attention/MLP linear layers"),
])
def test_backbones_without_linear_blocks_are_refused(name, match):
    with pytest.raises(ValueError, match=f"sdlora: backbone '{name}' {match}"):
        SDLoRA(SDLoRAConfig(), build_backbone(BackboneConfig(name=name)), Context())


def test_attention_that_bypasses_its_linear_layers_is_refused():
    # WavLM's attention reads q/k/v/out weights straight into a fused call: a LoRA there would do nothing
    bb = build_backbone(BackboneConfig(name="wavlm-tiny", num_samples=8000))
    with pytest.raises(ValueError, match="sdlora: backbone 'wavlm-tiny' computes .* without calling that layer"):
        SDLoRA(SDLoRAConfig(rank=4), bb, Context())
    SDLoRA(SDLoRAConfig(rank=4, targets=["fc1", "fc2"]), bb, Context())  # its MLP layers are fine
