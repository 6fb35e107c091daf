"""Our EAT encoder against the official key layout and an independent functional re-computation."""

from __future__ import annotations

import argparse
import json
import math
import pickle
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from pace.backbones import build_backbone, list_backbones
from pace.backbones.eat import EATConfig, EATEncoder, load_eat_weights
from pace.config import BackboneConfig
from pace.data.frontend import FbankFrontend

TINY = EATConfig.tiny()  # 64 dims, 2 blocks, 2 heads
FRAMES = 64  # 4 time patches x 8 frequency patches


class FakeOmegaConf:
    """Stands in for fairseq's pickled config: its code must never run while loading."""

    def __init__(self):
        self.lr = 0.0005

    def __setstate__(self, state):
        raise AssertionError("checkpoint-defined code ran during loading")


class Payload:
    """A pickle that would run code on load: ``reduce`` names the callable it asks to be called with."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


# ---------------------------------------------------------------- the official layout, by hand


def hand_positions(dim: int, rows: int, cols: int) -> torch.Tensor:
    """MAE convention in numpy: first half = column (freq) index, second half = row (time) index."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
    t, f = np.divmod(np.arange(rows * cols), cols)  # token index = t * cols + f
    ft, tt = np.outer(f, omega), np.outer(t, omega)
    return torch.from_numpy(np.concatenate([np.sin(ft), np.cos(ft), np.sin(tt), np.cos(tt)], 1)).float()


def official_shapes(cfg: EATConfig) -> dict[str, tuple[int, ...]]:
    """HF ``EATModel`` keys and shapes, as documented (no fine-tuned head)."""
    d, m = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    shapes = {
        "model.local_encoder.proj.weight": (d, 1, 16, 16),
        "model.local_encoder.proj.bias": (d,),
        "model.extra_tokens": (1, 1, d),
        "model.pre_norm.weight": (d,),
        "model.pre_norm.bias": (d,),
    }
    for i in range(cfg.depth):
        b = f"model.blocks.{i}."
        shapes |= {
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "mlp.fc1.weight": (m, d), b + "mlp.fc1.bias": (m,),
            b + "mlp.fc2.weight": (d, m), b + "mlp.fc2.bias": (d,),
        }
    return shapes


def official_state_dict(cfg: EATConfig = TINY, seed: int = 0, with_positions: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {k: 0.2 * torch.randn(s, generator=g) for k, s in official_shapes(cfg).items()}
    for k in sd:  # LayerNorm gains near 1, so activations stay well scaled
        if k.endswith(("norm1.weight", "norm2.weight", "pre_norm.weight")):
            sd[k] = sd[k] + 1.0
    if with_positions:
        rows = cfg.max_length
        sd["model.fixed_positional_encoder.positions"] = hand_positions(cfg.embed_dim, rows, 8)[None]
    return sd


def to_fairseq(sd: dict) -> dict:
    """The same weights as a fairseq pre-training checkpoint (data2vec_multi layout)."""
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("model.")
        if k.startswith("blocks."):
            out[k] = v
        elif k.startswith("pre_norm."):
            out["modality_encoders.IMAGE.context_encoder.norm." + k[len("pre_norm."):]] = v
        else:
            out["modality_encoders.IMAGE." + k] = v
    return out


def reference_hidden(sd: dict, x: torch.Tensor, heads: int, eps: float = 1e-6) -> list[torch.Tensor]:
    """EAT forward from the documented maths with torch.nn.functional only, block by block."""
    p = lambda k: sd["model." + k]  # noqa: E731
    d = p("extra_tokens").shape[-1]
    grid = F.conv2d(x[:, None], p("local_encoder.proj.weight"), p("local_encoder.proj.bias"), stride=16)
    rows, cols = grid.shape[2], grid.shape[3]
    tokens = torch.stack([grid[:, :, t, f] for t in range(rows) for f in range(cols)], dim=1)
    tokens = tokens + p("fixed_positional_encoder.positions")[0, : rows * cols]
    h = torch.cat([p("extra_tokens").expand(x.shape[0], 1, d), tokens], dim=1)
    h = F.layer_norm(h, (d,), p("pre_norm.weight"), p("pre_norm.bias"), eps)
    hd = d // heads
    out = []
    for i in range(sum(k.endswith("attn.qkv.weight") for k in sd)):
        w = lambda n, i=i: (p(f"blocks.{i}.{n}.weight"), p(f"blocks.{i}.{n}.bias"))  # noqa: E731
        qkv = F.linear(h, *w("attn.qkv"))
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        per_head = []
        for j in range(heads):
            s = slice(j * hd, (j + 1) * hd)
            att = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(hd), dim=-1)
            per_head.append(att @ v[..., s])
        x1 = h + F.linear(torch.cat(per_head, dim=-1), *w("attn.proj"))
        r = F.layer_norm(x1, (d,), *w("norm1"), eps)
        mlp = F.linear(F.gelu(F.linear(r, *w("mlp.fc1"))), *w("mlp.fc2"))
        h = F.layer_norm(r + mlp, (d,), *w("norm2"), eps)
        out.append(h)
    return out


