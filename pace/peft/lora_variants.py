"""LoRA variants that the per-session stacks of ``pace.peft.lora`` cannot express.

``LoRALinear`` scales each stack by a fixed float (alpha / r). SD-LoRA (Wu et al., ICLR 2025) needs
a *learnable* magnitude per stack and a normalised, frozen direction, so it gets its own wrapper:

``DecoupledLoRALinear`` keeps the pretrained ``W0`` frozen and, per session ``k``, a pair ``A_k``
(r_k x in), ``B_k`` (out x r_k) and a magnitude ``alpha_k`` (a 0-d Parameter, possibly the same
object in every wrapped layer). The newest stack, while it trains, enters as ``alpha_t B_t A_t``
(unnormalised, as in the official code: ``B_t`` starts at zero, so a normalised direction would be
0/0). ``finalize`` freezes ``A_t`` and ``B_t`` and records ``n_t = ||B_t A_t||_F`` (or, as the
official code divides, ``||B_t||_F ||A_t||_F``); from then on the layer computes

    W = W0 + sum_k alpha_k * B_k A_k / n_k

with every direction ``B_k A_k / n_k`` fixed and every ``alpha_k`` still a Parameter. A direction
with ``n_k = 0`` (a stack that never trained) contributes nothing.

The frozen stacks are folded into one weight per forward (``W0 + (B_cat * s) A_cat``, ``s`` the
per-row scales ``alpha_k / n_k``): differentiable in the magnitudes, and one out x in product
instead of a low-rank pair per session. The norms live in a buffer so the backbone's state dict, and
hence the embedding cache's key, changes when a stack is finalised.

``linear_lora_targets`` resolves and checks the layers a method adapts (InfLoRA and SD-LoRA): nn.Linear
only, and each must run its own forward (checked with one silent clip), since a backbone whose
attention reads the projection weights directly (WavLM) would silently bypass any wrapper.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pace.peft.lora import _set_submodule

Norm = Literal["product", "factors"]


def linear_lora_targets(method: str, backbone, blocks: list[int] | None, roles: Sequence[str],
                        rank: int) -> list[str]:
    """Qualified names of the nn.Linear layers ``roles`` names in ``blocks``; a one-line ValueError
    naming the method and backbone where the method cannot apply (no blocks, non-linear targets,
    a rank above a layer's input width)."""
    if backbone.num_blocks == 0:
        raise ValueError(f"{method}: backbone {backbone.name!r} has no transformer blocks to put LoRA on")
    names = backbone.lora_target_names(blocks, list(roles))
    for name in names:
        layer = backbone.get_submodule(name)
        base = getattr(layer, "base", layer)  # already wrapped by another learner on this backbone
        if not isinstance(base, nn.Linear):
            raise ValueError(f"{method}: backbone {backbone.name!r} has no attention/MLP linear layers "
                             f"({name} is {type(base).__name__}); {method} adapts nn.Linear layers only")
        if rank > min(base.in_features, base.out_features):
            raise ValueError(f"{method}: rank {rank} exceeds the width of {name} on {backbone.name!r}")
    _check_layers_are_called(method, backbone, names)
    return names


@torch.no_grad()
def _check_layers_are_called(method: str, backbone, names: list[str]) -> None:
    """One forward of a silent clip: every target must run its own forward, else a wrapper there would
    be bypassed (WavLM's attention reads q/k/v/out weights straight into a fused attention call)."""
    called: set[str] = set()
    handles = [backbone.get_submodule(n).register_forward_pre_hook(lambda *_, n=n: called.add(n)) for n in names]
    p = next(backbone.parameters())
    was_training = backbone.training
    try:
        backbone.eval()
        backbone(torch.zeros(1, *backbone.frontend.shape, device=p.device, dtype=p.dtype))
    finally:
        backbone.train(was_training)
        for h in handles:
            h.remove()
    skipped = [n for n in names if n not in called]
    if skipped:
        raise ValueError(f"{method}: backbone {backbone.name!r} computes {skipped[0]} without calling that layer "
                         f"(its attention reads the weights directly), so a LoRA there would be bypassed; "
                         f"choose other targets (e.g. fc1, fc2)")


def direction_norm(a: torch.Tensor, b: torch.Tensor, norm: Norm) -> float:
    """``||B A||_F`` (SD-LoRA's formula) or ``||B||_F ||A||_F`` (what the official code divides by), float64."""
    a64, b64 = a.detach().double(), b.detach().double()
    if norm == "product":
        return float(torch.linalg.matrix_norm(b64 @ a64))
    if norm == "factors":
        return float(torch.linalg.matrix_norm(b64) * torch.linalg.matrix_norm(a64))
    raise ValueError(f"norm must be 'product' or 'factors', got {norm!r}")


class DecoupledLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus SD-LoRA stacks: fixed directions, learnable magnitudes."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"DecoupledLoRALinear wraps nn.Linear, got {type(base).__name__}")
        self._base_requires_grad = [p.requires_grad for p in base.parameters()]
        base.requires_grad_(False)
        self.base = base
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        self.magnitudes = nn.ParameterList()
        self.register_buffer("norms", torch.zeros(0, dtype=torch.float64))
        #: the newest stack still trains (enters unnormalised); False once finalised
        self.newest_trainable = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def num_sessions(self) -> int:
        return len(self.lora_A)

    def add_session(self, rank: int, magnitude: nn.Parameter, generator: torch.Generator | None = None) -> None:
        """Append a trainable stack: A ~ U(+-1/sqrt(in)) (nn.Linear's kaiming default), B = 0."""
        if self.newest_trainable:
            raise RuntimeError("finalize the newest stack before adding another")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        w = self.base.weight
        bound = 1.0 / math.sqrt(self.in_features)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        a = torch.empty(rank, self.in_features, dtype=w.dtype, device=gen_device).uniform_(-bound, bound,
                                                                                         generator=generator)
        self.lora_A.append(nn.Parameter(a.to(w.device)))
        self.lora_B.append(nn.Parameter(torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device)))
        self.magnitudes.append(magnitude)
        self.norms = torch.cat([self.norms, self.norms.new_zeros(1)])
        self.newest_trainable = True

    @torch.no_grad()
    def finalize(self, norm: Norm) -> float:
        """Freeze the newest stack's direction and record its norm (returned)."""
        if not self.newest_trainable:
            raise RuntimeError("no trainable stack to finalize")
        a, b = self.lora_A[-1], self.lora_B[-1]
        a.requires_grad_(False)
        b.requires_grad_(False)
        n = direction_norm(a, b, norm)
        norms = self.norms.clone()
        norms[-1] = n
        self.norms = norms
        self.newest_trainable = False
        return n

    def _frozen(self) -> range:
        return range(self.num_sessions - 1 if self.newest_trainable else self.num_sessions)

    def coefficient(self, k: int) -> torch.Tensor:
        """The factor stack ``k``'s B_k A_k enters with: alpha_k / n_k once frozen, alpha_t while training."""
        mag = self.magnitudes[k]
        if self.newest_trainable and k == self.num_sessions - 1:
            return mag
        n = self.norms[k]  # tensor ops: no host sync per forward on a GPU
        inv = torch.where(n > 0, n.reciprocal(), torch.zeros_like(n))
        return mag * inv.to(mag.dtype)

    @torch.no_grad()
    def direction(self, k: int) -> torch.Tensor:
        """``B_k A_k / n_k`` (float64) of a finalised stack; zeros if it never trained."""
        if k not in self._frozen():
            raise ValueError(f"stack {k} is still training: it has no fixed direction yet")
        d = self.lora_B[k].double() @ self.lora_A[k].double()
        n = float(self.norms[k])
        return d / n if n > 0 else torch.zeros_like(d)

    @torch.no_grad()
    def stack_delta(self, k: int) -> torch.Tensor:
        """Stack ``k``'s contribution to the weight, float64 (out x in)."""
        return float(self.coefficient(k).detach()) * (self.lora_B[k].double() @ self.lora_A[k].double())

    @torch.no_grad()
    def effective_weight(self) -> torch.Tensor:
        """``W0 + sum_k`` (contribution of stack k), float64."""
        w = self.base.weight.double()
        for k in range(self.num_sessions):
            w = w + self.stack_delta(k)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.base.weight
        frozen = list(self._frozen())
        if frozen:
            # Fold the frozen directions into one weight, outside autocast so the sum stays in the
            # weight's dtype; gradients still reach every magnitude through the row scales.
            with torch.autocast(device_type=w.device.type, enabled=False):
                scales = torch.cat([self.coefficient(k).to(w.dtype).expand(self.lora_A[k].shape[0])
                                    for k in frozen])
                a_cat = torch.cat([self.lora_A[k] for k in frozen])
                b_cat = torch.cat([self.lora_B[k] for k in frozen], dim=1)
                w = w + (b_cat * scales) @ a_cat
        y = F.linear(x, w, self.base.bias)
        if self.newest_trainable:
            t = self.num_sessions - 1
            y = y + self.magnitudes[t] * F.linear(F.linear(x, self.lora_A[t]), self.lora_B[t])
        return y

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, sessions={self.num_sessions}, "
                f"ranks={[int(a.shape[0]) for a in self.lora_A]}, training={self.newest_trainable}")


