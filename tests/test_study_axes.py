"""The axes of an ablation spec: per-backbone overrides, exclusions, and the pre-flight refusal check.

Config validation only: nothing is built, no data is read, Ray is not started."""

from pathlib import Path

import pytest

from pace.config import compose
from pace.study import SpecError
from pace.study.spec import AblationSpec, load_ablation_spec, parse

REPO = Path(__file__).resolve().parents[1]

BASE = {"name": "axes", "data": {"dataset": "fsdd", "label": "digit"}, "scenario": {"num_sessions": 2},
        "backbone": {"name": "whisper-tiny"}, "method": {"name": "simplecil"},
        "runtime": {"batch_size": 24, "num_threads": 1, "progress": False}}


def spec(**fields) -> AblationSpec:
    raw = {"name": "axes", "base": BASE, "variants": {"simplecil": {}}, **fields}
    return parse(AblationSpec, raw, "<test>")


def check(s: AblationSpec) -> tuple[list[dict], str]:
    base, note = s.check("<test>")
    return s.trials(base), note


def by_labels(trials: list[dict], **labels) -> list[dict]:
    return [t for t in trials if all(t["labels"][k] == v for k, v in labels.items())]


def test_mapping_form_gives_each_trial_its_backbones_overrides():
    s = spec(backbones={"whisper-tiny": {"backbone.seconds": 1.0},
                        "crepe-tiny": {"backbone.num_samples": 16000, "runtime.batch_size": 8}},
             seeds=[0, 1])
    trials, _ = check(s)
    assert len(trials) == 4
    for t in by_labels(trials, backbone="whisper-tiny"):
        cfg = compose(BASE, t["overrides"])
        assert cfg["backbone"] == {"name": "whisper-tiny", "seconds": 1.0}
        assert cfg["runtime"]["batch_size"] == 24
    for t in by_labels(trials, backbone="crepe-tiny"):
        cfg = compose(BASE, t["overrides"])
        assert cfg["backbone"] == {"name": "crepe-tiny", "num_samples": 16000}
        assert cfg["runtime"]["batch_size"] == 8


def test_overrides_are_layered_benchmark_then_backbone_then_variant():
    s = spec(benchmarks={"b": {"runtime.batch_size": 4, "runtime.eval_batch_size": 4, "backbone.seconds": 2.0}},
             backbones={"whisper-tiny": {"runtime.batch_size": 8, "backbone": {"seconds": 1.0}}},
             variants={"v": {"runtime.eval_batch_size": 16, "backbone.seconds": 0.5}})
    (t,), _ = check(s)
    cfg = compose(BASE, t["overrides"])
    assert cfg["runtime"]["batch_size"] == 8  # backbone over benchmark
    assert cfg["runtime"]["eval_batch_size"] == 16  # variant over benchmark
    # variant over backbone, also when the backbone replaced the whole section after a benchmark's key
    assert cfg["backbone"] == {"name": "whisper-tiny", "seconds": 0.5}


def test_list_form_still_sets_only_the_name():
    trials, _ = check(spec(backbones=["whisper-tiny", "whisper-base"]))
    assert [t["overrides"]["backbone.name"] for t in trials] == ["whisper-tiny", "whisper-base"]
    assert all(set(t["overrides"]) == {"backbone.name", "seeds.class_order", "seeds.split", "seeds.init"}
               for t in trials)


def test_backbone_entry_may_not_rename_the_backbone():
    with pytest.raises(SpecError, match=r"backbones\['whisper-tiny'\] sets backbone.name"):
        spec(backbones={"whisper-tiny": {"backbone.name": "whisper-base"}})


def test_exclusions_remove_exactly_the_matching_trials_and_print_their_reasons():
    s = spec(variants={"simplecil": {}, "hideprompt": {"method.name": "hideprompt"}},
             backbones={"whisper-tiny": {}, "crepe-tiny": {}}, seeds=[0, 1, 2],
             exclude=[{"variant": "hideprompt", "backbone": "crepe-tiny", "why": "CREPE is a CNN"},
                      {"variant": "simplecil", "seed": [1, 2], "why": "deterministic; one seed is enough"}])
    base, note = s.check("<test>")
    trials = s.trials(base)
    assert len(s.grid(base)) == 12
    gone = {(t["labels"]["variant"], t["labels"]["backbone"], t["labels"]["seed"]) for t in s.grid(base)} - \
        {(t["labels"]["variant"], t["labels"]["backbone"], t["labels"]["seed"]) for t in trials}
    assert gone == {("hideprompt", "crepe-tiny", "0"), ("hideprompt", "crepe-tiny", "1"),
                    ("hideprompt", "crepe-tiny", "2"), ("simplecil", "whisper-tiny", "1"),
                    ("simplecil", "whisper-tiny", "2"), ("simplecil", "crepe-tiny", "1"),
                    ("simplecil", "crepe-tiny", "2")}
    lines = note.splitlines()
    assert "excluded {variant: hideprompt, backbone: crepe-tiny}: 3 trials (CREPE is a CNN)" in lines
    assert "excluded {variant: simplecil, seed: [1, 2]}: 4 trials (deterministic; one seed is enough)" in lines
    assert "5 trials to run (7 of 12 excluded)" in lines
    assert sum("CREPE is a CNN" in line for line in lines) == 1  # once, not once per trial


