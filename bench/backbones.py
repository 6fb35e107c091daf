"""Backbone throughput: frontend and forward clips/s, FLOPs per clip, achieved vs dense-matmul GFLOP/s,
and the embedding cache's miss vs hit time.

For each backbone, on random 16 kHz audio of ``--seconds``:

* frontend clips/s: waveform -> the backbone's input features, one clip at a time on the CPU (as
  ``pace.data.features.extract_features`` computes them);
* forward clips/s: batched forward passes under ``torch.inference_mode`` (bf16 autocast on CUDA, as
  ``pace.embed`` runs them) on ``--device``;
* total clips/s: both stages in sequence, 1 / (1/frontend + 1/forward);
* GFLOP/clip: counted on a one-clip forward pass by forward hooks on every nn.Linear / nn.Conv1d /
  nn.Conv2d (2 x output elements x fan-in) plus the attention matmuls (QK^T and AV, 2 x B x H x Nq x Nk x
  d_head each), caught as ``F.scaled_dot_product_attention`` / ``torch.matmul`` calls. Element-wise work
  (norms, GELU, softmax) is not counted. A second table checks the count against a closed form per
  family and against ``torch.utils.flop_counter.FlopCounterMode`` (which, on the CPU, does not see the
  fused SDPA kernel, so it should equal the linear + conv part there);
* achieved GFLOP/s = GFLOP/clip x forward clips/s, next to the same device's dense-matmul GFLOP/s (a
  2048 x 2048 float32 matmul, timed right after that backbone so that both see the same machine load)
  and the fraction of it reached.

Then, per backbone, ``pace.embed.embed(..., keys=...)`` on a cold TensorCache in a temp dir (miss:
forward + save) vs the same call again (hit: backbone identity digest + load), with the time spent in
``backbone.identity()`` (the sha256 over the weights that every cached embed call pays) shown apart.

Every measurement is warmed up once and timed with time.perf_counter over ``--repeats`` runs; the best
run is reported. On the CPU, backbones above ``--heavy-gflop`` GFLOP/clip run ``--heavy-clips`` clips
instead of ``--clips`` (eat-base at 5.12 s is about 46 GFLOP/clip).

    python bench/backbones.py [--backbones eat-tiny,whisper-tiny,eat-base] [--clips 64] [--seconds 5.12]
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from pace.backbones.base import Backbone
from pace.backbones.registry import build_backbone, get_spec
from pace.cache import TensorCache
from pace.config import BackboneConfig
from pace.embed import autocast, embed
from pace.methods.base import Context
from pace.runner import resolve_device

SAMPLE_RATE = 16_000
MATMUL_N = 2048


# --------------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """One warm-up call, then the best of ``repeats`` timed calls (seconds)."""
    fn()
    sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(device: torch.device, repeats: int) -> float:
    """Dense float32 GFLOP/s of an N x N x N matmul on ``device`` (best of ``repeats``)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, generator=g).to(device)
    b = torch.randn(MATMUL_N, MATMUL_N, generator=g).to(device)
    t = best_time(lambda: a @ b, repeats, device)
    return 2 * MATMUL_N**3 / t / 1e9


# --------------------------------------------------------------------------------------------------
# FLOP counting


def _prod(shape) -> int:
    return math.prod(int(s) for s in shape)


