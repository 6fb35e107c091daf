"""Patch covariance of a stride-1 Conv1d: lagged channel products vs the Gram of unfolded patches.

LoRA-Sub's and PACE's gradient projection accumulate, per adapted conv, ``P^T P`` over every input
patch of every frame (``collect_input_covariances``). ``conv1d_patch_gram`` gets it from one matmul
per kernel lag plus the kernel's edges; the reference unfolds the patches (in chunks, as the old path
did) and multiplies. Both run here on the same random input shaped like a CREPE block's, one after
the other in one process; the script prints each time, the ratio and the largest relative difference.

    python bench/patch_gram.py                      # CREPE tiny block 2: 128 channels, kernel 64
    python bench/patch_gram.py --frames 264 --threads 2

Defaults are CREPE tiny's block 2 (the 8192-wide one) on one 1 s clip at the backbone's default hop
(33 frames, 191 padded samples per frame).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from pace.peft.lora_conv import LoRAConv, conv1d_patch_gram


def unfolded_gram(x: torch.Tensor, kernel: int, chunk: int) -> torch.Tensor:
    """The unfolding path: LoRAConv's own patches of ``chunk`` frames at a time, P^T P summed."""
    layer = LoRAConv(nn.Conv1d(x.shape[1], 1, kernel).double())
    gram = torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        p = layer.patches(x[i:i + chunk])
        gram += p.T @ p
    return gram


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=33, help="frames (samples of the conv's batch)")
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--kernel", type=int, default=64)
    ap.add_argument("--length", type=int, default=191, help="padded input length per frame")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=4, help="frames per unfolded chunk (reference path)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.frames, args.channels, args.length, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    fast = conv1d_patch_gram(x, args.kernel)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    ref = unfolded_gram(x, args.kernel, args.chunk)
    t_ref = time.perf_counter() - start
    rel = float((fast - ref).abs().max() / ref.abs().max())
    width = args.channels * args.kernel
    print(f"patch width {width}, {args.frames} frames x {args.length - args.kernel + 1} positions, "
          f"{args.threads} thread(s)")
    print(f"lagged products {t_fast:.2f} s   unfolded {t_ref:.2f} s   ratio {t_ref / t_fast:.1f}x   "
          f"max relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
