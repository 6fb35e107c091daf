"""InfLoRA: interference-free low-rank adaptation (Liang & Li, CVPR 2024), on an audio backbone.

Checked against the official code, github.com/liangyanshuo/InfLoRA at commit e08b00e (2025-03-13):
``methods/inflora.py``, ``models/vit_inflora.py`` (Attention_LoRA), ``models/sinet_inflora.py``,
``configs/*_inflora.json``.

Session t, for every adapted layer (a new LoRA branch ``B_t A_t`` per session, added as is):

1. Input covariance ``C_t = (1/n) sum x x^T`` over every token of the session's training clips, under
   the model as it stands (earlier branches in, the new one not yet there).
2. Design the down-projection before training: ``A_t`` = the top-r left singular vectors of
   ``(I - U U^T) C_t``, transposed, divided by sqrt(3); ``U`` is the protected basis of earlier
   sessions' inputs (empty in session 1, so ``A_1`` spans the top of ``C_1``). The rows of ``A_t`` are
   orthogonal to span(U), so ``B_t A_t x = 0`` for every x in span(U) whatever ``B_t`` becomes: the
   new branch cannot change the layer's output on the inputs the basis protects.
3. Train ``B_t`` (from zero) and the session's own linear classifier with cross-entropy over the
   session's classes. ``A_t`` stays frozen; earlier branches and classifiers are frozen.
4. Recompute ``C_t`` with the trained model and grow ``U`` by GPM's energy criterion (DualGPM in the
   code) at the threshold ``eps_t = eps_begin + (eps_end - eps_begin) t / T``.

Prediction: pooled features with every branch in, the logits of all sessions' classifiers concatenated.

Where ours departs from the official code:

- Audio backbones instead of ViT-B/16; the branches sit on k and v of every block as in the code
  (``targets``). On fused-qkv backbones (EAT) k and v are one fused layer, so the branch there also
  moves q. Rank 10, no alpha/r scaling, A scaled by 1/sqrt(3): as in the code. Where k and v are
  separate layers (Whisper, HF models) each keeps its own covariance and basis; both see the same
  input, so both get the same design (the code keeps one covariance per attention block). Targets
  whose attention reads the weights directly (WavLM's q/k/v/out) are refused.
- The design's covariance is taken before the new branch exists; the code takes it with the new
  branch at B = 0, the same map.
- Adam (AdamW with weight decay 0), lr 5e-4, 20 epochs as in the code, but no cosine schedule (our
  trainer has none) and the batch size is ``runtime.batch_size`` (128 in the code). The official
  loop keeps the network in eval mode while training; ours trains in train mode (dropout where the
  backbone has it).
- The threshold schedule needs the number of sessions T, which a learner is not told:
  ``schedule_sessions`` (set it to ``scenario.num_sessions`` for the code's schedule); None keeps
  eps at ``eps_begin``.
- The energy of a direction is its squared singular value *of the covariance* (eigenvalue squared,
  ``energy: sv2``), as the code computes it; ``eig`` gives GPM's convention on the raw inputs.
- Basis bookkeeping: DualGPM stores the complement of the basis once it passes d/2 ("retain"); we
  always store the protected basis (float64, d <= 1024 here): the same projector. The retain-mode
  update differs from ours only in a >= vs < at the threshold. The code's first-session rule keeps
  one direction fewer than GPM's (``r = #(cumulative < eps)``, at least 1): kept.
- Guards the code does not need at d = 768, r = 10: directions without energy are never added to the
  basis, and the designed ``A_t`` is projected once more onto the complement of span(U) (a no-op
  except for null directions of a rank-deficient projected covariance, which an SVD may return from
  inside span(U)). Covariances accumulate in float64 (the code: float32, numpy SVDs).
- New classifier rows start as ``LinearHead``'s (U(+-1/sqrt(d)) rows, zero bias); nn.Linear's default
  in the code also draws the bias.
- Not done: the k-means task keys the code fits after each task (an S-Prompts leftover its
  class-incremental evaluation never uses), and the InfLoRA+CA / InfLoRA-b5 variants.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from pace.config import MethodConfig
from pace.heads.linear import LinearHead
from pace.methods.base import Session, Split, register_method
from pace.methods.common import EmbeddingLearner
from pace.methods.diagnostics import basis_ranks, instrumenting, lora_stats
from pace.methods.parts import Adapter, LoRAConfig, TrainConfig, freeze_backbone, train
from pace.peft.lora_variants import linear_lora_targets
from pace.peft.projection import collect_input_covariances

#: the code scales the designed rows by 1/sqrt(3) (U[:, :r].T / sqrt(3))
A_SCALE = 1.0 / math.sqrt(3.0)
#: relative energy below which a direction counts as empty (never added to the basis)
_NO_ENERGY = 1e-12

Target = Literal["q", "k", "v", "qkv", "o", "fc1", "fc2"]


class InfLoRAConfig(MethodConfig):
    """InfLoRA: per-session LoRA whose frozen down-projection is orthogonal to earlier sessions' inputs."""

    name: Literal["inflora"] = "inflora"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"type": "log", "low": 0.0001, "high": 0.01},
        "train.epochs": {"type": "int", "low": 2, "high": 10},
    }
    rank: int = Field(10, ge=1)
    targets: list[Target] = Field(default_factory=lambda: ["k", "v"])
    blocks: list[int] | None = None  # None = every block
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=20, lr=5e-4, optimizer="adamw",
                                                                   weight_decay=0.0))
    #: the classifier's learning rate; None = train.lr (the code trains both in one optimiser)
    head_lr: float | None = Field(None, gt=0)
    #: basis threshold eps_b (lamb in the code: 0.95 on CIFAR-100, 0.98 on ImageNet-R) and eps_e (lame)
    eps_begin: float = Field(0.95, gt=0, le=1)
    eps_end: float = Field(1.0, gt=0, le=1)
    #: T of eps_t = eps_b + (eps_e - eps_b) t / T; None = eps_b in every session
    schedule_sessions: int | None = Field(None, ge=1)
    energy: Literal["sv2", "eig"] = "sv2"

    @model_validator(mode="after")
    def _eps_order(self) -> "InfLoRAConfig":
        if self.eps_end < self.eps_begin:
            raise ValueError(f"eps_end ({self.eps_end}) must be >= eps_begin ({self.eps_begin})")
        return self


