"""What the prompt-based learners share: a frozen backbone queried without prompts, prompts injected
through ``Backbone.forward_prompted``, a growing linear head, and the masked cross-entropy trainer.

Every official code (L2P, DualPrompt, CODA-Prompt, S-Prompts, HiDe-Prompt) keeps a second, frozen copy
of the pretrained model to compute the *query*: its [CLS] feature without prompts. Here the backbone
itself is never changed, so the query is its plain pooled embedding, which the feature cache already
holds: one frozen forward per clip for the whole run instead of one per step. On backbones without a
CLS token (Whisper, wav2vec2 family) the pooled embedding is the mean over tokens (an audio-forced
change every method's docstring lists).

A subclass decides which prompts a batch gets (``prompts``), which parameters a session trains
(``trainable``) and what happens around the gradient loop (``before_session`` / ``after_session``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pace.config import Strict
from pace.embed import autocast
from pace.heads.linear import LinearHead
from pace.methods.base import Learner, Session, Split
from pace.methods.common import batch_embeddings, split_embeddings
from pace.methods.parts import freeze_backbone
from pace.backbones.prompting import Prompts
from pace.peft.prompts import masked_logits, uniform_


class PromptTrainConfig(Strict):
    """The gradient loop of a session (optimizer re-created every session, as the official
    ``reinit_optimizer``). Defaults: the L2P / DualPrompt / HiDe codes (Adam, lr 0.03 scaled by
    batch/256, constant, gradient norm clipped at 1, 5 epochs)."""

    epochs: int = Field(5, ge=0)
    lr: float = Field(0.03, gt=0)
    #: official ``unscale_lr``: the lr is multiplied by batch_size / 256
    scale_lr_by_batch: bool = True
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    #: max gradient norm; None = no clipping
    clip_grad: float | None = Field(1.0, gt=0)
    #: the head's lr relative to the prompts' (HiDe's ``larger_prompt_lr`` trains the head at 0.1x)
    head_lr_factor: float = Field(1.0, gt=0)


def make_optimizer(cfg: PromptTrainConfig, prompt_params: list[nn.Parameter], head_params: list[nn.Parameter],
                   batch_size: int, steps: int):
    lr = cfg.lr * (batch_size / 256.0 if cfg.scale_lr_by_batch else 1.0)
    groups = [g for g in ({"params": prompt_params, "lr": lr},
                          {"params": head_params, "lr": lr * cfg.head_lr_factor}) if g["params"]]
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1)) if cfg.schedule == "cosine" else None
    return opt, sched


class PromptLearner(Learner):
    """Base of the prompt learners: frozen backbone + prompts + a linear head over seen classes."""

    #: what the head classifies: "token" = the pooled embedding (CLS / mean), "prompt" = the mean of the
    #: prompt tokens' final states (L2P's ``head_type: prompt``)
    head_input: str = "token"

    def __init__(self, cfg, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        if not backbone.supports_prompts:
            raise ValueError(f"{cfg.name} prompts a transformer; backbone {backbone.name!r} does not support "
                             "prompt or prefix tuning (use eat-*, whisper-*, ast-*, wav2vec2-*, hubert-* or "
                             "data2vec-audio-*)")
        freeze_backbone(backbone)
        backbone.eval()  # dropout off, as the official frozen ViTs (drop 0)
        self.head = LinearHead(backbone.embed_dim).to(ctx.device)
        #: every prompt / key parameter lives here, so the state dict is one module's
        self.prompt_module = nn.Module().to(ctx.device)
        #: session index -> its classes (lo, hi): task identity of a class
        self.session_ranges: list[tuple[int, int]] = []

    # ---- what subclasses define

    def prompts(self, q: torch.Tensor, session: int | None) -> tuple[Prompts, torch.Tensor]:
        """Prompts for queries q (B, D) and the auxiliary loss. ``session`` is the training session's
        index, or None at inference (the learner infers which prompts to use)."""
        raise NotImplementedError

    def trainable(self, session: Session) -> list[nn.Parameter]:
        raise NotImplementedError

    def before_session(self, session: Session, q: torch.Tensor) -> None: ...

    def after_session(self, session: Session, q: torch.Tensor) -> None: ...

    def extra_loss(self, feats: torch.Tensor, y: torch.Tensor, session: Session) -> torch.Tensor | None:
        return None

    # ---- shared

    def queries(self, split: Split) -> torch.Tensor:
        """Frozen, prompt-free pooled embeddings (the official query), cached by content."""
        return split_embeddings(self, split).to(self.ctx.device)

    def features(self, x: torch.Tensor, q: torch.Tensor, session: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        prompts, aux = self.prompts(q, session)
        out = self.backbone.forward_prompted(x, prompts)
        feats = out.prompt_tokens.mean(dim=1) if self.head_input == "prompt" else out.pooled
        return feats.float(), aux

    def learn(self, session: Session) -> None:
        ctx = self.ctx
        self.session_ranges.append((session.classes[0], session.classes[-1] + 1))
        self.head.expand(session.num_seen, ctx.generator(f"head:{session.index}"))
        q = self.queries(session.train)
        self.before_session(session, q)
        self.train_prompts(session, q)
        self.after_session(session, q)

    def train_prompts(self, session: Session, q: torch.Tensor) -> None:
        ctx, cfg = self.ctx, self.cfg.train
        data = session.train
        prompt_params = self.trainable(session)
        head_params = list(self.head.parameters())
        for p in prompt_params + head_params:
            p.requires_grad_(True)
        steps = cfg.epochs * -(-len(data) // ctx.batch_size)
        opt, sched = make_optimizer(cfg, prompt_params, head_params, ctx.batch_size, steps)
        lo, hi = self.session_ranges[session.index]
        g = ctx.generator(f"prompts:{session.index}")
        seen = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(len(data), generator=g)
            for s in range(0, len(data), ctx.batch_size):
                idx = order[s:s + ctx.batch_size]
                x, y = data.x[idx].to(ctx.device), data.y[idx].to(ctx.device)
                with autocast(ctx):
                    feats, aux = self.features(x, q[idx.to(q.device)], session.index)
                    logits = masked_logits(self.head(feats)[:, :session.num_seen].float(), lo, hi)
                    loss = F.cross_entropy(logits, y) + aux
                    extra = self.extra_loss(feats, y, session)
                    if extra is not None:
                        loss = loss + extra
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(prompt_params + head_params, cfg.clip_grad)
                opt.step()
                if sched is not None:
                    sched.step()
                seen += len(idx)
        for p in prompt_params + head_params:
            p.requires_grad_(False)
        ctx.count("backward_samples", seen)

    def logits(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.ctx):
            feats, _ = self.features(x, q, None)
            return self.head(feats)[:, : self.num_seen].float()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.ctx.device)
        return self.logits(x, batch_embeddings(self, x))

    def predict_split(self, split: Split) -> torch.Tensor:
        q = self.queries(split)
        bs = self.ctx.eval_batch_size
        self.ctx.count("forward_samples", len(split))
        return torch.cat([self.logits(split.x[s:s + bs].to(self.ctx.device), q[s:s + bs]).cpu()
                          for s in range(0, len(split), bs)])

    def task_of_class(self, c: torch.Tensor) -> torch.Tensor:
        """Session index of each class id (the official ``target_task_map``)."""
        bounds = torch.tensor([hi for _, hi in self.session_ranges], device=c.device)
        return torch.bucketize(c, bounds, right=True)

    def state_dict(self):
        return {**super().state_dict(), "head": self.head.state_dict(),
                "prompts": {k: v.detach().cpu() for k, v in self.prompt_module.state_dict().items()},
                "session_ranges": [list(r) for r in self.session_ranges]}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.head.load_state_dict(state["head"])
        self.session_ranges = [tuple(r) for r in state["session_ranges"]]
        self.restore_prompts(state["prompts"])

    def restore_prompts(self, tensors: dict[str, torch.Tensor]) -> None:
        """Recreate the prompt parameters from a checkpoint (they grow per session, so by name)."""
        for name, t in tensors.items():
            self.add_param(name, t.clone())

    def add_param(self, name: str, t: torch.Tensor) -> nn.Parameter:
        """A prompt, key or statistic tensor, frozen until ``trainable`` hands it to the optimizer."""
        p = nn.Parameter(t.to(self.ctx.device), requires_grad=False)
        self.prompt_module.register_parameter(name, p)
        return p

    def p(self, name: str) -> nn.Parameter:
        return getattr(self.prompt_module, name)

    def has(self, name: str) -> bool:
        return name in self.prompt_module._parameters


#: depth of the ViT-B/16 on which the official prompt placements were chosen
REFERENCE_DEPTH = 12


def relative_blocks(official: list[int], depth: int, above: int = -1) -> list[int]:
    """The official blocks of a 12-block ViT at the same relative depth of a ``depth``-block backbone.

    The official span [first, last] covers [first/12, (last+1)/12) of the depth; on ``depth`` blocks
    that is blocks round(first*depth/12) .. ceil((last+1)*depth/12) - 1, at least one block, and none at
    or below ``above`` (DualPrompt's E-prompts sit above its G-prompt). On 12 blocks it is the identity.
    """
    if not official:
        return []
    first = max(round(min(official) * depth / REFERENCE_DEPTH), above + 1)
    last = max(first, -(-(max(official) + 1) * depth // REFERENCE_DEPTH) - 1)
    return [b for b in range(first, last + 1) if b < depth]


def place_blocks(cfg, field: str, official: list[int], backbone, above: int = -1):
    """``cfg`` with ``field`` set: the configured blocks (checked against the backbone), or, when the
    config leaves it None, the official placement at the same relative depth (``relative_blocks``)."""
    blocks = getattr(cfg, field)
    if blocks is None:
        blocks = relative_blocks(official, backbone.num_blocks, above)
        if not blocks:
            raise ValueError(f"{cfg.name}: no block of {backbone.name!r} ({backbone.num_blocks} blocks) lies at "
                             f"the relative depth of the official {field} {official}; set {field}")
    bad = [b for b in blocks if not 0 <= b < backbone.num_blocks]
    if bad:
        raise ValueError(f"{cfg.name}: {field} {bad} outside the backbone's blocks 0..{backbone.num_blocks - 1} "
                         f"({backbone.name})")
    return cfg.model_copy(update={field: list(blocks)})


def expand_batch(t: torch.Tensor, b: int) -> torch.Tensor:
    """A prompt shared by the batch, (L, D) -> (B, L, D) (a view)."""
    return t.unsqueeze(0).expand(b, *t.shape)


#: S-Prompt++, HiDe-Prompt and CODA-Prompt prefix-tune blocks 0-4 of a 12-block ViT
OFFICIAL_BLOCKS = [0, 1, 2, 3, 4]
#: the field's doc for those methods' configs
BLOCKS_DOC = ("blocks that get prefix prompts; None: the official blocks 0-4 of a 12-block ViT at the same "
              "relative depth (pace.methods.prompt_base.relative_blocks: 0-1 on Whisper tiny's 4 blocks)")


class SessionPromptLearner(PromptLearner):
    """One prefix prompt per session in ``cfg.blocks`` (``cfg.length`` key and value tokens per block),
    started from the previous session's with ``cfg.init_from_previous``, else ~ U(-1, 1). Training on
    session t uses prompt t; inference asks ``infer_session`` (S-Prompt++, HiDe-Prompt)."""

    def __init__(self, cfg, backbone, ctx):
        super().__init__(place_blocks(cfg, "blocks", OFFICIAL_BLOCKS, backbone), backbone, ctx)

    def num_prompts(self) -> int:
        return sum(1 for n in self.prompt_module._parameters if n.startswith("prompt_"))

    def new_prompt(self, t: int) -> None:
        cfg = self.cfg
        if cfg.init_from_previous and t > 0:
            prompt = self.p(f"prompt_{t - 1}").detach().clone()
        else:  # (blocks, key/value, length, D)
            prompt = uniform_((len(cfg.blocks), 2, cfg.length, self.backbone.embed_dim),
                              self.ctx.generator(f"{cfg.name}-prompt:{t}"))
        self.add_param(f"prompt_{t}", prompt)

    def infer_session(self, q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prompts(self, q, session):
        b = q.shape[0]
        if session is not None:
            e = expand_batch(self.p(f"prompt_{session}"), b)
        else:
            e = torch.stack([self.p(f"prompt_{s}") for s in range(self.num_prompts())])[self.infer_session(q)]
        prefix = {blk: (e[:, i, 0], e[:, i, 1]) for i, blk in enumerate(self.cfg.blocks)}
        return Prompts(prefix=prefix), q.new_zeros(()).float()

    def trainable(self, session: Session) -> list[nn.Parameter]:
        return [self.p(f"prompt_{session.index}")]
