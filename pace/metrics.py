"""Continual-learning metrics: pure functions of the accuracy matrix.

Notation: ``a[t][i]`` is the accuracy (fraction or percent, the functions do not care) on the test set
of session i after learning session t, 0-based, defined for i <= t (NaN above the diagonal). One shared
head over all seen classes, no task id (class-incremental). ``sizes[i]`` is the number of test clips of
session i; accuracies over several sessions are weighted by it, i.e. they equal the accuracy on the
pooled test clips of those sessions.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Matrix = Sequence[Sequence[float]]


def _check(a: Matrix, sizes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    m = np.array([[np.nan if v is None else float(v) for v in row] + [np.nan] * (len(a) - len(row))
                  for row in a], dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square T x T with T >= 1, got shape {m.shape}")
    if np.isnan(m[np.tril_indices(len(m))]).any():
        raise ValueError("accuracy matrix has missing values on or below the diagonal")
    w = np.ones(len(m)) if sizes is None else np.asarray(sizes, dtype=float)
    if w.shape != (len(m),) or (w <= 0).any():
        raise ValueError(f"sizes must hold one positive count per session ({len(m)}), got {list(w)}")
    return m, w


def accuracy_per_session(a: Matrix, sizes: Sequence[int] | None = None) -> list[float]:
    """A_t: accuracy on all classes seen after session t, weighted by test-set size."""
    m, w = _check(a, sizes)
    return [float(np.dot(m[t, : t + 1], w[: t + 1]) / w[: t + 1].sum()) for t in range(len(m))]


def last_accuracy(a: Matrix, sizes: Sequence[int] | None = None) -> float:
    """A_T: accuracy on all classes after the last session (the paper's headline number)."""
    return accuracy_per_session(a, sizes)[-1]


def average_incremental_accuracy(a: Matrix, sizes: Sequence[int] | None = None) -> float:
    """mean over t of A_t."""
    return float(np.mean(accuracy_per_session(a, sizes)))


def forgetting(a: Matrix) -> float:
    """Max-based forgetting: mean over sessions i < T of (max_{i <= l < T} a[l][i]) - a[T][i].

    The maximum runs over the evaluations *before* the last one, as in PILOT and Mammoth. 0 for T = 1.
    """
    m, _ = _check(a)
    T = len(m)
    if T == 1:
        return 0.0
    return float(np.mean([m[i:T - 1, i].max() - m[T - 1, i] for i in range(T - 1)]))


def forgetting_curve(a: Matrix) -> list[float]:
    """Forgetting so far after each session t (forgetting of the matrix truncated to rows 0..t)."""
    m, _ = _check(a)
    return [forgetting(m[: t + 1, : t + 1].tolist()) for t in range(len(m))]


def bwt(a: Matrix) -> float:
    """Backward transfer: mean over i < T of a[T][i] - a[i][i] (negative = forgetting). 0 for T = 1."""
    m, _ = _check(a)
    T = len(m)
    if T == 1:
        return 0.0
    return float(np.mean([m[T - 1, i] - m[i, i] for i in range(T - 1)]))


def plasticity(a: Matrix) -> float:
    """Mean over sessions of the accuracy on the session just learned, a[t][t]."""
    m, _ = _check(a)
    return float(np.mean(np.diag(m)))


def old_accuracy_per_session(a: Matrix, sizes: Sequence[int] | None = None) -> list[float]:
    """Accuracy on the earlier sessions' classes after each session t >= 1 (weighted); NaN for t = 0."""
    m, w = _check(a, sizes)
    out = [math.nan]
    for t in range(1, len(m)):
        out.append(float(np.dot(m[t, :t], w[:t]) / w[:t].sum()))
    return out


def stability(a: Matrix, sizes: Sequence[int] | None = None) -> float:
    """Mean over t >= 1 of the (weighted) accuracy on earlier sessions after session t.

    With one session there is nothing earlier to retain: the value is the first-session accuracy.
    """
    m, _ = _check(a, sizes)
    if len(m) == 1:
        return float(m[0, 0])
    return float(np.mean(old_accuracy_per_session(a, sizes)[1:]))


def first_and_new_task_accuracy(a: Matrix, sizes: Sequence[int] | None = None) -> tuple[float, float]:
    """After the last session: accuracy on session 1's classes, and (weighted) on all later ones.

    ``A_T = (n_1 * first + (N - n_1) * new) / N`` (the paper's Fig. 3 decomposition). ``new`` is NaN
    for T = 1.
    """
    m, w = _check(a, sizes)
    T = len(m)
    first = float(m[T - 1, 0])
    new = math.nan if T == 1 else float(np.dot(m[T - 1, 1:], w[1:]) / w[1:].sum())
    return first, new


def summary(a: Matrix, sizes: Sequence[int] | None = None) -> dict[str, float]:
    """Every scalar metric, keyed as in ``metrics.json``."""
    first, new = first_and_new_task_accuracy(a, sizes)
    return {
        "last_accuracy": last_accuracy(a, sizes),
        "average_incremental_accuracy": average_incremental_accuracy(a, sizes),
        "forgetting": forgetting(a),
        "bwt": bwt(a),
        "plasticity": plasticity(a),
        "stability": stability(a, sizes),
        "first_task_accuracy": first,
        "new_task_accuracy": new,
    }