def tiny(pooling: str = "cls", seed: int = 0) -> EATEncoder:
    return EATEncoder(TINY, FbankFrontend(target_frames=FRAMES), pooling=pooling, seed=seed)


def clip(batch: int = 3, frames: int = FRAMES, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- (2) forward == reference


def test_forward_matches_functional_reference_block_by_block():
    sd = official_state_dict(seed=3)
    model = tiny()
    model.load_state_dict({k.removeprefix("model."): v for k, v in sd.items()}, strict=True)
    x = clip()
    out = model(x, output_hidden_states=True)
    ref = reference_hidden(sd, x, heads=TINY.num_heads)
    assert len(out.hidden_states) == TINY.depth
    for ours, theirs in zip(out.hidden_states, ref):
        assert ours.shape == (3, 1 + 4 * 8, 64)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pooled, ref[-1][:, 0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- (1) strict loading


def test_hf_safetensors_and_fairseq_pickle_load_to_the_same_model(tmp_path):
    sd = official_state_dict(seed=5)
    x = clip()
    expected = reference_hidden(sd, x, heads=TINY.num_heads)[-1][:, 0]

    (tmp_path / "hf").mkdir()
    save_file(sd, str(tmp_path / "hf" / "model.safetensors"))
    a = tiny(seed=11)
    report = load_eat_weights(a, tmp_path / "hf")  # the folder form
    assert report.layout == "hf" and report.positions_checked and not report.ignored_head
    assert a.weights_source.endswith("model.safetensors")

    fairseq = to_fairseq(sd)
    fairseq["_ema"] = {"blocks.0.attn.qkv.weight": torch.zeros(3)}  # EMA teacher: a dict, dropped
    fairseq["modality_encoders.IMAGE.decoder.blocks.0.0.weight"] = torch.zeros(4, 4, 3)
    checkpoint = {
        "cfg": FakeOmegaConf(),
        "args": argparse.Namespace(arch="data2vec_multi"),
        "model": fairseq,
        "extra_state": {"val_loss": np.float64(0.5)},
    }
    torch.save(checkpoint, tmp_path / "eat.pt")
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses the non-tensor objects ...
        torch.load(tmp_path / "eat.pt", weights_only=True)
    b = tiny(seed=12)
    report = load_eat_weights(b, tmp_path / "eat.pt")  # ... our loader still gets ["model"]
    assert report.layout == "fairseq"
    assert set(report.dropped) == {"_ema", "modality_encoders.IMAGE.decoder.blocks.0.0.weight"}

    with torch.inference_mode():
        ya, yb = a(x).pooled, b(x).pooled
    assert torch.equal(ya, yb)
    torch.testing.assert_close(ya, expected, atol=1e-5, rtol=0)
    assert a.weights_digest() == b.weights_digest()
    assert torch.equal(a.blocks[1].mlp.fc2.weight, sd["model.blocks.1.mlp.fc2.weight"])


def test_finetuned_layouts_ignore_the_classifier_head(tmp_path):
    sd = official_state_dict(seed=2, with_positions=False)
    sd |= {"model.fc_norm.weight": torch.ones(64), "model.fc_norm.bias": torch.zeros(64),
           "model.head.weight": torch.zeros(527, 64), "model.head.bias": torch.zeros(527)}
    torch.save(sd, tmp_path / "pytorch_model.bin")  # HF .bin, read with weights_only=True
    report = load_eat_weights(tiny(), tmp_path)
    assert sorted(report.ignored_head) == sorted(k for k in sd if "fc_norm" in k or "head" in k)
    assert not report.positions_checked  # absent table: rebuilt, nothing to compare

    # fairseq mae_image_classification: encoder under "model.", head at the top level
    ft = {"model." + k: v for k, v in to_fairseq(official_state_dict(seed=2)).items()}
    ft |= {"fc_norm.weight": torch.ones(64), "fc_norm.bias": torch.zeros(64),
           "head.weight": torch.zeros(527, 64), "head.bias": torch.zeros(527)}
    torch.save({"model": ft}, tmp_path / "ft.pt")
    m = tiny()
    report = load_eat_weights(m, tmp_path / "ft.pt")
    assert report.layout == "fairseq" and len(report.ignored_head) == 4
    assert torch.equal(m.pre_norm.bias, sd["model.pre_norm.bias"])


def test_sharded_safetensors_folder(tmp_path):
    sd = official_state_dict(seed=7)
    keys = sorted(sd)
    shards = {"m-1.safetensors": keys[:10], "m-2.safetensors": keys[10:]}
    for name, part in shards.items():
        save_file({k: sd[k] for k in part}, str(tmp_path / name))
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    m = tiny()
    assert load_eat_weights(m, tmp_path).loaded == len(sd)
    assert torch.equal(m.extra_tokens, sd["model.extra_tokens"])


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    sd = official_state_dict()
    del sd["model.blocks.1.attn.proj.bias"]
    save_file(sd, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(1\): blocks\.1\.attn\.proj\.bias"):
        load_eat_weights(tiny(), tmp_path / "missing.safetensors")

    sd = official_state_dict()
    sd["model.blocks.0.attn.rel_bias"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): model\.blocks\.0\.attn\.rel_bias"):
        load_eat_weights(tiny(), tmp_path / "extra.safetensors")

    big = official_state_dict(EATConfig(embed_dim=64, depth=3, num_heads=2))
    save_file(big, str(tmp_path / "deeper.safetensors"))
    with pytest.raises(ValueError, match="checkpoint has 3 blocks, the model 2"):
        load_eat_weights(tiny(), tmp_path / "deeper.safetensors")


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    sd = official_state_dict()
    sd["model.blocks.0.mlp.fc1.weight"] = torch.zeros(128, 64)
    save_file(sd, str(tmp_path / "w.safetensors"))
    expected = r"blocks\.0\.mlp\.fc1\.weight: checkpoint \(128, 64\) vs model \(256, 64\)"
    with pytest.raises(ValueError, match=expected):
        load_eat_weights(tiny(), tmp_path / "w.safetensors")


def test_wrong_positional_table_is_rejected(tmp_path):
    sd = official_state_dict()
    pos = sd["model.fixed_positional_encoder.positions"]
    sd["model.fixed_positional_encoder.positions"] = torch.cat([pos[..., 32:], pos[..., :32]], -1)
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="positional"):
        load_eat_weights(tiny(), tmp_path / "w.safetensors")


def test_unreadable_pickles_give_clear_errors(tmp_path):
    # a non-tensor entry among the weights
    torch.save({"model": {"blocks.0.norm1.weight": FakeOmegaConf()}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="blocks.0.norm1.weight.* not a tensor"):
        load_eat_weights(tiny(), tmp_path / "bad.pt")
    # a legacy (non-zip) pickle with objects weights_only refuses cannot be inspected: say what to do
    legacy = tmp_path / "legacy.pt"
    torch.save({"cfg": FakeOmegaConf(), "model": {}}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="never unpickles with weights_only=False.*extract the weights"):
        load_eat_weights(tiny(), legacy)


def test_code_in_a_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "ran"
    weights = to_fairseq(official_state_dict(seed=6))
    # exec is not a blocked module, so it is read as an inert placeholder and the weights still load
    torch.save({"cfg": Payload(exec, f"open({str(marker)!r}, 'w').write('x')"), "model": weights},
               tmp_path / "exec.pt")
    load_eat_weights(tiny(), tmp_path / "exec.pt")
    # os.system is in a module torch blocks outright: a clear error, still nothing runs
    torch.save({"cfg": Payload(os.system, f"touch {marker}"), "model": weights}, tmp_path / "system.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_eat_weights(tiny(), tmp_path / "system.pt")
    assert not marker.exists()


def test_hub_ids_resolve_only_from_the_local_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone.checkpoint"):
        load_eat_weights(tiny(), "worstchan/EAT-base_epoch30_pretrain", cache_dir=tmp_path)
    # a fake cache entry in the layout huggingface_hub reads offline
    repo = tmp_path / "models--someone--eat-tiny"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    save_file(official_state_dict(seed=4), str(snap / "model.safetensors"))
    report = load_eat_weights(tiny(), "someone/eat-tiny", cache_dir=tmp_path)
    assert report.source == str(snap / "model.safetensors")
    report = load_eat_weights(tiny(), "someone/eat-tiny/model.safetensors", cache_dir=tmp_path)
    assert report.layout == "hf"


# ---------------------------------------------------------------- (3) patch order and positions


def test_patches_are_time_major():
    model = tiny().eval()
    base = torch.zeros(1, FRAMES, 128)
    t0, f0 = 2, 5  # the third time patch, the sixth frequency patch
    x = base.clone()
    x[0, 16 * t0 : 16 * (t0 + 1), 16 * f0 : 16 * (f0 + 1)] = torch.randn(16, 16)
    with torch.inference_mode():
        changed = (model.embed(x) - model.embed(base)).abs().amax(dim=-1)[0]
    assert changed.nonzero().flatten().tolist() == [1 + t0 * 8 + f0]  # CLS first, then t*8 + f


def test_positional_table_follows_the_documented_convention():
    table = tiny().fixed_positional_encoder.positions[0]
    assert table.shape == (768 * 8, 64)
    quarter = 16
    for t, f in [(0, 0), (0, 7), (3, 5), (100, 2), (767, 7)]:
        row = table[t * 8 + f]
        for i in (0, 1, 7, 15):
            w = 10000 ** (-i / quarter)
            assert row[i].item() == pytest.approx(math.sin(f * w), abs=1e-6)  # freq, sin
            assert row[quarter + i].item() == pytest.approx(math.cos(f * w), abs=1e-6)  # freq, cos
            assert row[2 * quarter + i].item() == pytest.approx(math.sin(t * w), abs=1e-6)  # time, sin
            assert row[3 * quarter + i].item() == pytest.approx(math.cos(t * w), abs=1e-6)  # time, cos
    torch.testing.assert_close(table[: 10 * 8], hand_positions(64, 10, 8), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- (4) pooling, (5) linear layers


def test_cls_and_mean_pooling():
    x = clip(batch=2)
    cls_model, mean_model = tiny("cls", seed=4), tiny("mean", seed=4)
    with torch.inference_mode():
        a = cls_model(x, output_hidden_states=True)
        b = mean_model(x, output_hidden_states=True)
    last = a.hidden_states[-1]
    assert torch.equal(last, b.hidden_states[-1])
    assert torch.equal(a.pooled, last[:, 0])
    torch.testing.assert_close(b.pooled, last[:, 1:].mean(dim=1))
    assert not torch.allclose(a.pooled, b.pooled)
    # per-block pooling agrees with the utterance embedding
    assert torch.equal(mean_model.pool(last), b.pooled)
    assert tiny().has_cls and tiny().pooling == "cls"
    with pytest.raises(ValueError, match="pooling"):
        tiny("max")


def test_linear_layers_resolve_to_linear_modules():
    model = tiny()
    modules = dict(model.named_modules())
    layers = model.linear_layers()
    assert sorted(layers) == list(range(TINY.depth))
    shapes = {"qkv": (192, 64), "o": (64, 64), "fc1": (256, 64), "fc2": (64, 256)}
    for block in layers.values():
        assert set(block) == set(shapes)
        for role, name in block.items():
            assert isinstance(modules[name], nn.Linear)
            assert tuple(modules[name].weight.shape) == shapes[role]
    assert model.lora_target_names([1], ["q", "v", "o"]) == ["blocks.1.attn.qkv", "blocks.1.attn.proj"]


def test_state_dict_keys_are_the_hf_keys_without_prefix():
    own = set(tiny().state_dict())
    official = {k.removeprefix("model.") for k in official_state_dict()}
    assert own == official


# ---------------------------------------------------------------- registry and builds


def test_registry_builds(tmp_path):
    names = {s.name: s for s in list_backbones()}
    assert {"eat-base", "eat-large", "sslam-base", "eat-tiny"} <= set(names)
    assert names["eat-tiny"].test_size and not names["eat-base"].test_size
    assert (names["eat-large"].embed_dim, names["eat-large"].num_blocks) == (1024, 24)
    assert "worstchan/EAT-base_epoch30_pretrain" in names["eat-base"].weights

    a = build_backbone(BackboneConfig(name="eat-tiny", target_frames=FRAMES))
    b = build_backbone(BackboneConfig(name="eat-tiny", target_frames=FRAMES))
    c = build_backbone(BackboneConfig(name="eat-tiny", target_frames=FRAMES, options={"seed": 1}))
    assert a.name == "eat-tiny" and a.frontend.target_frames == FRAMES
    assert a.weights_digest() == b.weights_digest() != c.weights_digest()
    assert a.identity() != c.identity()

    save_file(official_state_dict(seed=8), str(tmp_path / "model.safetensors"))
    d = build_backbone(BackboneConfig(name="eat-tiny", checkpoint=str(tmp_path), pooling="mean"))
    assert d.pooling == "mean" and d.weights_source == str(tmp_path / "model.safetensors")

    with pytest.raises(ValueError, match="unknown options"):
        build_backbone(BackboneConfig(name="eat-tiny", options={"size": "tiny"}))
    with pytest.raises(ValueError, match="multiple of 16"):
        build_backbone(BackboneConfig(name="eat-tiny", target_frames=100))
    with pytest.raises(ValueError, match="T=40"):
        a(torch.zeros(1, 40, 128))


def test_eat_base_builds_and_runs_on_a_short_clip():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    model = build_backbone(BackboneConfig(name="eat-base", target_frames=128)).eval()
    assert torch.equal(torch.get_rng_state(), state)  # building never moves the global RNG
    assert sum(p.numel() for p in model.parameters()) == 85_254_144
    # no wall-clock bound: speed belongs in bench/, a shared CPU must not fail a correctness test
    with torch.inference_mode():
        out = model(clip(batch=1, frames=128), output_hidden_states=True)
    assert out.pooled.shape == (1, 768) and len(out.hidden_states) == 12
    assert out.hidden_states[0].shape == (1, 1 + 8 * 8, 768)
    assert torch.isfinite(out.pooled).all()
