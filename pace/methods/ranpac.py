"""RanPAC (McDonnell et al., NeurIPS 2023), as in its official code, on an audio backbone.

Session 1: optional first-session adaptation (FSA; the official code trains an adapter/SSF/VPT module
through a cosine head; here LoRA on every block through a cosine head), then the backbone is frozen.
Every session: frozen embeddings -> fixed random projection (N(0, 1), ReLU, M = 8192 here as in PACE)
-> cumulative Gram statistics; the ridge strength is selected on the current session only (first 80 %
of its shuffled training clips fit, last 20 % validate, 17 values 1e-8..1e8, lowest MSE), then the
cumulative system is solved. The head is the inner product with the ridge weights.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from pace.config import MethodConfig
from pace.methods.base import Session, register_method
from pace.methods.common import EmbeddingLearner, split_embeddings
from pace.methods.diagnostics import embeddings_before, not_adapted, record_adaptation
from pace.methods.parts import (Adapter, AnalyticClassifier, AnalyticConfig, FSAConfig,
                                first_session_adaptation, freeze_backbone)


class RanPACConfig(MethodConfig):
    """Random projection + ridge head on a backbone adapted on the first session (RanPAC)."""

    name: Literal["ranpac"] = "ranpac"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "fsa.train.lr": {"type": "log", "low": 0.001, "high": 0.1},
        "fsa.train.epochs": {"type": "int", "low": 2, "high": 10},
    }
    fsa: FSAConfig = Field(default_factory=FSAConfig)
    analytic: AnalyticConfig = Field(default_factory=AnalyticConfig)


class FirstSessionAdaptedLearner(EmbeddingLearner):
    """Optional FSA (``cfg.fsa``) on session 1, then the backbone stays frozen and every session fits a
    head on its embeddings (``fit_head``). RanPAC, ACL and LoRanPAC differ only in that head."""

    def __init__(self, cfg, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        freeze_backbone(backbone)
        self.adapter = Adapter(backbone, cfg.fsa.lora)

    def probe_config(self) -> AnalyticConfig:
        """The analytic head the adaptation diagnostics measure the features with."""
        raise NotImplementedError

    def fit_head(self, z: torch.Tensor, session: Session) -> None:
        raise NotImplementedError

    def learn(self, session: Session) -> None:
        fsa = session.index == 0 and self.cfg.fsa.enabled
        if fsa:
            z_before = embeddings_before(self, session)
            first_session_adaptation(self, session, self.cfg.fsa, self.adapter)
        z = split_embeddings(self, session.train).to(self.ctx.device)
        if fsa:
            record_adaptation(self, session, z_before, z.cpu(), "fsa", self.probe_config())
        else:
            not_adapted(self.ctx)
        self.fit_head(z, session)


class AnalyticLearner(FirstSessionAdaptedLearner):
    """Shared by RanPAC and ACL: optional FSA on session 1, then analytic updates only."""

    STAGE_DOWNSTREAM = {"fsa": frozenset({"analytic"})}

    def __init__(self, cfg, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        self.classifier = AnalyticClassifier(backbone.embed_dim, cfg.analytic, seed=ctx.seeds.init)
        self.classifier.to(ctx.device)

    def probe_config(self) -> AnalyticConfig:
        return self.cfg.analytic

    def fit_head(self, z: torch.Tensor, session: Session) -> None:
        self.classifier.fit_session(z, session.train.y.to(self.ctx.device), session.num_seen,
                                    self.ctx.generator(f"ridge:{session.index}"))
        self.ctx.diagnostics.update(self.classifier.ridge_diagnostics())

    def logits_from_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier.logits(z)[:, : self.num_seen]

    def state_dict(self):
        return {**super().state_dict(), "adapter": self.adapter.state_dict(),
                "classifier": self.classifier.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.adapter.load_state_dict(state["adapter"])
        self.classifier.load_state_dict(state["classifier"])


@register_method(RanPACConfig)
class RanPAC(AnalyticLearner):
    pass
