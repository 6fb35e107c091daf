"""Per-session LoRA on frozen linear layers (PACE sections 5.2 and 5.4).

Each wrapped layer keeps its pretrained weight ``W0`` frozen and a list of LoRA stacks, one per
adaptation session ``s``: ``A_s`` (r x in, the input-side factor) and ``B_s`` (out x r), with scaling
``alpha_s / r_s``. Only the newest stack is trainable; earlier ones are frozen. Effective weights:

* normal:     ``W = W0 + sum_s scale_s * B_s A_s`` (all stacks)
* subtracted: ``W = W0 - sum_{s frozen} scale_s * B_s A_s`` (the "unlearned" model of LoRA
  subtraction; the trainable stack, if any, is left out, so the map is the same, to roundoff,
  whether the new session's stack, still at B = 0, has been added yet or not)

Only the newest stack can train, so the forward folds ``W0`` and every earlier stack of the current
mode into one weight (float64 sum, cast back) and applies only the newest as a low-rank pair: a
forward costs the same with 1 stack or 300 (``lorasub`` adds one per session), and freezing the
newest stack leaves every output bit as it was. The fold is cached under the version counters and
storage of ``W0`` and of every stack it holds, so an in-place write (``load_state_dict``,
``copy_``), a new stack, a mode switch or a move to another device or dtype rebuilds it; it is
never part of the state dict.

Merging computes the effective weight of the current mode once (float64, cast back) and uses it in
place of the base weight until unmerged. The base ``nn.Linear`` is never written, so unmerging is
exact and the model's state dict (and hence ``Backbone.identity()``) does not depend on merging.
Merged mode is for inference: no gradient reaches the LoRA stacks while merged.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

MODES = ("normal", "subtracted")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus per-session low-rank updates (see module docstring)."""

    #: the layer types this wrapper takes (``pace.peft.lora_conv.LoRAConv`` takes convolutions)
    base_types: tuple[type[nn.Module], ...] = (nn.Linear,)

    def __init__(self, base: nn.Linear):
        super().__init__()
        if not isinstance(base, self.base_types):
            names = " or ".join(f"nn.{t.__name__}" for t in self.base_types)
            raise TypeError(f"{type(self).__name__} wraps {names}, got {type(base).__name__}")
        # Remember the base's flags so ``LoRAManager.restore`` can hand the layer back unchanged.
        self._base_requires_grad = [p.requires_grad for p in base.parameters()]
        base.requires_grad_(False)
        self.base = base
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        self.ranks: list[int] = []
        self.alphas: list[float] = []
        #: whether the newest stack is the trainable one (False after ``freeze_all``)
        self.newest_trainable = False
        self.mode = "normal"
        self._merged_weight: torch.Tensor | None = None
        #: (key, W0 + every stack but the newest, in the current mode) for ``forward``; see ``_folded``
        self._fold: tuple[tuple, torch.Tensor] | None = None

    # ---- structure -------------------------------------------------------------------------

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def num_sessions(self) -> int:
        return len(self.lora_A)

    def scaling(self, s: int) -> float:
        return self.alphas[s] / self.ranks[s]

    def add_session(self, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        """Freeze existing stacks and append a trainable one: A kaiming-uniform, B zeros."""
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self._check_not_merged("add a session")
        self.freeze_all()
        w = self.base.weight
        a = torch.empty(rank, self.in_features, dtype=w.dtype)
        # Same bound as nn.Linear's default init (kaiming uniform, a = sqrt(5)) => U(-1/sqrt(in), ..).
        bound = 1.0 / math.sqrt(self.in_features)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        a = a.to(gen_device).uniform_(-bound, bound, generator=generator)
        self.lora_A.append(nn.Parameter(a.to(w.device)))
        self.lora_B.append(nn.Parameter(torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device)))
        self.ranks.append(int(rank))
        self.alphas.append(float(alpha))
        self.newest_trainable = True

    def freeze_all(self) -> None:
        for p in list(self.lora_A) + list(self.lora_B):
            p.requires_grad_(False)
        self.newest_trainable = False

    def trainable_stack(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(A, B) of the trainable (newest) stack; an error if every stack is frozen."""
        if not self.newest_trainable:
            raise RuntimeError("this LoRALinear has no trainable stack (call add_session first)")
        return self.lora_A[-1], self.lora_B[-1]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.trainable_stack()) if self.newest_trainable else []

    def _frozen_sessions(self) -> range:
        return range(self.num_sessions - 1 if self.newest_trainable else self.num_sessions)

    # ---- modes -------------------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != self.mode:
            self._check_not_merged(f"switch to mode {mode!r}")
        self.mode = mode

    def _coefficients(self) -> list[float]:
        """Signed scale of each stack in the current mode (0 = stack left out)."""
        if self.mode == "normal":
            return [self.scaling(s) for s in range(self.num_sessions)]
        frozen = set(self._frozen_sessions())
        return [-self.scaling(s) if s in frozen else 0.0 for s in range(self.num_sessions)]

    def delta_weight(self, stacks: Sequence[int] | None = None) -> torch.Tensor:
        """sum_s coef_s * B_s A_s in float64 (out x in), for the current mode, over ``stacks``
        (default: all)."""
        w = self.base.weight
        coefs = self._coefficients()
        delta = torch.zeros(self.out_features, self.in_features, dtype=torch.float64, device=w.device)
        for s in range(self.num_sessions) if stacks is None else stacks:
            if coefs[s] != 0.0:
                delta += coefs[s] * (self.lora_B[s].detach().double() @ self.lora_A[s].detach().double())
        return delta

    def effective_weight(self, stacks: Sequence[int] | None = None) -> torch.Tensor:
        """W0 plus ``stacks`` (default: all) in the current mode (detached, base dtype)."""
        w = self.base.weight.detach()
        return (w.double() + self.delta_weight(stacks).reshape(w.shape)).to(w.dtype)

    @property
    def merged(self) -> bool:
        return self._merged_weight is not None

    def merge(self) -> None:
        """Fold the stacks of the current mode into one weight (inference only)."""
        self._merged_weight = self.effective_weight()

    def unmerge(self) -> None:
        self._merged_weight = None

    def _check_not_merged(self, what: str) -> None:
        if self.merged:
            raise RuntimeError(f"cannot {what} while merged; unmerge first")

    # ---- forward -----------------------------------------------------------------------------

    def watch_inputs(self, fn: Callable[[torch.Tensor], None]) -> RemovableHandle:
        """Call ``fn(x)`` with this layer's input on every forward (e.g. to accumulate X^T X)."""
        return self.register_forward_pre_hook(lambda _module, args: fn(args[0]))

    def watch_input_grams(self, fn: Callable[[torch.Tensor, int], None]) -> RemovableHandle:
        """Call ``fn(X^T X, n)`` on every forward: the float64 Gram of the ``n`` input rows the
        LoRA stacks see (tokens here; patches for ``LoRAConv``, which computes it without them)."""

        def rows_gram(x: torch.Tensor) -> None:
            rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
            fn(rows.T @ rows, rows.shape[0])

        return self.watch_inputs(rows_gram)

    def _folded(self, coefs: list[float], stacks: list[int]) -> torch.Tensor:
        """``W0 + sum_{s in stacks} coef_s B_s A_s`` (float64 sum, base dtype), rebuilt only when
        a tensor it was built from changed (version counter or storage) or the stacks did."""
        w = self.base.weight
        tensors = [w] + [t for s in stacks for t in (self.lora_A[s], self.lora_B[s])]
        key = (tuple(coefs[s] for s in stacks), tuple(stacks), w.dtype, w.device,
               tuple((t._version, t.data_ptr()) for t in tensors))
        if self._fold is None or self._fold[0] != key:
            # a normal tensor even when built under inference_mode (evaluation): a later training
            # forward with the same stacks saves it for backward
            with torch.inference_mode(False), torch.no_grad():
                self._fold = (key, self.effective_weight(stacks))
        return self._fold[1]

    def _base_map(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The base layer's operation with ``weight`` in place of its own (subclasses: a conv)."""
        return F.linear(x, weight, self.base.bias)

    def _low_rank(self, x: torch.Tensor, s: int) -> torch.Tensor:
        """Stack ``s``'s unscaled contribution B_s A_s x."""
        return F.linear(F.linear(x, self.lora_A[s]), self.lora_B[s])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._merged_weight is not None:
            return self._base_map(x, self._merged_weight)
        coefs = self._coefficients()
        # The newest stack stays a low-rank pair whether it trains or not, so freezing it does not
        # change a single output bit; all earlier ones are frozen and folded.
        newest = self.num_sessions - 1
        folded = [s for s in range(newest) if coefs[s] != 0.0]
        weight = self._folded(coefs, folded) if folded else self.base.weight
        y = self._base_map(x, weight)
        if newest >= 0 and coefs[newest] != 0.0:
            y = y + coefs[newest] * self._low_rank(x, newest)
        return y

    def forward_unfolded(self, x: torch.Tensor) -> torch.Tensor:
        """The same map with every stack applied as its own low-rank pair (cost grows with the
        stacks): the reference ``forward`` is tested and benchmarked against."""
        y = self.base(x)
        for s, c in enumerate(self._coefficients()):
            if c != 0.0:
                y = y + c * self._low_rank(x, s)
        return y

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, sessions={self.num_sessions}, "
                f"ranks={self.ranks}, mode={self.mode}, merged={self.merged}")

    # ---- state -------------------------------------------------------------------------------

    def lora_state(self) -> dict[str, Any]:
        """The LoRA stacks only, as tensors and plain containers (weights_only-loadable)."""
        return {
            "A": [a.detach().clone() for a in self.lora_A],
            "B": [b.detach().clone() for b in self.lora_B],
            "ranks": list(self.ranks),
            "alphas": list(self.alphas),
            "newest_trainable": bool(self.newest_trainable),
        }

    def load_lora_state(self, state: dict[str, Any]) -> None:
        """Replace every stack by those in ``state`` (shapes checked against the base layer)."""
        self._check_not_merged("load a LoRA state")
        w = self.base.weight
        self.lora_A, self.lora_B = nn.ParameterList(), nn.ParameterList()
        self.ranks, self.alphas = [], []
        for a, b, r, alpha in zip(state["A"], state["B"], state["ranks"], state["alphas"], strict=True):
            if tuple(a.shape) != (r, self.in_features) or tuple(b.shape) != (self.out_features, r):
                raise ValueError(f"LoRA shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit a "
                                 f"{self.in_features}->{self.out_features} layer with rank {r}")
            self.lora_A.append(nn.Parameter(a.to(device=w.device, dtype=w.dtype), requires_grad=False))
            self.lora_B.append(nn.Parameter(b.to(device=w.device, dtype=w.dtype), requires_grad=False))
            self.ranks.append(int(r))
            self.alphas.append(float(alpha))
        self.newest_trainable = bool(state["newest_trainable"]) and self.num_sessions > 0
        if self.newest_trainable:
            self.lora_A[-1].requires_grad_(True)
            self.lora_B[-1].requires_grad_(True)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


#: the LoRA wrapper for each kind of base layer; pace.peft.lora_conv adds Conv1d/Conv2d (the pace.peft
#: package imports it, so it is registered whenever this module is in use)
WRAPPERS: dict[type[nn.Module], type[LoRALinear]] = {nn.Linear: LoRALinear}


def register_wrapper(base_type: type[nn.Module], wrapper: type[LoRALinear]) -> None:
    WRAPPERS[base_type] = wrapper


def _wrap(layer: nn.Module, name: str) -> LoRALinear:
    for base_type, wrapper in WRAPPERS.items():
        if isinstance(layer, base_type):
            return wrapper(layer)
    kinds = ", ".join(f"nn.{t.__name__}" for t in WRAPPERS)
    raise TypeError(f"LoRA target {name!r} is {type(layer).__name__}, not {kinds}")


class LoRAManager:
    """Wraps named linear layers of ``model`` in place and drives their LoRA sessions together.

    ``target_names`` are qualified module names, e.g. from ``Backbone.lora_target_names``. A name
    that already holds a LoRALinear is adopted as is. The base parameters of wrapped layers are
    frozen; the rest of the model is left untouched.
    """

    def __init__(self, model: nn.Module, target_names: Sequence[str]):
        if not target_names:
            raise ValueError("LoRAManager needs at least one target layer")
        self.model = model
        self.modules: dict[str, LoRALinear] = {}
        for name in dict.fromkeys(target_names):  # keep order, drop duplicates (fused qkv)
            layer = model.get_submodule(name)
            if not isinstance(layer, LoRALinear):
                layer = _wrap(layer, name)
                _set_submodule(model, name, layer)
            self.modules[name] = layer

    @property
    def num_sessions(self) -> int:
        counts = {m.num_sessions for m in self.modules.values()}
        if not counts:
            return 0
        if len(counts) != 1:
            raise RuntimeError(f"wrapped layers disagree on the number of sessions: {sorted(counts)}")
        return counts.pop()

    def add_session(self, rank: int = 8, alpha: float = 16.0,
                    generator: torch.Generator | None = None) -> list[nn.Parameter]:
        """Freeze all stacks, add a new trainable one on every layer; returns its parameters.

        Layers draw their A matrices from ``generator`` in ``modules`` order, so a seeded generator
        gives the same initialisation every run.
        """
        for m in self.modules.values():
            m.add_session(rank, alpha, generator)
        return self.trainable_parameters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules.values() for p in m.trainable_parameters()]

    def freeze_all(self) -> None:
        for m in self.modules.values():
            m.freeze_all()

    @contextmanager
    def subtracted(self) -> Iterator["LoRAManager"]:
        """Run the "unlearned" model W0 - sum of frozen stacks inside the block."""
        previous = {n: m.mode for n, m in self.modules.items()}
        for m in self.modules.values():
            m.set_mode("subtracted")
        try:
            yield self
        finally:
            for n, m in self.modules.items():
                m.set_mode(previous[n])

    @contextmanager
    def merged(self) -> Iterator["LoRAManager"]:
        """Fold the stacks into one weight per layer for fast inference inside the block."""
        for m in self.modules.values():
            m.merge()
        try:
            yield self
        finally:
            for m in self.modules.values():
                m.unmerge()

    def state_dict(self) -> dict[str, Any]:
        """Only the LoRA tensors (plus ranks/alphas), keyed by layer name."""
        return {"layers": {n: m.lora_state() for n, m in self.modules.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        layers = state["layers"]
        if set(layers) != set(self.modules):
            missing, extra = set(self.modules) - set(layers), set(layers) - set(self.modules)
            raise ValueError(f"LoRA state does not match the wrapped layers: "
                             f"missing {sorted(missing)}, unexpected {sorted(extra)}")
        for n, m in self.modules.items():
            m.load_lora_state(layers[n])

    def restore(self) -> None:
        """Put the original nn.Linear layers back (LoRA stacks are dropped, base weights intact)."""
        for name, m in self.modules.items():
            for p, flag in zip(m.base.parameters(), m._base_requires_grad):
                p.requires_grad_(flag)
            _set_submodule(self.model, name, m.base)
        self.modules = {}
