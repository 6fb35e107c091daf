"""The ``pace`` command line: run | sweep | ablate | tune | report | backbones | methods | data."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

_default_showwarning = warnings.showwarning


def _overrides(pairs: list[str]) -> dict:
    from pace.config import ConfigError, parse_value

    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. scenario.num_sessions=2), got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def cmd_run(args) -> int:
    from pace.config import load_config
    from pace.console import ConsoleReporter
    from pace.runner import Runner

    cfg = load_config(args.config, _overrides(args.set))
    if args.quiet:
        cfg.runtime.progress = False
    out = Path(args.out or Path("runs") / cfg.name)
    runner = Runner(cfg, out, [ConsoleReporter()])
    try:
        runner.run(resume=not args.no_resume)
    except KeyboardInterrupt:
        # with runtime.checkpoint_every, the sessions after the last checkpoint are recomputed on resume
        if runner.checkpointed:
            print(f"pace: interrupted; {out} holds a checkpoint after session {runner.checkpointed}: "
                  "run the same command again to resume there", file=sys.stderr)
        raise
    return 0


def cmd_backbones(args) -> int:
    from pace.backbones.registry import list_backbones
    from pace.console import table

    def weights(text: str) -> str:
        return text if args.full or len(text) <= 72 else text[:71] + "…"

    rows = [[s.name, s.input_kind, s.embed_dim, s.num_blocks, "yes" if s.test_size else "", weights(s.weights)]
            for s in list_backbones()]
    print(table(rows, ["name", "input", "dim", "blocks", "test size", "weights"]))
    return 0


def cmd_methods(args) -> int:
    from pace.registry import METHODS
    from pace.console import table

    if args.space:  # the method's declared search space (what `pace tune` searches)
        space = METHODS.get(args.space).config_cls.SEARCH_SPACE
        if not space:
            print(f"{args.space} declares no search space: `pace tune` has nothing to search")
            return 0
        rows = [[f"method.{k}", p["type"],
                 ", ".join(map(str, p["values"])) if "values" in p else f"{p['low']:g} .. {p['high']:g}",
                 ", ".join(f"method.{c}={v}" for c, v in (p.get("when") or {}).items()) or "-"]
                for k, p in space.items()]
        print(table(rows, ["key", "type", "range or values", "only when"]))
        return 0
    rows = []
    for name, learner in METHODS.items():
        doc = (learner.config_cls.__doc__ or "").strip()
        rows.append([name, doc.splitlines()[0] if doc else "", len(learner.config_cls.SEARCH_SPACE)])
    print(table(rows, ["method", "what it is", "searched keys (pace tune)"]))
    return 0


def cmd_data_list(args) -> int:
    from pace.registry import DATASETS
    from pace.console import table

    rows = [[name, "|".join(s.labels), s.root, ", ".join(p.name for p in s.presets), s.summary]
            for name, s in DATASETS.items()]
    print(table(rows, ["data set", "labels (first: default)", "root", "presets", "what"]))
    return 0


def cmd_data_check(args) -> int:
    from pace.config import DataConfig
    from pace.data.audio import AudioError
    from pace.data.datasets import build_dataset
    from pace.data.presets import PRESETS, check_summary, preset_configs

    scen = None
    if args.dataset in PRESETS:  # a preset checks its own data set and whether its sessions fit
        cfg, scen = preset_configs(args.dataset, args.root)
    else:
        cfg = DataConfig(dataset=args.dataset, root=args.root, label=args.label, subset=args.subset)
    ds = build_dataset(cfg)  # missing metadata, columns or files stop here with the file named
    bad = []
    from tqdm.auto import tqdm

    for it in tqdm(ds.items, desc=f"checking {ds.name}", unit="clip", disable=args.quiet):
        try:
            ds.waveform(it)
        except AudioError as exc:
            bad.append((it.key, exc.reason))
    summary, ok = check_summary(ds, args.dataset if scen is not None else None, scen)
    print(summary)
    for key, why in bad:
        print(f"  bad: {key}: {why}")
    print(f"{len(bad)} bad file(s)")
    return 1 if bad or not ok else 0


def cmd_data_describe(args) -> int:
    from pace.data.presets import describe, list_presets, preset_fields

    if not args.preset:
        print(list_presets())
        return 0
    if args.yaml:  # the data/scenario sections to paste into a run config
        import yaml

        data, scen = preset_fields(args.preset, args.root)
        print(yaml.safe_dump({"data": data, "scenario": scen}, sort_keys=False), end="")
        return 0
    print(describe(args.preset, args.root))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pace", description=__doc__.strip().splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True, action=_LazySubcommands)

    r = sub.add_parser("run", help="one continual-learning run from a config (or a sweep/ablation base)")
    r.add_argument("config", help="run config YAML (configs/*.yaml), or a sweep/ablation spec (its base)")
    r.add_argument("--out", help="output folder (default runs/<config name>); an existing one is continued "
                   "only under the same config and data")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set scenario.num_sessions=2 (repeatable)")
    r.add_argument("--no-resume", action="store_true",
                   help="start over in --out: its checkpoint and results are replaced")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("backbones", help="list registered backbones")
    b.add_argument("--full", action="store_true", help="do not shorten the weights column")
    b.set_defaults(func=cmd_backbones)
    m = sub.add_parser("methods", help="list registered methods")
    m.add_argument("--space", metavar="NAME", help="print the method's declared search space (pace tune)")
    m.set_defaults(func=cmd_methods)
    _add_data(sub)
    for builder, commands in _EXTERNAL.items():
        sub.add_lazy(builder, commands)
    return p


class _LazySubcommands(argparse._SubParsersAction):
    """Subcommands whose parsers are built only when chosen, so ``pace --help`` imports none of their
    modules (Ray, MLflow, pandas and torch sit behind them). The listing shows each one's help line;
    choosing one replaces its placeholder with the parser its builder adds."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._builders: dict[str, str | Callable] = {}

    def add_lazy(self, builder: str | Callable, commands: dict[str, str]) -> None:
        """``builder`` ("module:function" or a callable) adds the parsers of every name in ``commands``
        (name -> help line) to this action."""
        for name, help_line in commands.items():
            self.add_parser(name, help=help_line)
            self._builders[name] = builder

    def build(self, name: str) -> None:
        builder = self._builders.get(name)
        if builder is None:
            return
        names = [n for n, b in self._builders.items() if b is builder]
        for n in names:  # the builder adds the real parsers under the same names
            del self._builders[n], self._name_parser_map[n]
        self._choices_actions = [a for a in self._choices_actions if a.dest not in names]
        if isinstance(builder, str):
            module, func = builder.split(":")
            builder = getattr(importlib.import_module(module), func)
        builder(self)

    def __call__(self, parser, namespace, values, option_string=None):
        self.build(values[0])
        super().__call__(parser, namespace, values, option_string)


