"""Gradient-trained LoRA learners with a growing linear head, one class, three configs:

- ``peft_ft``: sequential LoRA fine-tuning. One LoRA stack on every block keeps training session
  after session together with a head that grows by the new classes; cross-entropy over all seen
  classes on the current data only. No protection: the naive baseline that forgets.
- ``lorasub`` (LoRA-DRS, Liu & Chang, CVPR 2025): a new LoRA stack per session, earlier ones frozen;
  from the second session on its updates are restricted by the subspace of the current data's layer inputs under the
  LoRA-subtracted model (rho 0.99 of the energy; orthogonal to it by default, see PACEConfig's
  projection_mode for why); the loss covers the current session's classes (old logits masked).
  Prediction, as in the official code, is by class prototypes: the mean embedding of each class's
  training clips, taken right after its session and kept (cosine nearest prototype).
- ``joint_lora``: the upper bound. One LoRA stack and the head trained on every clip seen so far
  (it stores them all), after every session.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from pace.config import MethodConfig
from pace.embed import autocast, embed
from pace.heads.linear import LinearHead
from pace.heads.ncm import NCMHead
from pace.methods.base import Learner, Session, Split, register_method
from pace.methods.parts import Adapter, LoRAConfig, TrainConfig, freeze_backbone, train
from pace.peft.projection import GradientProjector, collect_input_covariances, subspace_bases


class _SeqLoRAConfig(MethodConfig):
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=5, lr=0.01))
    head_lr: float = Field(0.01, gt=0)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    blocks: list[int] | None = None  # None = every block


class PEFTFTConfig(_SeqLoRAConfig):
    """Sequential LoRA fine-tuning with a growing linear head (no protection against forgetting)."""

    name: Literal["peft_ft"] = "peft_ft"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"type": "log", "low": 0.001, "high": 0.1},
        "train.epochs": {"type": "int", "low": 1, "high": 8},
        "head_lr": {"type": "log", "low": 0.001, "high": 0.1},
    }


class LoRASubConfig(_SeqLoRAConfig):
    """LoRA-DRS: per-session LoRA with updates projected onto the current data's drift-resistant space."""

    name: Literal["lorasub"] = "lorasub"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"type": "log", "low": 0.001, "high": 0.1},
        "train.epochs": {"type": "int", "low": 1, "high": 8},
        "head_lr": {"type": "log", "low": 0.001, "high": 0.1},
        "rho_svd": {"type": "float", "low": 0.9, "high": 0.999},
    }
    rho_svd: float = Field(0.99, gt=0, le=1)
    energy: Literal["eig", "sv2"] = "eig"
    projection_mode: Literal["onto", "complement"] = "complement"


class JointLoRAConfig(_SeqLoRAConfig):
    """Upper bound: LoRA and head retrained on all data seen so far after every session."""

    name: Literal["joint_lora"] = "joint_lora"
    UPPER_BOUND: ClassVar[bool] = True
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"type": "log", "low": 0.001, "high": 0.1},
        "train.epochs": {"type": "int", "low": 1, "high": 8},
        "head_lr": {"type": "log", "low": 0.001, "high": 0.1},
    }


class SequentialLoRA(Learner):
    new_stack_per_session = False
    project = False
    masked_loss = False
    replay_all = False
    prototype_eval = False

    def __init__(self, cfg, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        if backbone.num_blocks == 0:
            raise ValueError(f"{cfg.name} trains LoRA; backbone {backbone.name!r} has no blocks")
        freeze_backbone(backbone)
        self.adapter = Adapter(backbone, cfg.lora)
        self.adapter.attach(list(range(backbone.num_blocks)) if cfg.blocks is None else cfg.blocks)
        self.head = LinearHead(backbone.embed_dim).to(ctx.device)
        self.prototypes = NCMHead(backbone.embed_dim)  # lorasub's classifier
        self.seen: Split | None = None  # joint_lora only

    def learn(self, session: Session) -> None:
        ctx = self.ctx
        self.head.expand(session.num_seen, ctx.generator(f"head:{session.index}"))
        if self.new_stack_per_session or self.adapter.num_sessions == 0:
            self.adapter.new_session(ctx.generator(f"lora:{session.index}"))
        data = session.train
        if self.replay_all:
            self.seen = data if self.seen is None else _concat(self.seen, data)
            data = self.seen
        projector = None
        if self.project and session.index > 0:  # LoRA-DRS trains the first session unconstrained
            covs = collect_input_covariances(self.adapter.manager, self.backbone, data.x, ctx.eval_batch_size,
                                             ctx.device)
            projector = GradientProjector(self.adapter.manager,
                                          subspace_bases(covs, self.cfg.rho_svd, self.cfg.energy),
                                          mode=self.cfg.projection_mode)
        try:
            self._fit(data, session, projector)
        finally:
            if projector is not None:
                projector.remove()
        if self.new_stack_per_session:
            self.adapter.freeze()
        if self.prototype_eval:
            self.prototypes.accumulate(embed(self.backbone, session.train.x, ctx), session.train.y, session.num_seen)

    def _fit(self, data: Split, session: Session, projector) -> None:
        # lorasub: only the current session's classes compete (old rows get no gradient)
        lo = session.classes[0] if self.masked_loss else 0
        train(self.backbone, _Columns(self.head, lo, session.num_seen), data, self.ctx, self.cfg.train,
              backbone_params=self.adapter.manager.trainable_parameters(), head_lr=self.cfg.head_lr,
              label_offset=lo, purpose=f"train:{session.index}",
              after_step=projector.reproject if projector is not None else None)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(self.ctx):
            z = self.backbone(x.to(self.ctx.device)).pooled.float()
        if self.prototype_eval:
            return self.prototypes.logits(z.cpu())[:, : self.num_seen]
        return self.head(z)[:, : self.num_seen].float()

    def state_dict(self):
        state = {**super().state_dict(), "adapter": self.adapter.state_dict(), "head": self.head.state_dict(),
                 "prototypes": self.prototypes.state_dict()}
        if self.seen is not None:
            state["seen"] = {"x": self.seen.x, "y": self.seen.y, "keys": list(self.seen.keys)}
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.adapter.manager.restore()
        self.adapter = Adapter(self.backbone, self.cfg.lora)
        self.adapter.load_state_dict(state["adapter"])
        if not self.new_stack_per_session:  # the single stack keeps training
            for p in self.adapter.manager.modules.values():
                for a, b in zip(p.lora_A, p.lora_B):
                    a.requires_grad_(True)
                    b.requires_grad_(True)
        self.head.load_state_dict(state["head"])
        self.prototypes.load_state_dict(state["prototypes"])
        if "seen" in state:
            s = state["seen"]
            self.seen = Split(s["x"], s["y"], list(s["keys"]))


class _Columns(nn.Module):
    """The head's logits for classes lo..hi-1 only (a view; the head's parameters are shared)."""

    def __init__(self, head: nn.Module, lo: int, hi: int):
        super().__init__()
        self.head, self.lo, self.hi = head, lo, hi

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)[:, self.lo:self.hi]


def _concat(a: Split, b: Split) -> Split:
    return Split(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]), a.keys + b.keys)


@register_method(PEFTFTConfig)
class PEFTFT(SequentialLoRA):
    pass


@register_method(LoRASubConfig)
class LoRASub(SequentialLoRA):
    new_stack_per_session = True
    project = True
    masked_loss = True
    prototype_eval = True


@register_method(JointLoRAConfig)
class JointLoRA(SequentialLoRA):
    replay_all = True
