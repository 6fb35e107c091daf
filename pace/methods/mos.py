"""MOS, Model Surgery (Sun, Zhou, Zhao, Gan, Zhan, Ye; AAAI 2025, "MOS: Model Surgery for Pre-Trained
Model-Based Class-Incremental Learning"), checked against the official code
github.com/sun-hailong/AAAI25-MOS (commit 8d5e07c, 17 Apr 2025: ``models/mos.py``,
``backbone/vit_mos.py``, ``MOSNet`` in ``utils/inc_net.py``, ``exps/mos_*.json``).

Each session t trains its own adapter (here a LoRA stack on every block) on the frozen backbone:

- It starts from the previous session's adapter (the official ``cur_adapter`` is created once and
  carried over), and after every optimizer step from session 2 on it is merged towards the mean of
  the stored adapters, ``theta_t <- (1 - m) theta_t + m mean(theta_0 .. theta_{t-1})`` parameter by
  parameter (``adapter_momentum`` m = 0.1): the adapter merging against parameter drift. When the
  session ends the adapter is stored, and never changed again.
- Loss: cross-entropy of a linear head over all seen classes with the earlier classes' logits set to
  -inf (the head trains at 0.1x the adapter lr), plus ``reg`` (0.1) x the prototype-contrastive term
  (rows [earlier class means; batch features], cross-entropy of their similarity / 0.8 against the
  identity).
- Afterwards: per-class Gaussians (mean, covariance + 1e-4 I) of the session's features under its
  own adapter; from session 2 on the head is re-trained on draws from every seen class's Gaussian
  (classifier alignment: ``batch x 5`` draws per class per epoch, 30 epochs, SGD lr 0.005, momentum
  0.9, cosine).
- A prototype classifier (cosine to the class means) on the backbone with the FIRST session's
  adapter (the official ``forward_orig`` runs ``adapter_id=0``): every class's prototype is taken
  under that model.

Inference, the self-refined adapter retrieval: the prototype classifier's class names a session;
that session's adapter gives a feature, the head a class; if that class belongs to another session,
its adapter is tried, until the session repeats or 4 tries; the last head logits are the answer,
ensembled as ``softmax(head) + softmax(T x prototype logits)`` with T the sessions so far.

Where ours departs from the official code:

- Audio backbone (EAT, Whisper, ...; pooled embedding) instead of an ImageNet ViT-B/16; LoRA
  (``lora``: rank 8, alpha 16 on q and v of every block) instead of the official parallel bottleneck
  adapter (16 wide, scale 0.1, dropout 0.1) beside the MLP of every block. LoRA's A and B are merged
  factor by factor, as the official code merges the adapter's down and up projections.
- The merge is applied once after each optimizer step. The official code also applies it inside
  every training forward (so twice per step) and, in place, inside every evaluation forward of a
  stored adapter t >= 1 (so stored adapters drift towards the mean of earlier ones with every test
  batch), and computes the class Gaussians after one more merge of the live adapter than the one it
  stores. Ours stores each adapter once and uses exactly it for its Gaussians and at inference, as
  the paper describes.
- SGD with momentum and no learning-rate schedule (``pace.methods.parts.train``) for the adapter
  (official: cosine over the epochs); the head's initial rows are ``LinearHead``'s. Defaults: 10
  epochs at lr 0.01, weight decay 5e-4 (the official CUB / OmniBenchmark values; its other configs
  use up to 20 epochs, lr 0.05 and weight decay 5e-3).
- ``retrieval_model: first`` (default, official) or ``pretrained`` (no adapter) for the prototypes.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from pace.cache import tensor_digest
from pace.config import MethodConfig
from pace.embed import autocast, embed
from pace.heads.linear import LinearHead
from pace.heads.ncm import NCMHead
from pace.methods.base import Learner, Session, Split, register_method
from pace.methods.diagnostics import instrumenting, lora_stats, mean_cosine
from pace.methods.parts import Adapter, LoRAConfig, TrainConfig, freeze_backbone, train
from pace.heads.gaussians import align_on_gaussians, class_gaussians, gaussian_roots
from pace.peft.prompts import masked_logits, prototype_contrastive


class MOSConfig(MethodConfig):
    """Per-session LoRA adapters merged towards the earlier ones, self-refined adapter retrieval (MOS)."""

    name: Literal["mos"] = "mos"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"type": "log", "low": 0.001, "high": 0.1},
        "train.epochs": {"type": "int", "low": 2, "high": 10},
    }
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    #: blocks that get the adapter; None = every block (official)
    blocks: list[int] | None = None
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=10, lr=0.01, weight_decay=5e-4))
    #: the head's lr relative to the adapter's (official: 0.1)
    head_lr_factor: float = Field(0.1, gt=0)
    #: m of theta_t <- (1 - m) theta_t + m mean(earlier adapters), after each step (0 = no merging)
    merge_momentum: float = Field(0.1, ge=0, le=1)
    #: where session t's adapter starts: the previous session's (official) or a fresh LoRA init
    init: Literal["previous", "fresh"] = "previous"
    reg: float = Field(0.1, ge=0)
    temperature: float = Field(0.8, gt=0)
    ca_epochs: int = Field(30, ge=0)
    ca_lr: float = Field(0.005, gt=0)
    #: draws per class per alignment epoch; None = 5 x the batch size (official)
    ca_per_class: int | None = Field(None, ge=1)
    stats: Literal["covariance", "variance"] = "covariance"
    #: the model the retrieval prototypes come from: the first session's adapter (official) or none
    retrieval_model: Literal["first", "pretrained"] = "first"
    max_iter: int = Field(4, ge=1)
    #: add softmax(T x prototype logits) to softmax(head logits) (official ``ensemble: true``)
    ensemble: bool = True


AdapterState = dict[str, tuple[torch.Tensor, torch.Tensor]]


def merge_adapter(current: AdapterState, earlier: list[AdapterState], momentum: float) -> AdapterState:
    """``(1 - m) current + m mean(earlier)`` per tensor, computed in float64, in current's dtype."""
    out = {}
    for name, (a, b) in current.items():
        mean_a = torch.stack([e[name][0].double() for e in earlier]).mean(0)
        mean_b = torch.stack([e[name][1].double() for e in earlier]).mean(0)
        out[name] = (((1 - momentum) * a.double() + momentum * mean_a).to(a.dtype),
                     ((1 - momentum) * b.double() + momentum * mean_b).to(b.dtype))
    return out