# ---------------------------------------------------------------------------------------------
# The subspace algebra (float64, on the CPU)


def _complement_projector(basis: torch.Tensor) -> torch.Tensor:
    d = basis.shape[0]
    return torch.eye(d, dtype=torch.float64) - basis @ basis.T


def design_down_projection(cov: torch.Tensor, basis: torch.Tensor, rank: int) -> torch.Tensor:
    """``A`` (rank x d, float64): the top-``rank`` left singular vectors of ``(I - U U^T) C``,
    transposed and scaled by 1/sqrt(3); every row orthogonal to span(``basis``)."""
    q = _complement_projector(basis.double())
    u, _, _ = torch.linalg.svd(q @ cov.double())
    return (u[:, :rank].T * A_SCALE) @ q  # the trailing q only matters for null directions


def grow_basis(basis: torch.Tensor, cov: torch.Tensor, eps: float, energy: str = "sv2") -> torch.Tensor:
    """The protected basis after a session with input covariance ``cov`` (GPM's energy criterion).

    Energy of the session: ``trace(M)`` with ``M = C`` (``eig``) or ``C^2`` (``sv2``: squared singular
    values of the covariance, as the code). New directions are the leading eigenvectors of
    ``Q M Q`` (``Q`` projects out the basis), added until the basis and they hold ``eps`` of it; in
    the first session the code's rule ``r = max(#(cumulative ratio < eps), 1)``.
    """
    basis = basis.double()
    c = cov.double()
    m = c if energy == "eig" else c @ c
    total = float(torch.trace(m))
    d = c.shape[0]
    if total <= 0 or basis.shape[1] >= d:
        return basis
    q = _complement_projector(basis)
    mh = q @ m @ q
    evals, evecs = torch.linalg.eigh((mh + mh.T) / 2)
    ratio = evals.flip(0).clamp_min(0.0) / total
    evecs = evecs.flip(1)
    usable = int((ratio > _NO_ENERGY).sum())
    if basis.shape[1] == 0:
        r = max(int((torch.cumsum(ratio, 0) < eps).sum()), 1)
    else:
        held = 1.0 - float(ratio.sum())  # the energy the basis already holds
        r = 0
        while r < usable and held < eps:
            held += float(ratio[r])
            r += 1
    r = min(r, usable)
    if r == 0:
        return basis
    new = evecs[:, :r]
    new = new - basis @ (basis.T @ new)  # roundoff only: they are eigenvectors of Q M Q
    return torch.cat([basis, new], dim=1)[:, :d]


# ---------------------------------------------------------------------------------------------
# Classifiers


