"""Sweeps and ablations on Ray Tune: one trial = one continual-learning run of ``pace.runner``.

``pace sweep FILE`` searches a space (Optuna TPE / random, or a grid) for the best objective measured
on a validation split carved from training data; ``pace ablate FILE`` runs the grid variants x
benchmarks x backbones x seeds. Both:

- run each trial as a function trainable that reports after every session with a checkpoint holding
  the runner's ``checkpoint.pt`` and the trial's MLflow run id, and resumes from that checkpoint when
  Tune retries the trial (``max_failures``) or restores the study (``--resume``);
- track to MLflow (pace.tracking) through one journaled sink actor on the driver's node (pace.journal);
- print a summary table and the command that opens the MLflow UI.

What differs between a sweep and an ablation is behaviour of the spec classes (``SweepSpec``,
``AblationSpec`` in ``spec``); the rest of the package never asks which kind it runs.

Modules, one job each:

- ``spec``: the spec models and loading;
- ``space``: searched keys and the define-by-run search space;
- ``checks``: what every spec passes before Ray starts (each trial config, the data);
- ``trial``: the trial body, run in Tune's worker processes;
- ``driver``: ``run_study``: the Tune experiment, resume, tracking;
- ``cluster``: starting or joining Ray, resources, the sink actor, trial work folders on every node;
- ``state``: the study's folder in storage (``pace_study.json``, ``summary.csv``, Tune's saved state);
- ``summary``: the rows, tables and parent-run summary of a finished or interrupted study;
- ``plugins``: extension points (extra trial reporters, Tune callbacks) for callers and tests;
- ``cli``: ``pace sweep`` and ``pace ablate``.

Layout: ``<storage>/<name>/`` is the Tune experiment (``Tuner.restore`` reads it), plus
``pace_study.json`` (what ``--resume`` needs: resolved base, tracking ids) and ``summary.csv``. Each
trial folder holds Tune's checkpoints and ``run/`` (the runner's outputs, synced with the trial).
"""

from pace.config import ConfigError


class SpecError(ConfigError):
    """A sweep/ablation spec that cannot run; raised before any trial starts."""
