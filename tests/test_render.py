"""The soundfont renderer: MIDI bytes and GM maps everywhere; with fluidsynth, rendered data sets that
load as NSynth, render identically twice, and run end to end (alone and as a cross-soundfont sequence)."""

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pace.cli import main
from pace.config import validate_config
from pace.data.nsynth import load_nsynth
from pace.data.presets import preset_fields
from pace.data.render import (
    DEFAULT_PROGRAMS,
    SOUNDFONTS,
    RenderSpec,
    _schedule,
    _vlq,
    family_of,
    instrument_str,
    programs_for,
    render_dataset,
)
from pace.runner import Runner

needs_fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None,
                                      reason="the fluidsynth command is not installed (apt-get install fluidsynth)")
PACKAGES = {"fluidr3": "fluid-soundfont-gm", "timgm6mb": "timgm6mb-soundfont"}


def _need(name: str) -> None:
    if not Path(SOUNDFONTS[name]).is_file():
        pytest.skip(f"soundfont {SOUNDFONTS[name]} not installed (Debian package {PACKAGES[name]})")


def test_vlq_and_midi_file():
    assert [_vlq(n) for n in (0, 0x7F, 0x80, 0x3FFF, 0x200000)] == [
        b"\x00", b"\x7f", b"\x81\x00", b"\xff\x7f", b"\x81\x80\x80\x00"]
    spec = RenderSpec("x", [0, 40], pitches=[60], velocities=[100])
    placed, data = _schedule(spec, [(0, 60, 100), (40, 60, 100)])
    assert data[:14] == b"MThd" + struct.pack(">IHHH", 6, 0, 1, 1000)  # type 0, one track, 1000 ticks/quarter
    assert data[14:18] == b"MTrk" and int.from_bytes(data[18:22], "big") == len(data) - 22
    assert data.endswith(b"\x00\xff\x2f\x00")
    assert [n.onset_ms for n in placed] == [100, 2100]  # lead-in, then clip (1 s) + gap (1 s)
    body = data[22:]
    assert body.index(b"\xc0\x28") < body.index(b"\x90\x3c\x64", body.index(b"\xc0\x28"))  # program, then note


def test_gm_family_map_and_instrument_list():
    assert len({family_of(p) for p in DEFAULT_PROGRAMS[:10]}) == 10  # the first ten cover ten families
    assert "vocal" not in {family_of(p) for p in DEFAULT_PROGRAMS} and len(set(DEFAULT_PROGRAMS)) == 40
    assert family_of(52) == "vocal" and instrument_str(0) == "keyboard_acoustic_000"
    assert instrument_str(81) == "synth_lead_synthetic_081" and instrument_str(27) == "guitar_electronic_027"
    with pytest.raises(ValueError, match="120-127 sound effects"):
        family_of(125)
    with pytest.raises(ValueError, match="--instruments must be 1..40"):
        programs_for(41, None)
    assert programs_for(2, [5, 6, 7]) == [5, 6]


@needs_fluidsynth
def test_render_is_nsynth_layout_and_deterministic(tmp_path):
    _need("timgm6mb")
    spec = RenderSpec("timgm6mb", [0, 40, 73], pitches=[60, 67], velocities=[80, 127], seconds=0.5)
    summary = render_dataset(spec, tmp_path / "a")
    assert summary["notes"] == 12 and summary["silent_dropped"] == [] and summary["clipped"] == 0
    ex = json.loads((tmp_path / "a" / "examples.json").read_text())
    e = ex["string_acoustic_040-067-127"]
    assert (e["pitch"], e["velocity"], e["instrument_family_str"], e["sample_rate"]) == (67, 127, "string", 16000)
    assert e["gm_name"] == "Violin" and e["instrument_family"] == 8
    info = sf.info(str(tmp_path / "a" / "audio" / "string_acoustic_040-067-127.wav"))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 8000, "PCM_16")
    ds = load_nsynth(tmp_path / "a", "instrument")
    assert ds.class_counts() == {"flute_acoustic_073": 4, "keyboard_acoustic_000": 4, "string_acoustic_040": 4}
    loud = ds.waveform(ds.items[0]).abs().max().item()
    assert 0.01 < loud <= 1.0
    render_dataset(spec, tmp_path / "b")
    for f in sorted((tmp_path / "a").rglob("*")):
        if f.is_file():
            assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f.name
    with pytest.raises(FileExistsError, match="--overwrite"):
        render_dataset(spec, tmp_path / "a")


