"""Representation analyses: linear CKA per block (the PACE layer probe, section 5.2) and class drift.

Everything is computed in float64 on CPU; these are measurements, never part of training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from pace.backbones.base import Backbone
from pace.modes import evaluating


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two representations of the same n samples, x (n, p) and y (n, q).

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc. It is 1 for
    identical inputs and invariant to orthogonal transforms, isotropic scaling and translation of
    either side. Returns nan when either side is constant over the samples (CKA is undefined).
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples on both sides, got {x.shape[0]} and {y.shape[0]}")
    xc = _centre(x)
    yc = _centre(y)
    if max(xc.shape[1], yc.shape[1]) > xc.shape[0]:
        # wide features (e.g. a CNN block's flattened maps): the same value from the n x n Gram
        # matrices, ||Yc^T Xc||_F^2 = <Xc Xc^T, Yc Yc^T>_F and ||Xc^T Xc||_F = ||Xc Xc^T||_F
        kx, ky = xc @ xc.T, yc @ yc.T
        cross = (kx * ky).sum()
        norm = torch.linalg.matrix_norm(kx) * torch.linalg.matrix_norm(ky)
    else:
        cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
        norm = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    if norm <= 0:
        return float("nan")
    return float(cross / norm)


def _centre(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)
    return x - x.mean(dim=0, keepdim=True)


@torch.no_grad()
def block_features(backbone: Backbone, x: torch.Tensor, batch_size: int = 64) -> list[torch.Tensor]:
    """Per block, the pooled hidden states ``backbone.pool(h)`` of all of ``x``: list of (N, D) float64."""
    device = next(backbone.parameters()).device
    per_block: list[list[torch.Tensor]] = []
    with evaluating(backbone):
        for i in range(0, x.shape[0], batch_size):
            hidden = backbone(x[i : i + batch_size].to(device), output_hidden_states=True).hidden_states
            if not per_block:
                per_block = [[] for _ in hidden]
            for store, h in zip(per_block, hidden, strict=True):
                store.append(backbone.pool(h).to("cpu", torch.float64))
    return [torch.cat(chunks) for chunks in per_block]


def blockwise_cka(backbone_a: Backbone, backbone_b: Backbone, x: torch.Tensor,
                  batch_size: int = 64) -> list[float]:
    """Linear CKA between the two backbones' pooled hidden states, one value per block."""
    feats_a = block_features(backbone_a, x, batch_size)
    feats_b = block_features(backbone_b, x, batch_size)
    if len(feats_a) != len(feats_b):
        raise ValueError(f"backbones have {len(feats_a)} and {len(feats_b)} blocks")
    return [linear_cka(a, b) for a, b in zip(feats_a, feats_b)]


@dataclass
class Drift:
    #: mean over earlier classes of ||centroid_cur(c) - centroid_prev(c)||
    centroid_shift: float
    #: mean over pairs c != c' of ||centroid_prev(c) - centroid_prev(c')||
    inter_class_distance: float
    #: centroid_shift / inter_class_distance (nan with fewer than two classes)
    ratio: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def class_centroids(feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes, centroids): sorted class ids present in ``labels`` and their mean features (float64)."""
    f = feats.detach().to("cpu", torch.float64)
    lab = labels.detach().to("cpu")
    classes = torch.unique(lab)
    return classes, torch.stack([f[lab == c].mean(dim=0) for c in classes])


def representation_drift(prev_feats: torch.Tensor, prev_labels: torch.Tensor,
                         cur_feats: torch.Tensor) -> Drift:
    """How far earlier classes' centroids moved, relative to how far apart they are.

    ``prev_feats`` and ``cur_feats`` are features of the *same* clips (same order) under the old
    and the current backbone; ``prev_labels`` their classes. The inter-class distance is measured
    on the old features (the reference geometry).
    """
    if prev_feats.shape != cur_feats.shape:
        raise ValueError(f"feature sets differ in shape: "
                         f"{tuple(prev_feats.shape)} vs {tuple(cur_feats.shape)}")
    _, prev_c = class_centroids(prev_feats, prev_labels)
    _, cur_c = class_centroids(cur_feats, prev_labels)
    shift = float((cur_c - prev_c).norm(dim=1).mean())
    k = prev_c.shape[0]
    if k < 2:
        return Drift(shift, float("nan"), float("nan"))
    dists = (prev_c[:, None] - prev_c[None]).norm(dim=-1)  # exact, unlike cdist's mm shortcut
    inter = float(dists.sum() / (k * (k - 1)))  # diagonal is zero
    return Drift(shift, inter, shift / inter if inter > 0 else float("nan"))
