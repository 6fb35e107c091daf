"""When the runner writes its resume checkpoint (``runtime.checkpoint_every``).

A checkpoint holds the learner's whole state: at RanPAC's M = 8192 that is a 512 MiB float64 Gram
matrix (or the recursive form's inverse), about 3 s to checksum, serialise and write on a laptop CPU,
while a recursive-form session of a TIMIT-2 run takes 0.2 s. Writing after every session then costs
more than the sessions. A resumed run recomputes the sessions after its checkpoint (bit for bit, as
the resume tests check), so how often it is written trades only recomputation after a crash against
write time, never results.

``every = N``: after every N-th session. ``"auto"``: after every session while checkpoints are small
(the last one under ``SMALL_CHECKPOINT_BYTES``: most runs, and every test, whose resume points then
do not depend on timing); a large one once the sessions since the last write took at least
``CHECKPOINT_BUDGET`` times as long as that write, so writes cost at most ~1/CHECKPOINT_BUDGET of the
run and a crash loses about ``CHECKPOINT_BUDGET`` write-times of work. The first session of a
process and the last session are always checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass

CHECKPOINT_BUDGET = 20.0
#: a checkpoint below this is written after every session under "auto" (~0.1 s here)
SMALL_CHECKPOINT_BYTES = 64 * 2**20


def checkpoint_due(done: int, total: int, every: int | str, since_s: float, last_write_s: float | None,
                   last_bytes: int = 0) -> bool:
    """Whether to write after session ``done`` (1-based) of ``total``.

    ``since_s``: seconds the sessions since the last write took; ``last_write_s`` and ``last_bytes``:
    how long the last write took and its size (None: nothing written yet by this process).
    """
    if done >= total:
        return True
    if every == "auto":
        return (last_write_s is None or last_bytes < SMALL_CHECKPOINT_BYTES
                or since_s >= CHECKPOINT_BUDGET * last_write_s)
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"runtime.checkpoint_every must be an integer >= 1 or 'auto', got {every!r}")
    return done % every == 0


@dataclass
class CheckpointClock:
    """The runner's bookkeeping for ``checkpoint_due``."""

    every: int | str
    since_s: float = 0.0
    last_write_s: float | None = None
    last_bytes: int = 0

    def session_took(self, seconds: float) -> None:
        self.since_s += seconds

    def due(self, done: int, total: int) -> bool:
        return checkpoint_due(done, total, self.every, self.since_s, self.last_write_s, self.last_bytes)

    def wrote(self, seconds: float, nbytes: int) -> None:
        self.since_s, self.last_write_s, self.last_bytes = 0.0, seconds, int(nbytes)
