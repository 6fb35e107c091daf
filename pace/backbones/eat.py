"""EAT (Efficient Audio Transformer, Chen et al. 2024) in plain torch, loading the official weights.

No remote code and no fairseq: the module below reproduces the encoder's maths, and its attribute
names are chosen so that our state-dict keys are the Hugging Face keys minus the ``model.`` prefix:

    local_encoder.proj.{weight,bias}          Conv2d(1, D, 16, stride 16)
    extra_tokens                              (1, 1, D) CLS token
    fixed_positional_encoder.positions        (1, max_length * 8, D) fixed sin-cos table (buffer)
    pre_norm.{weight,bias}                    LayerNorm before the blocks
    blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}

Checkpoint layouts read by ``load_eat_weights`` and how their keys map onto ours:

* Hugging Face (``model.safetensors`` / ``pytorch_model.bin``): ``model.<ours>``.
* fairseq pre-training (``data2vec_multi``), weights under ``["model"]``:
  ``modality_encoders.IMAGE.context_encoder.norm.*`` -> ``pre_norm.*``,
  ``modality_encoders.IMAGE.<rest>`` -> ``<rest>``, ``blocks.*`` unchanged;
  ``_ema*`` (EMA teacher) and ``modality_encoders.IMAGE.decoder.*`` (pre-training CNN decoder) dropped.
* fairseq fine-tuning (``mae_image_classification``): the same under a ``model.`` prefix.
* our own ``state_dict()`` saved as is.

The fine-tuned AudioSet head (``fc_norm``, ``head``) is not part of the encoder: it is ignored and
listed in the returned ``LoadReport`` (the pooled CLS token here is *before* ``fc_norm``).

Maths (post-LN "AltBlock", eps 1e-6): x = x + Attn(x); r = LN1(x); x = LN2(r + MLP(r)); exact GELU;
fused qkv laid out [q | k | v], each split into heads contiguously; no final norm.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pace.backbones.base import Backbone, BackboneOutput
from pace.backbones.checkpoints import resolve_checkpoint
from pace.backbones.registry import BackboneSpec, register
from pace.data.frontend import FbankFrontend

log = logging.getLogger(__name__)

POSITIONS_KEY = "fixed_positional_encoder.positions"
HEAD_PREFIXES = ("fc_norm.", "head.")


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class EATConfig:
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    mel_bins: int = 128
    #: time patches the fixed positional table covers (768 x 16 frames = about 2 min)
    max_length: int = 768
    eps: float = 1e-6
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        # The 2-D table splits D into two axes, each into [sin | cos].
        if self.embed_dim % 4:
            raise ValueError(f"embed_dim {self.embed_dim} must be a multiple of 4 (2-D sin-cos table)")
        if self.mel_bins % self.patch_size:
            raise ValueError(f"mel_bins {self.mel_bins} is not a multiple of patch_size {self.patch_size}")

    @property
    def freq_patches(self) -> int:
        return self.mel_bins // self.patch_size

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @classmethod
    def base(cls) -> "EATConfig":
        return cls(embed_dim=768, depth=12, num_heads=12)

    @classmethod
    def large(cls) -> "EATConfig":
        return cls(embed_dim=1024, depth=24, num_heads=16)

    @classmethod
    def tiny(cls) -> "EATConfig":
        return cls(embed_dim=64, depth=2, num_heads=2)


def sincos_positions(embed_dim: int, rows: int, cols: int) -> torch.Tensor:
    """The fixed 2-D sin-cos table (rows*cols, D) in EAT's (MAE's) convention, token = row*cols + col.

    Dims [0, D/2) encode the column (frequency patch) index, dims [D/2, D) the row (time patch)
    index; each half is [sin | cos] with omega_i = 10000^(-i / (D/4)). Computed in float64 and
    rounded once, as the reference builds it with numpy.
    """
    half = embed_dim // 2
    omega = 1.0 / 10000.0 ** (torch.arange(half // 2, dtype=torch.float64) / (half / 2))

    def axis(pos: torch.Tensor) -> torch.Tensor:
        angle = pos[:, None] * omega[None, :]
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    row = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)
    col = torch.arange(cols, dtype=torch.float64).repeat(rows)
    return torch.cat([axis(col), axis(row)], dim=1).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Modules (names follow the official keys)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, 1, T, F) -> (B, D, T/16, F/16) -> (B, N, D); flatten is row-major, so time-major tokens.
        return self.proj(x).flatten(2).transpose(1, 2)


class FixedPositions(nn.Module):
    def __init__(self, cfg: EATConfig):
        super().__init__()
        # A buffer, not a parameter: never trained, but kept in the state dict under the official key.
        rows, cols = cfg.max_length, cfg.freq_patches
        self.register_buffer("positions", torch.empty(1, rows * cols, cfg.embed_dim))


class Attention(nn.Module):
    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        # SDPA's default scale is head_dim^-0.5, as in EAT; it picks a fused kernel where one exists.
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class AltBlock(nn.Module):
    """EAT's post-LN block (``layer_norm_first=False``)."""

    def __init__(self, cfg: EATConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        r = self.norm1(x)
        return self.norm2(r + self.mlp(r))


class EATEncoder(Backbone):
    """EAT encoder over normalised fbank (B, T, 128), T a multiple of 16; CLS token first."""

    has_cls = True

    def __init__(self, cfg: EATConfig, frontend: FbankFrontend, pooling: str = "cls", seed: int = 0):
        super().__init__(frontend, cfg.embed_dim, cfg.depth, pooling)
        _check_frontend(cfg, frontend)
        self.config = cfg
        # Built on the meta device: no memory, time or global RNG spent on throwaway default inits;
        # reset_parameters then sets every tensor from ``seed``.
        with torch.device("meta"):
            self.local_encoder = PatchEmbed(cfg)
            self.extra_tokens = nn.Parameter(torch.empty(1, 1, cfg.embed_dim))
            self.fixed_positional_encoder = FixedPositions(cfg)
            self.pre_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.eps)
            self.blocks = nn.ModuleList(AltBlock(cfg) for _ in range(cfg.depth))
        self.to_empty(device="cpu")
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Deterministic random init following EAT's training init (xavier-uniform, zero bias)."""
        g = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                # xavier on the flattened kernel, as EAT initialises its patch conv
                nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1), generator=g)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        nn.init.normal_(self.extra_tokens, generator=g)
        self.fixed_positional_encoder.positions.copy_(self.positional_table()[None])
        self.weights_source = f"random init (seed {seed})"

    def positional_table(self) -> torch.Tensor:
        cfg = self.config
        return sincos_positions(cfg.embed_dim, cfg.max_length, cfg.freq_patches)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) fbank -> (B, 1 + N, D) tokens entering the first block (after pre_norm)."""
        self._check_input(x)
        tokens = self.local_encoder(x.unsqueeze(1))
        tokens = tokens + self.fixed_positional_encoder.positions[:, : tokens.shape[1]]
        cls = self.extra_tokens.expand(tokens.shape[0], -1, -1)  # no positional term for CLS
        return self.pre_norm(torch.cat([cls, tokens], dim=1))

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        h = self.embed(x)
        hidden: list[torch.Tensor] = []
        for block in self.blocks:
            h = block(h)
            if output_hidden_states:
                hidden.append(h)
        return BackboneOutput(pooled=self.pool(h), hidden_states=hidden)

    supports_prompts = True

    def prompt_block(self, b: int) -> nn.Module:
        return self.blocks[b]

    def prompt_attention(self, b: int):
        from pace.backbones.prompting import AttentionSite

        attn = self.blocks[b].attn
        return AttentionSite(module=attn, project=lambda x: attn.qkv(x).chunk(3, dim=-1), out=attn.proj,
                             num_heads=attn.num_heads, scale=(self.embed_dim // attn.num_heads) ** -0.5)

    def final_tokens(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return h

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        # Mean pooling averages patch tokens only, so per-block pooling matches ``pooled``.
        if h.dim() == 2:
            return h
        return h[:, 0] if self.pooling == "cls" else h[:, 1:].mean(dim=1)

    def linear_layers(self) -> dict[int, dict[str, str]]:
        return {
            i: {
                "qkv": f"blocks.{i}.attn.qkv",
                "o": f"blocks.{i}.attn.proj",
                "fc1": f"blocks.{i}.mlp.fc1",
                "fc2": f"blocks.{i}.mlp.fc2",
            }
            for i in range(self.num_blocks)
        }

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() != 3 or x.shape[-1] != cfg.mel_bins:
            raise ValueError(f"EAT expects (B, T, {cfg.mel_bins}) fbank, got {tuple(x.shape)}")
        t = x.shape[1]
        if t % cfg.patch_size or not 0 < t <= cfg.max_length * cfg.patch_size:
            raise ValueError(
                f"EAT needs T a positive multiple of {cfg.patch_size} up to "
                f"{cfg.max_length * cfg.patch_size} frames, got T={t}"
            )


def _check_frontend(cfg: EATConfig, frontend: FbankFrontend) -> None:
    if frontend.num_mel_bins != cfg.mel_bins:
        raise ValueError(f"EAT needs {cfg.mel_bins} mel bins, frontend gives {frontend.num_mel_bins}")
    frames = frontend.target_frames
    if frames % cfg.patch_size or frames > cfg.max_length * cfg.patch_size:
        raise ValueError(
            f"backbone.target_frames must be a multiple of {cfg.patch_size} and at most "
            f"{cfg.max_length * cfg.patch_size}, got {frames}"
        )


# ----------------------------------------------------------------------------------------------
# Reading checkpoint files


_DIR_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_HOW_TO_GET = ("Download the weights on a machine with access (e.g. `hf download {repo}`) and set "
               "backbone.checkpoint to the local model.safetensors / .pt file or its folder.")


def checkpoint_file(spec: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The weight file a checkpoint setting names: a file, a folder holding an HF release or one .pt
    file, or a hub id found in the local HF cache (pace.backbones.checkpoints; nothing is downloaded)."""
    path = resolve_checkpoint(spec, _HOW_TO_GET, what="EAT checkpoint", cache_dir=cache_dir)
    return _weights_in_dir(path) if path.is_dir() else path


