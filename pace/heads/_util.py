"""Small helpers shared by the heads: input checks, one-hot targets, growable buffers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

F64 = torch.float64


def check_finite(x: torch.Tensor, what: str, hint: str = "") -> None:
    """Raise ValueError on NaN/inf: a NaN in a ridge statistic would silently poison every later solve."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or inf{'; ' + hint if hint else ''}")


def as_features(x: torch.Tensor, dim: int, device: torch.device, what: str = "features") -> torch.Tensor:
    """(N, dim) float64 on ``device``, checked finite."""
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must be (N, {dim}), got {tuple(x.shape)}")
    x = x.detach().to(device=device, dtype=F64)
    check_finite(x, what)
    return x


def as_labels(y: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Global class ids as an int64 (n,) tensor on ``device``."""
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"labels must be ({n},), got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be integer class ids, got {y.dtype}")
    y = y.to(device=device, dtype=torch.long)
    if n and int(y.min()) < 0:
        raise ValueError("labels must be non-negative global class ids")
    return y


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float64 (N, num_classes) one-hot targets."""
    out = torch.zeros(y.shape[0], num_classes, dtype=F64, device=y.device)
    out[torch.arange(y.shape[0], device=y.device), y] = 1.0
    return out


def pad_columns(x: torch.Tensor, cols: int) -> torch.Tensor:
    """Append zero columns up to ``cols`` (new classes start with zero weight / zero statistics)."""
    if x.shape[1] >= cols:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], cols - x.shape[1])], dim=1)


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] >= rows:
        return x
    return torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])], dim=0)


class GrowingBuffers(nn.Module):
    """A module whose float64 buffers change shape as classes arrive.

    ``nn.Module.load_state_dict`` refuses shape mismatches, so a fresh head could not load a
    checkpoint taken after a few sessions. Here the stored tensors are adopted with their shapes
    (on this module's device, as float64); parent modules loading a nested head get the same
    behaviour because the hook is ``_load_from_state_dict``.
    """

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if buf is not None and key in state_dict:
                value = state_dict[key]
                if not isinstance(value, torch.Tensor):
                    raise ValueError(f"{key}: expected a tensor, got {type(value).__name__}")
                self._buffers[name] = value.detach().to(device=buf.device, dtype=buf.dtype).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(iter(self._buffers.values())).device
