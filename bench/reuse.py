"""Stage reuse across the trials of a study: wall time with and without it, same accuracy matrices.

Runs one ablation spec twice, side by side in this process's order (reuse off, then on), each with
its own fresh cache folder that is first filled with the data set's frontend features (featurising is
not what is compared), its own Ray storage and MLflow store. Prints both wall times, their ratio, the
stages each study computed and loaded, and whether every trial's accuracy matrix is byte-identical.

    python bench/reuse.py                                   # table 4 on FSDD fine, seed 0 (long on a CPU)
    python bench/reuse.py --sessions 6 --work /tmp/reuse    # 12 classes in 6 sessions (quicker)

Target (issue 13): wall(on) <= 0.6 x wall(off), identical matrices.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def study_spec(spec_path: Path, mode_dir: Path, reuse: bool, seed: int, sessions: int | None) -> Path:
    spec = yaml.safe_load(spec_path.read_text())
    base = spec["base"]
    base.setdefault("runtime", {}).update({"cache_dir": str(mode_dir / "cache"), "reuse_stages": reuse,
                                          "progress": False})
    if sessions:  # the first 2 x N classes of the class order in N sessions (table 4's 2 per session)
        base.setdefault("scenario", {}).update({"num_sessions": sessions, "max_classes": 2 * sessions})
    spec.update({"seeds": [seed], "storage_path": str(mode_dir / "ray_results"),
                 "tracking_uri": f"sqlite:///{mode_dir / 'mlflow.db'}"})
    out = mode_dir / "spec.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def warm_features(spec_file: Path, mode_dir: Path) -> None:
    """Featurise the base config's data set into this mode's cache (identical for both modes)."""
    from pace.config import validate_config
    from pace.runner import Runner

    base = yaml.safe_load(spec_file.read_text())["base"]
    runner = Runner(validate_config(base), mode_dir / "warm")
    runner.prepare(resume=False)


def run(spec_file: Path, log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as f:
        subprocess.run([sys.executable, "-m", "pace.cli", "ablate", str(spec_file), "--fresh"], check=True,
                       stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - t0


def matrices(mode_dir: Path, name: str) -> dict[str, bytes]:
    return {p.parent.parent.name: p.read_bytes()
            for p in sorted((mode_dir / "ray_results" / name).glob("*/run/accuracy_matrix.csv"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(REPO / "ablations" / "table4_components.yaml"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sessions", type=int, default=None,
                    help="N sessions of 2 classes (the first 2N of the class order) instead of the spec's")
    ap.add_argument("--work", default=None, help="folder for caches, stores and logs (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="pace-reuse-"))
    name = yaml.safe_load(Path(args.spec).read_text())["name"]
    walls, shared, mats = {}, {}, {}
    for mode, reuse in (("off", False), ("on", True)):
        mode_dir = work / mode
        mode_dir.mkdir(parents=True, exist_ok=True)
        spec_file = study_spec(Path(args.spec), mode_dir, reuse, args.seed, args.sessions)
        warm_features(spec_file, mode_dir)
        walls[mode] = run(spec_file, mode_dir / "ablate.log")
        text = (mode_dir / "ablate.log").read_text()
        m = re.search(r"shared work: (\d+) stage\(s\) computed, (\d+) loaded", text)
        shared[mode] = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        mats[mode] = matrices(mode_dir, name)
        print(f"reuse {mode:3s}: {walls[mode]:8.1f} s wall, {len(mats[mode])} trials, stages computed/loaded "
              f"{shared[mode][0]}/{shared[mode][1]}", flush=True)
    same = [t for t in mats["off"] if mats["on"].get(t) == mats["off"][t]]
    print(f"\n{name}: wall(on) / wall(off) = {walls['on'] / walls['off']:.3f}  (target <= 0.6)")
    print(f"accuracy matrices byte-identical: {len(same)}/{len(mats['off'])} trials"
          + ("" if len(same) == len(mats["off"]) == len(mats["on"]) else
             f"  DIFFERENT: {sorted(set(mats['off']) ^ set(same))}"))
    print(f"logs and stores in {work}")


if __name__ == "__main__":
    main()
