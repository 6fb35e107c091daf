"""Parts that methods are composed from: LoRA adaptation of a backbone, the gradient trainer, and the
random-projection analytic classifier. Each method module only wires these together.

Config sub-sections shared by several methods live here too, so a field means the same thing in
every method that has it.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pace.config import Strict
from pace.embed import autocast
from pace.heads.analytic import RIDGE_GRID, AnalyticHead, RandomProjection, cheaper_form, fit_session_ranpac
from pace.heads.linear import CosineHead, LinearHead
from pace.methods.base import Split
from pace.methods.stages import run_stage
from pace.modes import evaluating  # noqa: F401  (the methods import it from here with the other parts)
from pace.peft.lora import LoRAManager
from pace.console import ProgressLine


class LoRAConfig(Strict):
    """LoRA stacks. The paper does not give rank, alpha or targets; q and v (LoRA-DRS uses k and v;
    q/v is the common LoRA default) at rank 8, alpha 16 is our choice. On fused-qkv backbones (EAT)
    q/k/v all map onto the fused layer."""

    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    targets: list[Literal["q", "k", "v", "qkv", "o", "fc1", "fc2"]] = Field(default_factory=lambda: ["q", "v"])


class TrainConfig(Strict):
    """Gradient training of LoRA (and a temporary head). SGD with momentum, as the paper's learning
    rates (0.05 backbone / 0.01 head) suggest; no schedule."""

    epochs: int = Field(5, ge=0)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"


class AnalyticConfig(Strict):
    """Random projection + ridge classifier (RanPAC / ACL / PACE's analytic head)."""

    proj_dim: int = Field(8192, ge=0)  # 0 = ridge on the raw backbone features
    activation: Literal["relu", "identity"] = "relu"
    scale: float = Field(1.0, gt=0)
    #: select: lam chosen per session on a held-out 20 % of the session (RanPAC); fixed: use ``lam``
    ridge: Literal["select", "fixed"] = "select"
    lam: float = Field(1.0, gt=0)
    criterion: Literal["mse", "accuracy"] = "mse"
    #: gram: (G, C) re-solvable for any lam; recursive: Woodbury R, W (the paper's Eq. 2-3, fixed lam);
    #: auto: the cheaper exact one (gram when ridge is select; else by the first session's size)
    form: Literal["gram", "recursive", "auto"] = "gram"


def first_session_form(cfg: AnalyticConfig, dim: int, rows: int) -> str:
    """The head form ``AnalyticClassifier`` solves a first session of ``rows`` clips with (``auto``:
    Gram when lam is selected per session, else the cheaper exact form for that size)."""
    if cfg.form != "auto":
        return cfg.form
    return "gram" if cfg.ridge == "select" else cheaper_form(dim, rows)


# ---------------------------------------------------------------------------------------------
# LoRA on a backbone


class Adapter:
    """The LoRA stacks a learner keeps on its backbone across sessions (targets fixed once chosen)."""

    def __init__(self, backbone, cfg: LoRAConfig):
        self.backbone = backbone
        self.cfg = cfg
        self.blocks: list[int] | None = None
        self.manager: LoRAManager | None = None

    def attach(self, blocks: list[int]) -> None:
        if self.manager is not None:
            if blocks != self.blocks:
                raise ValueError(f"LoRA already attached to blocks {self.blocks}, not {blocks}")
            return
        if not blocks:
            raise ValueError("no blocks to adapt")
        names = self.backbone.lora_target_names(blocks, list(self.cfg.targets))
        self.blocks = list(blocks)
        self.manager = LoRAManager(self.backbone, names)

    def new_session(self, generator: torch.Generator) -> list[nn.Parameter]:
        assert self.manager is not None, "attach() first"
        return self.manager.add_session(self.cfg.rank, self.cfg.alpha, generator)

    def freeze(self) -> None:
        if self.manager is not None:
            self.manager.freeze_all()

    @property
    def num_sessions(self) -> int:
        return 0 if self.manager is None else self.manager.num_sessions

    def state_dict(self) -> dict:
        if self.manager is None:
            return {"blocks": []}
        return {"blocks": list(self.blocks), "lora": self.manager.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not state["blocks"]:
            return
        self.attach(list(state["blocks"]))
        self.manager.load_state_dict(state["lora"])
        self.manager.freeze_all()


def freeze_backbone(backbone: nn.Module) -> None:
    for p in backbone.parameters():
        p.requires_grad_(False)


def session_head(in_dim: int, num_classes: int, kind: Literal["linear", "cosine"], generator,
                 device) -> nn.Module:
    """A temporary head over one session's classes (dropped after adaptation)."""
    # cosine logits live in [-1, 1]; a learnable scale starting at 16 lets a few epochs of CE move them
    head = CosineHead(in_dim, 0, scale=16.0) if kind == "cosine" else LinearHead(in_dim, 0)
    head.expand(num_classes, generator)
    return head.to(device)


class FSAConfig(Strict):
    """First-session adaptation as RanPAC/APER do it: LoRA on the chosen blocks and a temporary head
    trained jointly on session 1 with cross-entropy, then frozen."""

    enabled: bool = True
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=5, lr=0.01))
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    head: Literal["linear", "cosine"] = "cosine"  # RanPAC trains through a cosine head
    #: None = every block
    blocks: list[int] | None = None


