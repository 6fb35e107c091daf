"""How time and memory scale with sessions and data set size.

    python bench/scale.py head [--sessions 315] [--forms gram recursive] [--device auto]
    python bench/scale.py rss [--clips 300 2000]
    python bench/scale.py sc2 [--trials 1 4] [--real-features]
    python bench/scale.py checkpoint [--sessions 60] [--proj-dim 8192] [--form recursive]
    python bench/scale.py lora [--stacks 1 14 60 315] [--backbone eat-base]

``head``: the analytic head over a TIMIT-2-shaped run (315 sessions of 2 classes x 8 clips, M = 8192,
generated 768-d embeddings), through ``AnalyticClassifier.fit_session`` exactly as RanPAC / PACE call
it, on the trial's device (``--device auto``: the GPU when present), statistics in float64. Forms:
``gram`` = Gram form with per-session ridge selection (RanPAC's default), ``recursive`` = Woodbury form
at a fixed lam. Prints per-session times, the total per form, and the ratio of the mean of the last 20
sessions to the first 20 (wall and process CPU time; on a shared CPU the CPU time is the steadier
measure, on a GPU only wall time means anything). The Gram form's per-session cost is one M x M Cholesky
whatever the history, so by default only its first and last ``--gram-window`` sessions solve; the
sessions between only accumulate (G, C) (the statistics a solve depends on are then exactly those of a
full run) and its total is extrapolated from the solved sessions; ``--gram-window 0`` solves every
session.

``rss``: peak RSS (``/usr/bin/time -v``) of ``pace run`` (SimpleCIL, logmel-stats backbone) on
generated folders of one-second clips of each size, each in a fresh process and a fresh cache
(featurisation included, which is the peak).

``sc2``: a Speech-Commands-sized generated data set (35 classes x 3,024 one-second clips), 7 sessions,
SimpleCIL on logmel-stats: peak RSS per trial, then the same with several trials started at once on
the node (the store is shared through the page cache; the bench counts how often it was featurised).
Frontend rows are synthetic unless ``--real-features`` (everything after the frontend is the real path).

``checkpoint``: one ``pace run`` of many small sessions with a large analytic head (RanPAC, no FSA,
M = 8192, recursive form by default), writing the resume checkpoint after every session and with
``runtime.checkpoint_every: auto``, side by side: wall time, checkpoints written and their time, and
whether the accuracy matrices are identical.

``lora``: one forward (no_grad) and one training step of a backbone (``eat-base`` from its config,
random weights, 1 s inputs, LoRA rank 8 on q and v of every block, as PACE and ``lorasub`` put it)
carrying 1, 14 (PACE's T_3 on TIMIT) or 315 (``lorasub`` on TIMIT-2: a stack per session) LoRA
stacks, with the earlier stacks folded into one weight (``LoRALinear.forward``) and with every stack
applied on its own (``forward_unfolded``, the cost before the fold), side by side; prints times,
their ratios and the largest output difference between the two. The unfolded step is timed only
up to ``--each-step-max`` stacks: its backward holds one output-sized gradient per stack at once
(at 315 stacks of eat-base, batch 8, it was killed at 24 GiB RSS here).
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

import torch


# ------------------------------------------------------------------------------------------------ head

def head_bench(args: argparse.Namespace) -> None:
    from pace.methods.parts import AnalyticClassifier, AnalyticConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    T, per_class, ways = args.sessions, args.clips_per_class, args.ways
    g = torch.Generator().manual_seed(0)
    means = torch.randn(T * ways, args.in_dim, generator=g)
    print(f"head: {T} sessions x {ways} classes x {per_class} clips, M={args.proj_dim}, D={args.in_dim}, "
          f"device={device}, threads={torch.get_num_threads()}")
    for form in args.forms:
        ridge = "select" if form == "gram" else "fixed"
        cfg = AnalyticConfig(proj_dim=args.proj_dim, ridge=ridge, lam=args.lam, form=form)
        clf = AnalyticClassifier(args.in_dim, cfg, seed=0).to(device)
        window = args.gram_window if form == "gram" else 0
        times: dict[int, float] = {}
        cpus: dict[int, float] = {}  # process CPU time: less sensitive to a busy machine (GPU: use wall)
        for t in range(T):
            y = torch.arange(t * ways, (t + 1) * ways).repeat_interleave(per_class)
            gz = torch.Generator().manual_seed(1000 + t)
            z = (means[y] + 2.0 * torch.randn(len(y), args.in_dim, generator=gz)).to(device)
            yd = y.to(device)
            solve = not window or t < window or t >= T - window
            _sync(device)
            start, cpu0 = time.perf_counter(), time.process_time()
            if solve:
                clf.fit_session(z, yd, (t + 1) * ways, torch.Generator().manual_seed(t))
            else:  # same statistics as a full run; only the (history-independent) solve is skipped
                clf.head.accumulate(clf.proj(z.float()), yd, (t + 1) * ways)
            _sync(device)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
            if solve:
                times[t], cpus[t] = wall, cpu
            if args.verbose or t < 3 or t >= T - 3:
                print(f"  {form:9s} session {t + 1:3d}: {wall:8.3f} s wall, {cpu:8.3f} s CPU"
                      + ("" if solve else " (accumulate only)"), flush=True)
        solved = sorted(times)
        total, total_cpu = sum(times.values()), sum(cpus.values())
        note = "" if len(times) == T else \
            f" (over {len(times)} solved sessions; all {T} extrapolated: {total / len(times) * T:.1f} s)"
        print(f"{form:9s} total head time {total:9.1f} s wall, {total_cpu:9.1f} s CPU{note}")
        n = max(1, min(20, len(solved) // 2))
        for name, tt in (("wall", times), ("CPU", cpus)):
            first, last = [tt[t] for t in solved[:n]], [tt[t] for t in solved[-n:]]
            print(f"{form:9s} last-{n} / first-{n} per-session {name} time = "
                  f"{(sum(last) / len(last)) / (sum(first) / len(first)):.2f}x")


def lora_bench(args: argparse.Namespace) -> None:
    from pace.backbones.registry import build_backbone
    from pace.config import BackboneConfig
    from pace.methods.parts import Adapter, LoRAConfig, freeze_backbone
    from pace.peft.lora import LoRALinear

    if args.threads:
        torch.set_num_threads(args.threads)
    bb = build_backbone(BackboneConfig(name=args.backbone, target_frames=args.frames), init_seed=0)
    freeze_backbone(bb)
    bb.eval()
    adapter = Adapter(bb, LoRAConfig())
    adapter.attach(list(range(bb.num_blocks)))
    layers = list(adapter.manager.modules.values())
    x = torch.randn(args.batch, *bb.frontend.shape, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)

    def timed(fn) -> float:
        fn()  # warm-up (and the fold's one build)
        start = time.perf_counter()
        for _ in range(args.reps):
            fn()
        return (time.perf_counter() - start) / args.reps

    def step() -> None:
        bb(x).pooled.square().mean().backward()

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return bb(x).pooled

    print(f"lora: {args.backbone}, {bb.num_blocks} blocks, {len(layers)} LoRA layers, batch {args.batch} x "
          f"{tuple(bb.frontend.shape)}, threads {torch.get_num_threads()}, {args.reps} reps; "
          "step = forward + backward")
    print(f"{'stacks':>6} {'fwd folded':>11} {'fwd each':>10} {'ratio':>6} {'step folded':>12} {'step each':>10} "
          f"{'ratio':>6} {'max |diff|':>11}")
    for target in sorted(args.stacks):
        while adapter.num_sessions < target:
            adapter.new_session(g)
            with torch.no_grad():  # trained-looking stacks: B != 0, so every stack changes the output
                for m in layers:
                    m.lora_B[-1].normal_(0.0, 0.01, generator=g)
        out = {}
        for name, fwd in (("folded", LoRALinear.forward), ("each", LoRALinear.forward_unfolded)):
            for m in layers:
                m.forward = fwd.__get__(m)
            y = forward()
            t_fwd = timed(forward)
            t_step = timed(step) if name == "folded" or target <= args.each_step_max else None
            out[name] = (t_fwd, t_step, y)
        for m in layers:
            del m.forward  # back to the class's method
        (ff, sf, yf), (fe, se, ye) = out["folded"], out["each"]
        each_step = (f"{se * 1e3:8.1f}ms {se / sf:5.2f}x" if se is not None
                     else f"{'skipped':>10} {'':>6}")  # its backward memory grows with the stacks
        print(f"{target:6d} {ff * 1e3:9.1f}ms {fe * 1e3:8.1f}ms {fe / ff:5.2f}x {sf * 1e3:10.1f}ms {each_step} "
              f"{float((yf - ye).abs().max()):11.2e}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ checkpoint

def checkpoint_bench(args: argparse.Namespace) -> None:
    """The same run with a checkpoint after every session and with ``checkpoint_every: auto``."""
    from pace.config import validate_config
    from pace.runner import Runner

    work = Path(args.work or tempfile.mkdtemp(prefix="pace-ckpt-"))
    raw = {"name": "ckpt",
           "data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 2 * args.sessions,
                    "synthetic_clips_per_class": args.clips_per_class},
           "scenario": {"num_sessions": args.sessions},
           "backbone": {"name": "logmel-stats", "target_frames": 112},
           "method": {"name": "ranpac", "fsa": {"enabled": False},
                      "analytic": {"proj_dim": args.proj_dim, "form": args.form,
                                   "ridge": "select" if args.form == "gram" else "fixed"}},
           "runtime": {"device": "cpu", "progress": False, "cache_dir": str(work / "cache")}}

    class Counting(Runner):
        writes, write_s = 0, 0.0

        def _checkpoint(self, done):
            t0 = time.perf_counter()
            n = super()._checkpoint(done)
            self.writes, self.write_s = self.writes + 1, self.write_s + time.perf_counter() - t0
            return n

    Runner(validate_config(raw), work / "warm").prepare(resume=False)  # featurise once, outside the timing
    print(f"checkpoint: {args.sessions} sessions of 2 classes x {args.clips_per_class} clips, "
          f"RanPAC head M={args.proj_dim} ({args.form}), logmel-stats, CPU")
    out = {}
    for every in (1, "auto"):
        cfg = validate_config({**raw, "runtime": {**raw["runtime"], "checkpoint_every": every}})
        runner = Counting(cfg, work / f"every-{every}")
        start = time.perf_counter()
        runner.run(resume=False)
        wall = time.perf_counter() - start
        out[every] = (wall, runner)
        learner = sum(r.time_s for r in runner.results)
        print(f"  checkpoint_every={every!s:5s} wall {wall:7.1f} s, learner {learner:6.1f} s, "
              f"{runner.writes:3d} checkpoints written in {runner.write_s:6.1f} s", flush=True)
    same = (work / "every-1" / "accuracy_matrix.csv").read_bytes() == \
        (work / "every-auto" / "accuracy_matrix.csv").read_bytes()
    print(f"auto / every session wall = {out['auto'][0] / out[1][0]:.2f}x; accuracy matrices identical: {same}")


# ------------------------------------------------------------------------------------------------ rss

def make_folder(root: Path, clips: int, classes: int = 10, seconds: float = 1.0) -> Path:
    """``root/<class>/<i>.wav``: one-second tones + noise, a pitch per class (cheap to generate)."""
    import numpy as np
    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = int(16_000 * seconds)
    tt = np.arange(n) / 16_000
    for i in range(clips):
        c = i % classes
        d = root / f"class{c:02d}"
        d.mkdir(exist_ok=True)
        wave = 0.3 * np.sin(2 * np.pi * (200 + 90 * c) * tt) + 0.05 * rng.standard_normal(n)
        sf.write(d / f"{i:06d}.wav", wave.astype(np.float32), 16_000)
    return root


RUN_YAML = """\
data: {{dataset: folder, root: {root}}}
backbone: {{name: logmel-stats}}
method: {{name: simplecil}}
scenario: {{num_sessions: 5, test_fraction: 0.2}}
runtime: {{device: cpu, num_threads: 1, progress: false, cache_dir: {cache}}}
"""


def peak_rss_mib(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS MiB, wall s) of one command by GNU time."""
    start = time.perf_counter()
    # cwd outside any checkout: ``python -m`` puts the cwd first on sys.path, ahead of PYTHONPATH
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True,
                         cwd=tempfile.gettempdir())
    wall = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"bench/scale.py: {' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    return kib / 1024, wall


