"""How a transformer backbone takes prompts: prompt tuning and prefix tuning (the hook).

The hook. ``Prompts`` says what to inject, per block index:

* ``tokens[b]`` (B, L, D): prompt tuning; L tokens are prepended to the sequence entering block b and
  travel through the later blocks like any other token (L2P prepends its selected prompts before
  block 0).
* ``prefix[b]`` = (key prefix, value prefix), each (B, L, D): prefix tuning; block b's attention
  attends over ``[pk; W_k x]`` and ``[pv; W_v x]``. The prefixes are concatenated *after* the key and
  value projections and split into heads like them, as the official DualPrompt / CODA-Prompt codes do.

A backbone honours the hook by naming each block's module (``prompt_block``) and describing its
attention (``prompt_attention`` -> :class:`AttentionSite`). Prepended tokens sit before every other
token; attention after the embedding is permutation-equivariant on these backbones, so their position
changes nothing but indexing. ``Backbone.forward_prompted`` strips them before pooling and returns
their final states as ``prompt_tokens``. A block whose prefix is empty keeps its own attention and an
empty token tensor leaves the sequence as it is, so zero-length prompts reproduce the plain forward.
Only the prompts carry gradient; the backbone's weights are never written.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Prompts:
    """What to inject into which block (see the module docstring)."""

    tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        """Prepended tokens in the final sequence (they accumulate across blocks)."""
        return sum(int(t.shape[1]) for t in self.tokens.values())

    def check(self, num_blocks: int, dim: int, batch: int) -> None:
        for kind, entries in (("tokens", self.tokens), ("prefix", self.prefix)):
            for b, value in entries.items():
                if not 0 <= b < num_blocks:
                    raise ValueError(f"prompt {kind} at block {b}: the backbone has blocks 0..{num_blocks - 1}")
                for t in (value if kind == "prefix" else (value,)):
                    if t.dim() != 3 or t.shape[0] != batch or t.shape[2] != dim:
                        raise ValueError(f"prompt {kind} at block {b}: expected ({batch}, L, {dim}), "
                                         f"got {tuple(t.shape)}")
        for b, (pk, pv) in self.prefix.items():
            if pk.shape != pv.shape:
                raise ValueError(f"prefix at block {b}: key {tuple(pk.shape)} and value {tuple(pv.shape)} differ")


@dataclass
class AttentionSite:
    """One block's self-attention, as the prefix hook needs it.

    ``project(x)`` -> (q, k, v), each (B, N, D) before the head split; ``out`` is the output
    projection; ``scale`` multiplies q.k; ``wrap`` turns the output into what the module returns
    (a tensor for EAT, ``(out, None)`` for transformers' attention modules).
    """

    module: nn.Module
    project: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    out: Callable[[torch.Tensor], torch.Tensor]
    num_heads: int
    scale: float
    wrap: Callable[[torch.Tensor], Any] = staticmethod(lambda o: o)


def prefix_attention(site: AttentionSite, x: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of x over [pk; k(x)] and [pv; v(x)] (prefixes in projected space)."""
    b, n, d = x.shape
    q, k, v = site.project(x)
    k = torch.cat([pk.to(k.dtype), k], dim=1)
    v = torch.cat([pv.to(v.dtype), v], dim=1)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, t.shape[1], site.num_heads, d // site.num_heads).transpose(1, 2)

    o = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=site.scale)
    return site.out(o.transpose(1, 2).reshape(b, n, d))


def hf_attention_site(module: nn.Module) -> AttentionSite:
    """transformers' attention modules (Whisper, AST, wav2vec2 family): q/k/v projections, an output
    projection (``out_proj`` or ``o_proj``), ``head_dim`` and ``scaling``; they return (out, weights)."""
    out = getattr(module, "out_proj", None) or module.o_proj
    return AttentionSite(
        module=module,
        project=lambda x: (module.q_proj(x), module.k_proj(x), module.v_proj(x)),
        out=out,
        num_heads=module.q_proj.out_features // module.head_dim,
        scale=float(module.scaling),
        wrap=lambda o: (o, None),
    )


@contextlib.contextmanager
def prompt_hooks(backbone, prompts: Prompts) -> Iterator[None]:
    """Inject ``prompts`` into ``backbone`` for the duration of the block (hooks removed after)."""
    handles = []
    swapped: list[nn.Module] = []
    try:
        for b, tokens in sorted(prompts.tokens.items()):
            if tokens.shape[1]:
                handles.append(backbone.prompt_block(b).register_forward_pre_hook(
                    _prepend(tokens), with_kwargs=True))
        for b, (pk, pv) in sorted(prompts.prefix.items()):
            if pk.shape[1] == 0:
                continue  # keep the block's own attention: exact plain forward
            site = backbone.prompt_attention(b)
            if "forward" in site.module.__dict__:
                raise RuntimeError(f"block {b}: attention forward already swapped")
            site.module.forward = _prefixed_forward(site, pk, pv)  # instance attribute shadows the class's
            swapped.append(site.module)
        yield
    finally:
        for h in handles:
            h.remove()
        for m in swapped:
            del m.forward


def _prepend(tokens: torch.Tensor):
    def hook(module, args, kwargs):
        if args:
            h = args[0]
            return (torch.cat([tokens.to(h.dtype), h], dim=1), *args[1:]), kwargs
        h = kwargs["hidden_states"]
        return args, {**kwargs, "hidden_states": torch.cat([tokens.to(h.dtype), h], dim=1)}

    return hook


def _prefixed_forward(site: AttentionSite, pk: torch.Tensor, pv: torch.Tensor):
    def forward(*args, **kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if mask is not None:
            raise ValueError("prefix tuning does not support attention masks (padded batches)")
        return site.wrap(prefix_attention(site, x, pk, pv))

    return forward
