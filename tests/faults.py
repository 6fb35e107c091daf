"""Test-only fault injection for studies, installed through pace's plugin seam (pace.study.plugins).

pace itself holds no fault code. A test passes ``hooks(faults)`` to ``run_study``, or starts a driver
process with ``env(faults)``: ``PACE_STUDY_PLUGINS`` names ``study_hooks`` below, which reads the
faults from ``PACE_SWEEP_TEST_FAULTS`` (JSON). Trials run in Ray worker processes that cannot import
this module (tests/ is not on their path), so it registers itself to be pickled by value: the
reporter factory travels with the trial context.

Faults: ``fail_after_session`` + ``marker`` (raise once per study after that session),
``session_delay_s`` (sleep after each session), ``blocks`` (park a trial, see ``FaultInjector``) and
``freeze_driver`` ({"when": path, "frozen": path}: park the driver's Tune loop between steps once
``when`` exists, so a test kills it at a known point, not mid-write).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pace

FAULTS_ENV = "PACE_SWEEP_TEST_FAULTS"
PLUGIN = "faults:study_hooks"
TESTS = Path(__file__).resolve().parent
#: the pace under test: driver subprocesses import the same one
REPO = Path(pace.__file__).resolve().parents[1]
TRIAL_KEYS = ("fail_after_session", "marker", "session_delay_s", "blocks")
#: longest a parked trial waits for its release (the tests release or kill it long before)
PARK_LIMIT_S = 3600.0


class FaultInjector:
    """Sleep after each session, raise once per study after a given session, or park.

    It sits between the MLflow and Tune reporters, so the failed session is logged to MLflow but not
    checkpointed in Tune: the retry recomputes it and must not log the step twice. Each entry of
    ``blocks`` ({"trial": name prefix, "after": session, "marker": path, "release": path}) parks the
    trial after that session, logged but not yet reported, until ``release`` exists: a test then
    interrupts the study at a known point instead of racing it.
    """

    def __init__(self, faults: dict[str, Any], trial_name: str = ""):
        self.fail_after = faults.get("fail_after_session")
        self.marker = faults.get("marker")
        self.delay = float(faults.get("session_delay_s", 0.0))
        self.blocks = list(faults.get("blocks", []))
        self.trial_name = trial_name

    def on_start(self, runner) -> None: ...

    def on_session(self, runner, result) -> None:
        if self.delay:
            time.sleep(self.delay)
        if self.fail_after == result.index + 1 and self.marker and _claim(self.marker):
            raise RuntimeError(f"injected test fault after session {result.index + 1}")
        for b in self.blocks:
            if b["after"] == result.index + 1 and self.trial_name.startswith(b.get("trial", "")) \
                    and _claim(b["marker"]):
                # parked until the test releases it or kills the driver; an orphan gives up after an hour
                deadline = time.monotonic() + PARK_LIMIT_S
                while not os.path.exists(b["release"]):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"parked trial never released ({b['release']} does not exist)")
                    time.sleep(0.05)

    def on_end(self, runner, final) -> None: ...


class Injectors:
    """The trial reporter factory: one FaultInjector per trial (pickled with the trial context)."""

    def __init__(self, faults: dict[str, Any]):
        self.faults = faults

    def __call__(self, trial_name: str) -> FaultInjector:
        return FaultInjector(self.faults, trial_name)


def _claim(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _freeze_driver(freeze: dict[str, str]):
    from ray import tune

    class Freeze(tune.Callback):
        def on_step_begin(self, iteration, trials, **info):
            if os.path.exists(freeze["when"]) and _claim(freeze["frozen"]):
                while True:  # until the test kills the driver
                    time.sleep(1)

    return Freeze()


def hooks(faults: dict[str, Any]):
    """StudyHooks that inject ``faults`` (pass to run_study, or returned by the plugin below)."""
    import ray.cloudpickle

    from pace.study.plugins import StudyHooks

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    trial = {k: v for k, v in faults.items() if k in TRIAL_KEYS}
    return StudyHooks(trial_reporters=[Injectors(trial)] if trial else [],
                      tune_callbacks=[_freeze_driver(faults["freeze_driver"])] if faults.get("freeze_driver") else [])


def study_hooks():
    """The plugin (PACE_STUDY_PLUGINS=faults:study_hooks): the faults in $PACE_SWEEP_TEST_FAULTS."""
    return hooks(json.loads(os.environ.get(FAULTS_ENV) or "{}"))


def env(faults: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
    """Environment of a driver subprocess: the pace under test, and ``faults`` injected through the plugin."""
    from pace.study.plugins import PLUGINS_ENV

    out = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), **extra}
    if faults:
        out.update({PLUGINS_ENV: PLUGIN, FAULTS_ENV: json.dumps(faults)})
    return out


def wait_for(ready: Callable[[], Any], what: str, timeout_s: float = 300.0, alive=None, interval: float = 0.1) -> Any:
    """Poll ``ready()`` until it returns something truthy; fail naming ``what`` after ``timeout_s``, or
    at once when the process ``alive`` has exited (its output tail in the message)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = ready()
        if got:
            return got
        if alive is not None and alive.poll() is not None:
            tail = alive.stdout.read().decode()[-3000:] if alive.stdout else ""
            raise AssertionError(f"the process exited (code {alive.returncode}) while waiting for {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval)