def first_session_adaptation(learner, session, cfg: FSAConfig, adapter: "Adapter") -> None:
    """Adapt the backbone on session 1 (LoRA + temporary head, same lr), then freeze everything."""
    bb = learner.backbone
    if bb.num_blocks == 0:
        raise ValueError(f"first-session adaptation needs a transformer backbone; {bb.name!r} has no "
                         "blocks (set method.fsa.enabled: false or choose another backbone)")
    blocks = list(range(bb.num_blocks)) if cfg.blocks is None else cfg.blocks

    def compute() -> None:
        adapter.attach(blocks)
        params = adapter.new_session(learner.ctx.generator("fsa-lora"))
        head = session_head(bb.embed_dim, len(session.classes), cfg.head, learner.ctx.generator("fsa-head"),
                            learner.ctx.device)
        train(bb, head, session.train, learner.ctx, cfg.train, backbone_params=params, head_lr=cfg.train.lr,
              label_offset=session.classes[0], purpose="fsa")
        adapter.freeze()

    # the outcome is the LoRA stack; trials that differ only downstream (the head) load it
    run_stage(learner, "fsa", session.train, compute, save=adapter.state_dict, load=adapter.load_state_dict)


# ---------------------------------------------------------------------------------------------
# The gradient trainer


def train(backbone, head: nn.Module, split: Split, ctx, cfg: TrainConfig, *,
          backbone_params: list[nn.Parameter], head_lr: float | None = None, label_offset: int = 0,
          purpose: str = "train", extra_loss: Callable[..., torch.Tensor] | None = None,
          max_samples: int | None = None, after_step: Callable[[], None] | None = None,
          epochs: int | None = None) -> int:
    """Cross-entropy training of ``backbone_params`` (LoRA) and, if ``head_lr``, the head.

    ``y - label_offset`` indexes the head's outputs (a temporary head over the session's classes).
    ``extra_loss(features, y, x, idx)`` adds a regulariser (the boundary-aware loss); ``idx`` are the
    batch's row positions in ``split``. Returns the number of
    training samples seen. Batches are shuffled from a generator named by ``purpose`` so a resumed
    run draws the same batches.
    """
    groups = []
    if backbone_params:
        groups.append({"params": backbone_params, "lr": cfg.lr})
    head_params = [p for p in head.parameters()]
    for p in head_params:
        p.requires_grad_(head_lr is not None)
    if head_lr is not None:
        groups.append({"params": head_params, "lr": head_lr})
    if not groups:
        return 0
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    g = ctx.generator(purpose)
    n_epochs = cfg.epochs if epochs is None else epochs
    seen = 0
    backbone.train()
    head.train()
    # ctx.progress: `pace run` prints an epoch line (loss, clips/s); sweep trials turn it off
    progress = ProgressLine(f"train {purpose}", len(split)) if ctx.progress and n_epochs else None
    for epoch in range(n_epochs):
        order = torch.randperm(len(split), generator=g)
        loss_sum = torch.zeros((), device=ctx.device)  # summed on the device: no sync per step
        epoch_seen = 0
        if progress is not None:
            progress.start(f"epoch {epoch + 1}/{n_epochs}")
        for s in range(0, len(split), ctx.batch_size):
            idx = order[s:s + ctx.batch_size]
            x = split.x[idx].to(ctx.device)
            y = (split.y[idx] - label_offset).to(ctx.device)
            with autocast(ctx):
                feats = backbone(x).pooled.float()
                loss = F.cross_entropy(head(feats), y)
                if extra_loss is not None:
                    loss = loss + extra_loss(feats, y, x, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
            seen += len(idx)
            if progress is not None:
                loss_sum += loss.detach() * len(idx)
                epoch_seen += len(idx)
                progress.update(len(idx), lambda s=loss_sum, n=epoch_seen: f"loss {s.item() / n:.4f}")
            if max_samples is not None and seen >= max_samples:
                break
        if progress is not None and epoch_seen:
            progress.done(f"loss {loss_sum.item() / epoch_seen:.4f}")
    backbone.eval()
    head.eval()
    ctx.count("backward_samples", seen)
    return seen


# ---------------------------------------------------------------------------------------------
# The analytic classifier


class AnalyticClassifier(nn.Module):
    """Random projection + ridge head; one ``fit_session`` per session, exemplar-free."""

    def __init__(self, in_dim: int, cfg: AnalyticConfig, seed: int):
        super().__init__()
        if cfg.form == "recursive" and cfg.ridge == "select":
            raise ValueError("analytic.form 'recursive' bakes a fixed lam into R; use ridge: fixed "
                             "(or form: gram to select lam per session)")
        self.cfg = cfg
        self.proj = RandomProjection(in_dim, cfg.proj_dim or None, cfg.activation, cfg.scale, seed)
        form = cfg.form if cfg.form != "auto" else ("gram" if cfg.ridge == "select" else "recursive")
        self.head = AnalyticHead(self.proj.out_features, form=form, lam=cfg.lam)
        self.last_lam = cfg.lam

    def fit_session(self, z: torch.Tensor, y: torch.Tensor, num_seen: int, generator: torch.Generator) -> None:
        if self.head.num_samples == 0:
            # Both forms give the same ridge solution; auto picks the cheaper for sessions of this size.
            form = first_session_form(self.cfg, self.head.dim, len(y))
            if form != self.head.form:
                self.head = AnalyticHead(self.head.dim, form=form, lam=self.cfg.lam, device=self.head.device)
        h = self.proj(z.float())
        if self.cfg.ridge == "select":
            order = torch.randperm(len(y), generator=generator)  # RanPAC: its shuffled loader order
            sel = fit_session_ranpac(self.head, h[order], y[order], RIDGE_GRID, self.cfg.criterion,
                                     num_classes=num_seen)
            self.last_lam = sel.lam
        else:
            self.head.accumulate(h, y, num_seen)
            if self.head.form == "gram":
                self.head.solve(self.cfg.lam)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.head.logits(self.proj(z.float()))

    def ridge_diagnostics(self) -> dict[str, float]:
        """The lam chosen this session (small: brittle to drift) and the one solved with after the
        roundoff floor (``AnalyticHead.solve``)."""
        return {"ridge_lam": float(self.last_lam), "ridge_lam_used": float(self.head.lam_used)}
