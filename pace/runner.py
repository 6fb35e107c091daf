"""The session loop. One runner serves ``pace run``, a Ray Tune trial and the tests.

For t = 1..T: ``learner.learn(session t)`` -> evaluate on the test split of every seen session (one
shared head, no task id) -> accuracy-matrix row -> reporters. After each session the learner state,
RNG state and results so far are checkpointed atomically; a run restarted on the same output folder
resumes after its last finished session and gives the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from pace import metrics
from pace.backbones.registry import build_backbone
from pace.cache import FeatureCache
from pace.config import RunConfig, dump_config
from pace.data.datasets import build_dataset
from pace.data.features import FeatureTable, extract_features
from pace.data.scenario import Scenario, build_scenario
from pace.methods.base import Context, Learner, Session, Split, build_learner
from pace.provenance import provenance
from pace.store import LazyRows

CHECKPOINT = "checkpoint.pt"


@dataclass
class SessionResult:
    index: int  # 0-based
    row: list[float]  # accuracy (%) on each seen session's test set
    acc_all: float  # % on all seen classes (test-size weighted)
    acc_new: float  # % on the session just learned
    acc_old: float  # % on earlier sessions (NaN after the first)
    forgetting: float  # forgetting so far (% points)
    num_classes: int
    train_samples: int
    time_s: float
    peak_mem_mb: float
    counters: dict[str, int] = field(default_factory=dict)
    analysis: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat per-session metrics for trackers (step = session index)."""
        out = {"acc_all": self.acc_all, "acc_new": self.acc_new, "forgetting": self.forgetting,
               "time_s": self.time_s, "peak_mem_mb": self.peak_mem_mb, "num_classes": self.num_classes}
        if not math.isnan(self.acc_old):
            out["acc_old"] = self.acc_old
        out.update({f"count_{k}": float(v) for k, v in self.counters.items()})
        out.update(self.analysis)
        return out


