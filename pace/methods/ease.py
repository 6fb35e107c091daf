"""EASE: Expandable Subspace Ensemble (Zhou, Sun, Ye and Zhan, CVPR 2024), checked against its official
code (github.com/sun-hailong/CVPR24-Ease, ``models/ease.py``, ``utils/inc_net.py``,
``backbone/linears.py``, ``backbone/vit_ease.py``; snapshot of 2025-04-01, commit 6d67508), on a frozen
audio backbone.

Every session t:

1. A new subspace: a fresh LoRA stack on the frozen backbone (every block by default), trained with a
   temporary cosine head over the session's classes (learnable scale starting at 1, as the official
   ``proxy_fc``) by cross-entropy on the session's clips only; then frozen for good. Earlier subspaces
   take no part in training.
2. Prototypes of the new classes: their mean pooled embedding under every subspace so far (each
   subspace is the backbone with that one stack and no other).
3. Semantic-guided prototype complement: an old class has no clips to embed in a later subspace d. Its
   prototype there is synthesised from classes that do have one: with A_hat the old classes'
   prototypes and A the donor classes' prototypes, both in the old classes' own subspace, and B the
   donors' prototypes in subspace d,

       P_old[d] = softmax_rows(cos(A_hat, A)) @ B.

   As the official ``recalc_sim`` (the default in every released config), every session recomputes this
   for every old session i and every later subspace d, with the donors being all classes of sessions
   d..t (those with real prototypes in both subspaces); ``recalc_sim: false`` is the paper's form
   (donors: the new classes only, target: the newest subspace only).

Features are the concatenation of the pooled embeddings under every subspace (D per session).
Prediction (the official ``forward_reweight``): a class of session i scores
``sum_j w_ij cos(z_j, P_c[j])`` over the subspaces j, with ``w_ii = 1`` and ``w_ij = alpha / t`` for
the other subspaces (alpha 0.1); with ``use_init_ptm`` the pretrained backbone adds a subspace of its
own, scored with weight ``beta`` for every class.

Where ours departs from the official code:

- The subspace is pace's LoRA (``lora``: rank 8, alpha 16 on q and v by default; ``lora.targets`` can
  put it on fc1/fc2) instead of the official AdaptFormer bottleneck adapter (down 64, ReLU, dropout
  0.1, up, scale 0.1, parallel to each block's MLP). Both start as the identity (B = 0 / up = 0) and
  add a low-rank trainable path; LoRA reuses pace's stacks, folding and state handling.
- Backbone: an audio backbone's pooled embedding (CLS or mean over tokens) instead of a ViT-B/16's CLS.
- Schedule: the official cosine annealing is not applied; pace's trainer keeps the lr constant. Defaults
  from the official CIFAR config (20 epochs, SGD lr 0.025, momentum 0.9, weight decay 5e-4); batch size
  is ``runtime.batch_size`` (official 48); no data augmentation.
- Session class ranges come from the scenario, not ``init_cls`` / ``increment`` (equal sessions).
- Prototypes and scores are float64.
- The official variants ``moni_adam`` (APER-style single adapter), ``use_diagonal`` and
  ``use_old_data`` (exemplars) are not implemented.

Each evaluation runs one forward pass per subspace (as the official ``forward_test``); a split's
embeddings under a frozen subspace are cached under the subspace's weights, so earlier sessions' test
sets are embedded once per subspace.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from pace.cache import tensor_digest
from pace.config import MethodConfig
from pace.embed import embed
from pace.heads.linear import CosineHead
from pace.methods.base import Learner, Session, Split, register_method
from pace.methods.common import batch_embeddings
from pace.methods.parts import Adapter, LoRAConfig, TrainConfig, freeze_backbone, train


class EASEConfig(MethodConfig):
    """A new LoRA subspace per session, concatenated; prototypes, old ones complemented by similarity (EASE)."""

    name: Literal["ease"] = "ease"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"type": "log", "low": 0.001, "high": 0.1},
        "train.epochs": {"type": "int", "low": 2, "high": 10},
        "alpha": {"type": "float", "low": 0.0, "high": 1.0},
    }
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=20, lr=0.025, weight_decay=5e-4))
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    blocks: list[int] | None = None  # None = every block (the official adapters are in all)
    alpha: float = Field(0.1, ge=0)
    recalc_sim: bool = True
    use_init_ptm: bool = False
    beta: float = Field(0.0, ge=0)


def complement(a_hat: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Semantic-guided prototypes: ``softmax_rows(cos(a_hat, a)) @ b`` (float64).

    a_hat (n_old, D): old classes in their own subspace; a (n_donor, D): donors in the same subspace;
    b (n_donor, D): the donors in the target subspace."""
    sim = F.normalize(a_hat.double(), dim=1) @ F.normalize(a.double(), dim=1).T
    return torch.softmax(sim, dim=1) @ b.double()


