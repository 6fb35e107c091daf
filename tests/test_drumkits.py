"""Hydrogen drum kits: drumkit.xml parsing on hand-made kits, and the installed Debian package."""

import numpy as np
import pytest
import soundfile as sf

from pace.config import DataConfig
from pace.data.datasets import build_dataset
from pace.data.drumkits import DEFAULT_ROOT, load_drumkits

NEW = """<?xml version="1.0" encoding="UTF-8"?>
<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit"><name>A</name><instrumentList>
 <instrument><id>0</id><name>Kick</name>
  <layer><filename>k1.wav</filename></layer><layer><filename>k2.wav</filename></layer>
  <layer><filename>k3.wav</filename></layer><layer><filename>k1.wav</filename></layer></instrument>
 <instrument><id>1</id><name>Snare</name>
  <layer><filename>s1.wav</filename></layer><layer><filename>s2.wav</filename></layer>
  <layer><filename>missing.wav</filename></layer><layer><filename>s3.wav</filename></layer></instrument>
 <instrument><id>2</id><name>Snare</name>
  <layer><filename>t1.wav</filename></layer><layer><filename>t2.wav</filename></layer>
  <layer><filename>t3.wav</filename></layer></instrument>
 <instrument><id>3</id><name>Tom</name>
  <layer><filename>u1.wav</filename></layer><layer><filename>u2.wav</filename></layer>
  <layer><filename>k2.wav</filename></layer></instrument>
</instrumentList></drumkit_info>"""
OLD = """<drumkit_info><name>B</name><instrumentList>
 <instrument><id>0</id><filename>k1.wav</filename><name>Kick</name></instrument>
</instrumentList></drumkit_info>"""


def _kit(root, name, xml, files):
    d = root / name
    d.mkdir()
    (d / "drumkit.xml").write_text(xml)
    for i, f in enumerate(files):
        sf.write(d / f, 0.1 * np.sin(np.arange(8000) * (0.01 + 0.001 * i)).astype("float32"), 16000)


def test_kits_parse_layers_namespaces_duplicates_and_missing_files(tmp_path):
    _kit(tmp_path, "A", NEW, ["k1.wav", "k2.wav", "k3.wav", "s1.wav", "s2.wav", "s3.wav", "t1.wav", "t2.wav",
                              "t3.wav", "u1.wav", "u2.wav"])
    _kit(tmp_path, "B", OLD, ["k1.wav"])
    ds = load_drumkits(tmp_path)
    # Kick: k1..k3 (k1 listed twice counts once); Snare: missing file skipped; the second "Snare"
    # keeps its own class; Tom has 2 own files (k2 belongs to Kick) < 3: dropped; kit B: 1 clip: dropped
    assert ds.class_counts() == {"A:Kick": 3, "A:Snare": 3, "A:Snare #2": 3}
    assert [it.key for it in ds.items if it.label == "A:Kick"] == ["A/k1.wav", "A/k2.wav", "A/k3.wav"]
    assert load_drumkits(tmp_path, label="instrument").class_counts() == {"Kick": 3, "Snare": 3, "Snare #2": 3}
    assert load_drumkits(tmp_path, min_clips=1).class_counts()["B:Kick"] == 1
    w = ds.waveform(ds.items[0])
    assert w.dim() == 1 and w.numel() == 8000
    # through the run config, like every data set
    assert build_dataset(DataConfig(dataset="drumkits", root=str(tmp_path))).class_counts() == ds.class_counts()


def test_errors_name_the_root_and_the_label(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_drumkits(tmp_path)
    with pytest.raises(ValueError, match="kit_instrument"):
        load_drumkits(tmp_path, label="velocity")
    (tmp_path / "K").mkdir()
    (tmp_path / "K" / "drumkit.xml").write_text("<drumkit_info><unclosed>")
    with pytest.raises(ValueError, match="drumkit.xml: not valid XML"):
        load_drumkits(tmp_path)


@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="Debian hydrogen-drumkits is not installed")
def test_installed_package_gives_the_preset_benchmark():
    ds = build_dataset(DataConfig(dataset="drumkits"))  # root defaults to the installed package
    counts = ds.class_counts()
    assert len(counts) >= 50 and min(counts.values()) >= 3
    assert len({label.split(":")[0] for label in counts}) >= 5  # several kits
    w = ds.waveform(ds.items[0])  # FLAC, stereo in some kits: mono 16 kHz out
    assert w.dim() == 1 and w.numel() > 400 and float(w.abs().max()) > 0
