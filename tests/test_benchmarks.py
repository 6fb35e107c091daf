"""Benchmark loaders on fixture trees written in each data set's real layout, presets, sequences.

Fixture audio is a tiny tone per class (0.05-0.1 s), written once as bytes and copied, so full-size
trees (ESC-50's 2,000 clips, TIMIT's 6,300 utterances) cost well under a second.
"""

import csv
import io
import json
import os

import numpy as np
import pytest
import soundfile as sf

from pace.cli import main
from pace.config import DataConfig, ScenarioConfig, Seeds, validate_config
from pace.data.datasets import build_dataset
from pace.data.esc50 import load_esc50
from pace.data.nsynth import FAMILIES, load_nsynth
from pace.data.presets import PRESETS, nominal_sessions, preset_configs, preset_fields
from pace.data.scenario import build_scenario
from pace.data.speechcommands import WORDS, load_speechcommands
from pace.data.timit import load_timit
from pace.data.us8k import load_us8k
from pace.data.vocalset import TECHNIQUES, TECHNIQUES_ALL, load_vocalset
from pace.runner import Runner

ESC50 = ["dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow", "rain", "sea_waves",
         "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind", "pouring_water", "toilet_flush",
         "thunderstorm", "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing",
         "brushing_teeth", "snoring", "drinking_sipping", "door_wood_knock", "mouse_click", "keyboard_typing",
         "door_wood_creaks", "can_opening", "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick",
         "glass_breaking", "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells",
         "airplane", "fireworks", "hand_saw"]
ESC10 = {"dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "sneezing", "clock_tick",
         "helicopter", "chainsaw"}
US8K = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling", "engine_idling", "gun_shot",
        "jackhammer", "siren", "street_music"]
US8K_COUNTS = [10, 5, 10, 10, 10, 10, 4, 10, 9, 10]  # the real 1000/429/.../929 proportions, scaled down


def _blob(c: int, fmt: str = "WAV", sr: int = 8000, seconds: float = 0.1) -> bytes:
    """A short tone whose pitch and noise depend on ``c`` (so classes are learnable), as file bytes."""
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(c)
    x = 0.4 * np.sin(2 * np.pi * (150 + 37 * (c % 60)) * t) + 0.05 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), sr, format=fmt, subtype="PCM_16")
    return buf.getvalue()


_FIRST: dict[bytes, object] = {}  # file content -> the first path written with it


