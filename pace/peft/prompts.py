"""The parts the prompt-based continual learners (L2P, DualPrompt, CODA-Prompt, S-Prompt++, HiDe-Prompt)
share: prompt parameters, key matching, orthogonality, k-means and masked logits (class Gaussians for
classifier alignment: pace/heads/gaussians.py).
How a backbone takes the prompts (the hook, ``Prompts``) is pace/backbones/prompting.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def prototype_contrastive(feats: torch.Tensor, prototypes: torch.Tensor | None,
                          temperature: float = 0.8) -> torch.Tensor:
    """HiDe-Prompt's WTP regulariser: rows M = [old-class prototypes; batch features]; cross-entropy of
    M M^T / temperature against the identity, so each feature is pushed away from the old prototypes
    and from the other features."""
    m = feats if prototypes is None or not len(prototypes) else torch.cat([prototypes.to(feats.dtype), feats])
    sim = m @ m.T / temperature
    return F.cross_entropy(sim, torch.arange(len(m), device=m.device))


__all__ = [
    "cosine_matrix", "gram_schmidt", "kmeans", "masked_logits", "ortho_penalty", "prompt_param",
    "prototype_contrastive", "select_top_k", "uniform_",
]
