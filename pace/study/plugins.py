"""Extension points of a study: runner reporters every trial adds, and Tune callbacks of the driver.

pace registers none itself. A caller of ``run_study`` passes ``StudyHooks``; a process started from
the command line gets them from plugins named in ``PACE_STUDY_PLUGINS`` (``module:function``, comma
separated; each function is called in the driver and returns a ``StudyHooks``). The tests inject
faults this way (tests/faults.py).

A trial reporter runs in the trial's worker process, so its factory is pickled with the trial context:
it must pickle, and whatever it names must import on the workers (or be pickled by value).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

PLUGINS_ENV = "PACE_STUDY_PLUGINS"


@dataclass
class StudyHooks:
    #: trial name -> a runner reporter (on_start/on_session/on_end), placed between the MLflow reporter
    #: and the Tune reporter: a session it sees is logged to MLflow but not yet reported to Tune
    trial_reporters: list[Callable[[str], Any]] = field(default_factory=list)
    #: ``ray.tune.Callback`` instances added to the driver's Tune run
    tune_callbacks: list[Any] = field(default_factory=list)

    def __add__(self, other: StudyHooks) -> StudyHooks:
        return StudyHooks(self.trial_reporters + other.trial_reporters, self.tune_callbacks + other.tune_callbacks)


def load_plugins(spec: str | None = None) -> StudyHooks:
    """The hooks of the plugins named in ``spec`` (default: ``$PACE_STUDY_PLUGINS``)."""
    spec = os.environ.get(PLUGINS_ENV, "") if spec is None else spec
    hooks = StudyHooks()
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        module, sep, func = entry.partition(":")
        if not sep or not module or not func:
            raise ValueError(f"{PLUGINS_ENV}: expected module:function, got {entry!r}")
        hooks = hooks + getattr(importlib.import_module(module), func)()
    return hooks