def self_refined_logits(orig_logits: torch.Tensor, feats: torch.Tensor, head, task_of_class,
                        max_iter: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The official per-sample retrieval loop, for a batch.

    ``orig_logits`` (N, K): the prototype classifier's; ``feats`` (T, N, D): each sample's feature
    under each session's adapter; ``head``: features -> (N, >= K) logits; ``task_of_class``: class
    ids -> session ids. Start at the session of the prototype classifier's class; take the head's
    logits on that session's feature; stop when the head's class is of the same session or after
    ``max_iter`` tries, else move to that session. Returns the last logits (N, K) and the session
    each sample ended at.
    """
    n, k = orig_logits.shape
    rows = torch.arange(n, device=feats.device)
    prev = task_of_class(orig_logits.argmax(dim=1)).to(feats.device)
    final = torch.empty(n, k, dtype=torch.float32, device=feats.device)
    active = torch.ones(n, dtype=torch.bool, device=feats.device)
    for it in range(1, max_iter + 1):
        logits = head(feats[prev, rows])[:, :k].float()
        final[active] = logits[active]
        cur = task_of_class(logits.argmax(dim=1))
        active &= ~((cur == prev) | (it >= max_iter))
        if not bool(active.any()):
            break
        prev = torch.where(active, cur, prev)
    return final, prev


class _SessionLogits(nn.Module):
    """The head's logits over classes 0..hi-1 with those below lo at -inf (the official train mask)."""

    def __init__(self, head: nn.Module, lo: int, hi: int):
        super().__init__()
        self.head, self.lo, self.hi = head, lo, hi

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return masked_logits(self.head(z)[:, : self.hi], self.lo, self.hi)


@register_method(MOSConfig)
class MOS(Learner):
    def __init__(self, cfg, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        if backbone.num_blocks == 0:
            raise ValueError(f"mos: backbone {backbone.name!r} has no transformer blocks for the per-session "
                             "LoRA adapters")
        freeze_backbone(backbone)
        # the base weights never change: one identity for the embedding cache keys, taken before LoRA
        self._base_id = backbone.identity()
        self.blocks = list(range(backbone.num_blocks)) if cfg.blocks is None else list(cfg.blocks)
        self.adapter = Adapter(backbone, cfg.lora)
        self.adapter.attach(self.blocks)
        # one live LoRA stack; each session's adapter is loaded into it when that adapter is needed
        self.adapter.new_session(ctx.generator("mos-lora:0"))
        self.adapter.freeze()
        self._fresh = self._snapshot()  # session 1's starting point
        self._lora_key = f"{cfg.lora.model_dump_json()}|{self.blocks}"
        self.head = LinearHead(backbone.embed_dim).to(ctx.device)
        self.prototypes = NCMHead(backbone.embed_dim)  # the retrieval classifier
        self.adapters: list[AdapterState] = []  # stored per session, never changed afterwards
        self._digests: list[str] = []
        self.means: list[torch.Tensor] = []  # per session (classes, D) float32, CPU
        self.covs: list[torch.Tensor] = []  # per session (classes, D, D) float32, CPU
        self.session_ranges: list[tuple[int, int]] = []
        self._earlier: list[AdapterState] = []  # the adapters the running session merges towards

    # ---- the live stack

    def _live(self) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        return {n: (m.lora_A[0], m.lora_B[0]) for n, m in self.adapter.manager.modules.items()}

    def _snapshot(self) -> AdapterState:
        return {n: (a.detach().clone(), b.detach().clone()) for n, (a, b) in self._live().items()}

    @torch.no_grad()
    def _load(self, state: AdapterState | None) -> None:
        """Put an adapter into the live stack; None: B = 0, i.e. the pretrained backbone."""
        with torch.inference_mode(False):  # the runner evaluates under inference mode
            for n, (a, b) in self._live().items():
                if state is None:
                    b.zero_()
                else:
                    a.copy_(state[n][0])
                    b.copy_(state[n][1])

    def _state_of(self, j: int | None) -> AdapterState | None:
        return None if j is None else self.adapters[j]

    @staticmethod
    def _digest(state: AdapterState) -> str:
        h = hashlib.sha256()
        for n in sorted(state):
            for t in state[n]:
                h.update(n.encode())
                h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def merge_step(self) -> None:
        """One adapter merge of the live stack towards the mean of the stored adapters."""
        merged = merge_adapter(self._snapshot(), self._earlier, self.cfg.merge_momentum)
        with torch.no_grad():
            for n, (a, b) in self._live().items():
                a.copy_(merged[n][0])
                b.copy_(merged[n][1])

    # ---- features under an adapter

    def _embed(self, split: Split, j: int | None) -> torch.Tensor:
        """Pooled embeddings of a split under adapter j (None: none), cached by base weights, LoRA
        config, adapter digest and clip keys (hashing the whole backbone per adapter swap is avoided)."""
        self._load(self._state_of(j))
        ctx = self.ctx
        if ctx.cache is None:
            return embed(self.backbone, split.x, ctx)
        tag = "none" if j is None else self._digests[j]
        key = f"mos-embed|{self._base_id}|{self._lora_key}|{tag}|{tensor_digest(split.keys)}|n={len(split)}"
        return ctx.cache.get_or_compute(key, lambda: {"z": embed(self.backbone, split.x, ctx)})["z"]

    def _forward(self, x: torch.Tensor, j: int | None) -> torch.Tensor:
        self._load(self._state_of(j))
        with torch.inference_mode(), autocast(self.ctx):
            return self.backbone(x).pooled.float()

    @property
    def _retrieval(self) -> int | None:
        return 0 if self.cfg.retrieval_model == "first" else None

    def task_of_class(self, c: torch.Tensor) -> torch.Tensor:
        bounds = torch.tensor([hi for _, hi in self.session_ranges], device=c.device)
        return torch.bucketize(c, bounds, right=True)

    # ---- learning

    def learn(self, session: Session) -> None:
        cfg, ctx, t = self.cfg, self.ctx, session.index
        lo, hi = session.classes[0], session.num_seen
        self.session_ranges.append((lo, hi))
        self.head.expand(hi, ctx.generator(f"mos-head:{t}"))
        start = self._start_state(t)
        self._load(start)
        live = [p for pair in self._live().values() for p in pair]
        for p in live:
            p.requires_grad_(True)
        self._earlier = list(self.adapters)
        old_means = torch.cat(self.means).to(ctx.device) if self.means else None
        merge = cfg.merge_momentum > 0 and t > 0

        def orth(feats, y, x, idx):
            return cfg.reg * prototype_contrastive(feats, old_means, cfg.temperature)

        train(self.backbone, _SessionLogits(self.head, lo, hi), session.train, ctx, cfg.train,
              backbone_params=live, head_lr=cfg.train.lr * cfg.head_lr_factor, purpose=f"mos:{t}",
              extra_loss=orth if cfg.reg > 0 else None, after_step=self.merge_step if merge else None)
        for p in live:
            p.requires_grad_(False)
        self.adapters.append(self._snapshot())
        self._digests.append(self._digest(self.adapters[-1]))
        self._earlier = []

        z = self._embed(session.train, t)
        means, covs = class_gaussians(z, session.train.y, session.classes)
        if cfg.stats == "variance":
            covs = torch.diag_embed(torch.diagonal(covs, dim1=1, dim2=2))
        self.means.append(means.float())
        self.covs.append(covs.float())
        z_ret = self._embed(session.train, self._retrieval)
        self.prototypes.accumulate(z_ret, session.train.y, hi)
        if t > 0:
            self.align(session)
        self._record(session, start, z, z_ret)

    def _start_state(self, t: int) -> AdapterState:
        if t == 0:
            return self._fresh
        if self.cfg.init == "previous":
            return self.adapters[-1]
        g = self.ctx.generator(f"mos-lora:{t}")
        fresh = {}
        for n, (a, b) in self._fresh.items():  # LoRA's init: A ~ U(+-1/sqrt(in)), B = 0
            bound = a.shape[1] ** -0.5
            fresh[n] = ((torch.rand(a.shape, generator=g) * 2 * bound - bound).to(a), torch.zeros_like(b))
        return fresh

    def align(self, session: Session) -> None:
        """Classifier alignment: the head re-trained on draws from every seen class's Gaussian."""
        cfg, ctx = self.cfg, self.ctx
        means, covs = torch.cat(self.means), torch.cat(self.covs)
        k = session.num_seen
        # as many batches of per_class draws as there are classes
        align_on_gaussians(self.head, means, gaussian_roots(covs), per_class=cfg.ca_per_class or ctx.batch_size * 5,
                           batches=k, num_classes=k, epochs=cfg.ca_epochs, lr=cfg.ca_lr,
                           weight_decay=cfg.train.weight_decay, generator=ctx.generator(f"mos-ca:{session.index}"),
                           device=ctx.device)

    def _record(self, session: Session, start: AdapterState, z: torch.Tensor, z_ret: torch.Tensor) -> None:
        with instrumenting(self.ctx) as d:
            d["adapted"], d["stage"] = 1, "mos"
            self._load(self.adapters[-1])
            d.update(lora_stats(self.adapter))  # the session's adapter as a whole (W - W0)
            self._load(start)
            before = embed(self.backbone, session.train.x, self.ctx)
            d["emb_cosine"] = mean_cosine(before, z)
            picked = self.task_of_class(self.prototypes.logits(z_ret)[:, : session.num_seen].argmax(1))
            d["retrieval_train_acc"] = 100.0 * float((picked == session.index).double().mean())

    # ---- inference

    def _combine(self, orig: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        orig = orig.to(feats.device).float()
        with torch.no_grad():
            final, _ = self_refined_logits(orig, feats, self.head, self.task_of_class, self.cfg.max_iter)
        if not self.cfg.ensemble:
            return final
        return final.softmax(dim=1) + (orig * len(self.adapters)).softmax(dim=1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.ctx.device)
        orig = self.prototypes.logits(self._forward(x, self._retrieval).cpu())[:, : self.num_seen]
        feats = torch.stack([self._forward(x, j) for j in range(len(self.adapters))])
        return self._combine(orig, feats)

    def predict_split(self, split: Split) -> torch.Tensor:
        orig = self.prototypes.logits(self._embed(split, self._retrieval))[:, : self.num_seen]
        feats = torch.stack([self._embed(split, j) for j in range(len(self.adapters))]).to(self.ctx.device)
        return self._combine(orig, feats).cpu()

    # ---- state

    def state_dict(self):
        return {**super().state_dict(), "head": self.head.state_dict(), "prototypes": self.prototypes.state_dict(),
                "adapters": [{n: [a.cpu(), b.cpu()] for n, (a, b) in s.items()} for s in self.adapters],
                "fresh": {n: [a.cpu(), b.cpu()] for n, (a, b) in self._fresh.items()},
                "means": list(self.means), "covs": list(self.covs),
                "session_ranges": [list(r) for r in self.session_ranges]}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        dev = self.ctx.device

        def adapter(s):
            return {n: (a.to(dev), b.to(dev)) for n, (a, b) in s.items()}

        self.head.load_state_dict(state["head"])
        self.prototypes.load_state_dict(state["prototypes"])
        self.adapters = [adapter(s) for s in state["adapters"]]
        self._digests = [self._digest(s) for s in self.adapters]
        self._fresh = adapter(state["fresh"])
        self.means, self.covs = list(state["means"]), list(state["covs"])
        self.session_ranges = [tuple(r) for r in state["session_ranges"]]
