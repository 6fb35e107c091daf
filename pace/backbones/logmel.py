"""The simplest frozen backbone: per-bin mean and std of the normalised fbank over real frames.

It has no blocks and no linear layers, so it serves analytic/NCM learners and tests, never PEFT.
Which frames are real is decided by the clip's length, never by the frame values: its frontend
appends a column that marks the frames computed from audio (1) and the padding (0), so the length
travels with the features through the feature cache and every learner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pace.backbones.base import Backbone, BackboneOutput
from pace.backbones.registry import BackboneSpec, register
from pace.data.frontend import FbankFrontend


@dataclass(frozen=True)
class MaskedFbankFrontend(FbankFrontend):
    """FbankFrontend features plus a last column: 1 on frames from the clip, 0 on padding."""

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        x, num_frames = self.with_length(wave)
        valid = (torch.arange(x.shape[0]) < num_frames).to(x.dtype)[:, None]
        return torch.cat([x, valid], dim=-1)

    def pad_row(self) -> torch.Tensor:
        """The padding frame with its mask 0 (the feature store trims and restores trailing padding)."""
        return torch.cat([super().pad_row(), torch.zeros(1)])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.target_frames, self.num_mel_bins + 1)


class LogMelStats(Backbone):
    def __init__(self, frontend: MaskedFbankFrontend):
        super().__init__(frontend, embed_dim=2 * frontend.num_mel_bins, num_blocks=0, pooling="mean")

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        x, valid = x[..., :-1], x[..., -1:]  # valid: (B, T, 1), 1 on real frames, 0 on padding
        n = valid.sum(dim=1).clamp_min(1)
        mean = (x * valid).sum(dim=1) / n
        var = (((x - mean[:, None]) ** 2) * valid).sum(dim=1) / n
        return BackboneOutput(pooled=torch.cat([mean, var.sqrt()], dim=-1))

    def linear_layers(self) -> dict[int, dict[str, str]]:
        return {}


def _build(cfg) -> LogMelStats:
    if cfg.checkpoint:
        raise ValueError("backbone 'logmel-stats' has no weights; remove backbone.checkpoint")
    return LogMelStats(MaskedFbankFrontend(**cfg.frontend_overrides()))


register(BackboneSpec("logmel-stats", "fbank", 256, 0, "none (no parameters)", _build, test_size=True,
                      seedable=False))
