"""Reading audio files into mono 16 kHz float32 waveforms.

soundfile (libsndfile) reads WAV, FLAC, OGG/Vorbis, MP3 and NIST SPHERE; torchaudio.load is avoided
because in torchaudio 2.11 it needs torchcodec and FFmpeg.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import torchaudio.transforms as AT

TARGET_SR = 16_000
_SHORT_CHUNK = re.compile(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)")
# Fewer samples than one 25 ms analysis window at 16 kHz cannot give a single fbank frame.
MIN_SAMPLES = 400
# A clip far longer than a backbone's input is read only up to this much (x the input, or 60 s,
# whichever is more): generous, so ordinary crops decode whole (same features as ever), while an
# hour-long file no longer takes gigabytes to end up as a few seconds of features.
LONG_CLIP_FACTOR = 10
LONG_CLIP_MIN_SECONDS = 60


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def read_audio(path: str | Path, target_sr: int = TARGET_SR, use_samples: int | None = None) -> torch.Tensor:
    """Return a 1-D float32 waveform in [-1, 1], mixed to mono and resampled to ``target_sr``.

    ``use_samples``: how many samples (at ``target_sr``) the caller uses; a file much longer than
    that is read only in part, with a warning. Raises AudioError for a missing, unreadable, empty,
    truncated or all-zero file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile's messages are terse; keep them, add the file
        raise AudioError(path, f"unreadable audio ({exc})") from exc
    # libsndfile clamps a WAV whose data chunk runs past the end of the file and notes it in its log
    m = _SHORT_CHUNK.search(info.extra_info or "")
    if m and int(m.group(2)) < int(m.group(1)):
        raise AudioError(path, f"truncated: data chunk declares {m.group(1)} bytes, file holds {m.group(2)}")
    frames = info.frames
    if use_samples is not None and info.frames > 0 and info.samplerate > 0:
        cap = max(LONG_CLIP_FACTOR * use_samples, LONG_CLIP_MIN_SECONDS * target_sr)
        cap_frames = math.ceil(cap * info.samplerate / target_sr)
        if info.frames > cap_frames:
            warnings.warn(f"{path}: {info.frames / info.samplerate:.1f} s long, but only its first "
                          f"{use_samples / target_sr:.2f} s are used (the backbone's input length); reading "
                          f"its first {cap / target_sr:.0f} s", stacklevel=2)
            frames = cap_frames
    try:
        data, sr = sf.read(str(path), frames=frames if frames > 0 else -1, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(path, f"truncated or corrupt audio ({exc})") from exc
    if frames > 0 and data.shape[0] < frames:
        raise AudioError(path, f"truncated: header says {info.frames} frames, read {data.shape[0]}")
    if data.shape[0] == 0:
        raise AudioError(path, "no audio frames")
    return to_mono_16k(data, sr, path=path, target_sr=target_sr)


def samples_used_by(frontend) -> int | None:
    """Samples (16 kHz) of a clip that a frontend's output covers; None when it does not say."""
    for attr in ("input_samples", "num_samples"):
        n = getattr(frontend, attr, None)
        if isinstance(n, int):
            return n
    seconds = getattr(frontend, "seconds", None)
    return round(seconds * TARGET_SR) if isinstance(seconds, (int, float)) else None


def to_mono_16k(data: np.ndarray, sr: int, *, path: str | Path = "<array>",
                target_sr: int = TARGET_SR) -> torch.Tensor:
    """Mix (frames, channels) or (frames,) audio to mono and resample; validates the content."""
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr.mean(axis=1)
    if not np.all(np.isfinite(arr)):
        raise AudioError(path, "contains NaN or infinite samples")
    if not np.any(arr):
        raise AudioError(path, "silent: every sample is zero")
    wave = torch.from_numpy(np.ascontiguousarray(arr))
    if sr != target_sr:
        wave = _resampler(int(sr), target_sr)(wave)
    if wave.numel() < MIN_SAMPLES:
        raise AudioError(path, f"too short: {wave.numel()} samples at {target_sr} Hz, need >= {MIN_SAMPLES}")
    return wave.contiguous()


@functools.lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> AT.Resample:
    # The transform precomputes its sinc kernel once per rate pair (the functional rebuilds it per call).
    return AT.Resample(orig_freq=orig, new_freq=new)