def rss_bench(args: argparse.Namespace) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="pace-scale-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": args.repo or str(Path(__file__).resolve().parents[1])}
    peaks = []
    for clips in args.clips:
        folder = work / f"clips{clips}"
        if not folder.is_dir():
            make_folder(folder, clips)
        tag = f"{clips}-{time.time_ns()}"  # fresh cache and output: featurisation is part of the peak
        cfg = work / f"run{tag}.yaml"
        cfg.write_text(RUN_YAML.format(root=folder, cache=work / f"cache{tag}"))
        cmd = [sys.executable, "-m", "pace.cli", "run", str(cfg), "--out", str(work / f"out{tag}")]
        peak, wall = peak_rss_mib(cmd, env)
        peaks.append(peak)
        print(f"rss: {clips:6d} clips: peak RSS {peak:8.1f} MiB, wall {wall:6.1f} s", flush=True)
    if len(peaks) > 1:
        print(f"rss: growth {args.clips[0]} -> {args.clips[-1]} clips: {peaks[-1] - peaks[0]:.1f} MiB "
              f"({1024 * (peaks[-1] - peaks[0]) / (args.clips[-1] - args.clips[0]):.1f} KiB per clip)")


# ------------------------------------------------------------------------------------------------ sc2

SC2_YAML = """\
data: {{dataset: synthetic, synthetic_classes: {classes}, synthetic_clips_per_class: {per_class}}}
backbone: {{name: logmel-stats}}
method: {{name: simplecil}}
scenario: {{num_sessions: {sessions}, test_fraction: 0.2}}
runtime: {{device: cpu, num_threads: 1, progress: false, cache_dir: {cache}}}
"""


