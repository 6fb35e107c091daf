"""Joint training: the non-continual upper bound.

After each session the model is trained on *all* data seen so far (it keeps every training clip, so
it is not a continual learner; it marks the ceiling). Here a linear softmax head is fitted on frozen
embeddings; ``joint_lora`` (methods/sequential_lora.py) also trains LoRA on the backbone (the paper's
"joint training with LoRA" row).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from pace.config import MethodConfig
from pace.methods.base import Session, register_method
from pace.methods.common import EmbeddingLearner, split_embeddings


class JointConfig(MethodConfig):
    """Upper bound: retrain on all data seen so far after every session."""

    name: Literal["joint"] = "joint"
    UPPER_BOUND: ClassVar[bool] = True
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "lr": {"type": "log", "low": 0.001, "high": 0.1},
        "epochs": {"type": "int", "low": 20, "high": 100},
    }
    epochs: int = Field(100, ge=1)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(0.0, ge=0)


@register_method(JointConfig)
class Joint(EmbeddingLearner):
    def __init__(self, cfg, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        self.z = torch.empty(0, backbone.embed_dim)
        self.y = torch.empty(0, dtype=torch.long)
        self.head: torch.nn.Linear | None = None

    def learn(self, session: Session) -> None:
        self.z = torch.cat([self.z, split_embeddings(self, session.train)])
        self.y = torch.cat([self.y, session.train.y])
        self.head = self._fit(session.num_seen, session.index)

    def _fit(self, num_classes: int, index: int) -> torch.nn.Linear:
        # Standardise with statistics of the data seen so far, folded into the head afterwards.
        mu, sd = self.z.mean(0), self.z.std(0).clamp_min(1e-6)
        zn = (self.z - mu) / sd
        g = self.ctx.generator(f"joint-head:{index}")
        head = torch.nn.Linear(self.z.shape[1], num_classes)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.01)
            head.bias.zero_()
        opt = torch.optim.Adam(head.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        for _ in range(self.cfg.epochs):  # full batch: the embeddings fit in memory
            opt.zero_grad()
            F.cross_entropy(head(zn), self.y).backward()
            opt.step()
        folded = torch.nn.Linear(self.z.shape[1], num_classes)
        with torch.no_grad():
            folded.weight.copy_(head.weight / sd)
            folded.bias.copy_(head.bias - (head.weight / sd) @ mu)
        return folded

    def logits_from_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.head(z.cpu())

    def state_dict(self):
        return {**super().state_dict(), "z": self.z, "y": self.y, "head": self.head.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.z, self.y = state["z"], state["y"]
        w = state["head"]["weight"]
        self.head = torch.nn.Linear(w.shape[1], w.shape[0])
        self.head.load_state_dict(state["head"])
