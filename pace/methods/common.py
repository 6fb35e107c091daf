"""Small pieces several learners share: frozen-backbone embeddings of a split or a batch."""

from __future__ import annotations

import torch

from pace.embed import autocast, embed
from pace.methods.base import Learner, Split


def split_embeddings(learner, split: Split) -> torch.Tensor:
    """Pooled embeddings of a split under the learner's current backbone state (cached by content)."""
    return embed(learner.backbone, split.x, learner.ctx, keys=split.keys)


def batch_embeddings(learner, x: torch.Tensor) -> torch.Tensor:
    """Pooled embeddings of an evaluation batch (no cache: the runner already batches test sets)."""
    with torch.inference_mode(), autocast(learner.ctx):
        return learner.backbone(x.to(learner.ctx.device)).pooled.float()


class EmbeddingLearner(Learner):
    """A learner whose prediction is a head on pooled embeddings of the backbone as it stands.

    Evaluating a whole split goes through the embedding cache, so sessions that leave the backbone
    unchanged (a frozen or no-longer-adapted backbone) do not re-embed every earlier test set.
    """

    def logits_from_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embeddings(batch_embeddings(self, x))

    def predict_split(self, split: Split) -> torch.Tensor:
        return self.logits_from_embeddings(split_embeddings(self, split).to(self.ctx.device)).cpu()
