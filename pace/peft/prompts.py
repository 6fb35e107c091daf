"""Prompting a frozen transformer backbone: prompt tuning and prefix tuning (the hook), plus the parts
the prompt-based continual learners (L2P, DualPrompt, CODA-Prompt, S-Prompt++, HiDe-Prompt) share.

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
    out = getattr(module, "out_proj", None) or getattr(module, "o_proj")
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


# ---------------------------------------------------------------------------------------------------
# Parts of the prompt-based learners


def uniform_(shape: tuple[int, ...], generator: torch.Generator, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """U(lo, hi): the official L2P / DualPrompt init of prompts and keys ("uniform")."""
    return torch.rand(shape, generator=generator) * (hi - lo) + lo


def cosine_matrix(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, D) x (M, D) -> (B, M) cosine similarities (L2P's key matching)."""
    return F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T


def select_top_k(query: torch.Tensor, keys: torch.Tensor, k: int,
                 batchwise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, k) of the k keys most cosine-similar to each query, and the surrogate (pull) term.

    The pull term is the official ``reduce_sim``: sum over the selected keys of cos(q, key), averaged
    over the batch; learners subtract ``coeff * reduce_sim`` from the loss (equivalently add
    ``coeff * sum(1 - cos)``, up to a constant). ``batchwise`` is the official codes' majority vote:
    every query in the batch gets the batch's k most frequently chosen prompts (it leaks batch
    statistics at test time, so learners default it to off).
    """
    sim = cosine_matrix(query, keys)
    idx = sim.topk(k, dim=1).indices
    if batchwise:
        counts = torch.bincount(idx.reshape(-1), minlength=keys.shape[0])
        # ties go to the lower index (stable), as torch.unique + topk on counts does in the official code
        top = torch.sort(counts, descending=True, stable=True).indices[:k]
        idx = top.unsqueeze(0).expand(query.shape[0], -1)
    reduce_sim = sim.gather(1, idx).sum() / query.shape[0]
    return idx, reduce_sim


def ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """CODA-Prompt's orthogonality term: mean((T T^T - I)^2) over the rows of T."""
    return ((t @ t.T - torch.eye(t.shape[0], device=t.device, dtype=t.dtype)) ** 2).mean()


def gram_schmidt(vectors: torch.Tensor, start: int, stop: int, generator: torch.Generator) -> torch.Tensor:
    """CODA-Prompt's init of a session's components: rows start..stop-1 are redrawn at random and made
    orthonormal to the span of rows 0..start-1 and to each other; the older rows stay as they are.

    ``vectors`` is (M, ...), flattened per row; returns a new tensor of the same shape. The older rows
    (trained, so no longer orthogonal) are orthonormalised first (QR) so that the new rows are exactly
    orthogonal to their span. Once the rows outnumber the dimensions, no orthogonal direction is left
    and a random unit vector is kept.
    """
    shape = vectors.shape
    v = vectors.detach().reshape(shape[0], -1).clone()
    dim = v.shape[1]
    old = v[:start].double()
    basis = torch.linalg.qr(old.T).Q.T if start else old  # (start', dim), orthonormal rows
    basis = basis[: min(start, dim)]
    for i in range(start, stop):
        u = torch.randn(dim, generator=generator, dtype=torch.float64)
        r = u - basis.T @ (basis @ u) if len(basis) < dim else u
        if r.norm() <= 1e-6 * u.norm():
            r = u
        e = r / r.norm()
        if len(basis) < dim:
            basis = torch.cat([basis, e[None]])
        v[i] = e.to(v.dtype)
    return v.reshape(shape)


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iters: int = 50) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; (N, D) -> (min(k, N), D) centroids (S-Prompts' keys)."""
    x = x.double()
    k = min(k, x.shape[0])
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    cent = [x[first]]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(cent)).min(dim=1).values ** 2
        if float(d2.sum()) <= 0:
            break
        cent.append(x[int(torch.multinomial(d2 / d2.sum(), 1, generator=generator))])
    c = torch.stack(cent)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(dim=1)
        new = torch.stack([x[assign == j].mean(0) if bool((assign == j).any()) else c[j] for j in range(len(c))])
        if torch.equal(new, c):
            break
        c = new
    return c.float()


def masked_logits(logits: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Logits outside the session's classes lo..hi-1 set to -inf (the official train masks)."""
    out = torch.full_like(logits, float("-inf"))
    out[:, lo:hi] = logits[:, lo:hi]
    return out


def prompt_param(shape: tuple[int, ...], generator: torch.Generator, init: str = "uniform") -> nn.Parameter:
    if init == "uniform":
        return nn.Parameter(uniform_(shape, generator))
    if init == "zero":
        return nn.Parameter(torch.zeros(shape))
    return nn.Parameter(torch.randn(shape, generator=generator) * 0.02)


def class_gaussians(z: torch.Tensor, y: torch.Tensor, classes: list[int],
                    eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean (C, D) and covariance (C, D, D) of features, float64, +eps*I (HiDe / SLCA)."""
    z = z.double()
    means, covs = [], []
    for c in classes:
        zc = z[y == c]
        mu = zc.mean(0)
        d = zc - mu
        cov = d.T @ d / max(len(zc) - 1, 1)
        means.append(mu)
        covs.append(cov + eps * torch.eye(z.shape[1], dtype=z.dtype))
    return torch.stack(means), torch.stack(covs)


def gaussian_roots(covs: torch.Tensor) -> torch.Tensor:
    """Square roots R (R R^T = cov) of (C, D, D) covariances, by eigendecomposition with negative
    eigenvalues floored at 0, so a rank-deficient covariance (few clips, wide features) still samples."""
    w, v = torch.linalg.eigh(covs.double())
    return v * w.clamp_min(0).sqrt().unsqueeze(-2)


def sample_gaussians(means: torch.Tensor, roots: torch.Tensor, n: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws per class from N(mean_c, R_c R_c^T): (C*n, D) float32 features and (C*n,) class rows."""
    eps = torch.randn(len(means), n, means.shape[1], generator=generator, dtype=torch.float64)
    draws = means.double()[:, None, :] + eps @ roots.double().transpose(1, 2)
    rows = torch.arange(len(means)).repeat_interleave(n)
    return draws.reshape(-1, means.shape[1]).float(), rows


def prototype_contrastive(feats: torch.Tensor, prototypes: torch.Tensor | None,
                          temperature: float = 0.8) -> torch.Tensor:
    """HiDe-Prompt's WTP regulariser: rows M = [old-class prototypes; batch features]; cross-entropy of
    M M^T / temperature against the identity, so each feature is pushed away from the old prototypes
    and from the other features."""
    m = feats if prototypes is None or not len(prototypes) else torch.cat([prototypes.to(feats.dtype), feats])
    sim = m @ m.T / temperature
    return F.cross_entropy(sim, torch.arange(len(m), device=m.device))


__all__ = [
    "AttentionSite", "Prompts", "class_gaussians", "gaussian_roots", "prototype_contrastive", "cosine_matrix", "gram_schmidt", "hf_attention_site", "kmeans",
    "masked_logits", "ortho_penalty", "prefix_attention", "prompt_hooks", "prompt_param", "sample_gaussians",
    "select_top_k", "uniform_",
]