def fill_store(cfg_path: Path) -> int:
    """Write synthetic frontend rows (1 s of frames per clip, a mean per class + noise) into the store
    entry the runner will open for this config; returns its size in bytes. Only the frontend is skipped:
    the store, splits, embedding and evaluation are the real code path."""
    from pace.backbones.registry import build_backbone
    from pace.config import load_config
    from pace.data.datasets import build_dataset
    from pace.data.features import store_key
    from pace.store import FeatureStore

    torch.set_num_threads(1)  # per-clip tensors are tiny: a thread pool only adds hand-off cost
    cfg = load_config(cfg_path)
    ds = build_dataset(cfg.data)
    fe = build_backbone(cfg.backbone).frontend
    store = FeatureStore(cfg.runtime.cache_dir)
    key = store_key(ds, fe)
    if store.open(key) is not None:
        return store.open(key).nbytes
    frames = 101  # 1 s at a 10 ms shift
    labels = sorted({it.label for it in ds.items})
    g = torch.Generator().manual_seed(0)
    means = torch.randn(len(labels), fe.num_mel_bins, generator=g)
    cls = {lab: i for i, lab in enumerate(labels)}
    pad = fe.pad_row()

    def rows():
        for i, it in enumerate(ds.items):
            row = pad.expand(fe.target_frames, -1).clone()
            row[:frames] = means[cls[it.label]] + torch.randn(frames, fe.num_mel_bins, generator=g)
            yield i, row

    return store.write(key, rows(), fe.shape, pad).nbytes