class SessionHeads(nn.Module):
    """One linear classifier per session over its own classes, logits concatenated in class order
    (InfLoRA's classifier pool; SD-LoRA's growing fc, whose old rows get no gradient, is the same map)."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.in_dim = int(in_dim)
        self.heads = nn.ModuleList()

    @property
    def sizes(self) -> list[int]:
        return [h.num_classes for h in self.heads]

    def add(self, num_classes: int, generator: torch.Generator, device) -> LinearHead:
        head = LinearHead(self.in_dim, num_classes, generator=generator).to(device)
        self.heads.append(head)
        return head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([h(z) for h in self.heads], dim=1)

    def state(self) -> dict:
        return {"sizes": self.sizes, "weights": {k: v.detach().clone() for k, v in self.state_dict().items()}}

    def load(self, state: dict, device) -> None:
        self.heads = nn.ModuleList([LinearHead(self.in_dim, 0) for _ in state["sizes"]])
        self.load_state_dict(state["weights"])  # LinearHead adopts each stored size
        self.to(device)
        for p in self.parameters():
            p.requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# The learner


@register_method(InfLoRAConfig)
class InfLoRA(EmbeddingLearner):
    LINEAR_LAYERS_ONLY = True  # linear_lora_targets

    def __init__(self, cfg: InfLoRAConfig, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        blocks = list(range(backbone.num_blocks)) if cfg.blocks is None else list(cfg.blocks)
        linear_lora_targets("inflora", backbone, blocks, cfg.targets, cfg.rank)
        freeze_backbone(backbone)
        # alpha = rank: the branch is added as B A, unscaled, as in the code
        self.lora_cfg = LoRAConfig(rank=cfg.rank, alpha=float(cfg.rank), targets=list(cfg.targets))
        self.adapter = Adapter(backbone, self.lora_cfg)
        self.adapter.attach(blocks)
        self.bases: dict[str, torch.Tensor] = {name: torch.zeros(m.in_features, 0, dtype=torch.float64)
                                               for name, m in self.adapter.manager.modules.items()}
        self.heads = SessionHeads(backbone.embed_dim).to(ctx.device)

    def threshold(self, t: int) -> float:
        cfg = self.cfg
        if cfg.schedule_sessions is None:
            return cfg.eps_begin
        return min(cfg.eps_begin + (cfg.eps_end - cfg.eps_begin) * t / cfg.schedule_sessions, cfg.eps_end)

    def _covariances(self, split: Split) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        return collect_input_covariances(self.adapter.manager, self.backbone, split.x, ctx.eval_batch_size,
                                         ctx.device, subtracted=False)

    def learn(self, session: Session) -> None:
        ctx, cfg, t = self.ctx, self.cfg, session.index
        manager = self.adapter.manager
        covs = self._covariances(session.train)
        self.adapter.new_session(ctx.generator(f"inflora-lora:{t}"))  # B = 0; A is replaced below
        b_params = []
        with torch.no_grad():
            for name, m in manager.modules.items():
                a, b = m.trainable_stack()
                a.copy_(design_down_projection(covs[name], self.bases[name], cfg.rank).to(a))
                a.requires_grad_(False)  # designed, never trained
                b_params.append(b)
        head = self.heads.add(len(session.classes), ctx.generator(f"inflora-head:{t}"), ctx.device)
        train(self.backbone, head, session.train, ctx, cfg.train, backbone_params=b_params,
              head_lr=cfg.head_lr or cfg.train.lr, label_offset=session.classes[0], purpose=f"inflora:{t}")
        self.adapter.freeze()
        head.requires_grad_(False)
        eps = self.threshold(t)
        covs = self._covariances(session.train)  # under the trained model, as the code
        for name in manager.modules:
            self.bases[name] = grow_basis(self.bases[name], covs[name], eps, cfg.energy)
        with instrumenting(ctx) as d:
            d["adapted"], d["stage"] = 1, "inflora"
            d.update(lora_stats(self.adapter))
            d["lora_trained_params"] = sum(p.numel() for p in b_params)  # A is designed, not trained
            d.update(basis_ranks(self.adapter, self.bases))
            d["basis_threshold"] = eps

    def logits_from_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.heads(z.to(self.ctx.device).float())[:, : self.num_seen].float()

    def state_dict(self):
        return {**super().state_dict(), "adapter": self.adapter.state_dict(),
                "bases": {n: u.clone() for n, u in self.bases.items()}, "heads": self.heads.state()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.adapter.manager.restore()
        self.adapter = Adapter(self.backbone, self.lora_cfg)
        self.adapter.load_state_dict(state["adapter"])
        self.bases = {n: u.double().cpu().clone() for n, u in state["bases"].items()}
        self.heads.load(state["heads"], self.ctx.device)
