"""Overhead of MLflow tracking on a sweep: the same 20-trial study with and without pace's reporter.

Trials are deliberately tiny (synthetic audio, log-mel statistics, SimpleCIL, 5 sessions), so the
ratio is a worst case: with real trials that run minutes per session the per-trial cost (printed too)
is what matters. Both modes run on one local Ray session, alternate ``--repeats`` times, and share a
warm feature cache; the MLflow SQLite database is created once before timing (a one-off cost, printed).

    python bench/tracking.py [--trials 20] [--repeats 2] [--concurrent 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml


def spec(name: str, trials: int, concurrent: int, root: Path, track: bool) -> Path:
    body = {
        "name": name,
        "base": {"name": name,
                 "data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 10,
                          "synthetic_clips_per_class": 8},
                 "scenario": {"num_sessions": 5},
                 "backbone": {"name": "logmel-stats", "target_frames": 112},
                 "method": {"name": "simplecil"}, "runtime": {"num_threads": 1}},
        "variants": {"simplecil": {}},
        "seeds": list(range(trials)),  # 20 distinct trials (class order, split and init seeds)
        "objective": "last_accuracy", "max_concurrent": concurrent, "max_failures": 0, "track": track,
        "storage_path": str(root / "ray_results"), "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--concurrent", type=int, default=2)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="pace-bench-tracking-"))
    os.environ.setdefault("PACE_CACHE_DIR", str(root / "cache"))  # before Ray starts: workers inherit it
    import ray

    from pace.study.driver import StudyOptions, run_study
    from pace.tracking import MlflowSink

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    quiet = lambda s: None  # noqa: E731
    with contextlib.redirect_stdout(io.StringIO()):  # warm the feature cache and the imports
        run_study("ablation", str(spec("warmup", 2, args.concurrent, root, False)), out=quiet)
    t0 = time.perf_counter()
    MlflowSink(f"sqlite:///{root / 'mlflow.db'}").experiment("bench")
    db_s = time.perf_counter() - t0

    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.repeats):
        for track in (False, True):
            path = spec(f"{'on' if track else 'off'}{i}", args.trials, args.concurrent, root, track)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # per-trial progress lines
                res = run_study("ablation", str(path), StudyOptions(), out=quiet)
            times[track].append(time.perf_counter() - t0)
            assert res.num_errors == 0 and len(res.rows) == args.trials
    ray.shutdown()

    off, on = statistics.fmean(times[False]), statistics.fmean(times[True])
    print(f"{args.trials} trials x 5 sessions, {args.concurrent} at a time, {os.cpu_count()} CPUs, "
          f"{args.repeats} repeats (mean)")
    print(f"without tracking: {off:6.1f} s   ({', '.join(f'{t:.1f}' for t in times[False])})")
    print(f"with MLflow:      {on:6.1f} s   ({', '.join(f'{t:.1f}' for t in times[True])})")
    print(f"ratio:            {on / off:6.2f}   (+{(on - off) / args.trials:.2f} s per trial)")
    print(f"one-off MLflow SQLite schema creation: {db_s:.1f} s (not in the times above)")
    print(f"scratch folder: {root}")


if __name__ == "__main__":
    main()
