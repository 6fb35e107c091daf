import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi

from pace.cache import TensorCache
from pace.config import DataConfig, ScenarioConfig, Seeds
from pace.data.audio import AudioError, read_audio
from pace.data.datasets import build_dataset
from pace.data.features import extract_features
from pace.data.folder import load_folder, load_manifest
from pace.data.frontend import FbankFrontend
from pace.data.fsdd import load_fsdd
from pace.data.scenario import build_scenario, session_sizes
from pace.data.synthetic import make_synthetic


def _tone(sr=8000, seconds=0.5, channels=1, f=440.0):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * f * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


# ---------------------------------------------------------------- audio reading

def test_read_resamples_to_16k_and_mixes_to_mono(tmp_path):
    stereo = _tone(sr=8000, seconds=0.5, channels=2)
    stereo[:, 1] *= 0.0  # mono mix = half the left channel
    sf.write(tmp_path / "a.wav", stereo, 8000)
    w = read_audio(tmp_path / "a.wav")
    assert w.dtype == torch.float32 and w.dim() == 1
    assert abs(w.numel() - 8000) <= 2  # 0.5 s at 16 kHz
    assert w.abs().max().item() == pytest.approx(0.25, rel=0.05)


@pytest.mark.parametrize("fmt", ["FLAC", "OGG"])
def test_read_other_formats(tmp_path, fmt):
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, _tone(sr=16000), 16000, format=fmt)
    assert read_audio(path).numel() == 8000


