"""Ridge selection over RanPAC's 17-value grid: one eigendecomposition vs one solve per grid value.

Random class-structured "backbone" features are projected by a RanPAC projection (N(0,1), ReLU) to
``--proj-dim`` and split 80/20 into fit/validation rows, as RanPAC does within a session. Both paths
run in the same process on the same data; the script prints their times, the ratio, and whether they
choose the same lam (and how far apart their validation MSE curves are).

    python bench/analytic.py --proj-dim 8192 --n 2000 --classes 10

With n * 0.8 < proj-dim the fast path decomposes the (n_fit x n_fit) kernel matrix; otherwise it
decomposes the (proj-dim x proj-dim) Gram matrix.

Which one is right at the bottom of the grid: both are compared with ``select_ridge_reference``, one
float64 solve per lam in the well-conditioned system (the N x N dual when N < M). When N < M the
per-lam M x M solve is the inaccurate one: ``H^T H + lam I`` has M - N eigenvalues equal to lam, so
at lam = 1e-8 its condition number is ~1e15 and its validation MSE is off by up to 100 %.
"""

from __future__ import annotations

import argparse
import time

import torch

from pace.heads import RIDGE_GRID, RandomProjection, select_ridge, select_ridge_direct, select_ridge_reference


def make_features(n: int, classes: int, in_dim: int, proj_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, in_dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    z = means[y] + 2.0 * torch.randn(n, in_dim, generator=g)  # noisy so lam matters
    proj = RandomProjection(in_dim, proj_dim, "relu", seed=seed + 1)
    return proj(z).to(torch.float64), y


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proj-dim", type=int, default=8192)
    ap.add_argument("--n", type=int, default=2000, help="samples in the session (80%% fit, 20%% validation)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--in-dim", type=int, default=768, help="backbone feature size")
    ap.add_argument("--criterion", choices=["mse", "accuracy"], default="mse")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-direct", action="store_true", help="time only the one-decomposition path")
    ap.add_argument("--wall-time", nargs=2, metavar=("PACE_RUN", "RANPAC_RUN"),
                    help="also print the PACE / RanPAC wall-time ratio of two finished run folders "
                         "(their metrics.json), e.g. the fine-grained FSDD runs of ablations/fsdd_methods.yaml")
    args = ap.parse_args()
    if args.wall_time:
        print_wall_time_ratio(*args.wall_time)
    if args.threads:
        torch.set_num_threads(args.threads)

    H, y = make_features(args.n, args.classes, args.in_dim, args.proj_dim, args.seed)
    n_fit = int(0.8 * args.n)
    split = (H[:n_fit], y[:n_fit], H[n_fit:], y[n_fit:])
    regime = "dual: eigh of the N x N kernel" if n_fit < args.proj_dim else "primal: eigh of the M x M Gram"
    print(f"features: N_fit={n_fit} N_val={args.n - n_fit} M={args.proj_dim} K={args.classes} "
          f"threads={torch.get_num_threads()} grid={len(RIDGE_GRID)} values ({regime})")

    fast, t_fast = timed(select_ridge, *split, criterion=args.criterion, num_classes=args.classes)
    print(f"one decomposition : {t_fast:9.2f} s  lam={fast.lam:g}")
    if args.skip_direct:
        return
    ref, t_direct = timed(select_ridge_direct, *split, criterion=args.criterion, num_classes=args.classes)
    print(f"one solve per lam : {t_direct:9.2f} s  lam={ref.lam:g}")
    print(f"speed-up          : {t_direct / t_fast:9.1f}x")
    rel = ((fast.mse - ref.mse).abs() / ref.mse)
    print(f"same lam          : {fast.lam == ref.lam}")
    print("val MSE rel. diff : " + " ".join(f"{g:.0e}:{r:.1e}" for g, r in zip(RIDGE_GRID, rel.tolist())))
    print("val MSE (eig)     : " + " ".join(f"{v:.4g}" for v in fast.mse.tolist()))
    print("val MSE (direct)  : " + " ".join(f"{v:.4g}" for v in ref.mse.tolist()))
    gold = select_ridge_reference(*split, criterion=args.criterion, num_classes=args.classes)
    for name, sel in (("eig", fast), ("direct", ref)):
        err = float(((sel.mse - gold.mse).abs() / gold.mse).max())
        print(f"vs f64 reference  : {name:6s} lam={sel.lam:g} (reference {gold.lam:g}) "
              f"max rel. MSE error {err:.1e}")


def print_wall_time_ratio(pace_run: str, ranpac_run: str) -> None:
    """Time in learn() summed over sessions (evaluation excluded), as the runner recorded it (metrics.json)."""
    import json
    from pathlib import Path

    times = [json.loads((Path(d) / "metrics.json").read_text())["total_time_s"] for d in (pace_run, ranpac_run)]
    print(f"wall time         : PACE {times[0]:.1f} s, RanPAC {times[1]:.1f} s, "
          f"PACE / RanPAC = {times[0] / times[1]:.2f}x")


if __name__ == "__main__":
    main()
