"""Backbone-keyed method defaults: applied only where the config is silent, with their source."""

import pytest
import yaml

from pace.config import ConfigError, apply_backbone_defaults, backbone_defaults, dump_config, validate_config

TABLE = {"whisper-tiny": {
    "pace": {"method.lr_backbone": {"value": 0.01, "source": "study X, val split, 2026-12-01"},
             "method.fsa_epochs": {"value": 7, "source": "study X"}},
    "simplecil": {"method.fsa.train.lr": {"value": 0.2, "source": "hand"}}}}


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "backbones.yaml"
    path.write_text(yaml.safe_dump(TABLE))
    return path


def _raw(method, backbone="whisper-tiny"):
    return {"backbone": {"name": backbone}, "method": method}


def test_applied_only_where_unset_and_recorded(table):
    out = apply_backbone_defaults(_raw({"name": "pace", "fsa_epochs": 3}), table)
    assert out["method"] == {"name": "pace", "fsa_epochs": 3, "lr_backbone": 0.01}  # explicit 3 kept
    assert out["tags"] == {"default.method.lr_backbone": "0.01 (study X, val split, 2026-12-01)"}
    assert apply_backbone_defaults(out, table) == out  # idempotent
    # other backbone or method: nothing
    assert apply_backbone_defaults(_raw({"name": "pace"}, "eat-tiny"), table) == _raw({"name": "pace"}, "eat-tiny")
    assert apply_backbone_defaults(_raw({"name": "ranpac"}), table) == _raw({"name": "ranpac"})


def test_missing_section_keeps_the_methods_own_defaults(table):
    # simplecil's fsa is disabled by default; filling fsa.train.lr must not switch it on
    out = apply_backbone_defaults(_raw({"name": "simplecil"}), table)
    assert out["method"]["fsa"]["enabled"] is False and out["method"]["fsa"]["train"]["lr"] == 0.2


def test_bad_table_is_an_error_naming_the_entry(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"whisper-tiny": {"pace": {"method.lr_backbone": {"value": 0.1}}}}))
    with pytest.raises(ConfigError, match="whisper-tiny.pace.method.lr_backbone needs a 'value' and a 'source'"):
        backbone_defaults("whisper-tiny", "pace", tmp_path / "b.yaml")


def test_shipped_table_is_valid_and_reaches_the_written_config(tmp_path):
    from pace.config import BACKBONE_DEFAULTS

    table = yaml.safe_load(BACKBONE_DEFAULTS.read_text())
    for backbone, methods in table.items():
        for method, entries in methods.items():
            assert backbone_defaults(backbone, method)  # every entry has value and source
            cfg = validate_config(_raw({"name": method}, backbone))
            dump_config(cfg, tmp_path / "config.yaml")
            written = yaml.safe_load((tmp_path / "config.yaml").read_text())
            for key, e in entries.items():
                node = written
                for part in key.split("."):
                    node = node[part]
                assert node == e["value"]
                assert written["tags"][f"default.{key}"].startswith(str(e["value"]))


@pytest.mark.parametrize("name", ["defaults-whisper-tiny-pace", "defaults-whisper-tiny-ranpac"])
def test_shipped_default_searches_use_validation_only(name):
    from pathlib import Path

    from pace.study.spec import load_sweep_spec

    path = Path(__file__).resolve().parents[1] / "sweeps" / f"{name}.yaml"
    load_sweep_spec(path)  # every trial config validates
    spec = yaml.safe_load(path.read_text())
    assert spec["objective"] == "val_last_accuracy" and spec["base"]["scenario"]["val_fraction"] > 0


def test_adaptation_table_spec_validates():
    from pathlib import Path

    from pace.study.spec import load_ablation_spec

    load_ablation_spec(Path(__file__).resolve().parents[1] / "sweeps" / "adaptation_table.yaml")
