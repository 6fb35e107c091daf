"""SLCA: Slow Learner with Classifier Alignment (Zhang, Wang, Kang, Chen and Wei, ICCV 2023), checked
against its official code (github.com/GengDavid/SLCA, ``models/slca.py``, ``models/base.py``,
``convs/linears.py``; snapshot of 2024-08-17, commit 169d4e6), on an audio backbone.

Every session:

1. Slow learner. The whole backbone and a new linear head over the session's classes train together
   with cross-entropy over those classes only (the official loss on ``logits[:, known:]``); the
   backbone's learning rate is ``backbone_lr_scale`` (0.01, the official ``bcb_lrscale``) times the
   head's (``train.lr``, 0.01). SGD, momentum 0.9, weight decay 5e-4 on both groups. Earlier sessions'
   heads stay frozen. ``backbone_lr_scale: 0`` freezes the backbone (the official ``fix_bcb``).
2. Class statistics. The mean and covariance (float64, unbiased) of the pooled features of each new
   class under the backbone as it now stands are stored; a class's statistics are never recomputed
   later (no stored clips), as in the official code.
3. Classifier alignment (from the second session on). A copy of all heads is re-trained on draws
   from the stored Gaussians of every seen class, ``ca_samples`` (256) per class per epoch, as many
   batches of ``ca_samples`` as there are seen classes, for ``ca_epochs`` (5) epochs at ``ca_lr``
   with a per-epoch cosine schedule, using the official logit-normalised cross-entropy (logits divided
   by the mean over sessions of each session's logit norm and by ``ca_logit_norm`` = 0.1). As the
   official sampler does, a class of session s is drawn around its mean times
   0.9 + 0.1 (s + 1) / (t + 1) in session t (``ca_mean_shrink`` = 0.1; this is in the code, not the
   paper) with covariance + 1e-4 I (``cov_eps``). The aligned heads predict; the heads before
   alignment are what the next session starts from (the official ``fc.backup()`` / ``fc.recall()``),
   so alignment is re-done from them with the then-stored statistics every session.

Prediction: the aligned heads' logits over every seen class on the pooled embedding.

Where ours departs from the official code:

- Backbone: an audio backbone's pooled embedding (CLS or mean over tokens) instead of a ViT-B/16's CLS
  token; "the backbone" is every parameter of pace's backbone module (the official ``convnet``).
- Schedule: the official MultiStepLR (x0.1 at a milestone near the end, e.g. epoch 18 of 20) is not
  applied; pace's trainer keeps the learning rate constant. Default epochs 20 (the CIFAR config); batch
  size is ``runtime.batch_size`` (official 128); no data augmentation (official random crops/flips).
- Gaussian draws are ``mean + R eps`` with R from an eigendecomposition of the covariance (pace's
  ``gaussian_roots``) instead of ``MultivariateNormal``'s Cholesky: the same distribution, other
  draws. Statistics are stored in float64 without the ridge; the 1e-4 I is added when sampling
  (official: added at storage, kept in float32).
- A class's session comes from the session ranges, not ``class_id // task_size`` (which assumes equal
  sessions).
- On a GPU, the forward passes run under bf16 autocast (pace's runtime setting).
- SLCA++ (the LoRA "hybrid slow learner" of the later journal version, ``models/slca_pp.py``) is not
  implemented.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pace.config import MethodConfig
from pace.methods.base import Session, register_method
from pace.methods.common import EmbeddingLearner, split_embeddings
from pace.methods.parts import TrainConfig, train
from pace.heads.gaussians import align_on_gaussians, class_gaussians, gaussian_roots


class SLCAConfig(MethodConfig):
    """Slow learner (backbone at 0.01x the head's lr) + classifier alignment on class Gaussians (SLCA)."""

    name: Literal["slca"] = "slca"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"type": "log", "low": 0.001, "high": 0.1},
        "train.epochs": {"type": "int", "low": 2, "high": 10},
        "backbone_lr_scale": {"type": "log", "low": 0.001, "high": 0.1},
    }
    #: ``lr`` is the head's (official ``lrate``); the backbone's is ``lr * backbone_lr_scale``
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=20, lr=0.01, weight_decay=5e-4))
    backbone_lr_scale: float = Field(0.01, ge=0)
    ca_epochs: int = Field(5, ge=0)
    ca_lr: float = Field(0.01, gt=0)
    ca_samples: int = Field(256, ge=1)
    #: temperature of the logit normalisation; 0 = plain cross-entropy on the logits
    ca_logit_norm: float = Field(0.1, ge=0)
    ca_mean_shrink: float = Field(0.1, ge=0, le=1)
    cov_eps: float = Field(1e-4, ge=0)


def new_head(dim: int, classes: int, generator: torch.Generator) -> nn.Linear:
    """A session's head, initialised as the official ``SimpleContinualLinear``: trunc-normal 0.02, bias 0."""
    head = nn.Linear(dim, classes)
    with torch.no_grad():
        nn.init.trunc_normal_(head.weight, std=0.02, generator=generator)
        head.bias.zero_()
    return head


def logit_normalised_ce(logits: torch.Tensor, y: torch.Tensor, ranges: list[tuple[int, int]],
                        temperature: float) -> torch.Tensor:
    """The official ``ca_with_logit_norm`` loss: logits / mean over sessions of ||session logits|| / tau."""
    if temperature <= 0:
        return F.cross_entropy(logits, y)
    norms = torch.stack([logits[:, lo:hi].norm(dim=-1) + 1e-7 for lo, hi in ranges], dim=-1).mean(-1, keepdim=True)
    return F.cross_entropy(logits / norms / temperature, y)


