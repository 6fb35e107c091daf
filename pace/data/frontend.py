"""Frontends: waveform (16 kHz mono) -> the fixed-size input a backbone expects.

Every frontend is a frozen dataclass, so ``key()`` is a stable description used by the feature cache,
and features are computed once per clip and reused across learners and trials.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi


class Frontend(Protocol):
    kind: str

    def __call__(self, wave: torch.Tensor) -> torch.Tensor: ...

    def key(self) -> str: ...


def _key(obj) -> str:
    return json.dumps({"frontend": type(obj).__name__, **dataclasses.asdict(obj)}, sort_keys=True)


def pad_or_crop(x: torch.Tensor, length: int, dim: int = 0) -> torch.Tensor:
    """Zero-pad at the end or truncate ``x`` along ``dim`` to ``length``."""
    n = x.shape[dim]
    if n >= length:
        return x.narrow(dim, 0, length)
    pad = [0, 0] * (x.dim() - dim - 1) + [0, length - n]
    return F.pad(x, pad)


@dataclass(frozen=True)
class FbankFrontend:
    """Kaldi log-mel filterbank with the EAT/AST settings.

    Defaults follow EAT's feature extraction: 128 mel bins, 25 ms hanning window, 10 ms shift,
    htk_compat, no energy, no dither, waveform mean removed, padded/cropped to ``target_frames``
    *before* normalisation (so padded frames hold log-mel 0), then (x - mean) / (2 * std).
    """

    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window_type: str = "hanning"
    target_frames: int = 512
    norm_mean: float = -4.268
    norm_std: float = 4.569
    subtract_mean: bool = True
    waveform_scale: float = 1.0  # BEATs scales by 2**15; EAT/AST do not
    kind: str = "fbank"

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        return self.with_length(wave)[0]

    def with_length(self, wave: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The features and how many of their frames come from the clip (the rest is padding)."""
        w = wave.to(torch.float32).reshape(1, -1) * self.waveform_scale
        if self.subtract_mean:
            w = w - w.mean()
        fb = kaldi.fbank(
            w,
            htk_compat=True,
            sample_frequency=16_000,
            use_energy=False,
            window_type=self.window_type,
            num_mel_bins=self.num_mel_bins,
            dither=0.0,
            frame_length=self.frame_length_ms,
            frame_shift=self.frame_shift_ms,
        )
        num_frames = min(fb.shape[0], self.target_frames)
        fb = pad_or_crop(fb, self.target_frames, dim=0)
        return (fb - self.norm_mean) / (2.0 * self.norm_std), num_frames

    def key(self) -> str:
        return _key(self)

    def pad_row(self) -> torch.Tensor:
        """The frame that pads a short clip, computed by the same float32 ops as ``__call__``."""
        return (torch.zeros(self.num_mel_bins) - self.norm_mean) / (2.0 * self.norm_std)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.target_frames, self.num_mel_bins)

    @property
    def input_samples(self) -> int:
        """16 kHz samples that ``target_frames`` frames cover (longer clips are cropped)."""
        return round(16 * ((self.target_frames - 1) * self.frame_shift_ms + self.frame_length_ms))


@dataclass(frozen=True)
class WaveformFrontend:
    """Raw waveform, zero-padded or cropped to ``num_samples``; optional zero-mean/unit-variance."""

    num_samples: int = 16_000 * 4
    normalize: bool = True
    kind: str = "waveform"

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        w = wave.to(torch.float32).reshape(-1)
        if self.normalize:
            w = (w - w.mean()) / (w.std() + 1e-7)
        return pad_or_crop(w, self.num_samples, dim=0)

    def key(self) -> str:
        return _key(self)

    def pad_row(self) -> torch.Tensor:
        """The padding sample (zeros are appended after normalisation)."""
        return torch.zeros(())

    @property
    def shape(self) -> tuple[int]:
        return (self.num_samples,)
