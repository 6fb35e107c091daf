"""The ``transformers`` audio encoders behind the pace Backbone interface, through one adapter.

Each family is a small description (:class:`Family`): which transformers class, which input kind and
frontend, where the transformer blocks and their q/k/v/o/fc1/fc2 linears live, and how many leading
CLS-like tokens it has. :class:`HFAudioBackbone` does the rest the same way for every family.

Families (registry prefix: transformers class, input per clip, pooled embedding):

* ``ast``: ``ASTModel``; kaldi fbank (target_frames, 128) with AST's normalisation and no waveform
  mean removal. Pooling "cls" (default) = mean of the CLS and distillation tokens after the final
  LayerNorm, exactly HF's pooler output that ASTForAudioClassification classifies; "mean" = mean of
  the patch tokens.
* ``wav2vec2``, ``hubert``, ``wavlm``, ``data2vec-audio``: ``Wav2Vec2Model``, ``HubertModel``,
  ``WavLMModel``, ``Data2VecAudioModel``; the 16 kHz waveform (num_samples,), z-normalised where the
  checkpoint's feature extractor does it. Mean over frames of ``last_hidden_state`` (no CLS token).
* ``clap-audio``: ``ClapAudioModel`` (the HTSAT audio tower of CLAP); its own log-mel at 48 kHz,
  (1, frames, 64), see :class:`ClapFrontend`. HF's pooler output = mean of the final LayerNorm'd
  tokens of the last Swin stage.

Weights: ``backbone.checkpoint`` names a local folder written by ``save_pretrained`` (or a hub id, which
is looked up only in the local HF cache). Without one, the family's default config (or, with
``options: {size: tiny}``, a tiny one) is built with random weights from ``options.seed`` (default 0,
ignored with a checkpoint), through the same code path. ``save_pretrained`` writes a folder that
rebuilds the same backbone. Remote code is never run, so MERT (``m-a-p/MERT-*``, which ships its own
``MERTModel`` code and needs ``trust_remote_code``) is not supported. Whisper lives in
``pace.backbones.whisper``: an HF Whisper encoder would need that module's log-mel frontend.

Hidden states: ``forward(x, output_hidden_states=True)`` returns the output of every transformer block,
recorded with forward hooks on the block modules, so entry i is block i's output. HF's own
``hidden_states`` tuple is not used: it starts with the embedding output (block i is entry i + 1),
whether its last entry is the block output or the final-normed state is a per-model transformers
setting, and CLAP returns one reshaped map per Swin *stage*, not per block. CLAP is hierarchical: its
per-block states have stage-dependent token counts and widths (96/192/384/768 for the base size), so
only its last stage has width ``embed_dim``.

Behaviour changes against the HF defaults, for reproducible PEFT: the wav2vec2 family is built with
``layerdrop=0`` (every block always runs, so the hidden-state count is fixed) and without SpecAugment
time/feature masking in train mode (augmentation is the data pipeline's job). Backbones are returned in
eval mode; keep a frozen CLAP in eval mode, since its input BatchNorm updates running statistics in
train mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pace.backbones.base import Backbone, BackboneOutput
from pace.backbones.checkpoints import resolve_checkpoint
from pace.backbones.registry import BackboneSpec, register
from pace.data.frontend import FbankFrontend, WaveformFrontend, _key, pad_or_crop

# AST's fbank normalisation (ASTFeatureExtractor defaults, AudioSet statistics); checkpoints that ship
# their own (e.g. the Speech Commands fine-tune) override it through preprocessor_config.json.
AST_MEAN = -4.2677393
AST_STD = 4.5689974
SAMPLE_RATE = 16_000

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- frontend


@dataclass(frozen=True)
class ClapFrontend:
    """16 kHz waveform -> the log-mel CLAP's HTSAT encoder expects, shape (1, frames, num_mel_bins).

    Follows ClapFeatureExtractor: 48 kHz, 1024-point periodic Hann STFT (centred, reflect padding),
    hop 480, power spectrum, 64 mel filters between 50 Hz and 14 kHz, 10*log10 with a 1e-10 floor.
    ``mel_scale="slaney"`` (area-normalised slaney filters) is what non-fusion checkpoints use
    (truncation "rand_trunc"); fusion checkpoints use ``"htk"`` filters without normalisation.
    Clips are repeated to fill ``seconds`` then zero-padded ("repeatpad"); longer clips are cropped
    from the start (the extractor crops at a random offset, which a feature cache cannot reproduce).
    The input is 16 kHz, so nothing above 8 kHz reaches the model.
    """

    seconds: float = 10.0
    num_mel_bins: int = 64
    model_sample_rate: int = 48_000
    n_fft: int = 1024
    hop_length: int = 480
    f_min: float = 50.0
    f_max: float = 14_000.0
    mel_scale: str = "slaney"
    repeat_pad: bool = True
    kind: str = "clap-logmel"

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        import torchaudio.functional as AF

        # resample first, then repeat-pad at the model rate, as the extractor does (no resampling
        # ringing across the repeat seams or into the zero padding)
        w = AF.resample(wave.to(torch.float32).reshape(-1), SAMPLE_RATE, self.model_sample_rate)
        w = self._fill(w, self._samples())
        window = torch.hann_window(self.n_fft, periodic=True)
        spec = torch.stft(w, self.n_fft, self.hop_length, window=window, center=True, pad_mode="reflect",
                          return_complex=True).abs().pow(2)  # (freq, frames)
        fb = AF.melscale_fbanks(self.n_fft // 2 + 1, self.f_min, self.f_max, self.num_mel_bins,
                                self.model_sample_rate, norm="slaney" if self.mel_scale == "slaney" else None,
                                mel_scale=self.mel_scale)  # (freq, mels)
        mel = spec.transpose(0, 1) @ fb
        return (10.0 * torch.log10(mel.clamp_min(1e-10))).unsqueeze(0)

    def _fill(self, w: torch.Tensor, n: int) -> torch.Tensor:
        if self.repeat_pad and 0 < w.numel() < n:
            w = w.repeat(n // w.numel())
        return pad_or_crop(w, n, dim=0)

    def _samples(self) -> int:
        return round(self.seconds * self.model_sample_rate)

    def key(self) -> str:
        return _key(self)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self._samples() // self.hop_length + 1, self.num_mel_bins)


# ------------------------------------------------------------------------------------------ families


@dataclass(frozen=True)
class Family:
    """What differs between transformers audio encoders; everything else is shared."""

    name: str  # registry prefix
    model_class: str  # transformers class name (imported lazily)
    config_class: str
    input_kind: str  # "fbank" | "waveform" | "clap-logmel"
    #: dotted path of the block ModuleList inside the HF model; "*" iterates a ModuleList level
    blocks: str
    #: role -> module path inside one block
    roles: dict[str, str]
    example: str  # a checkpoint to name in messages
    special_tokens: int = 0  # leading CLS-like tokens (AST: CLS + distillation)
    tiny: dict[str, Any] = field(default_factory=dict)  # config kwargs of the tiny test size
    overrides: dict[str, Any] = field(default_factory=dict)  # config kwargs always applied
    #: checkpoint key renames (regex -> replacement), e.g. to load one tower of a composite model
    key_mapping: dict[str, str] | None = None
    normalize_waveform: bool = True  # default of the waveform z-normalisation (feature extractor)


_W2V_ROLES = {
    "q": "attention.q_proj",
    "k": "attention.k_proj",
    "v": "attention.v_proj",
    "o": "attention.out_proj",
    "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense",
}
_TINY_TRANSFORMER = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
}
# Three conv layers with total stride 80 (200 frames/s) instead of seven with stride 320.
_TINY_CONV = {"conv_dim": (32, 32, 32), "conv_stride": (5, 4, 4), "conv_kernel": (10, 8, 4)}
_W2V_OVERRIDES = {"layerdrop": 0.0, "apply_spec_augment": False}


def _w2v(name: str, model: str, config: str, example: str, normalize: bool) -> Family:
    return Family(name, model, config, "waveform", "encoder.layers", _W2V_ROLES, example,
                  tiny={**_TINY_TRANSFORMER, **_TINY_CONV}, overrides=_W2V_OVERRIDES,
                  normalize_waveform=normalize)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "ast", "ASTModel", "ASTConfig", "fbank", "layers",
            {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
             "o": "attention.o_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"},
            "MIT/ast-finetuned-audioset-10-10-0.4593", special_tokens=2, tiny=dict(_TINY_TRANSFORMER),
        ),
        # do_normalize defaults follow the official feature extractors of the example checkpoints
        _w2v("wav2vec2", "Wav2Vec2Model", "Wav2Vec2Config", "facebook/wav2vec2-base", True),
        _w2v("hubert", "HubertModel", "HubertConfig", "facebook/hubert-base-ls960", False),
        _w2v("wavlm", "WavLMModel", "WavLMConfig", "microsoft/wavlm-base-plus", False),
        _w2v("data2vec-audio", "Data2VecAudioModel", "Data2VecAudioConfig", "facebook/data2vec-audio-base",
             True),
        Family(
            "clap-audio", "ClapAudioModel", "ClapAudioConfig", "clap-logmel", "audio_encoder.layers.*.blocks",
            {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "fc1": "intermediate.dense", "fc2": "output.dense"},
            "laion/clap-htsat-unfused",
            # two Swin stages (32 -> 64 wide) on a 128x128 image: up to 256 frames (2.56 s)
            tiny={"patch_embeds_hidden_size": 32, "depths": [1, 1], "num_attention_heads": [2, 2],
                  "hidden_size": 64, "spec_size": 128},
            # a full ClapModel folder stores the audio tower under "audio_model."
            key_mapping={r"^audio_model\.": ""},
        ),
    )
}


# ------------------------------------------------------------------------------------------ adapter


class HFAudioBackbone(Backbone):
    """Any :class:`Family` member: ``self.model`` is the transformers model."""

    def __init__(self, family: Family, model: nn.Module, frontend, pooling: str, weights_source: str):
        blocks = _block_names(model, family.blocks)
        super().__init__(frontend, embed_dim=_embed_dim(model), num_blocks=len(blocks), pooling=pooling)
        self.family = family
        self.model = model
        self.block_names = blocks  # relative to self.model
        self.has_cls = family.special_tokens > 0
        self.weights_source = weights_source

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        states: list[torch.Tensor] = []
        hooks = [self.model.get_submodule(n).register_forward_hook(_recorder(states))
                 for n in (self.block_names if output_hidden_states else [])]
        try:
            out = self.model(**_model_inputs(self.family, x))
        finally:
            for h in hooks:
                h.remove()
        if self.family.input_kind == "clap-logmel":
            pooled = out.pooler_output  # its last_hidden_state is a regrouped (B, D, F, T) map
        else:
            pooled = self.pool(out.last_hidden_state)
        return BackboneOutput(pooled=pooled, hidden_states=states)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """"cls": mean of the leading special tokens (AST: CLS and distillation, as HF's pooler);
        "mean": mean of the remaining tokens."""
        if h.dim() == 2:
            return h
        n = self.family.special_tokens
        if self.pooling == "cls" and n:
            return h[:, :n].mean(dim=1)
        return h[:, n:].mean(dim=1)

    @property
    def supports_prompts(self) -> bool:
        # WavLM's attention adds a relative-position bias sized by the sequence, and CLAP's Swin blocks
        # attend within windows: prepended tokens or key prefixes have no defined place in either
        return self.family.name not in _NO_PROMPTS

    def prompt_block(self, b: int) -> nn.Module:
        return self.model.get_submodule(self.block_names[b])

    def prompt_attention(self, b: int):
        from pace.backbones.prompting import hf_attention_site

        attn = self.family.roles["q"].rpartition(".")[0]
        return hf_attention_site(self.model.get_submodule(f"{self.block_names[b]}.{attn}"))

    def final_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(**_model_inputs(self.family, x)).last_hidden_state

    def linear_layers(self) -> dict[int, dict[str, str]]:
        return {i: {role: f"model.{block}.{path}" for role, path in self.family.roles.items()}
                for i, block in enumerate(self.block_names)}

    def save_pretrained(self, folder: str) -> None:
        """Write a folder that ``backbone.checkpoint`` rebuilds exactly: the HF model plus a
        preprocessor_config.json describing this frontend."""
        self.model.save_pretrained(folder)
        _feature_extractor(self.frontend).save_pretrained(folder)


_NO_PROMPTS = ("wavlm", "clap-audio")


def _recorder(states: list[torch.Tensor]):
    def hook(module, args, output):
        # blocks return a tensor or a tuple whose first item is the hidden states
        states.append(output[0] if isinstance(output, tuple) else output)

    return hook


def _model_inputs(family: Family, x: torch.Tensor) -> dict[str, torch.Tensor]:
    if family.input_kind != "clap-logmel":
        return {"input_values": x}
    # is_longer=False everywhere: a fusion checkpoint then uses only its global (first) channel
    return {"input_features": x, "is_longer": torch.zeros(x.shape[0], 1, dtype=torch.bool, device=x.device)}


def _block_names(model: nn.Module, pattern: str) -> list[str]:
    """'encoder.layers' -> ['encoder.layers.0', ...]; a '*' level expands over a ModuleList's children."""
    paths = [""]
    for part in pattern.split(".") + ["*"]:
        expanded = []
        for p in paths:
            children = [n for n, _ in model.get_submodule(p).named_children()] if part == "*" else [part]
            expanded += [f"{p}.{c}" if p else c for c in children]
        paths = expanded
    return paths


def _embed_dim(model: nn.Module) -> int:
    encoder = getattr(model, "audio_encoder", None)  # CLAP: width of the last Swin stage
    return int(encoder.num_features) if encoder is not None else int(model.config.hidden_size)


# ------------------------------------------------------------------------------------------ building


def build_hf(family: Family, cfg, tiny: bool = False) -> HFAudioBackbone:
    size, seed = _options(cfg, tiny)
    _check_input_fields(family, cfg)
    if cfg.checkpoint:
        if "size" in cfg.options:
            raise ValueError(f"{family.name}: backbone.options.size conflicts with backbone.checkpoint "
                             "(the checkpoint's config decides the size)")
        folder = _checkpoint_folder(cfg.checkpoint, family)
        model, preproc, source = _load(family, folder), _read_json(folder, "preprocessor_config.json"), folder
    else:
        model, preproc = _random_init(family, cfg, size == "tiny", seed), {}
        source = f"random init ({size} config, seed {seed})"
    frontend = _make_frontend(family, model, preproc, cfg)
    pooling = _pooling(family, cfg)
    return HFAudioBackbone(family, model.eval(), frontend, pooling, source)


def _options(cfg, tiny: bool) -> tuple[str, int]:
    unknown = set(cfg.options) - {"size", "seed"}
    if unknown:
        raise ValueError(f"unknown backbone.options {sorted(unknown)} (known: size, seed)")
    size = "tiny" if tiny else cfg.options.get("size", "base")
    if size not in ("tiny", "base"):
        raise ValueError(f"backbone.options.size must be 'tiny' or 'base', got {size!r}")
    return size, int(cfg.options.get("seed", 0))


def _check_input_fields(family: Family, cfg) -> None:
    """Input-length fields of other input kinds are mistakes: say so instead of ignoring them."""
    used = {"fbank": "target_frames", "waveform": "num_samples", "clap-logmel": "seconds"}[family.input_kind]
    for name in ("target_frames", "num_samples", "seconds"):
        if name != used and getattr(cfg, name) is not None:
            raise ValueError(f"backbone {family.name!r} takes {family.input_kind} input: "
                             f"set backbone.{used}, not backbone.{name}")


def _pooling(family: Family, cfg) -> str:
    pooling = cfg.pooling or ("cls" if family.special_tokens else "mean")
    if pooling == "cls" and not family.special_tokens:
        raise ValueError(f"backbone {family.name!r} has no CLS token; use pooling: mean")
    return pooling


def _transformers_attr(name: str):
    import transformers  # heavy: only when a family is built

    return getattr(transformers, name)


def _checkpoint_folder(checkpoint: str, family: Family) -> str:
    """The save_pretrained folder backbone.checkpoint names (a hub id: only from the local HF cache)."""
    how = (f"On a machine with network access run e.g. `huggingface-cli download {family.example} --local-dir "
           "DIR` (or save_pretrained(DIR)), copy DIR here and set backbone.checkpoint: DIR")
    need = f"{family.name} needs a folder with config.json and model.safetensors (from save_pretrained)"
    return os.path.abspath(resolve_checkpoint(checkpoint, how, need_folder=need))


def _load(family: Family, folder: str) -> nn.Module:
    model_cls = _transformers_attr(family.model_class)
    with _quiet_transformers():  # its load report lists every dropped head tensor; we check and summarise
        model, info = model_cls.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32, output_loading_info=True,
            key_mapping=family.key_mapping, **family.overrides,
        )
    # transformers only warns about weights it had to initialise; a backbone must not be half random
    missing = [k for k in info["missing_keys"] if not k.endswith("num_batches_tracked")]
    if missing or info["mismatched_keys"]:
        bad = sorted(missing) + [str(m) for m in info["mismatched_keys"]]
        model_type = _read_json(folder, "config.json").get("model_type")
        raise ValueError(f"{folder} (model_type {model_type!r}) does not hold {family.model_class} weights: "
                         f"{len(bad)} missing or mismatched, e.g. {bad[:5]}")
    if info["unexpected_keys"]:
        log.info("%s: ignored %d checkpoint tensors outside the %s encoder (e.g. %s)", folder,
                 len(info["unexpected_keys"]), family.model_class, min(info["unexpected_keys"]))
    return model


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _random_init(family: Family, cfg, tiny: bool, seed: int) -> nn.Module:
    kwargs = {**(family.tiny if tiny else {}), **family.overrides}
    if family.input_kind == "fbank":
        # AST's positional table is sized by max_length, so the input length is fixed at build time
        kwargs["max_length"] = cfg.target_frames or (128 if tiny else 1024)
    config = _transformers_attr(family.config_class)(**kwargs)
    with torch.random.fork_rng(devices=[]):  # deterministic weights without touching the global RNG
        torch.manual_seed(seed)
        return _transformers_attr(family.model_class)(config)


