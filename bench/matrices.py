"""Accuracy matrices of the shipped run configs, to show a refactor changed no result.

Runs every ``configs/*.yaml`` (or the ones named) at a reduced size that keeps each config's method,
backbone, scenario and seeds (``data.max_per_class`` clips per class; no feature cache, so nothing is
read from an earlier run) and writes each accuracy matrix with its SHA-256 to a JSON file. A second
call with ``--compare`` says, config by config, whether two such files hold byte-identical matrices.

    python bench/matrices.py --out /tmp/before.json           # at the old commit (PYTHONPATH=OLD)
    python bench/matrices.py --out /tmp/after.json            # at the new one
    python bench/matrices.py --compare /tmp/before.json /tmp/after.json

Configs whose data is not on this machine (a Debian package or a data set root missing) are listed
as skipped, never compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(path: Path, max_per_class: int, work: Path) -> dict:
    from pace.config import load_config
    from pace.runner import Runner

    overrides = {"data.max_per_class": max_per_class, "runtime.use_cache": False,
                 "runtime.progress": False, "runtime.num_threads": 1}
    cfg = load_config(path, overrides)
    out = work / path.stem
    t0 = time.perf_counter()
    Runner(cfg, out, []).run(resume=False)
    text = (out / "accuracy_matrix.csv").read_text()
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "matrix": text,
            "seconds": round(time.perf_counter() - t0, 1)}


def compare(a_path: str, b_path: str) -> int:
    a, b = json.loads(Path(a_path).read_text()), json.loads(Path(b_path).read_text())
    same = differ = 0
    for name in sorted(set(a) | set(b)):
        ra, rb = a.get(name, {}), b.get(name, {})
        if "sha256" not in ra or "sha256" not in rb:
            why = ra.get("skipped") or rb.get("skipped") or "missing in one file"
            print(f"  skipped    {name}: {why}")
        elif ra["sha256"] == rb["sha256"]:
            same += 1
            print(f"  identical  {name}  {ra['sha256'][:12]}")
        else:
            differ += 1
            print(f"  DIFFERENT  {name}\n--- {a_path}\n{ra['matrix']}--- {b_path}\n{rb['matrix']}")
    print(f"{same} identical, {differ} different")
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("configs", nargs="*", help="run configs (default: configs/*.yaml)")
    p.add_argument("--out", help="JSON file to write the matrices to")
    p.add_argument("--max-per-class", type=int, default=8, help="clips per class (default 8)")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two --out files")
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        p.error("--out is required unless --compare is given")
    import pace

    print(f"pace from {Path(pace.__file__).parent}", file=sys.stderr)
    paths = [Path(c) for c in args.configs] or sorted((REPO / "configs").glob("*.yaml"))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            try:
                results[path.stem] = run_one(path, args.max_per_class, Path(tmp))
                print(f"{path.stem}: {results[path.stem]['sha256'][:12]} "
                      f"({results[path.stem]['seconds']} s)", file=sys.stderr)
            except (FileNotFoundError, ValueError, OSError) as exc:  # data not on this machine
                results[path.stem] = {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
                print(f"{path.stem}: skipped ({results[path.stem]['skipped']})", file=sys.stderr)
            Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
