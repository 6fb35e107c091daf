"""PACE's learner time against RanPAC+FSA's on the same data, side by side in one process.

Each variant runs with its own fresh cache folder, first filled with the data set's frontend features
(featurising is not what is compared), so no variant reads another's embeddings or stage outcomes.
Prints learner time (the runner's ``total_time_s``: ``learn`` over all sessions, evaluation excluded),
the ratio to RanPAC+FSA, last accuracy, and where PACE's time goes (session 1 = CKA probe + FSA;
the multi-session-adapted sessions; the rest).

    python bench/pace_cost.py                    # FSDD fine (60 classes, 30 sessions), Whisper tiny.en
    python bench/pace_cost.py --sessions 8       # the first 16 classes in 8 sessions (quicker)

Target (issue 13): PACE / RanPAC+FSA <= 1.5x (the paper: 1.22-3.13x).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

BASE = {
    "name": "pace-cost",
    "data": {"dataset": "fsdd", "label": "digit_speaker", "max_per_class": 10},
    "scenario": {"num_sessions": 30},
    "backbone": {"name": "whisper-tiny", "seconds": 1.0},
    "runtime": {"batch_size": 24, "num_threads": 1, "progress": False, "reuse_stages": False},
}
VARIANTS = {
    "ranpac_fsa": {"name": "ranpac", "analytic": {"proj_dim": 2048}},
    "pace": {"name": "pace", "loss_views": 2, "analytic": {"proj_dim": 2048}},
    "pace_wo_msa": {"name": "pace", "loss_views": 2, "msa": False, "analytic": {"proj_dim": 2048}},
}


def run_variant(name: str, method: dict, work: Path, sessions: int | None, seed: int):
    from pace.config import validate_config
    from pace.runner import Runner

    raw = {**BASE, "method": method, "seeds": {"class_order": seed, "split": seed, "init": seed},
           "runtime": {**BASE["runtime"], "cache_dir": str(work / name / "cache")}}
    if sessions:
        raw["scenario"] = {"num_sessions": sessions, "max_classes": 2 * sessions}
    cfg = validate_config(raw)
    Runner(cfg, work / name / "warm").prepare(resume=False)  # features into this variant's cache
    runner = Runner(cfg, work / name / "run")
    final = runner.run(resume=False)
    return runner, final


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=None, help="N sessions of 2 classes instead of 30")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="pace-cost-"))
    out = {}
    for name, method in VARIANTS.items():
        runner, final = run_variant(name, method, work, args.sessions, args.seed)
        out[name] = (runner, final)
        print(f"{name:12s} learner {final['total_time_s']:8.1f} s   last acc {final['last_accuracy']:6.2f}", flush=True)
    ref = out["ranpac_fsa"][1]["total_time_s"]
    print()
    for name, (_, final) in out.items():
        print(f"{name:12s} / ranpac_fsa = {final['total_time_s'] / ref:6.2f}x")
    runner = out["pace"][0]
    times = [r.time_s for r in runner.results]
    msa = [r.time_s for r in runner.results if r.diagnostics.get("msa_ran")]
    diag = sum(float(r.diagnostics.get("diag_time_s", 0.0)) for r in runner.results)
    print(f"\npace: session 1 (probe + FSA) {times[0]:.1f} s; {len(msa)} MSA sessions {sum(msa):.1f} s "
          f"({sum(msa) / max(len(msa), 1):.1f} s each); other sessions {sum(times) - times[0] - sum(msa):.1f} s; "
          f"of all that, the adaptation diagnostics {diag:.1f} s")
    print(f"MSA inert (flagged): {bool(out['pace'][1].get('adaptation_inert'))}; work in {work}")


if __name__ == "__main__":
    main()
