"""SimpleCIL: nearest class mean on a frozen pretrained backbone (Zhou et al., 2023).

No training at all: each session adds the prototypes (mean embeddings) of its classes; prediction is
cosine similarity to every prototype. Exemplar-free, so the result does not depend on the session
partition. APER (Zhou et al., 2024) is the same head after first-session adaptation:
``fsa.enabled: true`` adapts the backbone on session 1 (LoRA + temporary head), then freezes it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from pace.config import MethodConfig
from pace.heads.ncm import NCMHead
from pace.methods.base import Session, register_method
from pace.methods.common import EmbeddingLearner, split_embeddings
from pace.methods.parts import Adapter, FSAConfig, first_session_adaptation, freeze_backbone


class SimpleCILConfig(MethodConfig):
    """Nearest class mean (cosine) on frozen backbone embeddings; APER with fsa.enabled."""

    name: Literal["simplecil"] = "simplecil"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        # SimpleCIL (no adaptation) or APER (first-session adaptation): the search decides
        "fsa.enabled": {"type": "categorical", "values": [False, True]},
        "fsa.train.lr": {"type": "log", "low": 0.001, "high": 0.1, "when": {"fsa.enabled": True}},
        "fsa.train.epochs": {"type": "int", "low": 2, "high": 10, "when": {"fsa.enabled": True}},
    }
    fsa: FSAConfig = Field(default_factory=lambda: FSAConfig(enabled=False))


@register_method(SimpleCILConfig)
class SimpleCIL(EmbeddingLearner):
    def __init__(self, cfg, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        self.head = NCMHead(backbone.embed_dim)
        freeze_backbone(backbone)
        self.adapter = Adapter(backbone, cfg.fsa.lora)

    def learn(self, session: Session) -> None:
        if session.index == 0 and self.cfg.fsa.enabled:
            first_session_adaptation(self, session, self.cfg.fsa, self.adapter)
        self.head.accumulate(split_embeddings(self, session.train), session.train.y, session.num_seen)

    def logits_from_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        return self.head.logits(z.cpu())[:, : self.num_seen]

    def state_dict(self):
        return {**super().state_dict(), "head": self.head.state_dict(), "adapter": self.adapter.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.head.load_state_dict(state["head"])
        self.adapter.load_state_dict(state["adapter"])
