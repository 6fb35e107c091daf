"""The session loop. One runner serves ``pace run``, a Ray Tune trial and the tests.

For t = 1..T: ``learner.learn(session t)`` -> evaluate on the test split of every seen session (one
shared head, no task id) -> accuracy-matrix row -> reporters. After each session the learner state,
RNG state and results so far are checkpointed atomically (after every session, or as
``runtime.checkpoint_every`` says when the state is large: pace/checkpoint_clock.py); a run restarted on
the same output folder resumes after its last checkpointed session and gives the same result as an
uninterrupted run. What the
folder guarantees (one config, one data set, verified checkpoints) is pace/runfolder.py's job.
"""

from __future__ import annotations

import math
import resource
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from pace import metrics
from pace.backbones.registry import build_backbone
from pace.cache import TensorCache
from pace.checkpoint_clock import CheckpointClock
from pace.config import RunConfig
from pace.data.datasets import build_dataset
from pace.data.features import FeatureTable, extract_features
from pace.data.scenario import Scenario, build_scenario
from pace.methods.base import Context, Learner, Session, Split, build_learner
from pace.modes import evaluating
from pace.methods.diagnostics import FLAG_WARNINGS, diagnostic_metrics, inert_flags, json_safe
from pace.provenance import provenance
from pace.runfolder import (CHECKPOINT, RunFolder, data_identity, json_bytes,  # noqa: F401
                            save_checkpoint, write_all)
from pace.store import LazyRows


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
    diagnostics: dict[str, Any] = field(default_factory=dict)  # pace.methods.diagnostics

    def metrics(self) -> dict[str, float]:
        """Flat per-session metrics for trackers (step = session index)."""
        out = {"acc_all": self.acc_all, "acc_new": self.acc_new, "forgetting": self.forgetting,
               "time_s": self.time_s, "peak_mem_mb": self.peak_mem_mb, "num_classes": self.num_classes}
        if not math.isnan(self.acc_old):
            out["acc_old"] = self.acc_old
        out.update({f"count_{k}": float(v) for k, v in self.counters.items()})
        out.update(self.analysis)
        out.update(diagnostic_metrics(self.diagnostics))
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