class Reporter(Protocol):
    def on_start(self, runner: "Runner") -> None: ...

    def on_session(self, runner: "Runner", result: SessionResult) -> None: ...

    def on_end(self, runner: "Runner", final: dict[str, Any]) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device={name!r} but CUDA is not available on this machine")
    return dev


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Runner:
    def __init__(self, cfg: RunConfig, out_dir: str | Path, reporters: list[Reporter] | None = None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.reporters = list(reporters or [])
        self.results: list[SessionResult] = []
        self.device = resolve_device(cfg.runtime.device)
        if cfg.runtime.num_threads:
            torch.set_num_threads(cfg.runtime.num_threads)
        self.cache = FeatureCache(cfg.runtime.cache_dir) if cfg.runtime.use_cache else None
        self.ctx = Context(device=self.device, batch_size=cfg.runtime.batch_size,
                           eval_batch_size=cfg.runtime.eval_batch_size, seeds=cfg.seeds,
                           cache=self.cache, progress=cfg.runtime.progress, bf16=cfg.runtime.bf16)
        self.table: FeatureTable | None = None
        self.scenario: Scenario | None = None
        self.learner: Learner | None = None
        self._test_splits: dict[int, Split] = {}
        self.analysis_hooks: list = []  # filled by prepare() (pace.hooks) and by sweep trials

    # ---------------------------------------------------------------- set-up
    def prepare(self) -> None:
        cfg = self.cfg
        # Randomly initialised backbones draw from the run's init seed unless the config pins one.
        self.backbone = build_backbone(cfg.backbone, init_seed=cfg.seeds.init).to(self.device)
        dataset = build_dataset(cfg.data)
        self.dataset = dataset
        self.table = extract_features(dataset, self.backbone.frontend, self.cache, skip_bad=cfg.data.skip_bad,
                                      progress=cfg.runtime.progress, dtype=cfg.runtime.feature_dtype)
        self.scenario = build_scenario(self.table.items, cfg.scenario, cfg.seeds)
        index = {lab: i for i, lab in enumerate(self.scenario.class_order)}
        self.y_all = torch.tensor([index.get(it.label, -1) for it in self.table.items], dtype=torch.long)
        self.keys_all = [f"{dataset.name}/{it.key}" for it in self.table.items]
        self.learner = build_learner(cfg.method, self.backbone, self.ctx)
        self.out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, self.out / "config.yaml")
        self.scenario.write(self.out / "splits", self.table.items)
        (self.out / "run_info.json").write_text(json.dumps(
            {**provenance(), "dataset": dataset.description, "bad_files": self.table.bad,
             "device": str(self.device)}, indent=1))
        from pace.hooks import build_hooks
        self.analysis_hooks = build_hooks(self)

    def split(self, rows: list[int]) -> Split:
        """A split indexes into the feature table; with the store its rows load per batch, on use."""
        idx = torch.tensor(rows, dtype=torch.long)
        x = self.table.x
        return Split(x.take(rows) if isinstance(x, LazyRows) else x[idx], self.y_all[idx],
                     [self.keys_all[i] for i in rows])

    def test_split(self, i: int) -> Split:
        """Session i's test split, gathered once: every later session evaluates it again."""
        if i not in self._test_splits:
            self._test_splits[i] = self.split(self.scenario.sessions[i].test)
        return self._test_splits[i]

    def session(self, t: int) -> Session:
        spec = self.scenario.sessions[t]
        return Session(index=t, classes=spec.classes, num_seen=spec.classes[-1] + 1,
                       train=self.split(spec.train), val=self.split(spec.val) if spec.val else None)

    # ---------------------------------------------------------------- loop
    def evaluate(self, t: int) -> list[float]:
        """Accuracy (%) on the test set of every session 0..t."""
        row = []
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.inference_mode():
            for i in range(t + 1):
                test = self.test_split(i)
                correct = (self.learner.predict_split(test).argmax(-1).cpu() == test.y).sum().item()
                row.append(100.0 * correct / len(test))
        self.backbone.train(was_training)
        return row

    def test_sizes(self) -> list[int]:
        return [len(s.test) for s in self.scenario.sessions]

    def run(self, resume: bool = True) -> dict[str, Any]:
        if self.learner is None:
            self.prepare()
        start = self._restore() if resume else 0
        for r in self.reporters:
            r.on_start(self)
        T = len(self.scenario.sessions)
        for t in range(start, T):
            self.results.append(self._run_session(t))
            self._checkpoint(t + 1)
            for r in self.reporters:
                r.on_session(self, self.results[-1])
        final = self.finish()
        for r in self.reporters:
            r.on_end(self, final)
        return final

    def _run_session(self, t: int) -> SessionResult:
        session = self.session(t)
        self.ctx.counters = {}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        self.learner.learn(session)
        self.learner.num_seen = session.num_seen
        elapsed = time.perf_counter() - t0
        counters = dict(self.ctx.counters)  # the learner's cost only, not the evaluation's
        row = self.evaluate(t)
        matrix = [r.row for r in self.results] + [row]
        sizes = self.test_sizes()[: t + 1]
        return SessionResult(
            index=t, row=row, acc_all=metrics.accuracy_per_session(matrix, sizes)[-1], acc_new=row[-1],
            acc_old=metrics.old_accuracy_per_session(matrix, sizes)[-1],
            forgetting=metrics.forgetting(matrix), num_classes=session.num_seen,
            train_samples=len(session.train), time_s=elapsed, peak_mem_mb=_peak_mem_mb(self.device),
            counters=counters, analysis=self._analysis(t))

    def _analysis(self, t: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for hook in self.analysis_hooks:
            out.update(hook(self, t))
        return out

    # ---------------------------------------------------------------- outputs
    @property
    def matrix(self) -> list[list[float]]:
        return [r.row for r in self.results]

    def finish(self) -> dict[str, Any]:
        m, sizes = self.matrix, self.test_sizes()
        summ = metrics.summary(m, sizes)
        final = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summ.items()}
        final.update({
            "accuracy_per_session": metrics.accuracy_per_session(m, sizes),
            "forgetting_per_session": metrics.forgetting_curve(m),
            "num_sessions": len(m),
            "num_classes": self.scenario.num_classes,
            "test_sizes": sizes,
            "train_sizes": [len(s.train) for s in self.scenario.sessions],
            "total_time_s": sum(r.time_s for r in self.results),
            "peak_mem_mb": max(r.peak_mem_mb for r in self.results),
            "units": "accuracies, forgetting and bwt in percent",
        })
        self.write_matrix(self.out / "accuracy_matrix.csv", m)
        (self.out / "metrics.json").write_text(json.dumps(final, indent=1))
        (self.out / "sessions.json").write_text(json.dumps([asdict(r) for r in self.results], indent=1,
                                                           default=str))
        return final

    @staticmethod
    def write_matrix(path: Path, m: list[list[float]]) -> None:
        T = len(m)
        lines = [",".join(f"session_{i + 1}" for i in range(T))]
        for row in m:
            lines.append(",".join(f"{v:.4f}" for v in row) + "," * (T - len(row)))
        path.write_text("\n".join(lines) + "\n")

    # ---------------------------------------------------------------- checkpoints
    def _checkpoint(self, done: int) -> None:
        state = {
            "sessions_done": done,
            "config": self.cfg.to_dict(),
            "results": [asdict(r) for r in self.results],
            "learner": self.learner.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        _atomic_torch_save(state, self.out / CHECKPOINT)

    def _restore(self) -> int:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return 0
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config"] != self.cfg.to_dict():
            raise RuntimeError(f"{path} was written by a different config; use a new --out folder "
                               "or delete the checkpoint to start over")
        self.learner.load_state_dict(state["learner"])
        torch.set_rng_state(state["torch_rng"])
        self.results = [SessionResult(**r) for r in state["results"]]
        return int(state["sessions_done"])


def run(cfg: RunConfig, out_dir: str | Path, reporters: list[Reporter] | None = None,
        resume: bool = True) -> dict[str, Any]:
    return Runner(cfg, out_dir, reporters).run(resume=resume)
