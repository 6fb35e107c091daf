"""Console output: a run's line per session and final-metrics table, plain-text tables, progress lines
of long loops and a sweep's best-trial line."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable


def fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in cells])


FINAL_KEYS = [("last_accuracy", "last acc"), ("average_incremental_accuracy", "avg inc acc"),
              ("forgetting", "forgetting"), ("bwt", "BWT"), ("plasticity", "plasticity"),
              ("stability", "stability"), ("first_task_accuracy", "first task"),
              ("new_task_accuracy", "new tasks")]


def best_trial_line(rows: list[dict[str, Any]], objective: str, mode: str,
                    describe: Callable[[dict[str, Any]], str]) -> str:
    """The line a sweep's summary ends with: the best finished trial by the objective and its
    parameters (the same pick as the parent run's ``pace.best_trial`` tag: the first of equals),
    naming the trials tied with it so a tie is not read as a clear winner."""
    scored = [r for r in rows if r.get("objective") is not None and r.get("status") == "finished"]
    if not scored:
        return f"best trial: none (no finished trial reported {objective})"
    top = (max if mode == "max" else min)(r["objective"] for r in scored)
    ties = [r for r in scored if math.isclose(r["objective"], top, rel_tol=0, abs_tol=1e-9)]
    line = f"best trial: {ties[0]['trial']} ({objective} {fmt(float(top))}): {describe(ties[0])}"
    return line + (f"; tied with {', '.join(r['trial'] for r in ties[1:])}" if len(ties) > 1 else "")


class ConsoleReporter:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def _print(self, s: str) -> None:
        print(s, file=self.stream, flush=True)

    def on_start(self, runner) -> None:
        cfg, sc = runner.cfg, runner.scenario
        self._print(f"pace run {cfg.name}: method={cfg.method.name} backbone={cfg.backbone.name} "
                    f"data={runner.dataset.name} ({len(runner.table.items)} clips, {sc.num_classes} classes, "
                    f"{len(sc.sessions)} sessions) device={runner.device}")
        if runner.table.bad:
            self._print(f"skipped {len(runner.table.bad)} bad file(s):")
            for key, why in runner.table.bad:
                self._print(f"  {key}: {why}")
        if runner.results:
            self._print(f"resumed after session {len(runner.results)}")

    def on_session(self, runner, r) -> None:
        T = len(runner.scenario.sessions)
        self._print(f"session {r.index + 1}/{T}: classes {r.num_classes:3d}  acc all {r.acc_all:6.2f}  "
                    f"new {r.acc_new:6.2f}  old {fmt(r.acc_old):>6}  forgetting {r.forgetting:5.2f}  "
                    f"{r.time_s:6.1f}s  peak {r.peak_mem_mb:,.0f} MiB")

    def on_end(self, runner, final: dict[str, Any]) -> None:
        self._print("")
        self._print(table([[final.get(k) for k, _ in FINAL_KEYS]], [h for _, h in FINAL_KEYS]))
        self._print(f"\nresults in {runner.out} (accuracy_matrix.csv, metrics.json, config.yaml, splits/)")


class ProgressLine:
    """Plain progress lines on stdout for a long loop (training epochs, embedding passes), readable in
    logs where a tqdm bar is not: ``  train fsa epoch 1/3: 240/480 clips, 35.2 clips/s, 14 s, loss 0.81``.

    ``start`` opens a phase; ``update`` prints at most every ``every_s`` seconds; ``done`` prints the
    phase's closing line when it took at least ``min_s`` seconds (0: always).
    """

    def __init__(self, what: str, total: int, unit: str = "clips", stream=None, every_s: float = 30.0,
                 min_s: float = 0.0, clock=time.perf_counter):
        self.what, self.total, self.unit = what, total, unit
        self.stream, self.every_s, self.min_s, self.clock = stream, every_s, min_s, clock
        self.start("")

    def start(self, label: str) -> None:
        self.label, self.done_n = label, 0
        self.t0 = self.last = self.clock()

    def _line(self, extra: str) -> str:
        dt = self.clock() - self.t0
        rate = self.done_n / dt if dt > 0 else float("nan")
        head = f"  {self.what}" + (f" {self.label}" if self.label else "")
        return (f"{head}: {self.done_n}/{self.total} {self.unit}, {rate:.1f} {self.unit}/s, {dt:.0f} s"
                + (f", {extra}" if extra else ""))

    def update(self, n: int, extra: Callable[[], str] | None = None) -> None:
        self.done_n += n
        if self.clock() - self.last >= self.every_s:
            self.last = self.clock()
            print(self._line(extra() if extra else ""), file=self.stream or sys.stdout, flush=True)

    def done(self, extra: str = "") -> None:
        if self.clock() - self.t0 >= self.min_s:
            print(self._line(extra), file=self.stream or sys.stdout, flush=True)
