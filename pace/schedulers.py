"""ASHA whose decisions survive ``Tuner.restore``.

Tune pickles the scheduler once, when the study starts, and never saves its rung records: a restored
ASHA starts with empty rungs and lets through trials that the original would have stopped. This
scheduler journals every rung record and decision to a JSONL file in the experiment folder (one
line, flushed and fsynced, before the decision is returned) and replays it on its first call after
a restore, so a resumed study decides exactly as an uninterrupted one:

- the rungs hold the same values, so later trials meet the same cutoffs;
- a result a trial reports again (it resumed from an older checkpoint) gets the decision it got the
  first time;
- a trial stopped before the interruption whose stop Tune had not saved yet is stopped at its next
  result.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

JOURNAL_FILE = "asha_journal.jsonl"


class JournaledASHA(AsyncHyperBandScheduler):
    """ASHA (one bracket) with its rung records journaled to ``journal`` (a local or shared path)."""

    def __init__(self, journal: str, **kwargs: Any):
        if kwargs.get("brackets", 1) != 1:
            raise ValueError("JournaledASHA supports one bracket")
        super().__init__(**kwargs)
        self.journal = journal
        self._decisions: dict[str, dict[float, str]] | None = None  # loaded lazily (after unpickling)

    # -- journal
    def _load(self) -> None:
        if self._decisions is not None:
            return
        self._decisions = {}
        if not os.path.isfile(self.journal):
            return
        with open(self.journal, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a kill mid-write: its decision never left
                    continue
                self._apply(rec)

    def _apply(self, rec: dict[str, Any]) -> None:
        if rec.get("rung") is not None:
            for milestone, recorded in self._brackets[0]._rungs:
                if milestone == rec["rung"]:
                    recorded[rec["trial"]] = rec["reward"]
        if rec.get("action"):
            self._decisions.setdefault(rec["trial"], {})[float(rec["t"])] = rec["action"]

    def _write(self, rec: dict[str, Any]) -> None:
        self._apply(rec)
        os.makedirs(os.path.dirname(self.journal) or ".", exist_ok=True)
        with open(self.journal, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _recorded(self, trial_id: str) -> dict[float, float]:
        return {m: rec[trial_id] for m, rec in self._brackets[0]._rungs if trial_id in rec}

    def _journal_new(self, trial_id: str, before: dict[float, float], t: float, action: str | None) -> None:
        new = {m: v for m, v in self._recorded(trial_id).items() if m not in before}
        rung, reward = next(iter(new.items()), (None, None))
        self._write({"trial": trial_id, "t": t, "rung": rung, "reward": reward, "action": action})

    # -- scheduler hooks
    def on_trial_add(self, tune_controller, trial) -> None:
        self._load()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._load()
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        t = float(result[self._time_attr])
        past = self._decisions.get(trial.trial_id, {})
        if t in past:  # reported again after a restore: same decision as the first time
            return past[t]
        if TrialScheduler.STOP in past.values():  # stopped before the interruption, not saved by Tune
            return TrialScheduler.STOP
        before = self._recorded(trial.trial_id)
        action = super().on_trial_result(tune_controller, trial, result)
        self._journal_new(trial.trial_id, before, t, action)
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._load()
        if trial.trial_id not in self._trial_info:
            return
        before = self._recorded(trial.trial_id)
        super().on_trial_complete(tune_controller, trial, result)
        if result and self._time_attr in result and self._recorded(trial.trial_id) != before:
            self._journal_new(trial.trial_id, before, float(result[self._time_attr]), None)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)

    def decisions(self) -> dict[str, dict[float, str]]:
        """{trial id: {time: CONTINUE | STOP}} so far (for tests and summaries)."""
        self._load()
        return {k: dict(v) for k, v in self._decisions.items()}


def read_decisions(journal: str) -> dict[str, dict[float, str]]:
    """The decisions journaled at ``journal`` (no scheduler needed)."""
    out: dict[str, dict[float, str]] = {}
    if os.path.isfile(journal):
        with open(journal, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("action"):
                    out.setdefault(rec["trial"], {})[float(rec["t"])] = rec["action"]
    return out
