"""DualPrompt (Wang et al., ECCV 2022), as its official code (google-research/l2p, DualPrompt branch,
and its PyTorch port) does it, on a frozen audio transformer.

- G-prompt: one prompt shared by all sessions, prefix-tuned into blocks ``g_blocks`` (0, 1): per block a
  key prefix and a value prefix of ``g_length`` tokens each.
- E-prompts: one per session, with a key, prefix-tuned into blocks ``e_blocks`` (2, 3, 4): per block
  ``e_length`` key and ``e_length`` value tokens. Prompts and keys ~ U(-1, 1).
- Training on session t uses E-prompt t (the official prompt mask / task-id bootstrap) and pulls its
  key towards the queries: loss = CE over session t's classes (others -inf) - ``pull_coeff`` x mean
  cos(query, key_t). With ``init_from_previous`` (official ``shared_prompt_pool``) E-prompt t starts as
  a copy of E-prompt t-1.
- Inference: the E-prompt whose key is most cosine-similar to the query (top-1).
- Classifier: a linear head on the pooled embedding ([CLS], ``head_type: token``).
- Adam, lr 0.03 x batch/256, constant, 5 epochs, gradient norm 1.

Audio-forced changes and choices (config fields):
- by default the blocks are the official ones at the same relative depth of the backbone, E above G
  (``g_blocks: [0]``, ``e_blocks: [1]`` on Whisper tiny's 4 blocks; the FSDD configs set [0, 1] and
  [2, 3]); blocks beyond the backbone's depth are an error;
- the query on backbones without a CLS token is the mean-pooled embedding;
- the official pool is allocated for all tasks up front, so at test time a query can select a key of a
  task not learned yet (still at its random init); here the pool grows by one E-prompt per session, so
  only learned keys compete.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from pace.config import MethodConfig
from pace.methods.base import Session, register_method
from pace.methods.prompt_base import PromptLearner, PromptTrainConfig, expand_batch, place_blocks
from pace.backbones.prompting import Prompts
from pace.peft.prompts import cosine_matrix, uniform_


class DualPromptConfig(MethodConfig):
    """G-prompt (shared) + per-session E-prompts with keys, both prefix-tuned."""

    name: Literal["dualprompt"] = "dualprompt"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"type": "log", "low": 0.001, "high": 0.1},
        "train.epochs": {"type": "int", "low": 1, "high": 8},
    }
    #: None: the official blocks 0-1 of a 12-block ViT at the same relative depth (relative_blocks)
    g_blocks: list[int] | None = None
    g_length: int = Field(5, ge=0)
    #: None: the official blocks 2-4 of a 12-block ViT at the same relative depth, above the G-prompt
    e_blocks: list[int] | None = None
    e_length: int = Field(5, ge=1)
    pull_coeff: float = Field(1.0, ge=0)
    init_from_previous: bool = True
    train: PromptTrainConfig = Field(default_factory=PromptTrainConfig)


@register_method(DualPromptConfig)
class DualPrompt(PromptLearner):
    def __init__(self, cfg, backbone, ctx):
        cfg = place_blocks(cfg, "g_blocks", [0, 1], backbone)
        cfg = place_blocks(cfg, "e_blocks", [2, 3, 4], backbone, above=max(cfg.g_blocks, default=-1))
        super().__init__(cfg, backbone, ctx)
        d = backbone.embed_dim
        if cfg.g_blocks and cfg.g_length:
            # (blocks, key/value, length, D): the per-block prefix shape of the official prefix-tuned prompts
            self.add_param("g", uniform_((len(cfg.g_blocks), 2, cfg.g_length, d), ctx.generator("dual-g")))

    @property
    def num_e(self) -> int:
        return sum(1 for n in self.prompt_module._parameters if n.startswith("e_key_"))

    def before_session(self, session: Session, q) -> None:
        t, cfg = session.index, self.cfg
        g = self.ctx.generator(f"dual-e:{t}")
        d = self.backbone.embed_dim
        e = uniform_((len(cfg.e_blocks), 2, cfg.e_length, d), g)
        key = uniform_((d,), g)
        if cfg.init_from_previous and t > 0:
            e = self.p(f"e_{t - 1}").detach().clone()
        self.add_param(f"e_{t}", e)
        self.add_param(f"e_key_{t}", key)

    def e_keys(self) -> torch.Tensor:
        return torch.stack([self.p(f"e_key_{i}") for i in range(self.num_e)])

    def select(self, q: torch.Tensor) -> torch.Tensor:
        """Inference: index of the E-prompt whose key is most cosine-similar to each query."""
        return cosine_matrix(q.float(), self.e_keys()).argmax(dim=1)

    def prompts(self, q, session):
        b = q.shape[0]
        prefix = {}
        if self.has("g"):
            g = self.p("g")
            for i, blk in enumerate(self.cfg.g_blocks):
                prefix[blk] = (expand_batch(g[i, 0], b), expand_batch(g[i, 1], b))
        if session is not None:
            e = self.p(f"e_{session}")
            ek, ev = (expand_batch(e[:, 0], b), expand_batch(e[:, 1], b))  # (B, blocks, L, D)
            pull = F.cosine_similarity(q.float(), self.p(f"e_key_{session}")[None], dim=1).mean()
            aux = -self.cfg.pull_coeff * pull
        else:
            e = torch.stack([self.p(f"e_{i}") for i in range(self.num_e)])[self.select(q)]  # (B, blocks, 2, L, D)
            ek, ev = e[:, :, 0], e[:, :, 1]
            aux = q.new_zeros(())
        for i, blk in enumerate(self.cfg.e_blocks):
            k, v = ek[:, i], ev[:, i]
            if blk in prefix:  # G and E on the same block: both prefixes
                k, v = torch.cat([prefix[blk][0], k], 1), torch.cat([prefix[blk][1], v], 1)
            prefix[blk] = (k, v)
        return Prompts(prefix=prefix), aux

    def trainable(self, session: Session) -> list[torch.nn.Parameter]:
        own = [self.p(f"e_{session.index}"), self.p(f"e_key_{session.index}")]
        return ([self.p("g")] if self.has("g") else []) + own