class DecoupledLoRAManager:
    """Wraps named linear layers of ``model`` in ``DecoupledLoRALinear`` and drives their sessions.

    ``shared=True`` gives every wrapped layer the same magnitude Parameter per session (the official
    code's one scalar per task); ``False`` one magnitude per layer and session.
    """

    def __init__(self, model: nn.Module, target_names: Sequence[str], shared: bool = False):
        if not target_names:
            raise ValueError("DecoupledLoRAManager needs at least one target layer")
        self.model = model
        self.shared = bool(shared)
        self.modules: dict[str, DecoupledLoRALinear] = {}
        for name in dict.fromkeys(target_names):  # fused qkv: q/k/v name one layer
            layer = model.get_submodule(name)
            if not isinstance(layer, DecoupledLoRALinear):
                layer = DecoupledLoRALinear(layer)
                _set_submodule(model, name, layer)
            self.modules[name] = layer

    @property
    def num_sessions(self) -> int:
        counts = {m.num_sessions for m in self.modules.values()}
        if len(counts) != 1:
            raise RuntimeError(f"wrapped layers disagree on the number of sessions: {sorted(counts)}")
        return counts.pop()

    def _magnitude(self, value: float, like: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(torch.tensor(float(value), dtype=like.dtype, device=like.device))

    def add_session(self, rank: int, magnitude_init: float, generator: torch.Generator | None = None) -> None:
        """A new trainable stack on every layer (A drawn from ``generator`` in ``modules`` order)."""
        first = next(iter(self.modules.values())).base.weight
        shared = self._magnitude(magnitude_init, first) if self.shared else None
        for m in self.modules.values():
            m.add_session(rank, shared if shared is not None else self._magnitude(magnitude_init, m.base.weight),
                          generator)

    def magnitudes(self) -> list[nn.Parameter]:
        """Every magnitude Parameter once (shared ones are one object in every layer)."""
        seen: dict[int, nn.Parameter] = {}
        for m in self.modules.values():
            for p in m.magnitudes:
                seen.setdefault(id(p), p)
        return list(seen.values())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The newest stack's A and B, and every session's magnitude (all keep learning)."""
        stacks = [p for m in self.modules.values() if m.newest_trainable for p in (m.lora_A[-1], m.lora_B[-1])]
        for p in self.magnitudes():
            p.requires_grad_(True)
        return stacks + self.magnitudes()

    @torch.no_grad()
    def finalize(self, norm: Norm, keep_function: bool) -> None:
        """Fix the newest directions. ``keep_function`` rescales each layer's new magnitude by its
        norm (alpha_t <- alpha_t n_t), so the layer computes exactly what it computed before; shared
        magnitudes cannot follow per-layer norms and keep their trained value."""
        for m in self.modules.values():
            n = m.finalize(norm)
            if keep_function and not self.shared:
                m.magnitudes[-1].mul_(n)

    @torch.no_grad()
    def reset_magnitudes(self, value: float) -> None:
        """Every magnitude back to ``value`` (the official code rebuilds them at 0.8 each task)."""
        for p in self.magnitudes():
            p.fill_(value)

    def freeze_magnitudes(self) -> None:
        for p in self.magnitudes():
            p.requires_grad_(False)

    def state_dict(self) -> dict[str, Any]:
        return {"shared": self.shared, "layers": {
            n: {"A": [a.detach().clone() for a in m.lora_A], "B": [b.detach().clone() for b in m.lora_B],
                "magnitudes": [p.detach().clone() for p in m.magnitudes], "norms": m.norms.clone(),
                "newest_trainable": bool(m.newest_trainable)}
            for n, m in self.modules.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        layers = state["layers"]
        if set(layers) != set(self.modules):
            raise ValueError("SD-LoRA state does not match the wrapped layers: "
                             f"{sorted(set(layers) ^ set(self.modules))}")
        if bool(state["shared"]) != self.shared:
            raise ValueError("SD-LoRA state has other magnitude sharing than this manager")
        shared: list[nn.Parameter] | None = None
        for name, m in self.modules.items():
            s, w = layers[name], m.base.weight
            m.lora_A = nn.ParameterList([nn.Parameter(a.to(w), requires_grad=False) for a in s["A"]])
            m.lora_B = nn.ParameterList([nn.Parameter(b.to(w), requires_grad=False) for b in s["B"]])
            if self.shared:  # one object per session in every layer, as add_session made them
                shared = shared or [self._magnitude(float(v), w) for v in s["magnitudes"]]
                m.magnitudes = nn.ParameterList(shared)
            else:
                m.magnitudes = nn.ParameterList([self._magnitude(float(v), w) for v in s["magnitudes"]])
            m.norms = s["norms"].to(device=w.device, dtype=torch.float64).clone()
            m.newest_trainable = bool(s["newest_trainable"]) and m.num_sessions > 0
            if m.newest_trainable:
                m.lora_A[-1].requires_grad_(True)
                m.lora_B[-1].requires_grad_(True)

    def restore(self) -> None:
        """Put the original nn.Linear layers back."""
        for name, m in self.modules.items():
            for p, flag in zip(m.base.parameters(), m._base_requires_grad):
                p.requires_grad_(flag)
            _set_submodule(self.model, name, m.base)
        self.modules = {}