def _weights_in_dir(folder: Path) -> Path:
    for name in _DIR_FILES:
        if (folder / name).is_file():
            return folder / name
    pickles = sorted(p for p in folder.iterdir() if p.suffix in (".pt", ".pth", ".ckpt"))
    if len(pickles) == 1:  # a folder holding one fairseq checkpoint (e.g. an SSLAM download)
        return pickles[0]
    found = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(
        f"{folder}: expected one of {', '.join(_DIR_FILES)} or a single .pt file; found {found}. "
        "Pass the weight file itself as backbone.checkpoint."
    )


class _Unread:
    """Inert stand-in for a non-tensor object in a pickled checkpoint (omegaconf cfg, Namespace, ...).

    It accepts any construction and state and keeps none of it. The pickled names only select this
    class (via ``safe_globals``); nothing they name is imported or called.
    """

    pickled_as = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        pass

    def __repr__(self) -> str:
        return f"<unread {self.pickled_as}>"


def _placeholders(names: list[str]) -> list[tuple[type, str]]:
    return [(type("Unread", (_Unread,), {"pickled_as": n}), n) for n in names]


def torch_load_weights_only(path: Path) -> object:
    """``torch.load(weights_only=True)``; non-tensor objects it refuses are read as inert placeholders.

    fairseq checkpoints pickle their config (omegaconf), argparse args and training state next to the
    weights, and weights_only refuses any class it does not know. Rather than ever unpickling with
    weights_only=False, each refused global is mapped (by name) to ``_Unread``, which ignores its
    arguments: the weights under ``["model"]`` come back as tensors, the rest as placeholders.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except (ValueError, RuntimeError) as exc:  # legacy (non-zip) pickle: cannot be inspected
            raise ValueError(_unreadable(path, first)) from exc
        if not names:
            raise ValueError(_unreadable(path, first)) from first
        log.info("%s: reading %s as inert placeholders", path, ", ".join(sorted(names)))
        try:
            with torch.serialization.safe_globals(_placeholders(names)):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as second:
            raise ValueError(_unreadable(path, second)) from second


def _unreadable(path: Path, exc: Exception) -> str:
    # torch's message is long; keep the line that names the refused global
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = next((ln for ln in lines if "GLOBAL" in ln), lines[-1] if lines else type(exc).__name__)
    return (
        f"{path}: torch.load(weights_only=True) cannot read this checkpoint ({reason}). This project "
        "never unpickles with weights_only=False. In an environment you trust, extract the weights, "
        "e.g. torch.save(torch.load(p, weights_only=False)['model'], 'eat_state.pt'), or save them as "
        "safetensors, and pass that file as backbone.checkpoint."
    )


def read_state_dict(path: Path) -> Mapping[str, object]:
    """The raw name -> value mapping of a checkpoint file (values validated later)."""
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if path.name.endswith(".index.json"):
        return _read_sharded(path)
    obj = torch_load_weights_only(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return obj["model"]  # fairseq: {"cfg": ..., "model": {...}, "optimizer_history": ...}
    if isinstance(obj, Mapping):
        return obj
    raise ValueError(
        f"{path}: expected a dict of tensors (or a fairseq dict with 'model'), got {type(obj).__name__}"
    )


def _read_sharded(index: Path) -> dict[str, object]:
    import json

    from safetensors.torch import load_file

    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state: dict[str, object] = {}
    for shard in shards:
        file = index.parent / shard
        if file.resolve().parent != index.parent.resolve():  # shards live next to their index
            raise ValueError(f"{index}: shard {shard!r} lies outside {index.parent}")
        state.update(load_file(str(file), device="cpu"))
    return state


# ----------------------------------------------------------------------------------------------
# Key maps and the strict check


def detect_layout(keys: list[str]) -> str:
    if any(k.startswith(("modality_encoders.", "model.modality_encoders.")) for k in keys):
        return "fairseq"
    if any(k.startswith("model.") for k in keys):
        return "hf"
    return "own"


_FAIRSEQ_IMAGE = "modality_encoders.IMAGE."


def map_key(key: str, layout: str) -> tuple[str, str]:
    """(action, our key) for one checkpoint key; action is "keep", "drop" or "head"."""
    own = key
    if layout == "hf":
        own = key.removeprefix("model.")
    elif layout == "fairseq":
        own = key.removeprefix("model.")  # fine-tuned checkpoints wrap the encoder in ``model``
        if own.startswith("_ema"):
            return "drop", own  # the EMA teacher used in pre-training
        if own.startswith(_FAIRSEQ_IMAGE):
            own = own[len(_FAIRSEQ_IMAGE):]
            if own.startswith("decoder"):
                return "drop", own  # the pre-training CNN decoder
            if own.startswith("context_encoder.norm."):
                own = "pre_norm." + own[len("context_encoder.norm."):]
    if own.startswith(HEAD_PREFIXES):
        return "head", own
    return "keep", own


@dataclass
class LoadReport:
    source: str
    layout: str
    loaded: int
    #: our key -> the checkpoint's key, for error messages
    origin: dict[str, str] = field(default_factory=dict, repr=False)
    #: fine-tuned classifier keys (fc_norm/head) not used by the encoder
    ignored_head: list[str] = field(default_factory=list)
    #: pre-training-only keys (EMA teacher, decoder)
    dropped: list[str] = field(default_factory=list)
    positions_checked: bool = False


def map_state_dict(raw: Mapping[str, object]) -> tuple[dict[str, torch.Tensor], LoadReport]:
    layout = detect_layout(list(raw))
    report = LoadReport(source="", layout=layout, loaded=0)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        action, own = map_key(key, layout)
        if action == "drop":
            report.dropped.append(key)
            continue
        if action == "head":
            report.ignored_head.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        if own in mapped:
            raise ValueError(f"checkpoint keys collide on {own!r} (layout {layout})")
        mapped[own] = value
        report.origin[own] = key
    return mapped, report


def _block_count(keys) -> int:
    ids = {int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def check_strict(
    model: EATEncoder, mapped: Mapping[str, torch.Tensor], origin: Mapping[str, str] | None = None
) -> None:
    """Missing/unexpected keys and shape mismatches are errors that list every offender.

    Missing keys are named as in our model, unexpected ones as in the checkpoint (``origin``).
    """
    origin = origin or {}
    expected = model.state_dict()
    # The positional table is rebuilt, so a checkpoint may omit it (it is checked when present).
    missing = sorted(k for k in expected if k not in mapped and k != POSITIONS_KEY)
    unexpected = sorted(origin.get(k, k) for k in mapped if k not in expected)
    if missing or unexpected:
        lines = [f"checkpoint does not match {model.name} ({model.config})"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        have, want = _block_count(mapped), model.num_blocks
        if have and have != want:
            lines.append(f"the checkpoint has {have} blocks, the model {want}: is it another size?")
        raise ValueError("\n".join(lines))
    bad = [
        f"{origin.get(k, k)}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in mapped.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if bad:
        raise ValueError("checkpoint shapes do not match the model:\n" + "\n".join(bad))


def check_positions(model: EATEncoder, stored: torch.Tensor, atol: float = 1e-4) -> None:
    """The stored table must be the documented sin-cos table (a wrong convention differs by ~1)."""
    ours = model.positional_table()[None]
    diff = (stored.detach().to("cpu", torch.float32) - ours).abs().max().item()
    if not diff <= atol:
        raise ValueError(
            f"checkpoint {POSITIONS_KEY} differs from the rebuilt 2-D sin-cos table "
            f"(max abs diff {diff:.3g}); the checkpoint uses another positional convention"
        )


def load_eat_weights(
    model: EATEncoder, path_or_dir: str | Path, cache_dir: str | Path | None = None
) -> LoadReport:
    """Load an official EAT/SSLAM checkpoint (HF or fairseq layout) into ``model``, strictly."""
    path = checkpoint_file(path_or_dir, cache_dir)
    mapped, report = map_state_dict(read_state_dict(path))
    check_strict(model, mapped, report.origin)
    if POSITIONS_KEY in mapped:
        check_positions(model, mapped[POSITIONS_KEY])
        report.positions_checked = True
    mapped[POSITIONS_KEY] = model.positional_table()[None]  # always the deterministic rebuild
    model.load_state_dict(mapped, strict=True)
    report.source = str(path)
    report.loaded = len(mapped)
    model.weights_source = str(path)
    if report.ignored_head:
        log.info("%s: ignored the fine-tuned head (%s); the encoder pools before fc_norm",
                 path, ", ".join(report.ignored_head))
    return report


# ----------------------------------------------------------------------------------------------
# Registry


_KNOWN_OPTIONS = {"seed"}


def _builder(preset: EATConfig):
    def build(cfg) -> EATEncoder:
        options = dict(cfg.options)
        unknown = sorted(set(options) - _KNOWN_OPTIONS)
        if unknown:
            raise ValueError(
                f"backbone {cfg.name!r}: unknown options {unknown}; known: {sorted(_KNOWN_OPTIONS)}"
            )
        seed = int(options.get("seed", 0))
        model = EATEncoder(preset, FbankFrontend(**cfg.frontend_overrides()), cfg.pooling or "cls", seed)
        model.name = cfg.name  # so load errors name the build
        if cfg.checkpoint:
            load_eat_weights(model, cfg.checkpoint)
        return model

    return build


_HOW = "; pass the local file or folder (or a hub id already in the local HF cache) as backbone.checkpoint"
register(BackboneSpec(
    "eat-base", "fbank", 768, 12,
    "EAT-base: HF worstchan/EAT-base_epoch30_pretrain (a safetensors release) or the fairseq .pt from the "
    "EAT README (Google Drive)" + _HOW + "; without one, random init (options.seed, default 0)",
    _builder(EATConfig.base()),
))
register(BackboneSpec(
    "eat-large", "fbank", 1024, 24,
    "EAT-large: HF worstchan/EAT-large_epoch20_pretrain or the fairseq .pt from the EAT README"
    + _HOW + "; without one, random init (options.seed, default 0)",
    _builder(EATConfig.large()),
))
register(BackboneSpec(
    "sslam-base", "fbank", 768, 12,
    "SSLAM (ICLR 2025; EAT-base architecture): fairseq .pt from HF ta012/SSLAM or the SSLAM Google "
    "Drive (github.com/ta012/SSLAM)" + _HOW + "; without one, random init (options.seed, default 0)",
    _builder(EATConfig.base()),
))
register(BackboneSpec(
    "eat-tiny", "fbank", 64, 2,
    "random init (tiny test config: width 64, 2 blocks, 2 heads; seed from options.seed, default 0)",
    _builder(EATConfig.tiny()), test_size=True,
))


__all__ = [
    "EATConfig",
    "EATEncoder",
    "LoadReport",
    "load_eat_weights",
    "checkpoint_file",
    "sincos_positions",
    "torch_load_weights_only",
]