def sc2_bench(args: argparse.Namespace) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="pace-sc2-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cfg = work / "sc2.yaml"
    cache = work / f"cache-{args.classes}x{args.clips_per_class}{'-real' if args.real_features else ''}"
    cfg.write_text(SC2_YAML.format(classes=args.classes, per_class=args.clips_per_class, sessions=args.sessions,
                                   cache=cache))
    n = args.classes * args.clips_per_class
    start = time.perf_counter()
    size = fill_store(cfg) if not args.real_features else 0
    print(f"sc2: {n} clips, {args.sessions} sessions; synthetic store entry {size / 2**30:.2f} GiB "
          f"written in {time.perf_counter() - start:.0f} s" if size else f"sc2: {n} clips (real featurisation)")
    one = None
    for k in args.trials:
        # a fresh embedding cache per level, the store shared: concurrent trials then share the
        # embedding work through single flight instead of reading what the previous level left
        level = work / f"level-{k}-{time.time_ns()}"
        (level / "cache").mkdir(parents=True)
        (cache / "features").mkdir(parents=True, exist_ok=True)
        (level / "cache" / "features").symlink_to(cache / "features")
        cfg_k = level / "sc2.yaml"
        cfg_k.write_text(cfg.read_text().replace(f"cache_dir: {cache}", f"cache_dir: {level / 'cache'}"))
        outs = [level / f"out-{i}" for i in range(k)]
        procs = [subprocess.Popen(["/usr/bin/time", "-v", sys.executable, "-m", "pace.cli", "run", str(cfg_k),
                                   "--out", str(o), "--quiet"], env=env, cwd=tempfile.gettempdir(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for o in outs]
        t0 = time.perf_counter()
        errs = [p.communicate()[1] for p in procs]
        wall = time.perf_counter() - t0
        if any(p.returncode for p in procs):
            sys.exit("bench/scale.py sc2: a trial failed:\n" + "\n".join(e[-2000:] for e in errs))
        peaks = [int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", e).group(1)) / 1024 for e in errs]
        featurised = sum(e.count("into the feature store") for e in errs)
        store_mib = sum(f.stat().st_size for f in (cache / "features").glob("*.rows")) / 2**20
        node = sum(peaks) + store_mib  # private memory of every trial + the store once in the page cache
        one = one or node
        print(f"sc2: {k} concurrent trial(s): peak RSS per trial max {max(peaks):.0f} MiB, sum {sum(peaks):.0f} MiB; "
              f"+ store in the page cache once {store_mib:.0f} MiB = {node:.0f} MiB ({node / one:.2f}x one trial); "
              f"featurised {featurised}x; wall {wall:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("head", help="analytic head over many small sessions (TIMIT-2 shape)")
    h.add_argument("--sessions", type=int, default=315)
    h.add_argument("--ways", type=int, default=2)
    h.add_argument("--clips-per-class", type=int, default=8)
    h.add_argument("--proj-dim", type=int, default=8192)
    h.add_argument("--in-dim", type=int, default=768)
    h.add_argument("--lam", type=float, default=1.0, help="the recursive form's fixed lam")
    h.add_argument("--forms", nargs="+", choices=["gram", "recursive"], default=["recursive", "gram"])
    h.add_argument("--gram-window", type=int, default=20,
                   help="Gram form: solve only the first and last this many sessions (0: all)")
    h.add_argument("--device", default="auto")
    h.add_argument("--threads", type=int, default=None)
    h.add_argument("--verbose", action="store_true")
    r = sub.add_parser("rss", help="peak RSS of pace run vs the number of clips")
    r.add_argument("--clips", type=int, nargs="+", default=[300, 2000])
    r.add_argument("--work", default=None, help="folder for generated data, caches and runs (default: a temp dir)")
    r.add_argument("--repo", default=None, help="run another checkout's pace (e.g. main, for a before/after)")
    c = sub.add_parser("sc2", help="a Speech-Commands-sized data set: peak RSS per trial, concurrent trials")
    c.add_argument("--classes", type=int, default=35)
    c.add_argument("--clips-per-class", type=int, default=3024, help="35 x 3024 = 105,840 (SC2: 105,829)")
    c.add_argument("--sessions", type=int, default=7)
    c.add_argument("--trials", type=int, nargs="+", default=[1, 4], help="concurrency levels to run")
    c.add_argument("--real-features", action="store_true",
                   help="featurise the generated audio instead of writing synthetic rows (slow at full size)")
    c.add_argument("--work", default=None)
    k = sub.add_parser("checkpoint", help="run time with a checkpoint every session vs checkpoint_every: auto")
    k.add_argument("--sessions", type=int, default=60)
    k.add_argument("--clips-per-class", type=int, default=10)
    k.add_argument("--proj-dim", type=int, default=8192)
    k.add_argument("--form", choices=["recursive", "gram"], default="recursive")
    k.add_argument("--work", default=None)
    lo = sub.add_parser("lora", help="backbone forward / train step with many LoRA stacks, folded vs each on its own")
    lo.add_argument("--stacks", type=int, nargs="+", default=[1, 14, 60, 315])
    lo.add_argument("--backbone", default="eat-base")
    lo.add_argument("--frames", type=int, default=112, help="fbank frames (112 = about 1 s, a multiple of 16)")
    lo.add_argument("--batch", type=int, default=8)
    lo.add_argument("--reps", type=int, default=3)
    lo.add_argument("--threads", type=int, default=None)
    lo.add_argument("--each-step-max", type=int, default=60,
                    help="time the unfolded training step only up to this many stacks (its backward "
                         "memory grows with them: more than 20 GiB at 315 stacks of eat-base)")
    args = ap.parse_args()
    {"head": head_bench, "rss": rss_bench, "sc2": sc2_bench, "checkpoint": checkpoint_bench,
     "lora": lora_bench}[args.cmd](args)


if __name__ == "__main__":
    main()
