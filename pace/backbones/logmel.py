"""The simplest frozen backbone: per-bin mean and std of the normalised fbank over real frames.

It has no blocks and no linear layers, so it serves analytic/NCM learners and tests, never PEFT.
"""

from __future__ import annotations

import torch

from pace.backbones.base import Backbone, BackboneOutput
from pace.backbones.registry import BackboneSpec, register
from pace.data.frontend import FbankFrontend


class LogMelStats(Backbone):
    def __init__(self, frontend: FbankFrontend):
        super().__init__(frontend, embed_dim=2 * frontend.num_mel_bins, num_blocks=0, pooling="mean")
        # Padded frames hold log-mel 0 before normalisation, i.e. this constant after it.
        self.pad_value = (0.0 - frontend.norm_mean) / (2.0 * frontend.norm_std)

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        valid = ~(x == self.pad_value).all(dim=-1, keepdim=True)  # (B, T, 1)
        n = valid.sum(dim=1).clamp_min(1)
        mean = (x * valid).sum(dim=1) / n
        var = (((x - mean[:, None]) ** 2) * valid).sum(dim=1) / n
        return BackboneOutput(pooled=torch.cat([mean, var.sqrt()], dim=-1))

    def linear_layers(self) -> dict[int, dict[str, str]]:
        return {}


def _build(cfg) -> LogMelStats:
    if cfg.checkpoint:
        raise ValueError("backbone 'logmel-stats' has no weights; remove backbone.checkpoint")
    return LogMelStats(FbankFrontend(**cfg.frontend_overrides()))


register(BackboneSpec("logmel-stats", "fbank", 256, 0, "none (no parameters)", _build, test_size=True,
                      seedable=False))