def _put(path, data: bytes) -> None:
    """Write ``data`` to ``path``; repeated content becomes a hard link (fixture trees of thousands of
    files then cost milliseconds). Tests that damage a file use ``_replace`` so links stay intact."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True)
    first = _FIRST.get(data)
    if first is not None:
        try:
            os.link(first, path)
            return
        except OSError:
            pass  # first copy gone or another file system: write it out
    path.write_bytes(data)
    _FIRST[data] = path


def _replace(path, data: bytes) -> None:
    path.unlink(missing_ok=True)  # break the hard link before writing
    path.write_bytes(data)


def _write_csv(path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# ---------------------------------------------------------------- fixture trees (official layouts)


def write_esc50(root, per_class=40):
    rows = []
    for target, cat in enumerate(ESC50):
        blob = _blob(target)
        for i in range(per_class):
            fold, src, take = i % 5 + 1, 100000 + 100 * target + i // 2, "AB"[i % 2]
            name = f"{fold}-{src}-{take}-{target}.wav"
            _put(root / "audio" / name, blob)
            rows.append([name, fold, target, cat, str(cat in ESC10), src, take])
    header = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    _write_csv(root / "meta" / "esc50.csv", header, rows)
    return root


def write_us8k(root):
    rows = []
    for cid, (cls, n) in enumerate(zip(US8K, US8K_COUNTS)):
        blob = _blob(cid, sr=22050)
        for i in range(n):
            fold, fsid = i % 10 + 1, 1000 + 10 * cid + i
            name = f"{fsid}-{cid}-0-{i}.wav"
            _put(root / "audio" / f"fold{fold}" / name, blob)
            rows.append([name, fsid, 0.0, 0.1, 1, fold, cid, cls])
    _write_csv(root / "metadata" / "UrbanSound8K.csv",
               ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"], rows)
    return root


def write_sc2(root, per_word=5):
    test, val = [], []
    for w, word in enumerate(WORDS):
        blob = _blob(w, sr=16000)
        for i in range(per_word):
            rel = f"{word}/{0x1000abc + 7919 * i:08x}_nohash_{i % 2}.wav"
            _put(root / rel, blob)
            (test if i == 0 else val if i == 1 else []).append(rel)
    _put(root / "_background_noise_" / "white_noise.wav", _blob(99, sr=16000, seconds=1.0))
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "LICENSE").write_text("CC BY 4.0\n")
    return root


def timit_speakers(n_train=462, n_test=168):
    """(set, DR, speaker) for n speakers spread over DR1..DR8 (TIMIT's 462 train + 168 test by default)."""
    out = []
    for j, part in enumerate(["TRAIN"] * n_train + ["TEST"] * n_test):
        initials = "".join(chr(65 + (j // 26 ** k) % 26) for k in (2, 1, 0))  # unique per speaker
        out.append((part, f"DR{j % 8 + 1}", f"{'FM'[j % 2]}{initials}{j % 10}"))
    return out


UTTERANCES = ["SA1", "SA2", "SI1027", "SI1657", "SI648", "SX127", "SX217", "SX307", "SX37", "SX397"]


def write_timit(root, speakers, lower_every=3, lower_top=False):
    for s, (part, dr, spk) in enumerate(speakers):
        blob = _blob(s, fmt="NIST", sr=16000, seconds=0.05)
        # copies differ in letter case: lower-case every third speaker's folders and files
        lower = lower_every and s % lower_every == 0
        top = part.lower() if lower_top else part
        d = root / top / (dr.lower() if lower else dr) / (spk.lower() if lower else spk)
        for u in UTTERANCES:
            _put(d / (f"{u.lower()}.wav" if lower else f"{u}.WAV"), blob)
        _put(d / "SA1.PHN", b"0 3050 h#\n")
    return root


def write_vocalset(root, singers=("f1", "m2", "m3")):
    context_of = {t: ("arpeggios", "scales", "long_tones", "excerpts")[i % 4] for i, t in enumerate(TECHNIQUES_ALL)}
    for s, singer in enumerate(singers):
        for t, tech in enumerate(TECHNIQUES_ALL):
            ctx = context_of[tech]
            blob = _blob(t, sr=44100)
            for vowel in ("a", "e"):
                name = f"{singer}_{ctx}_{tech}_{vowel}.wav"
                if (s, t, vowel) == (0, 3, "a"):
                    name = f"{ctx}_{tech}_{vowel}.wav"  # some shipped files lack the singer prefix
                _put(root / "FULL" / singer / ctx / tech / name, blob)
        (root / "FULL" / singer / ".DS_Store").write_bytes(b"\0")
    (root / "__MACOSX").mkdir(exist_ok=True)
    (root / "train_singers_technique.txt").write_text("female1\nmale2\n")
    (root / "test_singers_technique.txt").write_text("male3\n")
    return root


def write_nsynth(root, instruments_per_family=6, vocal_instruments=2, pitches=(60, 64), velocities=(75, 127)):
    """An ``nsynth-test``-style folder: examples.json keyed by note_str + audio/."""
    examples, note = {}, 0
    for f, fam in enumerate(FAMILIES):
        n_inst = vocal_instruments if fam == "vocal" else instruments_per_family
        for k in range(n_inst):
            src = ("acoustic", "electronic", "synthetic")[k % 3]
            inst = f"{fam}_{src}_{k:03d}"
            blob = _blob(f * 10 + k, sr=16000)
            for p in pitches:
                for v in velocities:
                    key = f"{inst}-{p:03d}-{v:03d}"
                    _put(root / "audio" / f"{key}.wav", blob)
                    examples[key] = {"note": note, "note_str": key, "instrument": f * 100 + k,
                                     "instrument_str": inst, "pitch": p, "velocity": v, "sample_rate": 16000,
                                     "qualities": [0] * 10, "qualities_str": [], "instrument_family": f,
                                     "instrument_family_str": fam, "instrument_source": k % 3,
                                     "instrument_source_str": src}
                    note += 1
    (root / "examples.json").write_text(json.dumps(examples))
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    return {
        "esc50": write_esc50(base / "esc50"),
        "us8k": write_us8k(base / "us8k"),
        "sc2": write_sc2(base / "sc2"),
        "timit": write_timit(base / "timit", timit_speakers()),
        "vocalset": write_vocalset(base / "vocalset"),
        "nsynth": write_nsynth(base / "nsynth" / "nsynth-test"),
    }


# ---------------------------------------------------------------- presets on the fixture trees


def _check_sessions(name, root, counts):
    """The preset builds from ``root``: its class counts, classes per session and 8:2 clip counts."""
    data, scen = preset_configs(name, root)
    ds = build_dataset(data)
    assert ds.class_counts() == dict(sorted(counts.items()))
    sc = build_scenario(ds.items, scen, Seeds())
    want = [row[0] for row in nominal_sessions(name)]
    assert [len(s.classes) for s in sc.sessions] == want
    for s in sc.sessions:
        labels = [sc.class_order[c] for c in s.classes]
        n_test = sum(min(max(1, round(0.2 * counts[lab])), counts[lab] - 1) for lab in labels)
        assert len(s.test) == n_test and len(s.train) == sum(counts[lab] for lab in labels) - n_test
        assert {ds.items[i].label for i in s.train + s.test} == set(labels)
    return ds, sc


def test_esc50_and_esc10(trees):
    ds, sc = _check_sessions("esc50", trees["esc50"], {c: 40 for c in ESC50})
    assert all((len(s.train), len(s.test)) == (160, 40) for s in sc.sessions)  # the paper's 10 x 5
    _, sc10 = _check_sessions("esc10", trees["esc50"], {c: 40 for c in ESC10})
    assert all((len(s.train), len(s.test)) == (64, 16) for s in sc10.sessions)
    assert ds.waveform(ds.items[0]).numel() == 1600  # 0.1 s resampled to 16 kHz


def test_us8k(trees):
    ds, _ = _check_sessions("us8k", trees["us8k"], dict(zip(US8K, US8K_COUNTS)))
    assert ds.items[0].key.startswith("fold") and ds.waveform(ds.items[0]).numel() == 1600  # 22.05 kHz in


def test_speechcommands_official_lists(trees):
    ds, _ = _check_sessions("sc2", trees["sc2"], {w: 5 for w in WORDS})
    assert not any("_background_noise_" in it.key for it in ds.items)
    splits = [it.split for it in ds.items]
    assert splits.count("test") == 35 and splits.count("val") == 35 and splits.count("train") == 105
    _, scen = preset_configs("sc2", trees["sc2"])
    scen.official_split = True
    sc = build_scenario(ds.items, scen, Seeds())
    assert all(ds.items[i].split == "test" for s in sc.sessions for i in s.test)
    assert all(len(s.test) == 5 and len(s.val) == 5 and len(s.train) == 15 for s in sc.sessions)


@pytest.mark.parametrize("preset,size", [("timit2", 2), ("timit3", 3)])
def test_timit_full_speaker_count(trees, preset, size):
    ds, sc = _check_sessions(preset, trees["timit"], {spk: 10 for _, _, spk in timit_speakers()})
    assert len(sc.sessions) == 630 // size
    assert all((len(s.train), len(s.test)) == (8 * size, 2 * size) for s in sc.sessions)
    keys = {it.key for it in ds.items}
    assert "TRAIN/DR1/FAAA0/SA1" in keys and "TEST/DR7/FARU2/SX37" in keys  # lower-case copies get the canonical key
    assert ds.waveform(ds.items[0]).numel() == 800  # NIST SPHERE read by soundfile


def test_timit_case_variants_and_dialect(tmp_path):
    root = write_timit(tmp_path / "copy" / "TIMIT", timit_speakers(8, 8), lower_every=1, lower_top=True)
    _replace(root / "train" / "dr1" / "faaa0" / "SA1.WAV.wav", _blob(0))  # converted copy beside it
    ds = load_timit(tmp_path / "copy")  # the root may hold a TIMIT/ folder
    assert len(ds) == 160 and len(ds.labels) == 16
    assert len(load_timit(root, label="dialect").labels) == 8


def test_vocalset_16_techniques(trees):
    ds, sc = _check_sessions("vocalset", trees["vocalset"], {t: 6 for t in TECHNIQUES})
    assert "spoken" not in ds.labels and len(TECHNIQUES) == 16
    assert all((len(s.train), len(s.test)) == (10, 2) for s in sc.sessions)
    assert {it.split for it in ds.items} == {"train", "test"}  # from the shipped singer lists
    assert sum(it.split == "test" for it in ds.items) == 32  # m3: 16 techniques x 2 vowels
    assert len(load_vocalset(trees["vocalset"], "technique_all").labels) == 17
    assert load_vocalset(trees["vocalset"] / "FULL", "singer").labels == ["f1", "m2", "m3"]


def test_nsynth_family_and_nonvocal_instruments(trees):
    root = trees["nsynth"]
    fam_counts = {f: (8 if f == "vocal" else 24) for f in FAMILIES}
    _check_sessions("nsynth-family", root, fam_counts)
    inst = load_nsynth(root, "instrument", subset="nonvocal")
    assert len(inst.labels) == 60 and not any(lab.startswith("vocal") for lab in inst.labels)
    data, scen = preset_configs("nsynth-instrument", root)
    sc = build_scenario(build_dataset(data).items, scen, Seeds())
    assert len(sc.sessions) == 10 and all(len(s.classes) == 5 and len(s.test) == 5 for s in sc.sessions)
    assert set(load_nsynth(root, "source", subset="acoustic+nonvocal").labels) == {"acoustic"}
    # a folder of split folders: Item.split from the folder name
    multi = load_nsynth(root.parent)
    assert {it.split for it in multi.items} == {"test"} and multi.items[0].key.startswith("nsynth-test/")


def test_nominal_preset_arithmetic():
    """The paper's numbers from the presets alone (no data): sizes, 8:2 and the N_stop cross-check."""
    expect = {"esc50": (10, 5, 160, 40), "esc10": (5, 2, 64, 16), "timit2": (315, 2, 16, 4),
              "timit3": (210, 3, 24, 6), "fsdd-digits": (5, 2, 480, 120), "fsdd-fine": (10, 6, 240, 60),
              "rendered-instruments": (5, 4, 104, 24)}
    for name, (n, k, train, test) in expect.items():
        rows = nominal_sessions(name)
        assert len(rows) == n and all(r[:3] == (k, train, test) and r[3] for r in rows), name
    shape = {"us8k": (5, 2), "sc2": (7, 5), "vocalset": (8, 2), "nsynth-instrument": (10, 5)}
    for name, (n, k) in shape.items():
        assert [r[0] for r in nominal_sessions(name)] == [k] * n, name
    assert [r[0] for r in nominal_sessions("nsynth-family")] == [3, 2, 2, 2, 2]
    assert sum(r[0] for r in nominal_sessions("esc50-us8k-sc2")) == 95
    assert len(nominal_sessions("cross-soundfont")) == 10
    # N_stop = 220 cumulative training clips: T_3 is the first session past it (pace_method.md 1.3)
    t3 = lambda name: next(t for t in range(1, 400) if t * nominal_sessions(name)[0][1] > 220)  # noqa: E731
    assert (t3("timit2"), t3("timit3")) == (14, 10)
    assert abs(nominal_sessions("vocalset")[0][2] - 38) < 1  # Fig. 9: 38 test clips per session
    for name in PRESETS:  # every preset gives a valid config
        preset_configs(name, "/data")


# ---------------------------------------------------------------- malformed trees


def _rewrite_csv(path, edit):
    rows = list(csv.reader(path.open()))
    rows = edit(rows)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.fixture
def small_esc(tmp_path):
    return write_esc50(tmp_path / "esc", per_class=2)


def test_esc50_errors_name_file_row_column(small_esc):
    meta = small_esc / "meta" / "esc50.csv"
    original = meta.read_text()
    _rewrite_csv(meta, lambda rows: [r[:3] + r[4:] for r in rows])  # drop 'category'
    with pytest.raises(ValueError, match=r"esc50.csv: missing column\(s\) \['category'\]"):
        load_esc50(small_esc)
    meta.write_text(original)
    (small_esc / "audio" / "1-100000-A-0.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"esc50.csv:2: audio file .*1-100000-A-0.wav is missing"):
        load_esc50(small_esc)
    _put(small_esc / "audio" / "1-100000-A-0.wav", _blob(0))
    _rewrite_csv(meta, lambda rows: rows[:3] + [rows[3][:3] + ["dog"] + rows[3][4:]] + rows[4:])
    with pytest.raises(ValueError, match=r"esc50.csv:4: category 'dog' has target 1 here but 0 earlier"):
        load_esc50(small_esc)
    meta.write_text(original)
    _rewrite_csv(meta, lambda rows: rows[:2] + [rows[2][:2] + ["57"] + rows[2][3:]] + rows[3:])
    with pytest.raises(ValueError, match=r"esc50.csv:3: column 'target' = 57 is outside 0..49"):
        load_esc50(small_esc)
    meta.write_text(original)
    _rewrite_csv(meta, lambda rows: rows[:2] + [rows[2][:2] + ["3"] + rows[2][3:]] + rows[3:])
    with pytest.raises(ValueError, match=r"esc50.csv:3: file name '2-100000-B-0.wav' says target '0'"):
        load_esc50(small_esc)


def test_us8k_errors(tmp_path):
    root = write_us8k(tmp_path / "u")
    meta = root / "metadata" / "UrbanSound8K.csv"
    original = meta.read_text()
    _rewrite_csv(meta, lambda rows: rows[:2] + [rows[2][:6] + ["12"] + rows[2][7:]] + rows[3:])
    with pytest.raises(ValueError, match=r"UrbanSound8K.csv:3: column 'classID' = 12 is outside 0..9"):
        load_us8k(root)
    meta.write_text(original)
    _rewrite_csv(meta, lambda rows: rows[:2] + [rows[2][:5] + ["3"] + rows[2][6:]] + rows[3:])  # wrong fold
    with pytest.raises(FileNotFoundError, match=r"UrbanSound8K.csv:3: audio file .*fold3.* is missing"):
        load_us8k(root)
    meta.write_text(original)
    _rewrite_csv(meta, lambda rows: [r[:7] for r in rows])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['class'\]"):
        load_us8k(root)


def test_speechcommands_errors(tmp_path):
    root = write_sc2(tmp_path / "s", per_word=3)
    lst = root / "testing_list.txt"
    lst.write_text(lst.read_text() + "yes/deadbeef_nohash_0.wav\n")
    with pytest.raises(FileNotFoundError, match=r"testing_list.txt:36: listed clip 'yes/deadbeef_nohash_0.wav'"):
        load_speechcommands(root)
    lst.unlink()
    with pytest.raises(FileNotFoundError, match="split list .*testing_list.txt is missing"):
        load_speechcommands(root)
    root = write_sc2(tmp_path / "s2", per_word=3)
    _put(root / "hello" / "0_nohash_0.wav", _blob(1))
    with pytest.raises(ValueError, match=r"hello: folder is not one of the 35"):
        load_speechcommands(root)


def test_timit_errors(tmp_path):
    root = write_timit(tmp_path / "t", timit_speakers(4, 0))
    (root / "TRAIN" / "DR9").mkdir()
    with pytest.raises(ValueError, match=r"DR9: expected dialect-region folders DR1..DR8"):
        load_timit(root)
    with pytest.raises(FileNotFoundError, match="expected TRAIN/ and TEST/"):
        load_timit(tmp_path)


def test_vocalset_errors(tmp_path):
    root = write_vocalset(tmp_path / "v", singers=("f1",))
    _put(root / "FULL" / "f1" / "scales" / "vibratto" / "f1_scales_vibratto_a.wav", _blob(1))
    with pytest.raises(ValueError, match=r"vibratto: unknown technique folder 'vibratto'"):
        load_vocalset(root)


def test_nsynth_errors(tmp_path):
    root = write_nsynth(tmp_path / "n", instruments_per_family=1, vocal_instruments=1)
    meta = root / "examples.json"
    ex = json.loads(meta.read_text())
    key = next(iter(ex))
    broken = {**ex, key: {k: v for k, v in ex[key].items() if k != "instrument_family_str"}}
    meta.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=rf"examples.json: entry '{key}' lacks field\(s\) \['instrument_family_str'\]"):
        load_nsynth(root)
    meta.write_text(json.dumps({**ex, key: {**ex[key], "instrument_family_str": "drums"}}))
    with pytest.raises(ValueError, match=r"unknown instrument_family_str 'drums'"):
        load_nsynth(root)
    meta.write_text(json.dumps(ex))
    (root / "audio" / f"{key}.wav").unlink()
    with pytest.raises(FileNotFoundError, match=rf"entry '{key}': audio file .* is missing"):
        load_nsynth(root)
    with pytest.raises(ValueError, match="subset 'vocalish'"):
        load_nsynth(root, subset="vocalish")


def test_config_rejects_misplaced_fields(small_esc):
    with pytest.raises(ValueError, match="data.subset is only used with esc50"):
        build_dataset(DataConfig(dataset="fsdd", subset="esc10"))
    with pytest.raises(ValueError, match="data.root is required"):
        build_dataset(DataConfig(dataset="timit"))
    with pytest.raises(ValueError, match="needs data.parts"):
        build_dataset(DataConfig(dataset="sequence"))


# ---------------------------------------------------------------- CLI


def test_cli_check_and_describe(trees, tmp_path, capsys):
    assert main(["data", "check", "esc10", "--root", str(trees["esc50"]), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "esc10: 400 clips, 10 classes, 40-40 clips per class" in out and "5 sessions of 2 classes" in out
    timit = write_timit(tmp_path / "t", timit_speakers(8, 8))
    assert main(["data", "check", "timit", "--root", str(timit), "--label", "dialect", "--quiet"]) == 0
    assert "8 classes" in capsys.readouterr().out
    root = write_vocalset(tmp_path / "v", singers=("f1",))
    _replace(root / "FULL" / "f1" / "arpeggios" / "belt" / "f1_arpeggios_belt_a.wav", b"junk" * 10)
    assert main(["data", "check", "vocalset", "--root", str(root), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "bad: f1/arpeggios/belt/f1_arpeggios_belt_a.wav: unreadable audio" in out and "1 bad file(s)" in out
    (root / "FULL" / "f1" / "arpeggios" / "belt" / "f1_arpeggios_belt_a.wav").unlink()
    assert main(["data", "check", "vocalset", "--root", str(root), "--quiet"]) == 1  # 1 clip: no 8:2 split
    assert "sessions do not build" in capsys.readouterr().out
    assert main(["data", "check", "us8k", "--root", str(tmp_path / "none")]) == 2
    assert "UrbanSound8K root" in capsys.readouterr().err

    assert main(["data", "describe", "timit2"]) == 0
    out = capsys.readouterr().out
    assert "315 sessions, 630 classes" in out and "| 1-315   | 2       | 16    | 4    |" in out
    assert main(["data", "describe", "us8k", "--root", str(trees["us8k"])]) == 0
    out = capsys.readouterr().out
    assert "88 clips, 10 classes" in out and "5 sessions, 10 classes" in out
    assert main(["data", "describe"]) == 0
    assert "esc50-us8k-sc2" in capsys.readouterr().out
    assert main(["data", "describe", "esc50", "--yaml", "--root", "/d"]) == 0
    assert "dataset: esc50\n  root: /d\nscenario:\n  num_sessions: 10" in capsys.readouterr().out
    assert main(["data", "describe", "timit4"]) == 2
    assert "unknown preset 'timit4'; did you mean" in capsys.readouterr().err


# ---------------------------------------------------------------- cross-dataset sequences


def _sequence(trees, **part_kw):
    return DataConfig(dataset="sequence", parts=[
        {"name": "esc10", "data": {"dataset": "esc50", "subset": "esc10", "root": str(trees["esc50"]),
                                   "max_per_class": 5}, "num_sessions": 5, **part_kw},
        {"name": "us8k", "data": {"dataset": "us8k", "root": str(trees["us8k"]), "max_per_class": 5},
         "num_sessions": 2},
    ])


def test_sequence_keeps_parts_in_their_own_sessions(trees):
    ds = build_dataset(_sequence(trees))
    assert len(ds.labels) == 20 and "esc10:dog" in ds.labels and "us8k:siren" in ds.labels
    assert ds.waveform(ds.items[0]).numel() == 1600
    sc = build_scenario(ds.items, ScenarioConfig(num_sessions=7), Seeds())
    assert [len(s.classes) for s in sc.sessions] == [2] * 5 + [5] * 2
    part_of = lambda s: {sc.class_order[c].split(":")[0] for c in s.classes}  # noqa: E731
    assert [part_of(s) for s in sc.sessions] == [{"esc10"}] * 5 + [{"us8k"}] * 2
    other = build_scenario(ds.items, ScenarioConfig(num_sessions=7), Seeds(class_order=3))
    assert other.class_order != sc.class_order
    assert set(other.class_order[:10]) == set(sc.class_order[:10])  # shuffled within a part only
    assert sorted(i for s in other.sessions for i in s.test) == sorted(i for s in sc.sessions for i in s.test)
    with pytest.raises(ValueError, match=r"scenario.num_sessions=5 but the sequence parts give 7 sessions "
                                         r"\(esc10 5 \+ us8k 2\)"):
        build_scenario(ds.items, ScenarioConfig(num_sessions=5), Seeds())
    capped = build_dataset(_sequence(trees, max_classes=4, num_sessions=2))
    sc = build_scenario(capped.items, ScenarioConfig(num_sessions=4), Seeds())
    assert [len(s.classes) for s in sc.sessions] == [2, 2, 5, 5] and len(sc.class_order) == 14
    with pytest.raises(ValueError, match=r"data.parts\[1\] \('us8k'\): 10 classes do not split into 3"):
        bad = _sequence(trees)
        bad.parts[1].num_sessions = 3
        build_scenario(build_dataset(bad).items, ScenarioConfig(num_sessions=8), Seeds())


def test_sequence_preset_layout(trees, tmp_path):
    data, scen = preset_fields("esc50-us8k-sc2", tmp_path)
    assert [p["data"]["root"] for p in data["parts"]] == [str(tmp_path / n) for n in ("esc50", "us8k", "sc2")]
    assert scen == {"num_sessions": 22}
    for name in ("esc50", "us8k", "sc2"):
        (tmp_path / name).symlink_to(trees[name])
    counts = {**{f"esc50:{c}": 40 for c in ESC50}, **{f"us8k:{c}": n for c, n in zip(US8K, US8K_COUNTS)},
              **{f"sc2:{w}": 5 for w in WORDS}}
    _, sc = _check_sessions("esc50-us8k-sc2", tmp_path, counts)
    assert len(sc.sessions) == 22


def test_sequence_runs_end_to_end(trees, tmp_path):
    raw = {"name": "seq", "data": _sequence(trees).model_dump(), "scenario": {"num_sessions": 7},
           "backbone": {"name": "logmel-stats", "target_frames": 32}, "method": {"name": "simplecil"},
           "runtime": {"progress": False}}
    cfg = validate_config(raw)
    final = Runner(cfg, tmp_path / "run").run()
    assert len(final["accuracy_per_session"]) == 7
    order = json.loads((tmp_path / "run" / "splits" / "class_order.json").read_text())
    assert all(c.startswith("esc10:") for s in order["sessions"][:5] for c in s["classes"])
    # every clip of a class is the same tone (_blob), so the classes separate exactly: measured 100 % on
    # seeds 0, 1 and 2 over the 20 test clips (5 points each). Floor 75 %: 5 clips of margin, 15x chance.
    chance, floor = 100 / 20, 75.0
    assert final["last_accuracy"] >= floor, (
        f"last accuracy {final['last_accuracy']:.1f} % < {floor} % (chance {chance} %)")