def _digest(state: dict) -> str:
    """sha256 of a LoRA state's tensors, in layer order (names a subspace in cache keys)."""
    h = hashlib.sha256()
    for name, layer in sorted(state["layers"].items()):
        h.update(name.encode())
        for t in list(layer["A"]) + list(layer["B"]):
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@register_method(EASEConfig)
class EASE(Learner):
    def __init__(self, cfg: EASEConfig, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        if backbone.num_blocks == 0:
            raise ValueError(f"ease: backbone {backbone.name!r} has no blocks to carry the per-session LoRA subspaces")
        freeze_backbone(backbone)
        self.adapter = Adapter(backbone, cfg.lora)
        try:
            self.adapter.attach(list(range(backbone.num_blocks)) if cfg.blocks is None else list(cfg.blocks))
        except (TypeError, ValueError) as e:
            raise ValueError(f"ease: backbone {backbone.name!r} cannot carry LoRA subspaces: {e}") from None
        #: the pretrained weights with the (empty) LoRA wrappers: the base of every subspace's cache key
        self._base_id = backbone.identity()
        self._empty = self.adapter.manager.state_dict()  # no stacks: the pretrained backbone
        #: one LoRA state (a single frozen stack) per session, and its digest
        self.subspaces: list[dict] = []
        self._digests: list[str] = []
        self.session_ranges: list[tuple[int, int]] = []
        #: (classes, subspaces, D) float64: real prototypes for subspaces up to a class's own session,
        #: complemented ones after it; with use_init_ptm, subspace 0 is the pretrained backbone
        self.protos = torch.zeros(0, 0, backbone.embed_dim, dtype=torch.float64)

    # ---- subspaces

    @property
    def offset(self) -> int:
        """Index of session 0's subspace in ``protos`` (1 when the pretrained backbone is one)."""
        return int(self.cfg.use_init_ptm)

    def use(self, s: int | None) -> None:
        """Put session s's subspace (None: the pretrained backbone) on the backbone, alone."""
        self.adapter.manager.load_state_dict(self._empty if s is None else self.subspaces[s])

    def _views(self) -> list[int | None]:
        return ([None] if self.cfg.use_init_ptm else []) + list(range(len(self.subspaces)))

    def embeddings(self, split: Split, s: int | None) -> torch.Tensor:
        """Pooled embeddings of a split under subspace s, cached under its weights."""
        self.use(s)
        cache = self.ctx.cache
        if cache is None:
            return embed(self.backbone, split.x, self.ctx)
        sub = "ptm" if s is None else self._digests[s]
        key = f"embed|{self._base_id}|ease-lora:{sub}|{tensor_digest(split.keys)}|n={len(split.keys)}"
        return cache.get_or_compute(key, lambda: {"z": embed(self.backbone, split.x, self.ctx)})["z"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated embedding of a batch: one D-wide block per subspace."""
        out = []
        for s in self._views():
            self.use(s)
            out.append(batch_embeddings(self, x).cpu())
        return torch.cat(out, dim=1)

    # ---- a session

    def learn(self, session: Session) -> None:
        ctx, cfg, t = self.ctx, self.cfg, session.index
        lo, hi = session.classes[0], session.classes[-1] + 1
        self.session_ranges.append((lo, hi))
        self.use(None)
        params = self.adapter.new_session(ctx.generator(f"ease-lora:{t}"))
        head = CosineHead(self.backbone.embed_dim, 0, scale=1.0).to(ctx.device)  # official proxy_fc: sigma 1
        head.expand(hi - lo, ctx.generator(f"ease-head:{t}"))
        train(self.backbone, head, session.train, ctx, cfg.train, backbone_params=params, head_lr=cfg.train.lr,
              label_offset=lo, purpose=f"ease:{t}")
        self.adapter.freeze()
        state = self.adapter.manager.state_dict()
        self.subspaces.append(state)
        self._digests.append(_digest(state))
        self._new_prototypes(session)
        if t > 0:
            self._complement(t)

    def _new_prototypes(self, session: Session) -> None:
        lo, hi = self.session_ranges[-1]
        views = self._views()
        grown = torch.zeros(hi, len(views), self.backbone.embed_dim, dtype=torch.float64)
        grown[: self.protos.shape[0], : self.protos.shape[1]] = self.protos
        y = session.train.y
        for j, s in enumerate(views):
            z = self.embeddings(session.train, s).double()
            for c in range(lo, hi):
                grown[c, j] = z[y == c].mean(0)
        self.protos = grown

    def _complement(self, t: int) -> None:
        """Prototypes of old sessions' classes in later subspaces (official ``solve_sim_reset`` /
        ``solve_similarity``)."""
        k = self.offset
        for i in range(t):
            lo_i, hi_i = self.session_ranges[i]
            for d in range(i + 1, t + 1) if self.cfg.recalc_sim else [t]:
                donors = slice(self.session_ranges[d][0], self.session_ranges[t][1])
                a_hat = self.protos[lo_i:hi_i, k + i]
                a, b = self.protos[donors, k + i], self.protos[donors, k + d]
                self.protos[lo_i:hi_i, k + d] = complement(a_hat, a, b)

    # ---- prediction

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """Scores of every seen class from concatenated features (see the module docstring)."""
        dim, t, k = self.backbone.embed_dim, len(self.subspaces) - 1, self.offset
        views = f.double().reshape(len(f), -1, dim)
        cos = torch.einsum("nsd,csd->ncs", F.normalize(views, dim=-1), F.normalize(self.protos, dim=-1))
        weights = torch.zeros(self.protos.shape[0], self.protos.shape[1], dtype=torch.float64)
        for i, (lo, hi) in enumerate(self.session_ranges):
            weights[lo:hi, k:] = self.cfg.alpha / t if t > 0 else 0.0
            weights[lo:hi, k + i] = 1.0
        if k:
            weights[:, 0] = self.cfg.beta
        return (cos * weights).sum(-1)[:, : self.num_seen]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(x))

    def predict_split(self, split: Split) -> torch.Tensor:
        f = torch.cat([self.embeddings(split, s) for s in self._views()], dim=1)
        return self.logits_from_features(f)

    # ---- state

    def state_dict(self):
        return {**super().state_dict(), "subspaces": self.subspaces, "protos": self.protos,
                "session_ranges": [list(r) for r in self.session_ranges]}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        dev = self.ctx.device  # once here, not at every switch of subspace
        self.subspaces = [{"layers": {n: {**layer, "A": [a.to(dev) for a in layer["A"]],
                                            "B": [b.to(dev) for b in layer["B"]]}
                                     for n, layer in s["layers"].items()}} for s in state["subspaces"]]
        self._digests = [_digest(s) for s in self.subspaces]
        self.protos = state["protos"].double().cpu()
        self.session_ranges = [(int(lo), int(hi)) for lo, hi in state["session_ranges"]]
