"""A learner restored from another's checkpoint state, as a resumed run would build it."""

from __future__ import annotations

import io

import torch

from pace.backbones.registry import build_backbone
from pace.methods.base import Context, Learner, build_learner


def restored_learner(runner, ctx: Context | None = None) -> Learner:
    """The run's learner state saved and loaded (``weights_only=True``) into a fresh learner on a freshly
    built backbone (the run's config and init seed; ``ctx`` defaults to the run's seeds, batch 8)."""
    cfg = runner.cfg
    buf = io.BytesIO()
    torch.save(runner.learner.state_dict(), buf)
    buf.seek(0)
    fresh = build_learner(cfg.method, build_backbone(cfg.backbone, init_seed=cfg.seeds.init),
                          ctx if ctx is not None else Context(seeds=cfg.seeds, batch_size=8))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    return fresh
