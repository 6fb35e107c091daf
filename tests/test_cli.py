"""The command line builds its parser without the heavy libraries, and its lazy subcommands are the real ones."""

import argparse
import subprocess
import sys
import types

import pytest
import torch

from pace import cli

HEAVY = ("ray", "mlflow", "pandas", "torch")


def test_build_parser_imports_no_heavy_library():
    code = ("import sys, pace.cli; pace.cli.build_parser(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_top_level_help_imports_no_heavy_library():
    # main() parses first, so --help exits before anything behind a subcommand is loaded
    code = ("import sys, pace.cli\n"
            "try:\n    pace.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('loaded=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "sweep" in out.stdout and "report" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "loaded="


def _subparsers(parser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _help_lines(action) -> dict[str, str]:
    return {a.dest: a.help for a in action._choices_actions}


@pytest.mark.parametrize("table,path", [(cli._EXTERNAL, ()), (cli._DATA_EXTERNAL, ("data",))])
def test_listing_help_matches_the_builders_own(table, path):
    for builder, commands in table.items():
        module, func = builder.split(":")
        real = argparse.ArgumentParser().add_subparsers()
        getattr(__import__(module, fromlist=[func]), func)(real)
        assert _help_lines(real) == commands, builder


def test_choosing_a_lazy_command_builds_its_real_parser():
    p = cli.build_parser()
    args = p.parse_args(["sweep", "spec.yaml", "--num-samples", "3", "--fresh"])
    assert (args.spec, args.num_samples, args.fresh, args.func.__name__) == ("spec.yaml", 3, True, "cmd_sweep")
    # its sibling from the same module is built with it and parses too
    args = p.parse_args(["ablate", "a.yaml", "--resume"])
    assert (args.spec, args.resume, args.func.__name__) == ("a.yaml", True, "cmd_ablate")
    args = cli.build_parser().parse_args(["report", "--experiment", "x", "--no-figures"])
    assert (args.experiment, args.no_figures, args.func.__name__) == ("x", True, "cmd_report")
    args = cli.build_parser().parse_args(["data", "render", "--soundfont", "fluidr3", "--out", "o",
                                          "--pitches", "60,62"])
    assert (args.out, args.pitches, args.func.__name__) == ("o", [60, 62], "cmd_render")
    args = cli.build_parser().parse_args(["data", "check", "synthetic", "--quiet"])
    assert (args.dataset, args.quiet, args.func.__name__) == ("synthetic", True, "cmd_data_check")


def test_each_command_is_listed_once_after_building():
    p = cli.build_parser()
    p.parse_args(["sweep", "s.yaml"])
    names = [a.dest for a in _subparsers(p)._choices_actions]
    assert sorted(names) == sorted(set(names))
    assert set(names) == {"run", "backbones", "methods", "data", "sweep", "ablate", "report", "tracking", "tune"}


def test_lazy_command_rejects_bad_arguments_with_its_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["sweep", "s.yaml", "--num-samples", "many"])
    assert exc.value.code == 2
    assert "pace sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_run_prints_training_progress(tmp_path, capsys):
    import re

    cfg = tmp_path / "p.yaml"
    # RanPAC trains LoRA on its first session for 2 epochs: its shared trainer reports each epoch
    cfg.write_text("name: progress\n"
                   "data: {dataset: synthetic, label: fine, synthetic_classes: 6, synthetic_clips_per_class: 6}\n"
                   "scenario: {num_sessions: 2}\n"
                   "backbone: {name: whisper-test, seconds: 1.0}\n"
                   "method: {name: ranpac, fsa: {enabled: true, train: {epochs: 2}}}\n"
                   "runtime: {num_threads: 1, batch_size: 8}\n")
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out.splitlines()
    epochs = [ln for ln in out if re.fullmatch(r"  train fsa epoch \d/2: (\d+)/\1 clips, [\d.]+ clips/s, \d+ s, "
                                               r"loss \d+\.\d{4}", ln)]
    assert [ln.split(":")[0] for ln in epochs] == ["  train fsa epoch 1/2", "  train fsa epoch 2/2"]
    # the first long stage is named before it starts, ahead of the run's header line
    first = next(i for i, ln in enumerate(out) if ln.startswith("featurising 36 clips of synthetic"))
    header = next(i for i, ln in enumerate(out) if ln.startswith("pace run progress:"))
    assert first < header < out.index(epochs[0])


class _Backbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return types.SimpleNamespace(pooled=self.lin(x))


@pytest.mark.parametrize("on", [True, False])
def test_trainer_progress_follows_the_context(on, capsys):
    from pace.methods.base import Context, Split
    from pace.methods.parts import TrainConfig, train

    x, y = torch.randn(10, 4), torch.tensor([0, 1] * 5)
    bb, head = _Backbone(), torch.nn.Linear(3, 2)
    ctx = Context(batch_size=4, progress=on)
    seen = train(bb, head, Split(x, y, [str(i) for i in range(10)]), ctx, TrainConfig(epochs=3, lr=0.1),
                 backbone_params=list(bb.parameters()), head_lr=0.1, purpose="unit")
    assert seen == 30
    lines = capsys.readouterr().out.splitlines()
    if on:  # one closing line per epoch; 10 clips in batches of 4
        assert [ln.split(":")[0] for ln in lines] == [f"  train unit epoch {e}/3" for e in (1, 2, 3)]
        assert all(": 10/10 clips, " in ln and ", loss " in ln for ln in lines)
    else:
        assert lines == []
