"""Small pieces several learners share: frozen-backbone embeddings of a split or a batch."""

from __future__ import annotations

import torch

from pace.embed import autocast, embed
from pace.methods.base import Split


def split_embeddings(learner, split: Split) -> torch.Tensor:
    """Pooled embeddings of a split under the learner's current backbone state (cached by content)."""
    return embed(learner.backbone, split.x, learner.ctx, keys=split.keys)


def batch_embeddings(learner, x: torch.Tensor) -> torch.Tensor:
    """Pooled embeddings of an evaluation batch (no cache: the runner already batches test sets)."""
    with torch.inference_mode(), autocast(learner.ctx):
        return learner.backbone(x.to(learner.ctx.device)).pooled.float()