# Subcommands living in other modules: the builder, and the help line of each command it adds
# (tests/test_cli.py checks these lines against the builders' own).
_EXTERNAL = {
    "pace.study.cli:add_cli": {
        "sweep": "hyperparameter search on Ray Tune (Optuna/random/grid), tracked in MLflow",
        "ablate": "grid of variants x benchmarks x backbones x seeds on Ray Tune",
        "tune": "tune every method with one budget on validation splits of several benchmarks; write the "
                "winners to the per-backbone defaults",
    },
    "pace.report.cli:add_cli": {"report": "tables and figures from a study's MLflow runs (mean ± std over seeds)"},
    "pace.journal:add_cli": {"tracking": "MLflow tracking of studies: send writes kept during an outage"},
}
_DATA_EXTERNAL = {
    "pace.data.render:add_render_cli": {
        "render": "render an NSynth-layout data set of GM instrument notes with fluidsynth"},
}


def _add_data_check(dsub) -> None:
    from pace.data.presets import PRESETS
    from pace.registry import DATASETS

    dc = dsub.add_parser("check", help="read every clip of a data set and report bad files")
    kinds = DATASETS.names()
    dc.add_argument("dataset", metavar="NAME", choices=kinds + list(PRESETS),
                    help=f"a data set ({', '.join(kinds)}; pace data list) or a preset (pace data describe lists them)")
    dc.add_argument("--root", help="data set root (or manifest CSV); for a sequence preset, the folder of its parts")
    dc.add_argument("--label", help="label kind (fsdd: digit|speaker|digit_speaker; timit, vocalset, nsynth: see docs)")
    dc.add_argument("--subset", help="named subset (esc50: esc10; nsynth: nonvocal|acoustic|...)")
    dc.add_argument("--quiet", action="store_true")
    dc.set_defaults(func=cmd_data_check)


def _add_data(sub) -> None:
    d = sub.add_parser("data", help="inspect data sets")
    dsub = d.add_subparsers(dest="data_command", required=True, action=_LazySubcommands)
    dsub.add_lazy(_add_data_check, {"check": "read every clip of a data set and report bad files"})
    dl = dsub.add_parser("list", help="registered data sets: labels, root, presets")
    dl.set_defaults(func=cmd_data_list)
    dd = dsub.add_parser("describe", help="a benchmark preset's sessions (nominal, or counted from --root)")
    dd.add_argument("preset", nargs="?", help="preset name; omit to list the presets")
    dd.add_argument("--root", help="data set root (sequence presets: the folder holding one sub-folder per part)")
    dd.add_argument("--yaml", action="store_true", help="print the preset's data/scenario config sections instead")
    dd.set_defaults(func=cmd_data_describe)
    for builder, commands in _DATA_EXTERNAL.items():
        dsub.add_lazy(builder, commands)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # pace's own warnings are messages for the user, not code locations
    if str(filename).startswith(os.path.dirname(os.path.abspath(__file__)) + os.sep):
        print(f"pace: warning: {message}", file=file or sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename and not isinstance(exc, FileNotFoundError):
        return f"{exc.filename}: {exc.strerror}"  # e.g. a read-only or full disk, named by its file
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pace.config import ConfigError  # after parsing: --help needs neither (pace.data.audio loads torch)
    from pace.data.audio import AudioError

    try:
        with warnings.catch_warnings():  # restores the caller's warning display (tests call main)
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except (ConfigError, AudioError, OSError, ValueError, RuntimeError) as exc:
        if os.environ.get("PACE_DEBUG"):
            raise
        print(f"pace: error: {_error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
