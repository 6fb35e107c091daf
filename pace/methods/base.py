"""The learner contract (docs/design.md) and what the runner hands a learner.

A learner adapts whatever its method adapts in ``learn(session)`` and predicts logits over every
class seen so far. It never evaluates, logs or seeds itself: the runner owns the session loop,
evaluation, checkpoints and reporting, and gives the learner a Context with its device, batch sizes,
seeded generators and the feature cache.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from pace.backbones.base import Backbone
from pace.config import MethodConfig, Seeds
from pace.registry import METHODS
from pace.store import LazyRows


@dataclass
class Split:
    #: frontend outputs, (N, *frontend.shape): a tensor, or (from the feature store) a LazyRows view
    #: that reads rows when indexed and loads only this split's rows when used as a whole tensor
    x: torch.Tensor
    y: torch.Tensor  # global class ids (position in the class order), int64 (N,)
    keys: list[str]  # clip identities, for caches

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: torch.Tensor | list[int]) -> "Split":
        idx = torch.as_tensor(idx, dtype=torch.long)
        x = self.x.take(idx.numpy()) if type(self.x) is LazyRows else self.x[idx]
        return Split(x, self.y[idx], [self.keys[i] for i in idx.tolist()])


@dataclass
class Session:
    index: int  # 0-based
    classes: list[int]  # the new classes of this session (global ids, contiguous)
    num_seen: int  # classes seen after this session: ids 0..num_seen-1
    train: Split
    val: Split | None = None  # carved from training data, for hyperparameter choices


@dataclass
class Context:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 24
    eval_batch_size: int = 64
    seeds: Seeds = field(default_factory=Seeds)
    cache: Any = None  # pace.cache.TensorCache or None
    progress: bool = False
    bf16: bool = True
    #: load a stage's stored outcome when a trial with the same inputs computed it (needs ``cache``)
    reuse_stages: bool = False
    #: counters the runner reads after each session (forward/backward samples, ...)
    counters: dict[str, int] = field(default_factory=dict)
    #: what the learner measured about its own adaptation this session (pace.methods.diagnostics);
    #: the runner resets it before ``learn`` and copies it into ``SessionResult.diagnostics``
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def generator(self, purpose: str, device: str | torch.device = "cpu") -> torch.Generator:
        """A generator seeded from the init seed and a purpose name, so parts never share streams."""
        digest = hashlib.sha256(f"{self.seeds.init}:{purpose}".encode()).digest()
        g = torch.Generator(device=device)
        g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        return g

    def count(self, key: str, n: int) -> None:
        self.counters[key] = self.counters.get(key, 0) + int(n)


class Learner(ABC):
    #: set by @register_method
    config_cls: ClassVar[type[MethodConfig]]
    #: stage -> top-level method config fields that do not influence that stage (pace.methods.stages):
    #: the stage's stored outcome is shared by configs that differ only in them. Undeclared = none.
    STAGE_DOWNSTREAM: ClassVar[dict[str, frozenset[str]]] = {}
    #: its adapters take nn.Linear layers only (pace.peft.lora_variants), so it refuses a backbone
    #: whose blocks are convolutions (Backbone.linear_blocks False); the study pre-flight reads it
    LINEAR_LAYERS_ONLY: ClassVar[bool] = False

    def __init__(self, cfg: MethodConfig, backbone: Backbone, ctx: Context):
        self.cfg = cfg
        self.backbone = backbone
        self.ctx = ctx
        self.num_seen = 0

    @abstractmethod
    def learn(self, session: Session) -> None: ...

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over classes 0..num_seen-1 for a batch of frontend outputs (on any device)."""

    def predict_split(self, split: Split) -> torch.Tensor:
        """Logits for a whole split (the runner's evaluation); batches ``predict`` by default."""
        bs = self.ctx.eval_batch_size
        return torch.cat([self.predict(split.x[s:s + bs].to(self.ctx.device)).cpu()
                          for s in range(0, len(split), bs)])

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain containers only: checkpoints load with ``weights_only=True``."""
        return {"num_seen": self.num_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_seen = int(state["num_seen"])


def register_method(config_cls: type[MethodConfig]) -> Callable[[type[Learner]], type[Learner]]:
    """Class decorator: the learner joins the method registry under its config's ``name``."""

    def deco(learner_cls: type[Learner]) -> type[Learner]:
        learner_cls.config_cls = config_cls
        METHODS.add(config_cls.model_fields["name"].default, learner_cls)
        return learner_cls

    return deco


def build_learner(cfg: MethodConfig, backbone: Backbone, ctx: Context) -> Learner:
    return METHODS.get(cfg.name)(cfg, backbone, ctx)
