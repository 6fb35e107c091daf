"""The transformers audio family behind the Backbone contract (pace.backbones.hf), on tiny configs."""

from __future__ import annotations

import json
import math
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from pace.backbones.hf import FAMILIES, ClapFrontend
from pace.backbones.registry import build_backbone, get_spec
from pace.config import BackboneConfig

TINY = [f"{name}-tiny" for name in FAMILIES]
WAVEFORM = [f"{name}-tiny" for name, f in FAMILIES.items() if f.input_kind == "waveform"]
# short inputs keep every forward pass in milliseconds
SHORT = {"fbank": {"target_frames": 128}, "waveform": {"num_samples": 8000}, "clap-logmel": {"seconds": 1.0}}


def _cfg(name: str, **kw) -> BackboneConfig:
    kind = get_spec(name).input_kind
    return BackboneConfig(name=name, **{**SHORT[kind], **kw})


@cache
def _tiny(name: str):
    return build_backbone(_cfg(name))


def _wave(seconds: float, seed: int = 0) -> torch.Tensor:
    """A 16 kHz chirp with noise and a DC offset (AST must keep the offset, EAT-style fbank would not)."""
    t = torch.arange(int(seconds * 16_000)) / 16_000
    noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(seed))
    return 0.3 * torch.sin(2 * math.pi * 300 * t * (1 + t)) + 0.05 * noise + 0.1


def _batch(bb) -> torch.Tensor:
    return torch.stack([bb.frontend(_wave(0.8)), bb.frontend(_wave(0.3, seed=1))])


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbone_embeds(name):
    bb = _tiny(name)
    spec = get_spec(name)
    assert spec.test_size and (bb.embed_dim, bb.num_blocks) == (spec.embed_dim, spec.num_blocks) == (64, 2)
    x = _batch(bb)
    assert x.shape == (2, *bb.frontend.shape) and bb.frontend.kind == spec.input_kind
    with torch.no_grad():
        out = bb(x, output_hidden_states=True)
        plain = bb(x)
    assert out.pooled.shape == (2, bb.embed_dim) and torch.isfinite(out.pooled).all()
    assert not torch.allclose(out.pooled[0], out.pooled[1])  # the two clips differ
    assert torch.equal(plain.pooled, out.pooled) and plain.hidden_states == []
    assert len(out.hidden_states) == bb.num_blocks
    assert all(h.dim() == 3 and h.shape[0] == 2 and torch.isfinite(h).all() for h in out.hidden_states)
    assert out.hidden_states[-1].shape[-1] == bb.embed_dim


@pytest.mark.parametrize("name", [n for n in TINY if not n.startswith("clap")])
def test_hidden_states_are_block_outputs_and_pooled_follows_them(name):
    """Entry i is HF's hidden_states[i + 1] (HF puts the embedding output first)."""
    bb = _tiny(name)
    x = _batch(bb)
    with torch.no_grad():
        ours = bb(x, output_hidden_states=True)
        theirs = bb.model(input_values=x, output_hidden_states=True).hidden_states
    assert len(theirs) == bb.num_blocks + 1
    for mine, hf in zip(ours.hidden_states, theirs[1:]):
        torch.testing.assert_close(mine, hf)
    last = ours.hidden_states[-1]
    if name.startswith("ast"):
        normed = bb.model.layernorm(last)  # AST pools after its final LayerNorm: CLS + distillation
        torch.testing.assert_close(ours.pooled, normed[:, :2].mean(dim=1))
    else:
        torch.testing.assert_close(ours.pooled, last.mean(dim=1))


def test_clap_blocks_span_the_swin_stages():
    bb = _tiny("clap-audio-tiny")
    with torch.no_grad():
        out = bb(_batch(bb), output_hidden_states=True)
        # HF's pooler is the mean of the final-normed tokens of the last block
        torch.testing.assert_close(out.pooled, bb.model.audio_encoder.norm(out.hidden_states[-1]).mean(dim=1))
    # stage 1: 32 wide on a 32x32 patch grid; stage 2 after patch merging: 64 wide on 16x16
    assert [tuple(h.shape[1:]) for h in out.hidden_states] == [(1024, 32), (256, 64)]
    assert bb.block_names == ["audio_encoder.layers.0.blocks.0", "audio_encoder.layers.1.blocks.0"]


