"""``pace sweep``, ``pace ablate`` and ``pace tune``: each spec class is registered under its own ``command``, so the
commands that messages name (``pace {spec.command} ...``) are the ones this parser knows."""

from __future__ import annotations

from pace.study.cluster import CONNECT_TIMEOUT_S
from pace.study.spec import AblationSpec, StudySpec, SweepSpec


def _add_common(p) -> None:
    p.add_argument("--resume", action="store_true", help="continue an interrupted study (finished trials are kept)")
    p.add_argument("--fresh", action="store_true", help="delete an earlier study of this name (Tune results only)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--storage", help="Tune storage path (default: ./ray_results; shared path or s3:// on a cluster)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument("--address", help="Ray cluster to join (e.g. auto); default: start local Ray on all cores")
    p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S, metavar="SECONDS",
                   help=f"seconds to wait for the --address cluster to answer (default {CONNECT_TIMEOUT_S:g})")
    p.add_argument("--no-tracking", dest="track", action="store_false", default=None,
                   help="do not log to MLflow")


def _study_command(spec: type[StudySpec], args) -> int:
    from pace.study.driver import StudyOptions, run_study

    res = run_study(spec.kind, args.spec, StudyOptions(
        resume=args.resume, fresh=args.fresh, tracking_uri=args.tracking_uri, storage=args.storage,
        max_concurrent=args.max_concurrent, num_samples=getattr(args, "num_samples", None), address=args.address,
        track=args.track, connect_timeout_s=args.connect_timeout))
    return 130 if res.interrupted else (1 if res.num_errors else 0)


def cmd_sweep(args) -> int:
    return _study_command(SweepSpec, args)


def cmd_ablate(args) -> int:
    return _study_command(AblationSpec, args)


def cmd_tune(args) -> int:
    """Tune every method of the file (or ``--methods``) on every backbone of it (or ``--backbone``) with
    the file's budget, one study each, and write each winner to the defaults file unless ``--no-write``."""
    from pathlib import Path

    from pace.config import BACKBONE_DEFAULTS
    from pace.study import SpecError
    from pace.study.driver import StudyOptions, run_study
    from pace.study.tune import load_tune_file, provenance, winning_values, write_defaults

    tf = load_tune_file(args.spec)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(tf.methods)
    backbones = [b.strip() for b in args.backbone.split(",") if b.strip()] if args.backbone else list(tf.backbones)
    # every method's space and every trial config is checked before the first study starts
    specs = [tf.method_spec(m, args.spec, b) for b in backbones for m in methods]
    target = Path(args.defaults) if args.defaults else BACKBONE_DEFAULTS
    opts = StudyOptions(resume=args.resume, fresh=args.fresh, tracking_uri=args.tracking_uri, storage=args.storage,
                        max_concurrent=args.max_concurrent, address=args.address, track=args.track,
                        connect_timeout_s=args.connect_timeout)
    status, times = 0, []
    for spec in specs:
        why = spec.refusal()
        if why:
            print(f"{spec.backbone} {spec.method}: not tuned: {why}")
            continue
        try:
            res = run_study(spec.kind, args.spec, opts, spec=spec)
        except SpecError as exc:  # this study cannot start (an earlier one of its name, ...); go on
            print(f"{spec.backbone} {spec.method}: not tuned: {exc}")
            status = 1
            continue
        times.append((spec.method, res.wall_s, res.trial_s))
        print(f"{spec.backbone} {spec.method}: {spec.samples} trials in {res.wall_s / 60:.1f} min wall, "
              f"{res.trial_s / 60:.1f} trial-minutes")
        if res.interrupted:
            return 130
        status = status or (1 if res.num_errors else 0)
        if args.no_write:
            continue
        try:
            values = winning_values(spec, res.rows)
        except SpecError as exc:
            print(f"not written: {exc}")
            status = 1
            continue
        write_defaults(target, spec.backbone, spec.method, values, provenance(spec, res.rows, res.parent_run_id))
        print(f"wrote {spec.backbone}.{spec.method} to {target}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    if len(times) > 1:
        print(f"tuned {len(times)} studies with {tf.trials} trials each: {sum(t[1] for t in times) / 60:.1f} min "
              f"wall, {sum(t[2] for t in times) / 60:.1f} trial-minutes")
    return status


def add_cli(sub) -> None:
    s = sub.add_parser(SweepSpec.command,
                       help="hyperparameter search on Ray Tune (Optuna/random/grid), tracked in MLflow")
    s.add_argument("spec", help="sweep spec YAML (sweeps/*.yaml)")
    _add_common(s)
    s.add_argument("--num-samples", type=int, help="trials to sample (grid: repeats)")
    s.set_defaults(func=cmd_sweep)
    a = sub.add_parser(AblationSpec.command, help="grid of variants x benchmarks x backbones x seeds on Ray Tune")
    a.add_argument("spec", help="ablation spec YAML")
    _add_common(a)
    a.set_defaults(func=cmd_ablate)
    t = sub.add_parser("tune", help=("tune every method with one budget on validation splits of several "
                                     "benchmarks; write the winners to the per-backbone defaults"))
    t.add_argument("spec", help="tune file YAML (sweeps/tune.yaml)")
    _add_common(t)
    t.add_argument("--methods", metavar="NAMES", help="comma-separated subset of the file's methods (default: all)")
    t.add_argument("--backbone", metavar="NAMES", help="comma-separated subset of the file's backbones (default: all)")
    t.add_argument("--defaults", metavar="PATH", help="defaults file to update (default: pace/defaults/backbones.yaml)")
    t.add_argument("--no-write", action="store_true", help="print the winners, leave the defaults file alone")
    t.set_defaults(func=cmd_tune)
