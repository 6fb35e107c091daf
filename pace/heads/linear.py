"""Trainable heads that grow with the class count.

``LinearHead`` is the plain ``x W^T + b`` head of PEFT fine-tuning baselines; ``CosineHead`` is the
cosine classifier with a learnable scale (``s * cos(x, w_c)``) RanPAC/APER train during first-session
adaptation. ``expand(K)`` keeps the old rows exactly and appends new ones; it replaces the
Parameters, so an optimizer built before the call must be rebuilt.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """``x W^T + b`` over ``num_classes`` outputs; new rows ~ U(+-1/sqrt(in_dim)), new biases 0.

    The row init matches ``nn.Linear``'s scale; new biases start at 0 so a new class gets no offset
    before it is trained. ``generator`` (a CPU generator) makes the new rows reproducible.
    """

    def __init__(self, in_dim: int, num_classes: int = 0, bias: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.in_dim = int(in_dim)
        self.weight = nn.Parameter(torch.empty(0, in_dim))
        self.bias = nn.Parameter(torch.empty(0)) if bias else None
        if num_classes:
            self.expand(num_classes, generator)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def _new_rows(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        bound = 1.0 / math.sqrt(self.in_dim)
        rows = torch.rand(n, self.in_dim, generator=generator, dtype=torch.float32) * (2 * bound) - bound
        return rows.to(device=self.weight.device, dtype=self.weight.dtype)

    def expand(self, num_classes: int, generator: torch.Generator | None = None) -> None:
        """Grow to ``num_classes`` outputs keeping old rows; a no-op if already that large."""
        extra = num_classes - self.num_classes
        if extra <= 0:
            return
        w = self.weight.detach()
        self.weight = nn.Parameter(torch.cat([w, self._new_rows(extra, generator)]),
                                   requires_grad=self.weight.requires_grad)
        if self.bias is not None:
            b = self.bias.detach()
            self.bias = nn.Parameter(torch.cat([b, b.new_zeros(extra)]), requires_grad=self.bias.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A checkpoint taken after later sessions has more rows: adopt its size before copying.
        key = prefix + "weight"
        if key in state_dict and state_dict[key].shape[0] != self.num_classes:
            n = int(state_dict[key].shape[0])
            like = self.weight.detach()
            self.weight = nn.Parameter(like.new_zeros(n, self.in_dim), requires_grad=self.weight.requires_grad)
            if self.bias is not None:
                self.bias = nn.Parameter(like.new_zeros(n), requires_grad=self.bias.requires_grad)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CosineHead(LinearHead):
    """``scale * cos(x, w_c)``: normalised features against normalised class rows, no bias.

    ``scale`` (sigma) is learnable by default; RanPAC's cosine head starts it at 1.
    """

    def __init__(self, in_dim: int, num_classes: int = 0, scale: float = 1.0, learn_scale: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__(in_dim, num_classes, bias=False, generator=generator)
        s = torch.tensor(float(scale))
        if learn_scale:
            self.scale = nn.Parameter(s)
        else:
            self.register_buffer("scale", s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))
