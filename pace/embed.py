"""Batched backbone forward passes for features that do not need gradients.

Embeddings of a split under a given backbone state are computed once and reused across learners and
trials through the content-addressed cache: the key holds the backbone identity (name, pooling,
frontend, sha of the exact weights) and the digest of the clip keys.
"""

from __future__ import annotations

import contextlib

import torch

from pace.backbones.base import Backbone
from pace.cache import tensor_digest
from pace.modes import evaluating
from pace.console import ProgressLine


def autocast(ctx) -> contextlib.AbstractContextManager:
    if ctx.device.type == "cuda" and ctx.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _forward_all(backbone: Backbone, x: torch.Tensor, ctx) -> torch.Tensor:
    out = []
    # a line every 30 s and a closing one when the pass took 5 s or more (evaluation passes are short)
    progress = ProgressLine("embedding", len(x), min_s=5.0) if ctx.progress else None
    with evaluating(backbone), torch.inference_mode(), autocast(ctx):
        for s in range(0, len(x), ctx.eval_batch_size):
            xb = x[s:s + ctx.eval_batch_size].to(ctx.device, non_blocking=True)
            out.append(backbone(xb).pooled.float().cpu())
            if progress is not None:
                progress.update(len(xb))
    if progress is not None:
        progress.done()
    ctx.count("forward_samples", len(x))
    return torch.cat(out) if out else torch.empty(0, backbone.embed_dim)


def embed(backbone: Backbone, x: torch.Tensor, ctx, keys: list[str] | None = None) -> torch.Tensor:
    """Pooled embeddings (N, D) float32 on the CPU; cached when ``keys`` and a cache are given."""
    if keys is None or ctx.cache is None:
        return _forward_all(backbone, x, ctx)
    key = f"embed|{backbone.identity()}|{tensor_digest(keys)}|n={len(keys)}"
    return ctx.cache.get_or_compute(key, lambda: {"z": _forward_all(backbone, x, ctx)})["z"]