@pytest.mark.parametrize("name", TINY)
def test_lora_targets_resolve_to_linear_layers(name):
    bb = _tiny(name)
    modules = dict(bb.named_modules())
    layers = bb.linear_layers()
    assert sorted(layers) == list(range(bb.num_blocks))
    names = []
    for roles in layers.values():
        assert set(roles) == {"q", "k", "v", "o", "fc1", "fc2"}
        for qualified in roles.values():
            assert qualified.startswith("model.") and isinstance(modules[qualified], nn.Linear)
        names += roles.values()
    assert len(set(names)) == 6 * bb.num_blocks
    q, fc1 = modules[layers[0]["q"]], modules[layers[0]["fc1"]]
    assert q.in_features == q.out_features and fc1.out_features > fc1.in_features  # roles not swapped
    assert len(bb.lora_target_names(None, ["q", "v"])) == 2 * bb.num_blocks


@pytest.mark.parametrize("name", TINY)
def test_save_pretrained_round_trip(name, tmp_path):
    bb = _tiny(name)
    bb.save_pretrained(str(tmp_path))
    again = build_backbone(_cfg(name, checkpoint=str(tmp_path)))
    assert again.frontend == bb.frontend  # preprocessor_config.json carries the frontend settings
    assert again.weights_digest() == bb.weights_digest() and again.weights_source == str(tmp_path)
    x = _batch(bb)
    with torch.no_grad():
        a, b = bb(x, output_hidden_states=True), again(x, output_hidden_states=True)
    assert torch.equal(a.pooled, b.pooled)
    assert all(torch.equal(h, g) for h, g in zip(a.hidden_states, b.hidden_states))


def test_random_init_is_seeded_without_touching_global_rng():
    state = torch.get_rng_state()
    a = build_backbone(_cfg("hubert-tiny"))
    b = build_backbone(_cfg("hubert-tiny"))
    c = build_backbone(_cfg("hubert-base", options={"size": "tiny", "seed": 1}))
    assert torch.equal(torch.get_rng_state(), state)
    assert a.weights_digest() == b.weights_digest() != c.weights_digest()
    assert c.embed_dim == 64 and c.weights_source == "random init (tiny config, seed 1)"


@pytest.mark.parametrize("name", WAVEFORM)
def test_waveform_family_runs_every_block_in_train_mode(name):
    bb = build_backbone(_cfg(name))
    assert bb.model.config.layerdrop == 0.0 and not bb.model.config.apply_spec_augment
    bb.train()
    out = bb(_batch(bb), output_hidden_states=True)
    assert len(out.hidden_states) == bb.num_blocks
    out.pooled.sum().backward()  # trainable through the adapter
    assert bb.model.encoder.layers[0].attention.q_proj.weight.grad is not None


@pytest.mark.parametrize("family", list(FAMILIES))
def test_base_metadata_matches_default_config(family):
    import transformers

    spec = get_spec(f"{family}-base")
    fam = FAMILIES[family]
    config = getattr(transformers, fam.config_class)()
    if fam.input_kind == "clap-logmel":
        width = config.patch_embeds_hidden_size * 2 ** (len(config.depths) - 1)
        dims = (width, sum(config.depths))
        assert config.hidden_size == width
    else:
        dims = (config.hidden_size, config.num_hidden_layers)
    assert (spec.embed_dim, spec.num_blocks) == dims == (768, 12)
    assert spec.input_kind == fam.input_kind and not spec.test_size
    assert "backbone.checkpoint" in spec.weights and "random init" in spec.weights


