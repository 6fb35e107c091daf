"""SimpleCIL: nearest class mean on a frozen pretrained backbone (Zhou et al., 2023).

No training at all: each session adds the prototypes (mean embeddings) of its classes; prediction is
cosine similarity to every prototype. Exemplar-free, so the result does not depend on the session
partition. APER's adapted variant is SimpleCIL after first-session adaptation (see the pace method's
switches).
"""

from __future__ import annotations

from typing import Literal

import torch

from pace.config import MethodConfig
from pace.heads.ncm import NCMHead
from pace.methods.base import Learner, Session, register_method
from pace.methods.common import batch_embeddings, split_embeddings


class SimpleCILConfig(MethodConfig):
    """Nearest class mean (cosine) on frozen backbone embeddings."""

    name: Literal["simplecil"] = "simplecil"


@register_method(SimpleCILConfig)
class SimpleCIL(Learner):
    def __init__(self, cfg, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        self.head = NCMHead(backbone.embed_dim)

    def learn(self, session: Session) -> None:
        self.head.accumulate(split_embeddings(self, session.train), session.train.y, session.num_seen)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.logits(batch_embeddings(self, x).cpu())[:, : self.num_seen]

    def state_dict(self):
        return {**super().state_dict(), "head": self.head.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.head.load_state_dict(state["head"])
