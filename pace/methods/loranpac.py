"""LoRanPAC (Peng, Elenter, Agterberg, Ribeiro, Vidal; ICLR 2025, "LoRanPAC: Low-rank Random Features
and Pre-trained Models for Bridging Theory and Practice in Continual Learning"), checked against the
official code github.com/liangzu/loranpac (commit 32782f9, 18 May 2025: ``models/tsvd.py``,
``models/tsvd_adapter.py``, ``TSVDNet`` in ``utils/inc_net.py``, ``exps/tsvd``).

As RanPAC: frozen embeddings -> fixed random projection (N(0, 1) entries, unscaled, ReLU) ->
least squares onto one-hot targets over the classes seen. Instead of a ridge strength chosen per
session, the solution is stabilised by truncating the SVD of the random-feature matrix: after n
training clips the top ``min(round(0.75 n), rank cap)`` singular directions are kept
(``truncate_percent`` 25), the SVD is updated incrementally as sessions arrive, and the classifier
is ``V diag(1 / s^2) V^T H^T Y`` at ridge 0 (``pace.heads.truncated_svd``). Optional first-session
adaptation (the official ``tsvd_adapter``) adapts the backbone on session 1, then freezes it.

Where ours departs from the official code:

- Audio backbone (EAT, Whisper, ...; their pooled embedding) instead of an ImageNet ViT-B/16.
- Random features: ``proj_dim`` 8192 by default (the official configs use E = 100,000; 150,000 on
  CDDB) so the float64 basis fits a CPU; set ``head.proj_dim`` to the official value on a GPU. The
  rank cap rule is the official ``min(rank, round(E * 0.75))`` with ``rank`` 10,000, so at E = 8192 the
  cap is 6144.
- Float64 throughout (the official code: float32 on the GPU), rows folded in split order (the
  official loader shuffles them; the order only matters where a session exceeds ``flush_rows``), and
  singular values at pinv's roundoff tolerance are dropped (the official code keeps them and would
  divide by their square at ridge 0 on rank-deficient features, e.g. duplicated clips).
- First-session adaptation is off by default (``tsvd.py``, the method as described in the paper).
  When on, it is the shared LoRA FSA (``pace.methods.parts.first_session_adaptation``: LoRA on every
  block through a cosine head on the embedding, SGD without a schedule) instead of the official
  AdaptFormer adapter trained for 20 epochs with a cosine schedule through a cosine head on the
  E-dimensional random features.
- The ``coslinear`` inference option and the spectrum dumps of the official code are left out (every
  released config has ``coslinear: false``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from pace.config import MethodConfig, Strict
from pace.heads.analytic import RandomProjection
from pace.heads.truncated_svd import TruncatedSVDHead
from pace.methods.base import Session, register_method
from pace.methods.parts import AnalyticConfig, FSAConfig
from pace.methods.ranpac import FirstSessionAdaptedLearner


class TSVDHeadConfig(Strict):
    """Random projection + truncated-SVD least squares (the official ``E``, ``use_relu``,
    ``truncate_percent``, ``rank``, ``ridge``)."""

    proj_dim: int = Field(8192, ge=1)
    activation: Literal["relu", "identity"] = "relu"
    scale: float = Field(1.0, gt=0)
    truncate_percent: float = Field(25.0, ge=0, lt=100)
    #: cap on the kept rank (None: only round(proj_dim * (1 - truncate_percent / 100)) caps it)
    rank: int | None = Field(10_000, ge=1)
    #: added to s^2 before inverting (0 in every official config: truncation alone regularises)
    ridge: float = Field(0.0, ge=0)
    #: buffered rows are folded into the SVD once this many have gathered (official: 10,000)
    flush_rows: int = Field(10_000, ge=1)


class LoRanPACConfig(MethodConfig):
    """Random features + incrementally truncated SVD least squares on a frozen backbone (LoRanPAC)."""

    name: Literal["loranpac"] = "loranpac"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "head.truncate_percent": {"type": "float", "low": 5.0, "high": 60.0},
    }
    fsa: FSAConfig = Field(default_factory=lambda: FSAConfig(enabled=False))
    head: TSVDHeadConfig = Field(default_factory=TSVDHeadConfig)


#: rows projected at a time (bounds the (chunk, proj_dim) float64 temporaries)
PROJECT_CHUNK = 2048


@register_method(LoRanPACConfig)
class LoRanPAC(FirstSessionAdaptedLearner):
    STAGE_DOWNSTREAM = {"fsa": frozenset({"head"})}

    def __init__(self, cfg, backbone, ctx):
        if cfg.fsa.enabled and backbone.num_blocks == 0:
            raise ValueError(f"loranpac: backbone {backbone.name!r} has no transformer blocks for first-session "
                             "LoRA adaptation (set method.fsa.enabled: false)")
        super().__init__(cfg, backbone, ctx)
        h = cfg.head
        self.proj = RandomProjection(backbone.embed_dim, h.proj_dim, h.activation, h.scale, ctx.seeds.init)
        self.proj.to(ctx.device)
        self.head = TruncatedSVDHead(h.proj_dim, h.truncate_percent, h.rank, h.ridge, h.flush_rows, device=ctx.device)

    def probe_config(self) -> AnalyticConfig:
        # the held-out probe is a ridge head on the same random features (a feature-quality measure)
        h = self.cfg.head
        return AnalyticConfig(proj_dim=h.proj_dim, activation=h.activation, scale=h.scale)

    def fit_head(self, z: torch.Tensor, session: Session) -> None:
        y = session.train.y.to(self.ctx.device)
        self.head.expand(session.num_seen)
        for s in range(0, len(y), PROJECT_CHUNK):
            self.head.accumulate(self.proj(z[s:s + PROJECT_CHUNK].float()), y[s:s + PROJECT_CHUNK], session.num_seen)
        self.head.solve()
        self.ctx.diagnostics.update({
            "tsvd_rank": self.head.kept,
            "tsvd_sv_min": float(self.head.s[-1]) if self.head.kept else 0.0,
            "tsvd_discarded_sv_max": self.head.last_discarded,
        })

    def logits_from_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        out = [self.head.logits(self.proj(z[s:s + PROJECT_CHUNK].to(self.ctx.device).float()))
               for s in range(0, len(z), PROJECT_CHUNK)]
        return torch.cat(out)[:, : self.num_seen] if out else z.new_zeros(0, self.num_seen, dtype=torch.float64)

    def state_dict(self):
        return {**super().state_dict(), "adapter": self.adapter.state_dict(), "proj": self.proj.state_dict(),
                "head": self.head.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.adapter.load_state_dict(state["adapter"])
        self.proj.load_state_dict(state["proj"])
        self.head.load_state_dict(state["head"])
