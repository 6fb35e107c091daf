"""CODA-Prompt (Smith et al., CVPR 2023), as its official code (GT-RIPL/CODA-Prompt) does it, on a
frozen audio transformer.

- In each of the blocks ``blocks`` (0..4): prompt components P_m (``length`` tokens each), keys K_m and
  attention vectors A_m; ``components_per_session`` new ones per session (100 over 10 tasks
  officially). A session's components are initialised by Gram-Schmidt: redrawn at random and made
  orthonormal to every earlier component (rows of K, of A and of the flattened P separately).
- The prompt for query q is sum_m alpha_m P_m with alpha_m = cos(q * A_m, K_m) (attention-weighted
  key matching); its first length/2 tokens are the key prefix, the rest the value prefix.
- While training session t only its own components receive gradient (earlier ones enter detached);
  at inference all components so far are used.
- Loss: cross-entropy over session t's classes (earlier ones -inf) plus ``ortho_mu`` x the
  orthogonality term sum over K, A, P of mean((X X^T - I)^2) (0 in the official configs, kept as a
  field). Classifier: linear head on the pooled embedding ([CLS]).
- Adam, lr 1e-3, cosine schedule, 20 epochs, no batch scaling, no clipping (official CIFAR config).

Audio-forced changes and choices (config fields): by default ``blocks`` are the official 0..4 of a
12-block ViT at the same relative depth (0..1 on Whisper tiny's 4 blocks; the FSDD configs set 0..3);
the query on backbones without a CLS token is the mean-pooled embedding; components beyond the embedding
width cannot all be orthogonal (Gram-Schmidt then keeps a random unit vector for the excess, where the
official code would produce zeros).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from pace.config import MethodConfig
from pace.methods.base import Session, register_method
from pace.methods.prompt_base import BLOCKS_DOC, OFFICIAL_BLOCKS, PromptLearner, PromptTrainConfig, place_blocks
from pace.backbones.prompting import Prompts
from pace.peft.prompts import gram_schmidt, ortho_penalty


class CODAPromptConfig(MethodConfig):
    """Attention-weighted sums of prompt components, new orthogonal components per session."""

    name: Literal["codaprompt"] = "codaprompt"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"type": "log", "low": 0.0001, "high": 0.01},
        "train.epochs": {"type": "int", "low": 1, "high": 8},
    }
    blocks: list[int] | None = Field(None, description=BLOCKS_DOC)
    components_per_session: int = Field(10, ge=1)
    length: int = Field(8, ge=2, multiple_of=2)
    ortho_mu: float = Field(0.0, ge=0)
    train: PromptTrainConfig = Field(default_factory=lambda: PromptTrainConfig(
        epochs=20, lr=1e-3, scale_lr_by_batch=False, schedule="cosine", clip_grad=None))


def coda_prompt(q: torch.Tensor, k: torch.Tensor, a: torch.Tensor,
                p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D) query, (M, D) keys, (M, D) attention, (M, L, D) components -> ((B, L, D) prompt, (B, M) alpha)."""
    aq = F.normalize(q[:, None, :] * a[None], dim=2)  # (B, M, D)
    alpha = torch.einsum("bmd,md->bm", aq, F.normalize(k, dim=1))
    return torch.einsum("bm,mld->bld", alpha, p), alpha


@register_method(CODAPromptConfig)
class CODAPrompt(PromptLearner):
    def __init__(self, cfg, backbone, ctx):
        super().__init__(place_blocks(cfg, "blocks", OFFICIAL_BLOCKS, backbone), backbone, ctx)

    def _sessions(self) -> int:
        return sum(1 for n in self.prompt_module._parameters if n.startswith("k_0_"))

    def before_session(self, session: Session, q) -> None:
        t, cfg, d = session.index, self.cfg, self.backbone.embed_dim
        n = cfg.components_per_session
        for i in range(len(cfg.blocks)):
            for kind, shape in (("k", (n, d)), ("a", (n, d)), ("p", (n, cfg.length, d))):
                old = [self.p(f"{kind}_{i}_{s}").detach() for s in range(t)]
                full = torch.cat(old + [torch.zeros(shape, device=self.ctx.device)]).cpu()
                g = self.ctx.generator(f"coda:{kind}:{i}:{t}")
                new = gram_schmidt(full, t * n, (t + 1) * n, g)[t * n:]
                self.add_param(f"{kind}_{i}_{t}", new)

    def components(self, i: int, session: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block i's (K, A, P) up to the session: earlier sessions' detached while training."""
        last = self._sessions() - 1 if session is None else session
        out = []
        for kind in ("k", "a", "p"):
            parts = [self.p(f"{kind}_{i}_{s}") for s in range(last + 1)]
            if session is not None:
                parts = [t.detach() for t in parts[:-1]] + parts[-1:]
            out.append(torch.cat(parts))
        return out[0], out[1], out[2]

    def prompts(self, q, session):
        prefix, aux = {}, q.new_zeros(()).float()
        half = self.cfg.length // 2
        for i, blk in enumerate(self.cfg.blocks):
            k, a, p = self.components(i, session)
            prompt, _ = coda_prompt(q.float(), k, a, p)
            prefix[blk] = (prompt[:, :half], prompt[:, half:])
            if session is not None and self.cfg.ortho_mu > 0:
                aux = aux + self.cfg.ortho_mu * (ortho_penalty(k) + ortho_penalty(a)
                                                 + ortho_penalty(p.reshape(p.shape[0], -1)))
        return Prompts(prefix=prefix), aux

    def trainable(self, session: Session) -> list[torch.nn.Parameter]:
        return [self.p(f"{kind}_{i}_{session.index}") for i in range(len(self.cfg.blocks)) for kind in "kap"]