def test_an_exclusion_matching_no_trial_is_an_error_naming_it():
    s = spec(backbones={"whisper-tiny": {}, "crepe-tiny": {}},
             exclude=[{"variant": "simplecil", "backbone": "crepe-tyni", "why": "typo"}])
    with pytest.raises(SpecError, match=r"exclude\[0\] \{variant: simplecil, backbone: crepe-tyni\} matches no "
                                        r"trial: backbone 'crepe-tyni' is not on the backbone axis; "
                                        r"did you mean 'crepe-tiny'\?"):
        s.check("<test>")


def test_an_exclusion_with_an_unknown_axis_names_the_valid_ones():
    with pytest.raises(SpecError, match=r"exclude\[0\]: unknown axis 'varient'; did you mean 'variant'\? "
                                        r"\(valid: variant, benchmark, backbone, seed, plus 'why'\)"):
        spec(exclude=[{"varient": "simplecil", "why": "typo"}])


def test_an_exclusion_needs_a_reason():
    with pytest.raises(SpecError, match=r"exclude\[0\] \{variant: simplecil\}: needs 'why'"):
        spec(exclude=[{"variant": "simplecil"}])


def test_preflight_reports_a_prompt_method_on_a_cnn_and_suggests_an_exclusion():
    s = spec(variants={"hideprompt": {"method.name": "hideprompt"}},
             backbones={"whisper-tiny": {}, "crepe-tiny": {}}, seeds=[0, 1])
    with pytest.raises(SpecError) as err:
        s.check("<test>")
    msg = str(err.value)
    assert "variant=hideprompt backbone=crepe-tiny (2 trials): hideprompt prompts a transformer" in msg
    assert "whisper-tiny (" not in msg  # Whisper supports prompts
    assert "- {variant: hideprompt, backbone: crepe-tiny, why:" in msg


def test_preflight_reports_linear_only_adapters_on_a_cnn():
    s = spec(variants={"inflora": {"method.name": "inflora"}, "sdlora": {"method.name": "sdlora"},
                       "peft_ft": {"method.name": "peft_ft"}},
             backbones={"whisper-tiny": {}, "crepe-tiny": {}})
    with pytest.raises(SpecError) as err:
        s.check("<test>")
    msg = str(err.value)
    for m in ("inflora", "sdlora"):
        assert (f"variant={m} backbone=crepe-tiny (1 trial): {m} adapts nn.Linear layers only; "
                "crepe-tiny's blocks are convolutions") in msg
    assert "whisper-tiny (" not in msg and "variant=peft_ft" not in msg  # conv LoRA runs on CREPE


def test_a_comparison_of_tuned_and_untuned_methods_is_named(tmp_path):
    from pace.study.checks import tuning_gaps

    src = "pace tune sweeps/tune.yaml --backbone crepe-tiny"
    (tmp_path / "d.yaml").write_text(
        "crepe-tiny:\n"
        f"  ranpac: {{method.fsa.train.lr: {{value: 0.01, source: {src}}}}}\n"
        f"  pace: {{method.lr_backbone: {{value: 0.001, source: {src}}}}}\n"
        "whisper-tiny:\n"
        f"  ranpac: {{method.fsa.train.lr: {{value: 0.01, source: {src}}}}}\n")
    pairs = [("crepe-tiny", m) for m in ("ranpac", "lorasub", "pace", "slca", "joint", "lorasub")]
    pairs += [("whisper-tiny", "ranpac"), ("whisper-base", "slca"), ("whisper-base", "ease")]
    assert tuning_gaps(pairs, tmp_path / "d.yaml") == [
        "not like for like on crepe-tiny: lorasub, slca have no tuned defaults there (class defaults) while "
        "ranpac, pace do; tune first with pace tune sweeps/tune.yaml --backbone crepe-tiny --methods lorasub,slca"]
    # all tuned, none tuned (nothing to compare unequally), or an upper bound without a space: no line
    assert tuning_gaps([("whisper-base", "slca"), ("whisper-base", "ease"), ("crepe-tiny", "joint"),
                        ("crepe-tiny", "ranpac")], tmp_path / "d.yaml") == []


def test_shipped_backbones_study_compares_tuned_methods_only():
    _, _, note, _ = load_ablation_spec(REPO / "ablations" / "backbones.yaml")
    assert "not like for like" not in note


def test_preflight_reports_an_input_length_the_backbone_refuses():
    s = spec(base={**BASE, "backbone": {"name": "whisper-tiny", "seconds": 1.0}},
             backbones=["whisper-tiny", "crepe-tiny"])
    with pytest.raises(SpecError, match=r"backbone=crepe-tiny \(1 trial\): crepe-tiny takes waveform input: "
                                        r"it refuses backbone.seconds"):
        s.check("<test>")


def test_shipped_backbones_spec_passes_the_preflight_checks():
    s, base, note, trials = load_ablation_spec(REPO / "ablations" / "backbones.yaml")
    # 3 benchmarks x 3 backbones x 6 variants x 3 seeds, less hideprompt on crepe-tiny (3 benchmarks x 3 seeds)
    assert len(s.grid(base)) == 162 and len(trials) == 153
    assert not by_labels(trials, variant="hideprompt", backbone="crepe-tiny")
    assert "excluded {variant: hideprompt, backbone: crepe-tiny}: 9 trials" in note
    for t in by_labels(trials, backbone="crepe-tiny"):
        assert t["overrides"]["backbone.num_samples"] == 16000 and "backbone.seconds" not in t["overrides"]
