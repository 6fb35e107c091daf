import pytest
import yaml

from pace.config import ConfigError, load_config, validate_config

BASE = {"name": "t", "data": {"dataset": "synthetic"}, "method": {"name": "simplecil"}}


def test_valid_config_round_trips(tmp_path):
    cfg = validate_config(BASE)
    assert cfg.method.name == "simplecil" and cfg.scenario.num_sessions == 5
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(path).to_dict() == cfg.to_dict()


def test_unknown_key_names_path_and_suggests():
    raw = {**BASE, "scenario": {"num_sesions": 3}}
    with pytest.raises(ConfigError, match=r"unknown key 'scenario.num_sesions'; did you mean 'num_sessions'\?"):
        validate_config(raw, "x.yaml")
    with pytest.raises(ConfigError, match=r"unknown key 'sceanrio'; did you mean 'scenario'\?"):
        validate_config({**BASE, "sceanrio": {}})


def test_unknown_method_field_and_method_name():
    with pytest.raises(ConfigError, match=r"unknown method 'simplcil'; did you mean 'simplecil'"):
        validate_config({**BASE, "method": {"name": "simplcil"}})
    with pytest.raises(ConfigError, match=r"unknown key 'method.bogus'"):
        validate_config({**BASE, "method": {"name": "simplecil", "bogus": 1}})


def test_bad_value_names_field():
    with pytest.raises(ConfigError, match=r"scenario.test_fraction: .*less than 1"):
        validate_config({**BASE, "scenario": {"test_fraction": 1.5}})


def test_overrides_and_spec_base(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    cfg = load_config(path, {"scenario.num_sessions": 2, "seeds.init": 7})
    assert cfg.scenario.num_sessions == 2 and cfg.seeds.init == 7
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"base": BASE, "search": {}}))
    assert load_config(spec).name == "t"


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