class Runner:
    def __init__(self, cfg: RunConfig, out_dir: str | Path, reporters: list[Reporter] | None = None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.reporters = list(reporters or [])
        self.results: list[SessionResult] = []
        self.device = resolve_device(cfg.runtime.device)
        if cfg.runtime.num_threads:
            torch.set_num_threads(cfg.runtime.num_threads)
        self.cache = TensorCache(cfg.runtime.cache_dir) if cfg.runtime.use_cache else None
        self.ctx = Context(device=self.device, batch_size=cfg.runtime.batch_size,
                           eval_batch_size=cfg.runtime.eval_batch_size, seeds=cfg.seeds,
                           cache=self.cache, progress=cfg.runtime.progress, bf16=cfg.runtime.bf16,
                           reuse_stages=cfg.runtime.reuse_stages and self.cache is not None)
        self.table: FeatureTable | None = None
        self.scenario: Scenario | None = None
        self.learner: Learner | None = None
        self._test_splits: dict[int, Split] = {}
        self.analysis_hooks: list = []  # filled by prepare() (pace.hooks) and by sweep trials
        self.folder = RunFolder(self.out)
        self._saved: dict[str, Any] | None = None  # the verified checkpoint to resume from
        self._resume = True
        #: sessions_done of the newest checkpoint on disk (runtime.checkpoint_every: not every session)
        self.checkpointed = 0

    # ---------------------------------------------------------------- set-up
    def prepare(self, resume: bool = True) -> None:
        """Build everything, check the output folder, then write config, splits and run info.

        Nothing is written before every check has passed: a refused or failed set-up leaves an
        existing result folder as it was.
        """
        cfg = self.cfg
        self._resume = resume
        self.folder.check_path()
        # cheap checks first: a changed config or a damaged checkpoint is refused before featurising
        self._saved = self.folder.check_config(cfg.to_dict()) if resume else None
        # Randomly initialised backbones draw from the run's init seed unless the config pins one.
        self.backbone = build_backbone(cfg.backbone, init_seed=cfg.seeds.init).to(self.device)
        # the learner checks itself against the backbone (prompt blocks it lacks, ...): refuse before
        # featurising, which can take minutes; learners draw only from named generators, so building
        # one earlier changes no result
        self.learner = build_learner(cfg.method, self.backbone, self.ctx)
        dataset = build_dataset(cfg.data)
        self.dataset = dataset
        self.table = extract_features(dataset, self.backbone.frontend, self.cache, skip_bad=cfg.data.skip_bad,
                                      progress=cfg.runtime.progress, dtype=cfg.runtime.feature_dtype)
        self.scenario = build_scenario(self.table.items, cfg.scenario, cfg.seeds)
        if self.scenario.num_classes < 2:
            warnings.warn(f"the run has a single class ({self.scenario.class_order[0]!r}): every prediction "
                          "is that class, so every accuracy is trivially 100 %", stacklevel=2)
        index = {lab: i for i, lab in enumerate(self.scenario.class_order)}
        self.y_all = torch.tensor([index.get(it.label, -1) for it in self.table.items], dtype=torch.long)
        self.keys_all = [f"{dataset.name}/{it.key}" for it in self.table.items]
        self.data = data_identity(dataset, self.table, self.scenario)
        if resume:
            self.folder.check_data(self._saved, self.data)
        self.folder.make()
        self._write_setup(clear=not resume)
        from pace.hooks import build_hooks
        self.analysis_hooks = build_hooks(self)

    def _write_setup(self, clear: bool) -> None:
        """config.yaml, splits/ and run_info.json, staged together: a full disk changes none of them.
        Starting over (``clear``) removes the old results only once the new files are on disk."""
        info = {**provenance(), "dataset": self.dataset.description, "data": self.data,
                "bad_files": self.table.bad, "device": str(self.device)}
        write_all({self.out / "config.yaml": yaml.safe_dump(self.cfg.to_dict(), sort_keys=False).encode(),
                   self.out / "splits": lambda d: self.scenario.write(d, self.table.items),
                   self.out / "run_info.json": json_bytes(info)},
                  before=self.folder.clear_results if clear else None)

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
        with evaluating(self.backbone), torch.inference_mode():
            for i in range(t + 1):
                test = self.test_split(i)
                correct = (self.learner.predict_split(test).argmax(-1).cpu() == test.y).sum().item()
                row.append(100.0 * correct / len(test))
        return row

    def test_sizes(self) -> list[int]:
        return [len(s.test) for s in self.scenario.sessions]

    def run(self, resume: bool = True) -> dict[str, Any]:
        if self.learner is None:
            self.prepare(resume)
        elif self._resume and not resume:  # prepared to resume, then told to start over
            self.folder.clear_results()
            self._saved = None
        start = self._restore() if resume else 0
        if start == 0:
            # the global stream (dropout in some backbones) starts from the run's init seed, not from
            # whatever an earlier trial in the same (reused) Ray worker process left behind
            torch.manual_seed(self.ctx.generator("torch-global").initial_seed())
        for r in self.reporters:
            r.on_start(self)
        T = len(self.scenario.sessions)
        self.checkpointed = start
        clock = CheckpointClock(self.cfg.runtime.checkpoint_every)
        for t in range(start, T):
            t0 = time.perf_counter()
            self.results.append(self._run_session(t))
            clock.session_took(time.perf_counter() - t0)
            if clock.due(t + 1, T):
                t0 = time.perf_counter()
                nbytes = self._checkpoint(t + 1)
                clock.wrote(time.perf_counter() - t0, nbytes)
                self.checkpointed = t + 1
            for r in self.reporters:
                r.on_session(self, self.results[-1])
        final = self.finish()
        for r in self.reporters:
            r.on_end(self, final)
        return final

    def _run_session(self, t: int) -> SessionResult:
        session = self.session(t)
        self.ctx.counters, self.ctx.diagnostics = {}, {}
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
            counters=counters, analysis=self._analysis(t), diagnostics=json_safe(dict(self.ctx.diagnostics)))

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
        final.update(inert_flags([r.diagnostics for r in self.results], [r.time_s for r in self.results]))
        for flag, says in FLAG_WARNINGS.items():  # pace.methods.diagnostics: thresholds and reasons
            for reason in final.get(f"{flag}_reasons", []):
                print(f"WARNING: {says}: {reason}", file=sys.stderr)
        write_all({self.out / "accuracy_matrix.csv": self.matrix_csv(m).encode(),
                   self.out / "metrics.json": json_bytes(final),
                   self.out / "sessions.json": json_bytes([asdict(r) for r in self.results])})
        return final

    @staticmethod
    def matrix_csv(m: list[list[float]]) -> str:
        T = len(m)
        lines = [",".join(f"session_{i + 1}" for i in range(T))]
        for row in m:
            lines.append(",".join(f"{v:.4f}" for v in row) + "," * (T - len(row)))
        return "\n".join(lines) + "\n"

    # ---------------------------------------------------------------- checkpoints
    def _checkpoint(self, done: int) -> int:
        state = {
            "sessions_done": done,
            "config": self.cfg.to_dict(),
            "data": self.data,
            "results": [asdict(r) for r in self.results],
            "learner": self.learner.state_dict(),
            "torch_rng": torch.get_rng_state(),
            # dropout on a GPU draws from the device's stream: resume must continue it too
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
        }
        return save_checkpoint(self.out / CHECKPOINT, state)

    def _restore(self) -> int:
        """Continue from the checkpoint that prepare() verified (config, data and checksum)."""
        state, self._saved = self._saved, None
        if state is None:
            return 0
        self.learner.load_state_dict(state["learner"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.results = [SessionResult(**r) for r in state["results"]]
        return int(state["sessions_done"])


def run(cfg: RunConfig, out_dir: str | Path, reporters: list[Reporter] | None = None,
        resume: bool = True) -> dict[str, Any]:
    return Runner(cfg, out_dir, reporters).run(resume=resume)