def _read_json(folder: str, name: str) -> dict[str, Any]:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------- frontends


def _make_frontend(family: Family, model: nn.Module, preproc: dict[str, Any], cfg):
    if family.input_kind == "fbank":
        return _ast_frontend(model, preproc, cfg)
    if family.input_kind == "waveform":
        normalize = bool(preproc.get("do_normalize", family.normalize_waveform))
        num_samples = cfg.num_samples or WaveformFrontend.num_samples
        return WaveformFrontend(num_samples=num_samples, normalize=normalize)
    return _clap_frontend(model.config, preproc, cfg)


def _ast_frontend(model: nn.Module, preproc: dict[str, Any], cfg) -> FbankFrontend:
    frames = cfg.target_frames or model.config.max_length
    if frames != model.config.max_length:
        _crop_ast_positions(model, frames)
    return FbankFrontend(
        num_mel_bins=model.config.num_mel_bins,
        target_frames=frames,
        norm_mean=float(preproc.get("mean", AST_MEAN)),
        norm_std=float(preproc.get("std", AST_STD)),
        subtract_mean=False,  # AST's extractor feeds the raw waveform to kaldi fbank
    )


def _crop_ast_positions(model: nn.Module, frames: int) -> None:
    """Run a checkpoint on shorter inputs: keep the first time columns of its positional grid.

    Patches are ordered frequency-major (index f * T + t), so the grid reshapes to (F, T). The first
    columns are the positions the full-length model gave the start of a clip, which is where pace's
    zero-padded clips put their audio.
    """
    emb, config = model.embeddings, model.config
    f_out, t_full = emb.get_shape(config)
    if frames > config.max_length:
        raise ValueError(f"AST checkpoint takes at most {config.max_length} frames; "
                         f"backbone.target_frames={frames} is longer")
    config.max_length = frames
    _, t_new = emb.get_shape(config)
    table = emb.position_embeddings.data
    grid = table[:, 2:].reshape(1, f_out, t_full, -1)[:, :, :t_new].reshape(1, f_out * t_new, -1)
    emb.position_embeddings = nn.Parameter(torch.cat([table[:, :2], grid], dim=1).contiguous())