def test_bad_files_name_the_file_and_reason(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav: empty file"):
        read_audio(empty)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio" * 10)
    with pytest.raises(AudioError, match="junk.wav: unreadable"):
        read_audio(junk)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="silent"):
        read_audio(silent)
    good = tmp_path / "good.wav"
    sf.write(good, _tone(sr=16000, seconds=1.0), 16000, subtype="PCM_16")
    data = good.read_bytes()
    trunc = tmp_path / "trunc.wav"
    trunc.write_bytes(data[: len(data) // 2])  # header still claims the full length
    with pytest.raises(AudioError, match="trunc.wav: .*truncated"):
        read_audio(trunc)
    with pytest.raises(AudioError, match="file not found"):
        read_audio(tmp_path / "missing.wav")


# ---------------------------------------------------------------- frontend

def test_fbank_uses_eat_settings_pads_then_normalises():
    wave = torch.from_numpy(_tone(sr=16000, seconds=1.0)) + 0.1  # DC offset must be removed
    fe = FbankFrontend(target_frames=128)
    out = fe(wave)
    ref = kaldi.fbank((wave - wave.mean())[None], htk_compat=True, sample_frequency=16000, use_energy=False,
                      window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    assert ref.shape == (98, 128)
    assert out.shape == (128, 128)
    torch.testing.assert_close(out[:98], (ref + 4.268) / (2 * 4.569))
    # padded frames hold log-mel 0 before normalisation
    torch.testing.assert_close(out[98:], torch.full((30, 128), 4.268 / (2 * 4.569)))
    assert FbankFrontend(target_frames=64)(wave).shape == (64, 128)  # cropped
    assert fe.key() != FbankFrontend(target_frames=64).key()


# ---------------------------------------------------------------- data sets

def test_fsdd_labels_and_official_split(fsdd):
    ds = load_fsdd(fsdd, "digit")
    assert len(ds) == 3000 and len(ds.labels) == 10
    assert set(ds.class_counts().values()) == {300}
    assert sum(it.split == "test" for it in ds.items) == 300  # index 0-4 x 10 digits x 6 speakers
    assert len(load_fsdd(fsdd, "speaker").labels) == 6
    assert len(load_fsdd(fsdd, "digit_speaker").labels) == 60
    with pytest.raises(ValueError, match="label"):
        load_fsdd(fsdd, "accent")


def test_fsdd_missing_root_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="FSDD not found"):
        load_fsdd(tmp_path / "nope")


def test_folder_and_manifest(tmp_path):
    for cls in ("dog", "rain"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            sf.write(tmp_path / "data" / cls / f"{i}.wav", _tone(f=300 + 100 * i), 8000)
    ds = load_folder(tmp_path / "data")
    assert ds.class_counts() == {"dog": 3, "rain": 3}
    man = tmp_path / "data" / "manifest.csv"
    man.write_text("path,label,split\ndog/0.wav,dog,train\ndog/1.wav,dog,test\nrain/0.wav,rain,\n")
    mds = load_manifest(man)
    assert [it.split for it in mds.items] == ["train", "test", None]
    assert mds.waveform(mds.items[0]).numel() > 0
    man.write_text("file,label\nx.wav,dog\n")
    with pytest.raises(ValueError, match=r"manifest.csv: missing column\(s\) \['path'\]"):
        load_manifest(man)
    man.write_text("path,label,split\ndog/0.wav,dog,holdout\n")
    with pytest.raises(ValueError, match=r"manifest.csv:2: split 'holdout'"):
        load_manifest(man)


def test_synthetic_is_deterministic_and_separable():
    a, b = make_synthetic(num_classes=4, clips_per_class=3), make_synthetic(num_classes=4, clips_per_class=3)
    assert a.fingerprint() == b.fingerprint()
    for ia, ib in zip(a.items, b.items):
        assert torch.equal(a.waveform(ia), b.waveform(ib))
    c = make_synthetic(num_classes=4, clips_per_class=3, seed=99)
    assert not torch.equal(a.waveform(a.items[0]), c.waveform(c.items[0]))
    fine = make_synthetic(num_classes=4, clips_per_class=3, variant="fine")
    assert fine.labels == ["fine000", "fine001", "fine002", "fine003"]
    # separable: leave-one-out nearest class mean on each clip's mean fbank frame, 6 classes x 6 clips.
    # Measured (data seeds 1234 / 1 / 2): coarse 100 / 100 / 100 %, fine 88.9 / 80.6 / 86.1 % (classes
    # that overlap like voices). Chance is 100 / 6 = 16.7 %.
    chance = 100 / 6
    acc = {v: _nearest_mean_loo(make_synthetic(num_classes=6, clips_per_class=6, variant=v))
           for v in ("coarse", "fine")}
    assert acc["coarse"] >= 90.0, f"coarse classes: {acc['coarse']:.1f} % < 90 % (chance {chance:.1f} %)"
    assert 50.0 <= acc["fine"] < acc["coarse"], f"fine classes: {acc} (chance {chance:.1f} %)"


def _nearest_mean_loo(ds) -> float:
    """Leave-one-out accuracy (%) of the nearest class mean on mean fbank frames."""
    fe = FbankFrontend(target_frames=100)
    z = torch.stack([fe(ds.waveform(it)).mean(0) for it in ds.items]).double()
    y = torch.tensor([ds.labels.index(it.label) for it in ds.items])
    correct = 0
    for i in range(len(y)):
        keep = torch.arange(len(y)) != i
        mu = torch.stack([z[keep & (y == c)].mean(0) for c in range(len(ds.labels))])
        correct += int(torch.cdist(z[i:i + 1], mu).argmin() == y[i])
    return 100.0 * correct / len(y)


def test_features_skip_bad_lists_them(tmp_path):
    root = tmp_path / "d"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            sf.write(root / cls / f"{i}.wav", _tone(f=200 + 50 * i), 8000)
    (root / "a" / "broken.wav").write_bytes(b"")
    ds = load_folder(root)
    fe = FbankFrontend(target_frames=64)
    with pytest.raises(AudioError, match="broken.wav"):
        extract_features(ds, fe, progress=False)
    cache = TensorCache(tmp_path / "cache")
    tab = extract_features(ds, fe, cache, skip_bad=True, progress=False)
    assert len(tab.items) == 6 and tab.bad == [("a/broken.wav", "empty file (0 bytes)")]
    again = extract_features(ds, fe, cache, skip_bad=True, progress=False)  # from the cache
    assert cache.hits == 1 and torch.equal(again.x, tab.x) and again.bad == tab.bad


def test_cache_detects_corruption(tmp_path):
    cache = TensorCache(tmp_path)
    cache.save("k", {"z": torch.arange(10.0)})
    path = cache.path("k")
    raw = bytearray(path.read_bytes())
    raw[-4:] = b"\xff\xff\xff\x7f"  # flip data bytes
    path.write_bytes(bytes(raw))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert cache.load("k") is None
    assert any("corrupt" in str(x.message) for x in w) and not path.exists()
    calls = []
    out = cache.get_or_compute("k", lambda: calls.append(1) or {"z": torch.ones(2)})
    assert calls == [1] and torch.equal(out["z"], torch.ones(2))


# ---------------------------------------------------------------- scenarios

def _items(n_classes=6, per_class=10):
    return make_synthetic(num_classes=n_classes, clips_per_class=per_class).items


def test_sessions_classes_and_stratified_split():
    items = _items()
    sc = build_scenario(items, ScenarioConfig(num_sessions=3, val_fraction=0.25), Seeds())
    assert [s.classes for s in sc.sessions] == [[0, 1], [2, 3], [4, 5]]
    for s in sc.sessions:
        assert len(s.test) == 2 * 2 and len(s.val) == 2 * 2 and len(s.train) == 2 * 6
        labels = {items[i].label for i in s.train + s.val + s.test}
        assert labels == {sc.class_order[c] for c in s.classes}
        assert not set(s.train) & set(s.test) and not set(s.val) & set(s.test)


def test_seeds_are_independent():
    items = _items()
    base = build_scenario(items, ScenarioConfig(num_sessions=3), Seeds(class_order=0, split=0))
    other_order = build_scenario(items, ScenarioConfig(num_sessions=3), Seeds(class_order=1, split=0))
    other_split = build_scenario(items, ScenarioConfig(num_sessions=3), Seeds(class_order=0, split=1))
    assert base.class_order != other_order.class_order
    test_set = lambda sc: sorted(i for s in sc.sessions for i in s.test)  # noqa: E731
    assert test_set(base) == test_set(other_order)  # class order never moves clips between splits
    assert test_set(base) != test_set(other_split)
    assert base.class_order == other_split.class_order


def test_session_sizes():
    assert session_sizes(10, 5, None) == [2] * 5
    assert session_sizes(10, 4, 4) == [4, 2, 2, 2]
    with pytest.raises(ValueError, match="10 classes do not split into 3 equal sessions"):
        session_sizes(10, 3, None)


def test_official_split(fsdd):
    items = load_fsdd(fsdd, "digit").items
    sc = build_scenario(items, ScenarioConfig(num_sessions=5, official_split=True), Seeds())
    assert all(items[i].split == "test" for s in sc.sessions for i in s.test)
    assert sum(len(s.test) for s in sc.sessions) == 300


def test_scenario_write(tmp_path):
    items = _items(4, 5)
    sc = build_scenario(items, ScenarioConfig(num_sessions=2), Seeds())
    sc.write(tmp_path, items)
    rows = (tmp_path / "session_01.csv").read_text().splitlines()
    assert rows[0] == "split,key,label,class_id,path" and len(rows) == 1 + 10
    assert (tmp_path / "class_order.json").exists()


def test_build_dataset_dispatch():
    ds = build_dataset(DataConfig(dataset="synthetic", synthetic_classes=3, synthetic_clips_per_class=2))
    assert len(ds) == 6
    with pytest.raises(ValueError, match="data.root is required"):
        build_dataset(DataConfig(dataset="folder"))