@needs_fluidsynth
def test_cli_render_then_pace_run(tmp_path, capsys):
    _need("timgm6mb")
    out = tmp_path / "inst"
    assert main(["data", "render", "--soundfont", "timgm6mb", "--out", str(out), "--instruments", "4",
                 "--pitches", "55,60,64", "--velocities", "70,100,127", "--seconds", "0.5"]) == 0
    assert "36 notes of 4 instruments from TimGM6mb.sf2" in capsys.readouterr().out
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"name: rendered\ndata: {{dataset: nsynth, root: {out}, label: instrument}}\n"
                   "scenario: {num_sessions: 2, test_fraction: 0.5}\n"
                   "backbone: {name: logmel-stats, target_frames: 48}\n"
                   "method: {name: ranpac, fsa: {enabled: false}, analytic: {proj_dim: 2048}}\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # RanPAC on logmel-stats, 16 test clips (6.25 points each); measured 100 % on seeds 0, 1 and 2 (nearest
    # class mean on the same features: 38-69 %). Floor 75 %: 4 clips of margin, 3x chance.
    chance, floor = 100 / 4, 75.0
    assert m["last_accuracy"] >= floor, f"last accuracy {m['last_accuracy']:.1f} % < {floor} % (chance {chance} %)"
    assert main(["data", "render", "--soundfont", str(tmp_path / "none.sf2"), "--out", str(out)]) == 2
    assert "soundfont not found" in capsys.readouterr().err


@needs_fluidsynth
def test_cross_soundfont_sequence_runs(tmp_path):
    _need("timgm6mb")
    _need("fluidr3")
    for name in ("fluidr3", "timgm6mb"):
        # 12 notes per instrument (4 left too few to learn soundfont-specific classes from)
        render_dataset(RenderSpec(name, programs_for(4, None), pitches=[55, 60, 64, 67], velocities=[80, 100, 127],
                                  seconds=0.5), tmp_path / name)
    # the same note from the two soundfonts: a real domain shift, not a copy
    a, _ = sf.read(str(tmp_path / "fluidr3" / "audio" / "keyboard_acoustic_000-064-127.wav"))
    b, _ = sf.read(str(tmp_path / "timgm6mb" / "audio" / "keyboard_acoustic_000-064-127.wav"))
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.95
    data, scen = preset_fields("cross-soundfont", tmp_path)
    for part in data["parts"]:
        part["num_sessions"] = 2  # 4 rendered instruments per soundfont instead of the preset's 20
    raw = {"name": "xsf", "data": data, "scenario": {**scen, "num_sessions": 4},
           "backbone": {"name": "logmel-stats", "target_frames": 48},
           "method": {"name": "ranpac", "fsa": {"enabled": False}, "analytic": {"proj_dim": 2048}},
           "runtime": {"progress": False}}
    final = Runner(validate_config(raw), tmp_path / "run").run()
    order = json.loads((tmp_path / "run" / "splits" / "class_order.json").read_text())
    parts = [{c.split(":")[0] for c in s["classes"]} for s in order["sessions"]]
    assert parts == [{"fluidr3"}] * 2 + [{"timgm6mb"}] * 2
    # 8 classes (instrument x soundfont), 16 test clips: measured 100 % on seeds 0-5 (RanPAC and ACL alike);
    # the floor, 75 %, is 4 clips below that and 6x chance
    chance, floor = 100 / 8, 75.0
    assert len(final["accuracy_per_session"]) == 4 and final["test_sizes"] == [4, 4, 4, 4]
    assert final["last_accuracy"] >= floor, (
        f"last accuracy {final['last_accuracy']:.1f} % < {floor} % (chance {chance} %)")
