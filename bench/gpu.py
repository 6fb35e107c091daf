"""GPU readiness in one short script (budget: under 8 minutes on one GPU).

    python bench/gpu.py [--quick]
    python bench/gpu.py --dry-run     # the CPU stands in for the GPU, tiny sizes: checks the script itself

1. the bf16 and fp64 matmul peaks it measures (TFLOP/s);
2. CPU vs GPU agreement: EAT-base (random init, fixed seed) forward on a batch in fp32 and under bf16
   autocast; the analytic head (float64) fitted on the same sessions on CPU and GPU; one PACE session
   (eat-tiny, generated audio) through the runner on CPU and on the GPU;
3. EAT-base clips/s (512 frames, bf16 autocast, eval) against the measured bf16 peak (FLOP estimate
   from the model's linear layers and attention);
4. the analytic head over 315 TIMIT-2-shaped sessions on the GPU (``bench/scale.py head``);
5. four ``pace run`` trials packed on the one GPU at once vs one alone (wall time, peak GPU memory).

Prints one line per check. Without a GPU it says so and exits 0. ``--dry-run`` runs every check with
the CPU in the GPU's place and small sizes (eat-tiny, M = 1024, 20 head sessions), so a bug in the
script shows here (tests/test_bench_gpu.py) and not in a GPU session's few minutes; its numbers mean
nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Sizes:
    """What the checks run on: the real sizes on a GPU, small ones for ``--dry-run`` on the CPU."""

    device: torch.device
    eat: str = "eat-base"
    frames: int = 512
    mels: int = 128
    matmul_n: int = 8192
    proj_dim: int = 8192
    head_sessions: int = 315
    throughput_batch: int = 32


DRY_RUN = dict(eat="eat-tiny", frames=48, matmul_n=512, proj_dim=1024, head_sessions=20, throughput_batch=4)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def eat(sz: Sizes):
    from pace.backbones.registry import build_backbone
    from pace.config import BackboneConfig

    return build_backbone(BackboneConfig(name=sz.eat, target_frames=sz.frames), init_seed=0).eval()


def eat_agreement(sz: Sizes) -> None:
    device = sz.device
    bb = eat(sz)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, sz.frames, sz.mels, generator=g)
    with torch.inference_mode():
        ref = bb(x).pooled.double()
        gpu = bb.to(device)
        out32 = gpu(x.to(device)).pooled.double().cpu()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out16 = gpu(x.to(device)).pooled.double().cpu()
    rel = lambda a: float((a - ref).norm() / ref.norm())  # noqa: E731
    print(f"agreement: {sz.eat} pooled output, GPU fp32 vs CPU rel. err {rel(out32):.1e}; "
          f"GPU bf16 autocast vs CPU {rel(out16):.1e}")


def head_agreement(sz: Sizes) -> None:
    device = sz.device
    from pace.methods.parts import AnalyticClassifier, AnalyticConfig

    g = torch.Generator().manual_seed(0)
    means = torch.randn(20, 768, generator=g)
    z_test = means.repeat_interleave(4, 0) + torch.randn(80, 768, generator=g)
    for form, ridge in (("gram", "select"), ("recursive", "fixed")):
        cfg = AnalyticConfig(proj_dim=sz.proj_dim, form=form, ridge=ridge)
        clfs = [AnalyticClassifier(768, cfg, seed=0).to(d) for d in ("cpu", device)]
        for t in range(10):
            y = torch.arange(2 * t, 2 * t + 2).repeat_interleave(8)
            z = means[y] + torch.randn(16, 768, generator=g)
            for clf in clfs:
                dev = clf.head.device
                clf.fit_session(z.to(dev), y.to(dev), 2 * t + 2, torch.Generator().manual_seed(t))
        cpu, gpu = (clf.logits(z_test.to(clf.head.device)).cpu() for clf in clfs)
        rel = float((gpu - cpu).norm() / cpu.norm())
        print(f"agreement: analytic head {form}, GPU vs CPU logits rel. err {rel:.1e}, "
              f"same argmax {bool(torch.equal(gpu.argmax(1), cpu.argmax(1)))}, lam CPU {clfs[0].last_lam:g} GPU "
              f"{clfs[1].last_lam:g}, dtype {clfs[1].head.G.dtype if form == 'gram' else clfs[1].head.R.dtype}")


PACE_RUN = """\
name: gpu-check
data: {{dataset: synthetic, label: fine, synthetic_classes: 6, synthetic_clips_per_class: 8}}
scenario: {{num_sessions: {sessions}}}
backbone: {{name: {backbone}, target_frames: {frames}}}
method: {{name: pace, fsa_epochs: 1, msa_epochs: 1, n_views: 4, loss_views: 2, cka_samples: 16,
         analytic: {{proj_dim: 1024}}}}
