"""The ``pace`` command line: run | sweep | ablate | report | backbones | methods | data."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _overrides(pairs: list[str]) -> dict:
    from pace.config import ConfigError, parse_value

    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. method.lr=0.01), got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def cmd_run(args) -> int:
    from pace.config import load_config
    from pace.reporting import ConsoleReporter
    from pace.runner import Runner

    cfg = load_config(args.config, _overrides(args.set))
    if args.quiet:
        cfg.runtime.progress = False
    out = Path(args.out or Path("runs") / cfg.name)
    Runner(cfg, out, [ConsoleReporter()]).run(resume=not args.no_resume)
    return 0


def cmd_backbones(args) -> int:
    from pace.backbones.registry import list_backbones
    from pace.reporting import table

    def weights(text: str) -> str:
        return text if args.full or len(text) <= 72 else text[:71] + "…"

    rows = [[s.name, s.input_kind, s.embed_dim, s.num_blocks, "yes" if s.test_size else "", weights(s.weights)]
            for s in list_backbones()]
    print(table(rows, ["name", "input", "dim", "blocks", "test size", "weights"]))
    return 0


def cmd_methods(args) -> int:
    from pace.config import MethodConfig
    from pace.reporting import table

    rows = []
    for name in MethodConfig.known():
        cls = MethodConfig._registry[name]
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        rows.append([name, doc])
    print(table(rows, ["method", "what it is"]))
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
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="one continual-learning run from a config (or a sweep/ablation base)")
    r.add_argument("config", help="run config YAML (configs/*.yaml), or a sweep/ablation spec (its base)")
    r.add_argument("--out", help="output folder (default runs/<config name>)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set method.lr=0.01 (repeatable)")
    r.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in --out and start over")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("backbones", help="list registered backbones")
    b.add_argument("--full", action="store_true", help="do not shorten the weights column")
    b.set_defaults(func=cmd_backbones)
    m = sub.add_parser("methods", help="list registered methods")
    m.set_defaults(func=cmd_methods)

    d = sub.add_parser("data", help="inspect data sets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dc = dsub.add_parser("check", help="read every clip of a data set and report bad files")
    from pace.data.presets import PRESETS

    kinds = ["fsdd", "folder", "manifest", "synthetic", "esc50", "us8k", "speechcommands", "timit", "vocalset",
             "nsynth"]
    dc.add_argument("dataset", metavar="NAME", choices=kinds + list(PRESETS),
                    help=f"a data set kind ({', '.join(kinds)}) or a preset (pace data describe lists them)")
    dc.add_argument("--root", help="data set root (or manifest CSV); for a sequence preset, the folder of its parts")
    dc.add_argument("--label", help="label kind (fsdd: digit|speaker|digit_speaker; timit, vocalset, nsynth: see docs)")
    dc.add_argument("--subset", help="named subset (esc50: esc10; nsynth: nonvocal|acoustic|...)")
    dc.add_argument("--quiet", action="store_true")
    dc.set_defaults(func=cmd_data_check)
    dd = dsub.add_parser("describe", help="a benchmark preset's sessions (nominal, or counted from --root)")
    dd.add_argument("preset", nargs="?", help="preset name; omit to list the presets")
    dd.add_argument("--root", help="data set root (sequence presets: the folder holding one sub-folder per part)")
    dd.add_argument("--yaml", action="store_true", help="print the preset's data/scenario config sections instead")
    dd.set_defaults(func=cmd_data_describe)
    from pace.data.render import add_render_cli

    add_render_cli(dsub)

    for extra in ("pace.sweep", "pace.report", "pace.benchmarks", "pace.journal"):
        try:
            mod = __import__(extra, fromlist=["add_cli"])
        except ModuleNotFoundError as exc:
            if exc.name != extra:
                raise
            continue
        mod.add_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from pace.config import ConfigError
    from pace.data.audio import AudioError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, AudioError, FileNotFoundError, ValueError, RuntimeError) as exc:
        if os.environ.get("PACE_DEBUG"):
            raise
        print(f"pace: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