def _clap_frontend(config, preproc: dict[str, Any], cfg) -> ClapFrontend:
    hop = int(preproc.get("hop_length", 480))
    rate = int(preproc.get("sampling_rate", 48_000))
    # HTSAT folds the spectrogram into a spec_size x spec_size image: longer inputs do not fit
    max_frames = config.spec_size * (config.spec_size // config.num_mel_bins)
    max_s = (max_frames - 1) * hop / rate
    seconds = cfg.seconds or float(preproc.get("max_length_s", min(10.0, max_s)))
    if seconds > max_s + 1e-9:
        raise ValueError(f"CLAP takes at most {max_frames} frames ({max_s:.2f} s); "
                         f"backbone.seconds={seconds}")
    return ClapFrontend(
        seconds=seconds,
        num_mel_bins=config.num_mel_bins,
        model_sample_rate=rate,
        n_fft=int(preproc.get("fft_window_size", 1024)),
        hop_length=hop,
        f_min=float(preproc.get("frequency_min", 50.0)),
        f_max=float(preproc.get("frequency_max", 14_000.0)),
        mel_scale="htk" if config.enable_fusion else "slaney",
    )


def _feature_extractor(frontend):
    """The transformers feature extractor whose saved config rebuilds ``frontend`` (see _make_frontend)."""
    if isinstance(frontend, FbankFrontend):
        return _transformers_attr("ASTFeatureExtractor")(
            num_mel_bins=frontend.num_mel_bins, max_length=frontend.target_frames,
            mean=frontend.norm_mean, std=frontend.norm_std,
        )
    if isinstance(frontend, WaveformFrontend):
        return _transformers_attr("Wav2Vec2FeatureExtractor")(
            do_normalize=frontend.normalize, sampling_rate=SAMPLE_RATE, return_attention_mask=False,
        )
    return _transformers_attr("ClapFeatureExtractor")(
        feature_size=frontend.num_mel_bins, sampling_rate=frontend.model_sample_rate,
        hop_length=frontend.hop_length, max_length_s=_int_if_whole(frontend.seconds),
        fft_window_size=frontend.n_fft,
        frequency_min=frontend.f_min, frequency_max=frontend.f_max,
        truncation="fusion" if frontend.mel_scale == "htk" else "rand_trunc",
    )


def _int_if_whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x  # the HF CLAP extractor pads by max_length_s * rate


# ------------------------------------------------------------------------------------------ registry


def _weights_text(family: Family) -> str:
    text = (f"local folder via backbone.checkpoint (e.g. a saved {family.example}), or that hub id if it is "
            "in the local HF cache; random init otherwise")
    if family.name == "hubert":
        text += "; MERT needs remote code and is not supported"
    return text


def _register(family: Family) -> None:
    def build(cfg, _tiny=False):
        return build_hf(family, cfg, tiny=_tiny)

    register(BackboneSpec(f"{family.name}-base", family.input_kind, 768, 12, _weights_text(family), build))
    register(BackboneSpec(
        f"{family.name}-tiny", family.input_kind, 64, 2,
        "random init (tiny test config: width 64, 2 blocks; seed from options.seed, default 0)",
        lambda cfg: build(cfg, _tiny=True), test_size=True,
    ))


for _family in FAMILIES.values():
    _register(_family)