@register_method(SLCAConfig)
class SLCA(EmbeddingLearner):
    def __init__(self, cfg: SLCAConfig, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        if cfg.backbone_lr_scale > 0 and not any(p.numel() for p in backbone.parameters()):
            raise ValueError(f"slca: backbone {backbone.name!r} has no parameters for the slow learner to "
                             "fine-tune (set method.backbone_lr_scale: 0 for a frozen backbone)")
        for p in backbone.parameters():
            p.requires_grad_(False)  # trainable only inside a session's slow-learner stage
        self.heads = nn.ModuleList().to(ctx.device)  # per session, before alignment (what training continues)
        self.aligned = nn.ModuleList().to(ctx.device)  # what predicts
        self.session_ranges: list[tuple[int, int]] = []
        d = backbone.embed_dim
        self.means = torch.zeros(0, d, dtype=torch.float64)
        self.covs = torch.zeros(0, d, d, dtype=torch.float64)
        #: the session of each stored class (rows of means/covs)
        self.class_session = torch.zeros(0, dtype=torch.long)

    # ---- the slow learner

    def learn(self, session: Session) -> None:
        ctx, cfg, t = self.ctx, self.cfg, session.index
        lo, hi = session.classes[0], session.classes[-1] + 1
        self.session_ranges.append((lo, hi))
        head = new_head(self.backbone.embed_dim, hi - lo, ctx.generator(f"slca-head:{t}")).to(ctx.device)
        self.heads.append(head)
        bb_params = list(self.backbone.parameters()) if cfg.backbone_lr_scale > 0 else []
        for p in bb_params:
            p.requires_grad_(True)
        # train() gives its backbone group TrainConfig.lr and the head group head_lr
        slow = cfg.train.model_copy(update={"lr": cfg.train.lr * cfg.backbone_lr_scale}) if bb_params else cfg.train
        try:
            train(self.backbone, head, session.train, ctx, slow, backbone_params=bb_params, head_lr=cfg.train.lr,
                  label_offset=lo, purpose=f"slca:{t}")
        finally:
            for p in list(bb_params) + list(head.parameters()):
                p.requires_grad_(False)
        self.store_statistics(session)
        self.align(t)

    def store_statistics(self, session: Session) -> None:
        z = split_embeddings(self, session.train)
        means, covs = class_gaussians(z, session.train.y, session.classes, eps=0.0)
        self.means = torch.cat([self.means, means])
        self.covs = torch.cat([self.covs, covs])
        self.class_session = torch.cat([self.class_session, torch.full((len(means),), session.index)])

    # ---- classifier alignment

    def align(self, t: int) -> None:
        """Re-train a copy of every head on Gaussian draws of every seen class; uses the stored
        statistics and the heads before alignment only (no clips, no backbone)."""
        cfg, ctx = self.cfg, self.ctx
        aligned = copy.deepcopy(self.heads)
        if t > 0 and cfg.ca_epochs > 0:
            shrink = 1 - cfg.ca_mean_shrink + cfg.ca_mean_shrink * (self.class_session + 1).double() / (t + 1)
            means = self.means * shrink[:, None]
            eye = torch.eye(self.covs.shape[-1], dtype=torch.float64)
            roots = gaussian_roots(self.covs + cfg.cov_eps * eye)

            def loss(heads, z, y):
                logits = torch.cat([h(z) for h in heads], dim=1)
                return logit_normalised_ce(logits, y, self.session_ranges, cfg.ca_logit_norm)

            # official: as many batches of ca_samples per class as seen classes
            align_on_gaussians(aligned, means, roots, per_class=cfg.ca_samples, batches=len(means),
                               num_classes=len(means), epochs=cfg.ca_epochs, lr=cfg.ca_lr,
                               weight_decay=cfg.train.weight_decay, generator=ctx.generator(f"slca-ca:{t}"),
                               device=ctx.device, loss=loss)
        self.aligned = aligned

    # ---- prediction and state

    def logits_from_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([h(z.float()) for h in self.aligned], dim=1)[:, : self.num_seen]

    def state_dict(self):
        state = {**super().state_dict(), "session_ranges": [list(r) for r in self.session_ranges],
                 "heads": self.heads.state_dict(), "aligned": self.aligned.state_dict(),
                 "means": self.means, "covs": self.covs, "class_session": self.class_session}
        if self.cfg.backbone_lr_scale > 0:  # the slow learner's backbone is part of what was learnt
            state["backbone"] = self.backbone.state_dict()
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.session_ranges = [(int(lo), int(hi)) for lo, hi in state["session_ranges"]]
        d, dev = self.backbone.embed_dim, self.ctx.device
        shells = [nn.Linear(d, hi - lo) for lo, hi in self.session_ranges]
        self.heads = nn.ModuleList(shells).to(dev)
        self.aligned = copy.deepcopy(self.heads)
        self.heads.load_state_dict(state["heads"])
        self.aligned.load_state_dict(state["aligned"])
        for p in list(self.heads.parameters()) + list(self.aligned.parameters()):
            p.requires_grad_(False)
        self.means, self.covs = state["means"].double().cpu(), state["covs"].double().cpu()
        self.class_session = state["class_session"].long().cpu()
        if "backbone" in state:
            self.backbone.load_state_dict(state["backbone"])
