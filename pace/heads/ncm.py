"""Nearest-class-mean head (SimpleCIL / APER, cl_reference.md 2.5).

Prototypes are the plain means of the (unnormalised) features of each class, kept as running float64
sums and counts so sessions can arrive in any order and a checkpoint resumes exactly. Logits are the
cosine similarity between the L2-normalised feature and the L2-normalised prototype: SimpleCIL and
APER put the prototypes into a cosine classifier, so the argmax is the nearest prototype in angle,
which is insensitive to the overall feature scale (unlike Euclidean NCM).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pace.heads._util import F64, GrowingBuffers, as_features, as_labels, check_finite, pad_rows


class NCMHead(GrowingBuffers):
    """Running class means; ``logits`` = cosine(feature, prototype) over all classes seen.

    A class id below ``num_classes`` that has no sample yet (possible after ``expand``) scores -inf,
    so it can never be predicted.
    """

    sums: torch.Tensor
    counts: torch.Tensor

    def __init__(self, dim: int, device: torch.device | str | None = None):
        super().__init__()
        self.dim = int(dim)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.register_buffer("sums", torch.zeros(0, dim, dtype=F64, device=dev))
        self.register_buffer("counts", torch.zeros(0, dtype=F64, device=dev))

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])

    def expand(self, num_classes: int) -> None:
        self.sums = pad_rows(self.sums, num_classes)
        self.counts = pad_rows(self.counts, num_classes)

    def accumulate(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> None:
        H = as_features(features, self.dim, self.device)
        y = as_labels(labels, H.shape[0], self.device)
        if H.shape[0] == 0:
            return
        self.expand(max(self.num_classes, int(y.max()) + 1, num_classes or 0))
        self.sums.index_add_(0, y, H)
        self.counts.index_add_(0, y, torch.ones_like(y, dtype=F64))

    @property
    def prototypes(self) -> torch.Tensor:
        """(K, dim) class means; rows of classes without samples are zero."""
        return self.sums / self.counts.clamp_min(1.0)[:, None]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, dim) -> (N, K) float64 cosine similarities."""
        H = F.normalize(as_features(features, self.dim, self.device), dim=1)
        scores = H @ F.normalize(self.prototypes, dim=1).T
        return scores.masked_fill(self.counts[None, :] == 0, float("-inf"))

    forward = logits

    def get_extra_state(self) -> dict[str, Any]:
        return {"dim": self.dim}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.dim = int(state["dim"])
        check_finite(self.sums, "loaded NCMHead.sums")
        if self.sums.shape != (self.num_classes, self.dim):
            raise ValueError(f"loaded NCMHead sums {tuple(self.sums.shape)} do not match counts/dim")
