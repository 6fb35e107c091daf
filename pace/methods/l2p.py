"""L2P, Learning to Prompt (Wang et al., CVPR 2022), as its official code (google-research/l2p and
its PyTorch port) does it, on a frozen audio transformer.

- One prompt pool shared by all sessions: ``pool_size`` prompts of ``length`` tokens, each with a
  learnable key; prompts and keys ~ U(-1, 1).
- Query: the frozen backbone's pooled embedding without prompts (``prompt_base``). The ``top_k`` keys
  most cosine-similar to the query pick the prompts, which are concatenated and prepended to the
  sequence entering block ``prompt_block`` (0: the input, as L2P).
- Classifier: a linear head on the mean of the prompt tokens' final states (``head_type: prompt``).
- Loss: cross-entropy over the current session's classes only (other logits -inf, the official train
  mask) minus ``pull_coeff`` x the summed cosine of the query to its selected keys (surrogate key loss).
- Adam, lr 0.03 x batch/256, constant, 5 epochs, gradient norm 1; the pool and the head keep training
  across sessions (nothing is frozen between sessions), the optimizer is re-created each session.

Audio-forced changes and choices (config fields):
- the query on backbones without a CLS token (Whisper, wav2vec2 family) is the mean-pooled embedding;
- ``batchwise_prompt`` (the official majority vote of the batch's selections) defaults to false here:
  at test time it makes one clip's prediction depend on the others in its batch;
- the prompt-frequency diversification of the JAX code (task-incremental only) is not implemented.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from pace.config import MethodConfig
from pace.methods.base import Session, register_method
from pace.methods.prompt_base import PromptLearner, PromptTrainConfig
from pace.backbones.prompting import Prompts
from pace.peft.prompts import select_top_k, uniform_


class L2PConfig(MethodConfig):
    """Prompt pool with key matching (top-N by cosine), prompts prepended at the input."""

    name: Literal["l2p"] = "l2p"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"type": "log", "low": 0.001, "high": 0.1},
        "train.epochs": {"type": "int", "low": 1, "high": 8},
    }
    pool_size: int = Field(10, ge=1)
    length: int = Field(5, ge=1)
    top_k: int = Field(5, ge=1)
    prompt_block: int = Field(0, ge=0)
    pull_coeff: float = Field(0.1, ge=0)
    batchwise_prompt: bool = False
    head_input: Literal["prompt", "token"] = "prompt"
    train: PromptTrainConfig = Field(default_factory=PromptTrainConfig)


@register_method(L2PConfig)
class L2P(PromptLearner):
    def __init__(self, cfg, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        if cfg.top_k > cfg.pool_size:
            raise ValueError(f"l2p: top_k {cfg.top_k} exceeds pool_size {cfg.pool_size}")
        if cfg.prompt_block >= backbone.num_blocks:
            raise ValueError(f"l2p: prompt_block {cfg.prompt_block} >= the backbone's {backbone.num_blocks} blocks")
        self.head_input = cfg.head_input
        g = ctx.generator("l2p-pool")
        d = backbone.embed_dim
        self.add_param("prompt", uniform_((cfg.pool_size, cfg.length, d), g))
        self.add_param("key", uniform_((cfg.pool_size, d), g))

    def prompts(self, q, session):
        cfg = self.cfg
        idx, reduce_sim = select_top_k(q.float(), self.p("key"), cfg.top_k, cfg.batchwise_prompt)
        tokens = self.p("prompt")[idx].reshape(q.shape[0], cfg.top_k * cfg.length, -1)
        return Prompts(tokens={cfg.prompt_block: tokens}), -cfg.pull_coeff * reduce_sim

    def trainable(self, session: Session) -> list[torch.nn.Parameter]:
        return [self.p("prompt"), self.p("key")]
