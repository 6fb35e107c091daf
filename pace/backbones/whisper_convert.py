"""CTranslate2 Whisper variables -> transformers' ``WhisperForConditionalGeneration`` state dict and config.

The mapping is strict both ways: every CT2 variable must map to a transformers key or be a known
scalar option (``ct2_to_hf_state_dict``), and ``load_strict`` lists every missing, unexpected or
mis-shaped key. Sizes come from the variable shapes (``config_from_ct2``), so any Whisper size loads.
transformers is imported inside functions.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
import torch

from pace.backbones.ct2 import Ct2Model

if TYPE_CHECKING:
    from transformers import WhisperConfig

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
    return whisper_config(
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


def whisper_config(**kw) -> "WhisperConfig":
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
