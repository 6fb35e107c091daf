"""``pace sweep`` and ``pace ablate``: each spec class is registered under its own ``command``, so the
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
