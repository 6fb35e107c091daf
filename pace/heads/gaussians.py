"""Class-conditional Gaussians of features: fit (float64), factor, sample.

The classifier alignment of HiDe-Prompt, SLCA and MOS re-trains a head on draws from these instead
of stored clips.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


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


def align_on_gaussians(head: torch.nn.Module, means: torch.Tensor, roots: torch.Tensor, *, per_class: int,
                       batches: int, num_classes: int, epochs: int, lr: float, weight_decay: float,
                       generator: torch.Generator, device: torch.device,
                       loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                       ) -> None:
    """Classifier alignment: ``head`` re-trained on draws from the class Gaussians (``means``, ``roots``).

    Each epoch draws ``per_class`` samples of every class, shuffles them and takes up to ``batches``
    batches of ``per_class`` (fewer when the draws run out), with cross-entropy over the first
    ``num_classes`` logits (or ``loss(head, z, y)``: SLCA's logit-normalised loss over its session
    heads); SGD with momentum 0.9 and a cosine schedule over the epochs. Only the head's parameters
    train, and they are frozen again afterwards.
    """
    params = list(head.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    for _ in range(epochs):
        z, y = sample_gaussians(means, roots, per_class, generator)
        order = torch.randperm(len(y), generator=generator)
        z, y = z[order].to(device), y[order].to(device)
        for i in range(batches):
            zb, yb = z[i * per_class:(i + 1) * per_class], y[i * per_class:(i + 1) * per_class]
            if not len(yb):
                break
            value = (loss(head, zb, yb) if loss is not None
                     else F.cross_entropy(head(zb)[:, :num_classes], yb))
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
        sched.step()
    for p in params:
        p.requires_grad_(False)
