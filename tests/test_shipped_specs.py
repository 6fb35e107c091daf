"""Every shipped config, sweep and ablation spec validates, trial by trial, before anyone launches it."""

from pathlib import Path

import pytest

from pace.config import load_config
from pace.study.spec import load_ablation_spec, load_sweep_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_run_configs_validate(path):
    assert load_config(path).name == path.stem


@pytest.mark.parametrize("path", sorted((REPO / "ablations").glob("*.yaml")), ids=lambda p: p.name)
def test_ablation_specs_validate(path):
    load_ablation_spec(path)  # validates every variant x benchmark x seed config


def test_sweep_specs_validate():
    load_sweep_spec(REPO / "sweeps" / "quickstart.yaml")
    load_ablation_spec(REPO / "sweeps" / "paper_table2.yaml")


def test_pace_run_accepts_a_spec_base():
    assert load_config(REPO / "ablations" / "table4_components.yaml").method.name == "pace"
