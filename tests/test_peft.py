"""Per-session LoRA (subtraction, merging, checkpoints) and subspace gradient projection."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pace.backbones.base import Backbone, BackboneOutput
from pace.data.frontend import FbankFrontend
from pace.peft import (
    GradientProjector,
    LoRALinear,
    LoRAManager,
    collect_input_covariances,
    energy_basis,
    subspace_bases,
)

ROLES = ["q", "k", "v", "o", "fc1", "fc2"]


class TinyBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.ModuleDict({r: nn.Linear(dim, dim) for r in ("q", "k", "v", "o")})
        self.mlp = nn.ModuleDict({"fc1": nn.Linear(dim, 2 * dim), "fc2": nn.Linear(2 * dim, dim)})

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.ln1(h)
        q, k, v = self.attn["q"](a), self.attn["k"](a), self.attn["v"](a)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        h = h + self.attn["o"](att @ v)
        return h + self.mlp["fc2"](F.gelu(self.mlp["fc1"](self.ln2(h))))


class TinyBackbone(Backbone):
    """2-block attention stack over (B, T, F) fbank inputs, mean pooled."""

    def __init__(self, n_mels: int = 8, frames: int = 12, dim: int = 16, blocks: int = 2):
        super().__init__(FbankFrontend(num_mel_bins=n_mels, target_frames=frames), dim, blocks, "mean")
        self.embed = nn.Linear(n_mels, dim)
        self.blocks = nn.ModuleList(TinyBlock(dim) for _ in range(blocks))

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        h, hidden = self.embed(x), []
        for blk in self.blocks:
            h = blk(h)
            hidden.append(h)
        return BackboneOutput(self.pool(h), hidden if output_hidden_states else [])

    def linear_layers(self) -> dict[int, dict[str, str]]:
        return {
            b: {r: f"blocks.{b}.{'attn' if r in ('q', 'k', 'v', 'o') else 'mlp'}.{r}" for r in ROLES}
            for b in range(self.num_blocks)
        }


def tiny(seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyBackbone:
    torch.manual_seed(seed)
    return TinyBackbone().to(dtype)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def data(n: int = 6, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 12, 8, generator=gen(seed), dtype=dtype)


@torch.no_grad()
def randomise_newest_b(manager: LoRAManager, seed: int, scale: float = 0.3) -> None:
    g = gen(seed)
    for m in manager.modules.values():
        b = m.lora_B[-1]
        b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * scale)


def trained_manager(model: TinyBackbone, sessions: int = 2) -> LoRAManager:
    """Manager on every linear layer, ``sessions`` stacks, each with a non-zero B."""
    manager = LoRAManager(model, model.lora_target_names(None, ROLES))
    for s in range(sessions):
        manager.add_session(rank=3, alpha=6.0, generator=gen(10 + s))
        randomise_newest_b(manager, 20 + s)
    return manager


# ---- LoRA -----------------------------------------------------------------------------------------


def test_wrapping_and_zero_b_leave_outputs_unchanged():
    model, x = tiny(), data()
    ref = model(x).pooled
    manager = LoRAManager(model, model.lora_target_names(None, ROLES))
    assert len(manager.modules) == 12
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in manager.modules)
    manager.add_session(rank=4, alpha=8.0, generator=gen(0))
    assert manager.num_sessions == 1
    assert torch.equal(model(x).pooled, ref)


def test_add_session_is_seeded():
    a, b = trained_manager(tiny()), trained_manager(tiny())
    for name in a.modules:
        assert torch.equal(a.modules[name].lora_A[0], b.modules[name].lora_A[0])
        assert not torch.equal(a.modules[name].lora_A[0], a.modules[name].lora_A[1])


def test_subtracted_mode_is_the_unlearned_model_and_restores_exactly():
    plain = tiny()
    model, x = copy.deepcopy(plain), data()
    manager = trained_manager(model)  # stack 0 frozen, stack 1 trainable, both B != 0
    y = model(x).pooled

    # Reference: plain layers with W0 - s0 B0 A0 (the trainable stack is not subtracted).
    with torch.no_grad():
        for name, m in manager.modules.items():
            plain.get_submodule(name).weight -= m.scaling(0) * m.lora_B[0] @ m.lora_A[0]
    with manager.subtracted():
        assert all(m.mode == "subtracted" for m in manager.modules.values())
        torch.testing.assert_close(model(x).pooled, plain(x).pooled, atol=1e-6, rtol=1e-6)
    assert torch.equal(model(x).pooled, y)  # back to W0 + all stacks, bit for bit
    assert (model(x).pooled - plain(x).pooled).abs().max() > 1e-3

    manager.freeze_all()  # now both stacks are "earlier" ones and both are subtracted
    with torch.no_grad():
        for name, m in manager.modules.items():
            plain.get_submodule(name).weight -= m.scaling(1) * m.lora_B[1] @ m.lora_A[1]
    with manager.subtracted():
        torch.testing.assert_close(model(x).pooled, plain(x).pooled, atol=1e-6, rtol=1e-6)
    assert torch.equal(model(x).pooled, y)


def test_merge_unmerge_round_trip():
    model, x = tiny(), data()
    manager = trained_manager(model)
    base_before = {n: m.base.weight.clone() for n, m in manager.modules.items()}
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    y = model(x).pooled
    with manager.merged():
        assert all(m.merged for m in manager.modules.values())
        torch.testing.assert_close(model(x).pooled, y, atol=1e-5, rtol=1e-5)
        # Merged layers apply exactly one folded weight: same bits as a plain layer with it.
        m = manager.modules["blocks.0.attn.v"]
        inp = torch.randn(4, 16, generator=gen(3))
        assert torch.equal(m(inp), F.linear(inp, m.effective_weight(), m.base.bias))
        with pytest.raises(RuntimeError):
            manager.modules["blocks.0.attn.q"].set_mode("subtracted")
    assert torch.equal(model(x).pooled, y)
    for n, m in manager.modules.items():
        assert torch.equal(m.base.weight, base_before[n])
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())


def stacked_layer(stacks: int, dtype: torch.dtype = torch.float64) -> LoRALinear:
    """A 16 -> 12 layer with ``stacks`` LoRA stacks, every B non-zero, the newest trainable."""
    torch.manual_seed(0)
    m = LoRALinear(nn.Linear(16, 12).to(dtype))
    for s in range(stacks):
        m.add_session(rank=2, alpha=4.0, generator=gen(30 + s))
        with torch.no_grad():
            m.lora_B[-1].copy_(torch.randn(m.lora_B[-1].shape, generator=gen(40 + s), dtype=dtype) * 0.3)
    return m


@pytest.mark.parametrize("mode", ["normal", "subtracted"])
def test_folded_forward_and_gradients_equal_every_stack_applied_on_its_own(mode):
    m, x = stacked_layer(6), torch.randn(5, 16, generator=gen(1), dtype=torch.float64)
    m.set_mode(mode)
    torch.testing.assert_close(m(x), m.forward_unfolded(x), rtol=0, atol=1e-12)
    if mode == "subtracted":  # the trainable stack is left out of the unlearned model: no gradient
        return
    grads = []
    for fwd in (m.forward, m.forward_unfolded):
        a, b = m.trainable_stack()
        a.grad = b.grad = None
        fwd(x).pow(2).sum().backward()
        grads.append((a.grad.clone(), b.grad.clone()))
    for g_fold, g_ref in zip(*grads):
        torch.testing.assert_close(g_fold, g_ref, rtol=0, atol=1e-12)


def test_a_forward_costs_the_same_with_one_stack_or_fifty(monkeypatch):
    calls = []
    real = F.linear
    monkeypatch.setattr(F, "linear", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    x = torch.randn(3, 16, generator=gen(2), dtype=torch.float64)
    for stacks in (1, 50):
        m = stacked_layer(stacks)
        calls.clear()
        m(x)
        m(x)  # the fold is built once and reused
        assert len(calls) == 6, f"{stacks} stacks: {len(calls)} matmuls for two forwards"
        folded = m._fold[1] if m._fold else None
        m(x)
        assert (m._fold[1] if m._fold else None) is folded


def test_freezing_the_newest_stack_leaves_outputs_bit_identical():
    m, x = stacked_layer(4), torch.randn(5, 16, generator=gen(3), dtype=torch.float64)
    y = m(x)
    m.freeze_all()
    assert torch.equal(m(x), y)


def test_a_fold_built_during_inference_mode_evaluation_serves_a_later_training_step():
    m = stacked_layer(3, dtype=torch.float32)
    with torch.inference_mode():
        m(torch.randn(2, 16, generator=gen(5)))  # evaluation builds the fold
    x = torch.randn(2, 16, generator=gen(6)).requires_grad_(True)
    m(x).square().sum().backward()  # its weight is saved for dL/dx: must not be an inference tensor
    ref = x.detach().clone().requires_grad_(True)
    m.forward_unfolded(ref).square().sum().backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-5, atol=1e-6)


def test_the_fold_follows_in_place_writes_new_stacks_and_dtype_moves():
    model = tiny()
    manager = trained_manager(model, sessions=3)
    layer = manager.modules["blocks.1.attn.v"]
    inp = torch.randn(4, 16, generator=gen(4))
    layer(inp)  # builds the fold
    # an in-place write to a folded (frozen) stack, as load_state_dict does
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k in state if k.endswith("attn.v.lora_B.0"))
    state[key] += 0.5
    model.load_state_dict(state)
    torch.testing.assert_close(layer(inp), layer.forward_unfolded(inp), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        layer.base.weight.mul_(2.0)
    torch.testing.assert_close(layer(inp), layer.forward_unfolded(inp), rtol=1e-5, atol=1e-5)
    manager.add_session(rank=3, alpha=6.0, generator=gen(50))  # the old newest joins the fold
    randomise_newest_b(manager, 51)
    torch.testing.assert_close(layer(inp), layer.forward_unfolded(inp), rtol=1e-5, atol=1e-5)
    model.double()
    assert layer(inp.double()).dtype == torch.float64
    torch.testing.assert_close(layer(inp.double()), layer.forward_unfolded(inp.double()), rtol=0, atol=1e-12)
    # the fold is never part of the state
    assert not any("fold" in k for k in model.state_dict())


def test_merged_weight_equals_w0_plus_sum_of_stacks():
    model = tiny(dtype=torch.float64)
    manager = trained_manager(model, sessions=3)
    m = manager.modules["blocks.1.mlp.fc1"]
    expected = m.base.weight + sum(m.scaling(s) * m.lora_B[s] @ m.lora_A[s] for s in range(3))
    torch.testing.assert_close(m.effective_weight(), expected.detach())


def test_only_newest_stack_gets_gradients():
    model, x = tiny(), data()
    manager = trained_manager(model)
    trainable = manager.trainable_parameters()
    expected = [p for m in manager.modules.values() for p in (m.lora_A[1], m.lora_B[1])]
    assert [id(p) for p in trainable] == [id(p) for p in expected]
    frozen = [p for m in manager.modules.values() for p in (m.base.weight, m.lora_A[0], m.lora_B[0])]
    assert not any(p.requires_grad for p in frozen)
    model(x).pooled.pow(2).sum().backward()
    for m in manager.modules.values():
        assert m.lora_A[0].grad is None and m.lora_B[0].grad is None
        assert m.base.weight.grad is None and m.base.bias.grad is None
        assert m.lora_A[1].grad.abs().sum() > 0 and m.lora_B[1].grad.abs().sum() > 0


def test_fresh_b_zero_stack_still_gets_a_b_gradient():
    # Why B needs thought in the projector: B = 0 at init but its gradient is not zero.
    model, x = tiny(), data()
    manager = LoRAManager(model, model.lora_target_names([1], ["fc1"]))
    manager.add_session(rank=2, alpha=2.0, generator=gen(0))
    model(x).pooled.pow(2).sum().backward()
    m = manager.modules["blocks.1.mlp.fc1"]
    assert m.lora_B[0].grad.abs().sum() > 0
    assert m.lora_A[0].grad.abs().sum() == 0  # dL/dA = B^T (...) = 0 while B = 0


def test_lora_state_dict_round_trip_weights_only(tmp_path):
    model, x = tiny(), data()
    manager = trained_manager(model)
    state = manager.state_dict()
    path = tmp_path / "lora.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)

    tensors = [t for layer in loaded["layers"].values() for t in layer["A"] + layer["B"]]
    assert all(min(t.shape) == 3 for t in tensors)  # only rank-3 LoRA factors, no base weights

    other = tiny()  # same base weights, no LoRA yet
    other_manager = LoRAManager(other, other.lora_target_names(None, ROLES))
    other_manager.load_state_dict(loaded)
    assert other_manager.num_sessions == 2
    assert torch.equal(other(x).pooled, model(x).pooled)
    assert [id(p) for p in other_manager.trainable_parameters()] == [
        id(p) for m in other_manager.modules.values() for p in (m.lora_A[1], m.lora_B[1])
    ]
    buf = io.BytesIO()
    torch.save(other_manager.state_dict(), buf)
    assert buf.tell() > 0


def test_load_rejects_mismatched_layers():
    model = tiny()
    state = trained_manager(model).state_dict()
    other = tiny()
    partial = LoRAManager(other, other.lora_target_names([0], ["q"]))
    with pytest.raises(ValueError, match="unexpected"):
        partial.load_state_dict(state)


def test_restore_puts_plain_linears_back():
    model, x = tiny(), data()
    ref = model(x).pooled
    manager = trained_manager(model)
    manager.restore()
    assert all(type(model.get_submodule(n)) is nn.Linear for n in model.lora_target_names(None, ROLES))
    assert torch.equal(model(x).pooled, ref)
    assert all(p.requires_grad for p in model.parameters())


def test_rejects_non_linear_target():
    model = tiny()
    with pytest.raises(TypeError, match="not nn.Linear"):
        LoRAManager(model, ["blocks.0.ln1"])


# ---- covariance and basis ------------------------------------------------------------------------


def test_covariance_is_uncentred_over_tokens_on_the_unlearned_model():
    plain = tiny(dtype=torch.float64)
    model, x = copy.deepcopy(plain), data(n=10, dtype=torch.float64)
    manager = trained_manager(model)
    covs = collect_input_covariances(manager, model, x, batch_size=4)

    with torch.no_grad():
        for name, m in manager.modules.items():
            plain.get_submodule(name).weight -= m.scaling(0) * m.lora_B[0] @ m.lora_A[0]
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in manager.modules}
    hooks = [plain.get_submodule(n).register_forward_pre_hook(
        lambda _m, args, n=n: seen[n].append(args[0].reshape(-1, args[0].shape[-1]))) for n in seen]
    plain(x)
    for h in hooks:
        h.remove()
    for name, chunks in seen.items():
        rows = torch.cat(chunks)
        assert rows.shape[0] == 10 * 12  # every token of every clip
        torch.testing.assert_close(covs[name], rows.T @ rows / rows.shape[0])
        assert covs[name].dtype == torch.float64
    # Later layers see different inputs on the unlearned model than on the normal one.
    normal = collect_input_covariances(manager, model, x, subtracted=False)
    assert (normal["blocks.1.mlp.fc2"] - covs["blocks.1.mlp.fc2"]).abs().max() > 1e-6


def _hand_covariance(eigenvalues: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen(seed),
                                       dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T, q


@pytest.mark.parametrize(
    "energy, rho, k",
    [
        ("eig", 0.5, 1),   # 6/10 = 0.60
        ("eig", 0.85, 2),  # 9/10 = 0.90
        ("eig", 0.95, 3),  # 9.6/10 = 0.96
        ("eig", 0.99, 4),  # 9.9/10
        ("eig", 1.0, 5),
        ("sv2", 0.95, 2),  # 45/45.46 = 0.9899
        ("sv2", 0.995, 3),  # 45.36/45.46 = 0.9978
    ],
)
def test_energy_basis_rank(energy, rho, k):
    cov, q = _hand_covariance([6.0, 3.0, 0.6, 0.3, 0.1])
    u = energy_basis(cov, rho=rho, energy=energy)
    assert u.shape == (5, k)
    torch.testing.assert_close(u.T @ u, torch.eye(k, dtype=torch.float64))
    torch.testing.assert_close(u @ u.T, q[:, :k] @ q[:, :k].T)  # the top-k eigenspace


def test_energy_basis_of_zero_covariance_is_empty():
    assert energy_basis(torch.zeros(4, 4)).shape == (4, 0)


# ---- gradient projection -------------------------------------------------------------------------


def _protected_inputs(u: torch.Tensor, mode: str, n: int = 32) -> torch.Tensor:
    """Inputs whose outputs a constrained update must not change: span(U) for 'complement',
    span(U)^perp for 'onto'."""
    z = torch.randn(n, u.shape[0], generator=gen(7), dtype=torch.float64)
    along = z @ u @ u.T
    return along if mode == "complement" else z - along


def _train_with(mode: str | None, optimiser: str = "sgd", constrain_init: bool = True,
                attach: bool = False) -> tuple[LoRAManager, dict[str, torch.Tensor], dict, dict]:
    """Session 2 on a float64 tiny model; returns the outputs of every layer on its protected
    inputs before and after training (``mode=None`` trains without projection)."""
    model = tiny(dtype=torch.float64)
    manager = trained_manager(model, sessions=1)
    x, y = data(n=16, seed=3, dtype=torch.float64), torch.arange(16) % 3
    bases = subspace_bases(collect_input_covariances(manager, model, x), rho=0.9)
    params = manager.add_session(rank=3, alpha=6.0, generator=gen(99))
    projector = GradientProjector(manager, bases, mode=mode or "onto", constrain_init=constrain_init) \
        if mode else None
    head = nn.Linear(16, 3).double()
    opt = (torch.optim.SGD(params, lr=0.5, momentum=0.9) if optimiser == "sgd"
           else torch.optim.AdamW(params, lr=0.05, weight_decay=0.1))
    if attach and projector is not None:
        projector.attach(opt)
    probe_mode = mode or "complement"
    probes = {n: _protected_inputs(bases[n], probe_mode) for n in manager.modules}
    with torch.no_grad():
        before = {n: m(probes[n]) for n, m in manager.modules.items()}
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(head(model(x).pooled), y).backward()
        opt.step()
    with torch.no_grad():
        after = {n: m(probes[n]) for n, m in manager.modules.items()}
    if projector is not None:
        projector.remove()
    return manager, bases, before, after


def _rel_changes(before: dict, after: dict) -> dict[str, float]:
    return {n: float((after[n] - before[n]).norm() / before[n].norm()) for n in before}


@pytest.mark.parametrize("mode", ["complement", "onto"])
def test_projected_update_leaves_protected_outputs_unchanged(mode):
    manager, bases, before, after = _train_with(mode)
    # The subspaces are proper: both span(U) and its complement are non-trivial.
    assert all(0 < u.shape[1] < u.shape[0] for u in bases.values())
    changes = _rel_changes(before, after)
    assert max(changes.values()) < 1e-6, changes
    # ... while the layers did learn something.
    assert all(m.lora_B[-1].abs().max() > 1e-4 for m in manager.modules.values())


def test_unprojected_update_changes_protected_outputs():
    _, _, before, after = _train_with(None)
    assert min(_rel_changes(before, after).values()) > 1e-4


def test_projecting_only_gradients_is_not_enough_without_constraining_a_init():
    # B moves off zero, so the random initial A leaks into protected inputs: s B' A0 x != 0.
    _, _, before, after = _train_with("complement", constrain_init=False)
    assert min(_rel_changes(before, after).values()) > 1e-4


def test_attach_keeps_the_guarantee_under_adamw():
    _, _, before, after = _train_with("complement", optimiser="adamw", attach=True)
    assert max(_rel_changes(before, after).values()) < 1e-6


def test_projected_gradient_lies_in_the_allowed_subspace():
    model, x = tiny(dtype=torch.float64), data(dtype=torch.float64)
    manager = trained_manager(model, sessions=1)
    bases = subspace_bases(collect_input_covariances(manager, model, x), rho=0.9)
    projector = GradientProjector(manager, bases, mode="complement")
    model(x).pooled.pow(2).sum().backward()
    for name, m in manager.modules.items():
        g = m.lora_A[-1].grad
        assert (g @ bases[name]).abs().max() < 1e-12 * max(1.0, g.abs().max().item())
        assert m.lora_B[-1].grad.abs().max() > 0  # B is not projected
    projector.remove()
    m = manager.modules["blocks.0.attn.q"]
    m.lora_A[-1].grad = None
    model(x).pooled.pow(2).sum().backward()
    assert (m.lora_A[-1].grad @ bases["blocks.0.attn.q"]).abs().max() > 1e-6  # hooks are gone


def test_projector_requires_a_basis_per_layer():
    model = tiny()
    manager = trained_manager(model, sessions=1)
    with pytest.raises(ValueError, match="no projection basis"):
        GradientProjector(manager, {"blocks.0.attn.q": torch.eye(16)})
