"""HiDe-Prompt (Wang et al., NeurIPS 2023), as its official code (thu-ml/HiDe-Prompt) does it, on a
frozen audio transformer. Three parts, each session:

1. Task-identity inference (TII, the official ``train_inference_task_only`` stage): an MLP head on the
   frozen query feature (the pretrained model without prompts) is trained with cross-entropy over
   the session's classes (others -inf); the per-class Gaussian (mean, covariance + 1e-4 I) of the query
   features is stored; from the second session on, the head is re-trained on draws from every seen
   class's Gaussian (``ca_*``: SGD momentum 0.9, weight decay 5e-4, cosine, ``batch`` draws per class
   per epoch and as many batches as there are classes of earlier sessions, as the official loop).
2. Within-task prediction (WTP): a session-specific prompt, prefix-tuned into ``blocks`` (0..4),
   starting from the previous session's prompt, trained on the session's data with cross-entropy over
   its classes plus ``reg`` x the prototype contrastive term (features against the stored means of
   earlier classes, temperature 0.8). The head trains at ``head_lr_factor`` (0.1, ``larger_prompt_lr``)
   of the prompt lr. Afterwards the prompt moves towards the mean of the earlier prompts
   (``prompt_momentum``).
3. Task-adaptive prediction (TAP): per-class Gaussians of the prompted features (each class under its
   own session's prompt) are stored; from the second session on, the linear head over all seen classes
   is re-trained on draws from them (``batch`` x 5 per class, ``ca_*`` as above).

Inference: the TII head's top class over the seen classes names a session; that session's prompt
prompts the backbone; the TAP head classifies the pooled embedding.

Audio-forced changes and choices (config fields): by default ``blocks`` are the official 0..4 of a
12-block ViT at the same relative depth (0..1 on Whisper tiny's 4 blocks); the query on backbones
without a CLS token is the mean-pooled embedding; the TII head's structure ``[2]`` is read as Linear(D,
2D) - ReLU - Linear(2D, classes) (``tii_hidden_factor``); the "covariance" storage (``stats``) of the
released scripts is the default ("variance" keeps diagonals).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pace.config import MethodConfig
from pace.embed import autocast
from pace.heads.linear import LinearHead
from pace.methods.base import Session, register_method
from pace.methods.prompt_base import BLOCKS_DOC, PromptTrainConfig, SessionPromptLearner, make_optimizer
from pace.heads.gaussians import align_on_gaussians, class_gaussians, gaussian_roots
from pace.peft.prompts import masked_logits, prototype_contrastive


class HiDePromptConfig(MethodConfig):
    """Hierarchical decomposition: TII on the frozen model, WTP prompts, TAP head on Gaussian replay."""

    name: Literal["hideprompt"] = "hideprompt"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"type": "log", "low": 0.001, "high": 0.1},
        "train.epochs": {"type": "int", "low": 1, "high": 8},
        "tii_train.lr": {"type": "log", "low": 0.0001, "high": 0.01},
        "ca_lr": {"type": "log", "low": 0.0005, "high": 0.05},
    }
    blocks: list[int] | None = Field(None, description=BLOCKS_DOC)
    length: int = Field(5, ge=1)
    init_from_previous: bool = True
    prompt_momentum: float = Field(0.01, ge=0, le=1)
    reg: float = Field(0.01, ge=0)
    temperature: float = Field(0.8, gt=0)
    train: PromptTrainConfig = Field(default_factory=lambda: PromptTrainConfig(head_lr_factor=0.1))
    tii_train: PromptTrainConfig = Field(default_factory=lambda: PromptTrainConfig(epochs=20, lr=5e-4))
    tii_hidden_factor: int = Field(2, ge=1)
    ca_epochs: int = Field(30, ge=0)
    ca_lr: float = Field(0.005, gt=0)
    stats: Literal["covariance", "variance"] = "covariance"


class TIIHead(nn.Module):
    """The TII classifier on query features: Linear(D, hD) - ReLU - a growing linear output."""

    def __init__(self, dim: int, factor: int, generator: torch.Generator):
        super().__init__()
        self.fc = nn.Linear(dim, dim * factor)
        with torch.no_grad():
            bound = dim ** -0.5
            self.fc.weight.copy_(torch.rand(self.fc.weight.shape, generator=generator) * 2 * bound - bound)
            self.fc.bias.zero_()
        self.out = LinearHead(dim * factor)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.fc(q)))


@register_method(HiDePromptConfig)
class HiDePrompt(SessionPromptLearner):
    def __init__(self, cfg, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        self.tii = TIIHead(backbone.embed_dim, cfg.tii_hidden_factor, ctx.generator("hide-tii")).to(ctx.device)
        self._old_means: torch.Tensor | None = None

    # ---- TII

    def infer_session(self, q: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            cls = self.tii(q.float())[:, : self.num_seen].argmax(dim=1)
        return self.task_of_class(cls)

    def train_tii(self, session: Session, q: torch.Tensor) -> None:
        ctx, cfg = self.ctx, self.cfg.tii_train
        lo, hi = self.session_ranges[session.index]
        self.tii.out.expand(session.num_seen, ctx.generator(f"hide-tii-out:{session.index}"))
        params = list(self.tii.parameters())
        for p in params:
            p.requires_grad_(True)
        steps = cfg.epochs * -(-len(q) // ctx.batch_size)
        opt, sched = make_optimizer(cfg, params, [], ctx.batch_size, steps)
        y = session.train.y.to(ctx.device)
        g = ctx.generator(f"hide-tii:{session.index}")
        for _ in range(cfg.epochs):
            order = torch.randperm(len(q), generator=g).to(ctx.device)
            for s in range(0, len(q), ctx.batch_size):
                idx = order[s:s + ctx.batch_size]
                loss = F.cross_entropy(masked_logits(self.tii(q[idx].float())[:, :hi], lo, hi), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
                opt.step()
                if sched is not None:
                    sched.step()
        for p in params:
            p.requires_grad_(False)

    # ---- statistics and their replay

    def store_gaussians(self, kind: str, session: Session, z: torch.Tensor) -> None:
        means, covs = class_gaussians(z.cpu(), session.train.y, session.classes)
        if self.cfg.stats == "variance":
            covs = torch.diag_embed(torch.diagonal(covs, dim1=1, dim2=2))
        self.add_param(f"{kind}_mean_{session.index}", means.float())
        self.add_param(f"{kind}_cov_{session.index}", covs.float())

    def gaussians(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        n = sum(1 for name in self.prompt_module._parameters if name.startswith(f"{kind}_mean_"))
        return (torch.cat([self.p(f"{kind}_mean_{s}") for s in range(n)]),
                torch.cat([self.p(f"{kind}_cov_{s}") for s in range(n)]))

    def replay(self, head: nn.Module, kind: str, session: Session, per_class: int) -> None:
        """The official classifier alignment: ``head`` re-trained on Gaussian draws of every seen class."""
        cfg, ctx = self.cfg, self.ctx
        means, covs = self.gaussians(kind)
        align_on_gaussians(head, means.cpu(), gaussian_roots(covs.cpu()), per_class=per_class,
                           # as many batches as classes of earlier sessions (official crct_num)
                           batches=self.session_ranges[session.index][0], num_classes=session.num_seen,
                           epochs=cfg.ca_epochs, lr=cfg.ca_lr, weight_decay=5e-4,
                           generator=ctx.generator(f"hide-ca:{kind}:{session.index}"), device=ctx.device)

    # ---- WTP

    def before_session(self, session: Session, q) -> None:
        t = session.index
        self.new_prompt(t)
        self.train_tii(session, q)
        self.store_gaussians("tii", session, q)
        if t > 0:
            self.replay(self.tii, "tii", session, per_class=self.ctx.batch_size)
        self._old_means = self.gaussians("tap")[0].to(self.ctx.device) if t > 0 else None

    def extra_loss(self, feats, y, session):
        if self.cfg.reg == 0:
            return None
        return self.cfg.reg * prototype_contrastive(feats, self._old_means, self.cfg.temperature)

    def after_session(self, session: Session, q) -> None:
        t, cfg = session.index, self.cfg
        if cfg.prompt_momentum > 0 and t > 0:
            with torch.no_grad():
                old = torch.stack([self.p(f"prompt_{s}") for s in range(t)]).mean(0)
                cur = self.p(f"prompt_{t}")
                cur.copy_((1 - cfg.prompt_momentum) * cur + cfg.prompt_momentum * old)
        z = self.prompted_features(session, q)
        self.store_gaussians("tap", session, z)
        if t > 0:
            self.replay(self.head, "tap", session, per_class=self.ctx.batch_size * 5)

    def prompted_features(self, session: Session, q: torch.Tensor) -> torch.Tensor:
        """Pooled features of the session's clips under its own prompt (the official ``train=True``)."""
        bs, out = self.ctx.eval_batch_size, []
        with torch.no_grad(), autocast(self.ctx):
            for s in range(0, len(session.train), bs):
                x = session.train.x[s:s + bs].to(self.ctx.device)
                out.append(self.features(x, q[s:s + bs], session.index)[0].float().cpu())
        self.ctx.count("forward_samples", len(session.train))
        return torch.cat(out)

    def state_dict(self):
        return {**super().state_dict(), "tii": self.tii.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.tii.load_state_dict(state["tii"])
