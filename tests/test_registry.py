"""The one extension mechanism: registries of methods, backbones and data sets."""

from __future__ import annotations

import sys
import textwrap

import pytest

from pace.config import DataConfig, validate_config
from pace.registry import BACKBONES, DATASETS, METHODS, Registry, RegistryError

# A whole data set in one file: its loader, its labels and a preset (docs/data.md shows the same).
TONES_MODULE = '''
import math

import torch

from pace.data.datasets import AudioDataset, Item, dataset
from pace.data.presets import Preset


@dataset("tones", summary="pure tones, one pitch per class", labels=("pitch",), root="unused",
         presets=(Preset("tones-3", "three pitches in 3 sessions of 1", {}, {"num_sessions": 3}, 3, 6, True),))
def load_tones(cfg) -> AudioDataset:
    items = [Item(key=f"{c}-{i}", label=f"{220 * 2 ** c}Hz") for c in range(3) for i in range(6)]

    def wave(item: Item) -> torch.Tensor:
        c, i = map(int, item.key.split("-"))
        t = torch.arange(16000) / 16000
        return torch.sin(2 * math.pi * (220 * 2 ** c) * t + i)

    return AudioDataset("tones", items, loader=wave)
'''


def _plugin(tmp_path, monkeypatch, group: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """Install an extension package the way pip would (a dist-info with entry points) under tmp_path."""
    for name, text in modules.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    info = tmp_path / "pace_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pace-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in modules:
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.fixture
def fresh_datasets(monkeypatch):
    """DATASETS as if nothing had been looked up yet, restored afterwards."""
    DATASETS.names()
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))
    monkeypatch.setattr(DATASETS, "_state", "empty")
    return DATASETS


def test_builtin_kinds_are_registered():
    assert {"pace", "ranpac", "simplecil", "hideprompt"} <= set(METHODS.names())
    assert {"whisper-tiny", "eat-base", "logmel-stats"} <= set(BACKBONES.names())
    assert {"fsdd", "synthetic", "drumkits", "sequence", "folder", "manifest"} <= set(DATASETS.names())
    # every method's learner carries its config class, whose name field is the registered name
    for name, learner in METHODS.items():
        assert learner.config_cls.model_fields["name"].default == name


def test_unknown_names_say_what_is_known():
    with pytest.raises(RegistryError, match=r"unknown data set 'fsd'; did you mean 'fsdd'\?.*known: .*synthetic"):
        DATASETS.get("fsd")
    with pytest.raises(RegistryError, match=r"unknown method 'ranpack'; did you mean 'ranpac'\?"):
        METHODS.get("ranpack")
    with pytest.raises(ValueError, match="unknown data set 'fsd'"):
        DataConfig(dataset="fsd")


def test_a_name_registered_twice_is_an_error():
    reg: Registry = Registry("thing", "pace.methods", "pace.no-such-group")
    reg.add("a", 1)
    with pytest.raises(RegistryError, match="thing 'a' registered twice"):
        reg.add("a", 2)


def test_a_data_set_in_one_file_runs_end_to_end(tmp_path, monkeypatch, fresh_datasets):
    from pace.data.presets import PRESETS, preset_fields
    from pace.runner import Runner

    _plugin(tmp_path, monkeypatch, "pace.datasets", {"tones": "tones_plugin"}, {"tones_plugin": TONES_MODULE})
    assert "tones" in DATASETS.names()
    assert "tones-3" in PRESETS and preset_fields("tones-3")[0] == {"dataset": "tones"}
    cfg = validate_config({"name": "tones", "data": {"dataset": "tones"}, "scenario": {"num_sessions": 3},
                           "backbone": {"name": "logmel-stats"}, "method": {"name": "simplecil"},
                           "runtime": {"progress": False, "use_cache": False}})
    final = Runner(cfg, tmp_path / "run").run()
    # three octaves apart: a class-mean classifier on log-mel statistics separates them fully
    assert final["last_accuracy"] == 100.0


def test_an_extension_that_does_not_import_is_an_error(tmp_path, monkeypatch, fresh_datasets):
    _plugin(tmp_path, monkeypatch, "pace.datasets", {"mine": "tones_plugn"}, {"tones_plugin": TONES_MODULE})
    with pytest.raises(RegistryError, match=r"data set extension 'mine' \(entry point 'tones_plugn'.*does not import"):
        DATASETS.names()
    # nothing half-loaded stays behind: the next lookup tries again and says the same
    with pytest.raises(RegistryError, match="does not import"):
        DATASETS.get("fsdd")