class _AttentionMatmuls(TorchFunctionMode):
    """Counts the matmuls that are not module calls: SDPA (QK^T and AV) and explicit torch.matmul/bmm."""

    _MATMULS = {torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.bmm}

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = (kwargs[n] if n in kwargs else args[i] for i, n in enumerate(("query", "key", "value")))
            batch = _prod(q.shape[:-2])
            lq, e = q.shape[-2:]
            lk, ev = v.shape[-2], v.shape[-1]
            self.flops += 2 * batch * lq * lk * e + 2 * batch * lq * lk * ev
        elif func in self._MATMULS and len(args) >= 2 and args[0].dim() >= 2 and args[1].dim() >= 2:
            a, b = args[0], args[1]
            batch = _prod(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
            self.flops += 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
        return func(*args, **kwargs)


@dataclass
class FlopCount:
    linear: int
    conv: int
    attention: int

    @property
    def total(self) -> int:
        return self.linear + self.conv + self.attention


def count_flops(backbone: Backbone, x: torch.Tensor) -> FlopCount:
    """Matmul FLOPs of one forward pass over ``x`` (divide by the batch for per-clip numbers)."""
    counts = {"linear": 0, "conv": 0}

    def linear_hook(mod: nn.Linear, inp, out):
        counts["linear"] += 2 * out.numel() * mod.in_features

    def conv_hook(mod: nn.Conv1d | nn.Conv2d, inp, out):
        counts["conv"] += 2 * out.numel() * (mod.in_channels // mod.groups) * _prod(mod.kernel_size)

    handles = []
    for m in backbone.modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            handles.append(m.register_forward_hook(conv_hook))
    attn = _AttentionMatmuls()
    try:
        with torch.inference_mode(), attn:
            backbone(x)
    finally:
        for h in handles:
            h.remove()
    return FlopCount(counts["linear"], counts["conv"], attn.flops)


def aten_flops(backbone: Backbone, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        backbone(x)
    return fc.get_total_flops()


def closed_form_flops(backbone: Backbone) -> int | None:
    """Per-clip matmul FLOPs from the architecture's sizes (EAT and Whisper encoders), else None."""
    cfg = getattr(backbone, "config", None)
    if cfg is not None and hasattr(cfg, "patch_size") and hasattr(cfg, "mlp_dim"):  # EAT
        t, f = backbone.frontend.shape
        p, d = cfg.patch_size, cfg.embed_dim
        patches = (t // p) * (f // p)
        n = patches + 1  # + CLS
        block = 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * d * cfg.mlp_dim + 2 * 2 * n * n * d
        return 2 * patches * d * p * p + cfg.depth * block
    enc = getattr(backbone, "encoder", None)
    wcfg = getattr(enc, "config", None)
    if wcfg is not None and hasattr(wcfg, "encoder_ffn_dim"):  # Whisper: conv1 (k3, s1), conv2 (k3, s2)
        t, mels = backbone.frontend.shape
        d, n = wcfg.d_model, t // 2
        block = 4 * 2 * n * d * d + 2 * 2 * n * d * wcfg.encoder_ffn_dim + 2 * 2 * n * n * d
        return 2 * t * d * mels * 3 + 2 * n * d * d * 3 + wcfg.encoder_layers * block
    return None


# --------------------------------------------------------------------------------------------------
# Building and measuring one backbone


def backbone_config(name: str, seconds: float) -> tuple[BackboneConfig, str]:
    kind = get_spec(name).input_kind
    if kind == "fbank":
        frames = (round(seconds * 100) // 16) * 16
        return BackboneConfig(name=name, target_frames=frames), f"fbank {frames}x128"
    if kind == "whisper-logmel":
        secs = round(round(seconds / 0.02) * 0.02, 2)
        return BackboneConfig(name=name, seconds=secs), f"log-mel {round(secs * 100)}x80 ({secs:g} s)"
    if kind == "waveform":
        samples = round(seconds * SAMPLE_RATE)
        return BackboneConfig(name=name, num_samples=samples), f"waveform {samples}"
    return BackboneConfig(name=name), kind


@dataclass
class Row:
    name: str
    input: str
    clips_frontend: int
    clips_forward: int
    frontend_cps: float
    forward_cps: float
    flops: FlopCount
    closed_form: int | None
    aten: int
    peak_gflops: float
    cache_clips: int = 0
    miss_s: float = 0.0
    hit_s: float = 0.0
    identity_s: float = 0.0

    @property
    def total_cps(self) -> float:
        return 1.0 / (1.0 / self.frontend_cps + 1.0 / self.forward_cps)

    @property
    def achieved_gflops(self) -> float:
        return self.flops.total / 1e9 * self.forward_cps


def measure(name: str, args, device: torch.device, waves: torch.Tensor) -> Row:
    cfg, input_desc = backbone_config(name, args.seconds)
    bb = build_backbone(cfg).eval()
    fe = bb.frontend
    repeats = args.repeats

    # frontend: waveform -> features, one clip at a time on the CPU
    t_fe = best_time(lambda: torch.stack([fe(w) for w in waves]), repeats, torch.device("cpu"))
    feats = torch.stack([fe(w) for w in waves])
    frontend_cps = len(waves) / t_fe

    # FLOPs per clip, on the CPU copy before moving (exact integer counts, batch of one)
    one = feats[:1]
    flops = count_flops(bb, one)
    aten = aten_flops(bb, one)
    closed = closed_form_flops(bb)

    n_fwd = len(waves)
    if device.type == "cpu" and flops.total / 1e9 > args.heavy_gflop:
        n_fwd = min(n_fwd, args.heavy_clips)
    x = feats[:n_fwd]

    bb.to(device)
    ctx = Context(device=device, batch_size=args.batch_size, eval_batch_size=args.batch_size, bf16=True)

    def forward_all() -> None:
        with torch.inference_mode(), autocast(ctx):
            for s in range(0, n_fwd, args.batch_size):
                bb(x[s:s + args.batch_size].to(device, non_blocking=True)).pooled.float().cpu()

    t_fwd = best_time(forward_all, repeats, device)
    peak = matmul_peak(device, max(3, repeats))  # right after the forward: same load on the machine

    row = Row(name, input_desc, len(waves), n_fwd, frontend_cps, n_fwd / t_fwd, flops, closed, aten, peak)
    measure_cache(row, bb, x, ctx, repeats, device)
    return row


def measure_cache(row: Row, bb: Backbone, x: torch.Tensor, ctx: Context, repeats: int,
                  device: torch.device) -> None:
    """pace.embed.embed with keys: cold cache (forward + save) vs warm cache (identity + load)."""
    keys = [f"bench-clip-{i}" for i in range(len(x))]
    last: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory(prefix="pace-bench-cache-") as tmp:
        fresh = iter(range(1_000_000))

        def miss() -> None:
            ctx.cache = TensorCache(Path(tmp) / f"cold{next(fresh)}")  # a new, empty cache every call
            last["miss"] = embed(bb, x, ctx, keys=keys)
            assert (ctx.cache.misses, ctx.cache.hits) == (1, 0), "expected a cache miss"

        row.miss_s = best_time(miss, repeats, device)
        warm = ctx.cache  # the cache the last miss filled

        def hit() -> None:
            before = warm.hits
            last["hit"] = embed(bb, x, ctx, keys=keys)
            assert warm.hits == before + 1, "expected a cache hit"

        row.hit_s = best_time(hit, repeats, device)
        assert torch.equal(last["hit"], last["miss"]), "the cache hit differs from what the miss stored"
    ctx.cache = None
    row.identity_s = best_time(bb.identity, repeats, device)
    row.cache_clips = len(x)


# --------------------------------------------------------------------------------------------------
# Report


def _g(flops: float) -> str:
    g = flops / 1e9
    return f"{g:.3g}" if g < 100 else f"{g:.0f}"


def _rel(a: int | None, b: int) -> str:
    if a is None:
        return "n/a"
    if b == 0:
        return "n/a"
    d = (a - b) / b
    return "exact" if a == b else f"{d:+.2%}"


def print_report(rows: list[Row], args, device: torch.device) -> None:
    print("\n## Throughput\n")
    print("| backbone | input | clips (frontend/forward) | frontend clips/s | forward clips/s | total clips/s "
          "| GFLOP/clip | achieved GFLOP/s | matmul peak GFLOP/s | % of peak |")
    print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r.name} | {r.input} | {r.clips_frontend}/{r.clips_forward} | {r.frontend_cps:.1f} "
              f"| {r.forward_cps:.2f} | {r.total_cps:.2f} | {_g(r.flops.total)} | {r.achieved_gflops:.1f} "
              f"| {r.peak_gflops:.1f} | {100 * r.achieved_gflops / r.peak_gflops:.1f}% |")

    print("\n## FLOPs per clip (GFLOP) and checks\n")
    print("| backbone | linear | conv | attention matmuls | total (hooks) | closed form | vs hooks "
          "| FlopCounterMode (aten) | vs hooks | vs hooks' linear+conv |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        f = r.flops
        cf = "n/a" if r.closed_form is None else _g(r.closed_form)
        print(f"| {r.name} | {_g(f.linear)} | {_g(f.conv)} | {_g(f.attention)} | {_g(f.total)} | {cf} "
              f"| {_rel(r.closed_form, f.total)} | {_g(r.aten)} | {_rel(r.aten, f.total)} "
              f"| {_rel(r.aten, f.linear + f.conv)} |")

    print("\n## Embedding cache (pace.embed.embed with keys, TensorCache in a temp dir)\n")
    print("| backbone | clips | miss s (forward + save) | hit s (identity + load) | miss/hit "
          "| identity() s (weights sha256) |")
    print("|---|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r.name} | {r.cache_clips} | {r.miss_s:.4f} | {r.hit_s:.4f} | {r.miss_s / r.hit_s:.1f}x "
              f"| {r.identity_s:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", default="eat-tiny,whisper-tiny,eat-base",
                    help="comma-separated registry names (see `pace backbones`)")
    ap.add_argument("--clips", type=int, default=64, help="random clips per backbone")
    ap.add_argument("--seconds", type=float, default=5.12,
                    help="input length; fbank: round(seconds*100) frames rounded down to a multiple of 16; "
                         "Whisper: seconds rounded to a multiple of 0.02")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best is reported)")
    ap.add_argument("--heavy-gflop", type=float, default=20.0,
                    help="on the CPU, backbones above this many GFLOP/clip run --heavy-clips clips")
    ap.add_argument("--heavy-clips", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random audio")
    args = ap.parse_args()
    if args.clips < 1 or args.batch_size < 1 or args.repeats < 1:
        ap.error("--clips, --batch-size and --repeats must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = [n.strip() for n in args.backbones.split(",") if n.strip()]
    for n in names:
        get_spec(n)  # unknown names fail before anything is timed

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"torch {torch.__version__} | device {device} ({dev_name}) | threads {torch.get_num_threads()} "
          f"| clips {args.clips} | {args.seconds:g} s random 16 kHz audio | batch {args.batch_size} "
          f"| best of {args.repeats} after 1 warm-up | bf16 autocast: {device.type == 'cuda'}")
    print("frontend runs on the CPU (as extract_features does); forward, matmul peak and cache on the device.")

    g = torch.Generator().manual_seed(args.seed)
    waves = 0.1 * torch.randn(args.clips, round(args.seconds * SAMPLE_RATE), generator=g)
    rows = []
    for name in names:
        start = time.perf_counter()
        rows.append(measure(name, args, device, waves))
        print(f"  measured {name} in {time.perf_counter() - start:.1f} s", flush=True)
    print_report(rows, args, device)
    print("\ncommand: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