runtime: {{device: {device}, progress: false, batch_size: 8, cache_dir: {cache}, bf16: false}}
"""


def pace_run(work: Path, device: str, tag: str, backbone: str = "eat-tiny", frames: int = 48,
             sessions: int = 1) -> tuple[subprocess.Popen, Path]:
    cfg = work / f"{tag}.yaml"
    cfg.write_text(PACE_RUN.format(device=device, cache=work / "cache", backbone=backbone, frames=frames,
                                   sessions=sessions))
    out = work / tag
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pace.cli", "run", str(cfg), "--out", str(out), "--quiet"],
                            env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, out


def wait(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"bench/gpu.py: {what} failed:\n{err[-3000:]}")


def session_agreement(work: Path, sz: Sizes) -> None:
    runs = {"cpu": pace_run(work, "cpu", "pace-cpu"), "gpu": pace_run(work, sz.device.type, "pace-gpu")}
    for d, (p, _) in runs.items():
        wait(p, f"PACE session on {d}")
    rows = {d: (out / "accuracy_matrix.csv").read_text() for d, (_, out) in runs.items()}
    print(f"agreement: one PACE session (eat-tiny, fp32) CPU vs GPU accuracy rows identical: "
          f"{rows['cpu'] == rows['gpu']} ({rows['cpu'].splitlines()[-1]} vs {rows['gpu'].splitlines()[-1]})")


def eat_throughput(sz: Sizes, peak_bf16: float, reps: int = 5) -> None:
    device, batch = sz.device, sz.throughput_batch
    bb = eat(sz).to(device)
    x = torch.randn(batch, sz.frames, sz.mels, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        bb(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            bb(x)
        sync(device)
    clips_s = batch * reps / (time.perf_counter() - start)
    # per block 24 d^2 n + 4 n^2 d FLOPs over n tokens of width d (EAT-base on 512 x 128 fbank,
    # 16 x 16 patches: 256 tokens + CLS, d = 768, 12 blocks)
    n = (sz.frames // 16) * (sz.mels // 16) + 1
    d, blocks = bb.embed_dim, bb.num_blocks
    flops = blocks * (24 * d * d * n + 4 * n * n * d)
    print(f"throughput: {sz.eat} {clips_s:.0f} clips/s (bf16, batch {batch}) = "
          f"{clips_s * flops / 1e12:.1f} TFLOP/s, {100 * clips_s * flops / 1e12 / peak_bf16:.0f} % of the measured "
          f"bf16 peak {peak_bf16:.0f} TFLOP/s")


def packed_trials(work: Path, sz: Sizes) -> None:
    def batch(k: int, tag: str) -> float:
        start = time.perf_counter()
        runs = [pace_run(work, sz.device.type, f"{tag}-{i}", backbone=sz.eat, frames=sz.frames, sessions=3)
                for i in range(k)]
        for p, _ in runs:
            wait(p, f"{tag} trial")
        return time.perf_counter() - start

    batch(1, "warm")  # features into the cache once
    one, four = batch(1, "one"), batch(4, "four")
    print(f"packing: 4 PACE trials ({sz.eat}, 3 sessions) on one GPU at once: {four:.0f} s vs one alone {one:.0f} s "
          f"({4 * one / four:.2f}x the throughput of one)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the 315-session head run and the packing check")
    ap.add_argument("--dry-run", action="store_true",
                    help="run every check with the CPU in the GPU's place at small sizes (tests the script)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    if args.dry_run:
        sz = Sizes(torch.device("cpu"), **DRY_RUN)
        print("dry run: the CPU stands in for the GPU; the numbers mean nothing")
    elif not torch.cuda.is_available():
        print("no GPU: nothing to check here (run on a GPU machine, or --dry-run to test this script)")
        return
    else:
        sz = Sizes(torch.device("cuda"))
        print(f"device: {torch.cuda.get_device_name(sz.device)}")
    peak16 = matmul_peak(sz.device, torch.bfloat16, n=sz.matmul_n)
    peak64 = matmul_peak(sz.device, torch.float64, n=sz.matmul_n // 2, reps=5)
    print(f"peak: bf16 matmul {peak16:.0f} TFLOP/s, fp64 matmul {peak64:.1f} TFLOP/s")
    with tempfile.TemporaryDirectory(prefix="pace-gpu-") as tmp:
        work = Path(tmp)
        eat_agreement(sz)
        head_agreement(sz)
        session_agreement(work, sz)
        eat_throughput(sz, peak16)
        if not args.quick:
            subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), "head", "--device", sz.device.type,
                            "--gram-window", "0", "--sessions", str(sz.head_sessions), "--proj-dim", str(sz.proj_dim)],
                           check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            packed_trials(work, sz)


if __name__ == "__main__":
    main()