def test_ast_fbank_matches_hf_feature_extractor():
    from transformers import ASTFeatureExtractor

    fe = _tiny("ast-tiny").frontend
    wave = _wave(0.8)
    ext = ASTFeatureExtractor(max_length=fe.target_frames)
    ref = ext(wave.numpy(), sampling_rate=16_000, return_tensors="pt")
    torch.testing.assert_close(fe(wave), ref.input_values[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "seconds,mel_scale,truncation", [(1.0, "slaney", "rand_trunc"), (0.5, "htk", "fusion")]
)
def test_clap_logmel_matches_hf_feature_extractor(seconds, mel_scale, truncation):
    """Same dB log-mel as ClapFeatureExtractor on the 48 kHz resampled clip, repeat-padding included."""
    import torchaudio.functional as AF
    from transformers import ClapFeatureExtractor

    wave = _wave(0.3)  # shorter than `seconds`: exercises repeatpad
    ours = ClapFrontend(seconds=seconds, mel_scale=mel_scale)(wave)
    w48 = AF.resample(wave, 16_000, 48_000).numpy().astype(np.float64)
    ext = ClapFeatureExtractor(frequency_min=50, truncation=truncation)
    n = int(seconds * 48_000)
    ref = ext(w48, max_length=n, sampling_rate=48_000, return_tensors="pt").input_features[0, :1]
    assert ours.shape == ref.shape == ClapFrontend(seconds=seconds).shape
    torch.testing.assert_close(ours, ref.to(torch.float32), atol=2e-2, rtol=0)  # dB


def test_loads_task_and_composite_checkpoints(tmp_path):
    """A classifier checkpoint (saved in AST's legacy key layout), a CTC checkpoint and a full CLAP
    model all load into their encoder with every weight taken from the folder."""
    from transformers import (
        ASTConfig,
        ASTForAudioClassification,
        ClapConfig,
        ClapModel,
        Wav2Vec2Config,
        Wav2Vec2ForCTC,
    )

    tiny = FAMILIES["ast"].tiny
    ast = ASTForAudioClassification(ASTConfig(**tiny, max_length=128, num_labels=5)).eval()
    ast.save_pretrained(tmp_path / "ast")
    bb = build_backbone(BackboneConfig(name="ast-base", checkpoint=str(tmp_path / "ast")))
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(bb(x).pooled, ast.audio_spectrogram_transformer(x).pooler_output)

    ctc = Wav2Vec2ForCTC(Wav2Vec2Config(**FAMILIES["wav2vec2"].tiny, vocab_size=10)).eval()
    ctc.save_pretrained(tmp_path / "ctc")
    bb = build_backbone(
        BackboneConfig(name="wav2vec2-base", checkpoint=str(tmp_path / "ctc"), num_samples=8000)
    )
    x = torch.randn(2, 8000)
    with torch.no_grad():
        torch.testing.assert_close(bb(x).pooled, ctc.wav2vec2(x).last_hidden_state.mean(dim=1))
    with pytest.raises(ValueError, match="does not hold HubertModel weights"):
        build_backbone(BackboneConfig(name="hubert-base", checkpoint=str(tmp_path / "ctc")))

    text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "vocab_size": 100}
    config = ClapConfig(text_config=text, audio_config=FAMILIES["clap-audio"].tiny, projection_dim=16)
    clap = ClapModel(config)
    clap.eval().save_pretrained(tmp_path / "clap")
    bb = build_backbone(BackboneConfig(name="clap-audio-base", checkpoint=str(tmp_path / "clap")))
    assert bb.frontend.mel_scale == "slaney" and bb.num_blocks == 2
    x = torch.randn(2, *bb.frontend.shape)
    with torch.no_grad():
        torch.testing.assert_close(bb(x).pooled, clap.audio_model(input_features=x).pooler_output)


def test_ast_checkpoint_runs_shorter_inputs_and_reads_its_normalisation(tmp_path):
    full = _tiny("ast-tiny")  # 128 frames: 12 x 12 patch grid
    full.save_pretrained(str(tmp_path))
    path = tmp_path / "preprocessor_config.json"
    pre = json.loads(path.read_text())
    path.write_text(json.dumps({**pre, "mean": -6.8, "std": 5.6}))  # e.g. the Speech Commands fine-tune
    short = build_backbone(BackboneConfig(name="ast-tiny", checkpoint=str(tmp_path), target_frames=64))
    fe = short.frontend
    assert (fe.target_frames, fe.norm_mean, fe.norm_std) == (64, -6.8, 5.6)
    table, cropped = full.model.embeddings.position_embeddings, short.model.embeddings.position_embeddings
    grid = table[:, 2:].reshape(1, 12, 12, -1)[:, :, :5]  # (64 - 16) // 10 + 1 = 5 time columns
    torch.testing.assert_close(cropped, torch.cat([table[:, :2], grid.reshape(1, 60, -1)], dim=1))
    assert short(short.frontend(_wave(0.3))[None]).pooled.shape == (1, 64)
    with pytest.raises(ValueError, match="at most 128 frames"):
        build_backbone(BackboneConfig(name="ast-tiny", checkpoint=str(tmp_path), target_frames=256))


def test_ast_mean_pooling_skips_special_tokens():
    bb = build_backbone(_cfg("ast-tiny", pooling="mean"))
    x = _batch(bb)
    with torch.no_grad():
        out = bb(x, output_hidden_states=True)
    torch.testing.assert_close(out.pooled, bb.model.layernorm(out.hidden_states[-1])[:, 2:].mean(dim=1))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"name": "hubert-tiny", "pooling": "cls"}, ValueError, "no CLS token"),
        ({"name": "wavlm-tiny", "target_frames": 128}, ValueError, "set backbone.num_samples"),
        ({"name": "ast-tiny", "options": {"depth": 3}}, ValueError, "unknown backbone.options"),
        ({"name": "clap-audio-tiny", "seconds": 5.0}, ValueError, "at most 256 frames"),
        ({"name": "wav2vec2-base", "checkpoint": "/no/such/dir"}, FileNotFoundError, "pace never downloads"),
        ({"name": "ast-base", "checkpoint": "someone/not-in-cache"}, FileNotFoundError, "--local-dir"),
    ],
)
def test_configuration_errors_are_explicit(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_backbone(BackboneConfig(**kwargs))
