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


@pytest.mark.parametrize("method,path,expected", [
    # RanPAC's FSA trains at lr 0.01 (its preset), not TrainConfig's generic 0.05
    ({"name": "ranpac", "fsa": {"train": {"epochs": 10}}}, "fsa.train", {"epochs": 10, "lr": 0.01}),
    # CODA-Prompt's own optimiser (lr 1e-3, no batch scaling, cosine, no clipping), not L2P's
    ({"name": "codaprompt", "train": {"epochs": 5}}, "train",
     {"epochs": 5, "lr": 1e-3, "scale_lr_by_batch": False, "schedule": "cosine", "clip_grad": None}),
    ({"name": "hideprompt", "train": {"epochs": 5}}, "train", {"epochs": 5, "head_lr_factor": 0.1}),
    # ACL's recursive head with a fixed lam survives a changed projection size
    ({"name": "acl", "analytic": {"proj_dim": 256}}, "analytic",
     {"proj_dim": 256, "form": "recursive", "ridge": "fixed", "lam": 1.0}),
    # an explicit value still wins, and an unset switch keeps the method's own default
    ({"name": "ranpac", "fsa": {"train": {"epochs": 3, "lr": 0.2}}}, "fsa.train", {"epochs": 3, "lr": 0.2}),
    ({"name": "simplecil", "fsa": {"train": {"epochs": 1}}}, "fsa", {"enabled": False}),
])
def test_a_partial_section_keeps_the_methods_preset_defaults(method, path, expected):
    cfg = validate_config({"name": "x", "method": method})
    section = cfg.method
    for part in path.split("."):
        section = getattr(section, part)
    assert {k: getattr(section, k) for k in expected} == expected
    # the resolved config round-trips to the same values
    assert validate_config(cfg.to_dict()).to_dict() == cfg.to_dict()
