"""Analysis hooks for the runner: measurements taken after each session, never part of training.

Switched on by the run config's ``analysis`` section (all off by default)::

    analysis: {cka: true, drift: true, max_samples: 256}

``build_hooks(runner)`` is called at the end of ``Runner.prepare()`` (before session 1, and before a
checkpoint is restored, so the backbone is still the pretrained one). Each hook is a callable
``hook(runner, t) -> {name: float}``; the runner merges the dicts into ``SessionResult.analysis``, so
the values reach every reporter as per-session metrics (MLflow: ``step = t``).

- ``cka_block_<i>`` (``analysis.cka``): linear CKA, per block, between the pretrained backbone and the
  current one, on up to ``max_samples`` training clips of session 1 (class-balanced). 1 means block i
  represents those clips as the pretrained model did (up to rotation and scale); it falls as
  adaptation changes the block. This is the PACE layer probe (paper Fig. 5/6) tracked over sessions.
  The pretrained side is computed once in the set-up and kept as features, not as a second copy of
  the backbone: same numbers, no second model in (GPU) memory. Backbones without blocks
  (``logmel-stats``) have nothing to compare and get no CKA keys.
- ``drift_shift``, ``drift_interclass``, ``drift_ratio`` (``analysis.drift``, from session 2 on):
  the earlier sessions' training clips (up to ``max_samples``, class-balanced) are embedded by the
  backbone as it was after session t-1 (stored then) and as it is after session t. ``drift_shift`` is
  the mean distance their class centroids moved, ``drift_interclass`` the mean distance between those
  centroids before the session, ``drift_ratio`` the quotient. The paper (Fig. 1) measured shift vs
  inter-class distance in t-SNE coordinates; t-SNE distances depend on perplexity and seed, so we
  measure in the backbone's pooled embedding space instead: the numbers are not comparable to the
  paper's, only their ratio's behaviour is. A frozen backbone gives exactly 0. After a resume the
  previous session's features are gone, so the first resumed session has no drift keys.

Cost per session is already recorded by the runner for every run, hooks or not: ``time_s`` (wall
time of ``learn``), ``peak_mem_mb`` (CUDA: peak allocated during the session; CPU: the process's peak
RSS so far) and ``count_forward_samples`` / ``count_backward_samples`` (the learner's counters). The
hooks run after those are read and call the backbone directly, so they add nothing to the counters or
to ``time_s``; on CPU their memory can show up in later sessions' ``peak_mem_mb`` (RSS is a
process-wide maximum).

Hooks do not change results: they run under ``torch.no_grad`` in eval mode, restore the backbone's
train/eval state, and run inside ``torch.random.fork_rng`` so no random stream the learner uses moves.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from pace.modes import evaluating
from pace.analysis import block_features, linear_cka, representation_drift

if TYPE_CHECKING:
    from pace.runner import Runner

Hook = Callable[["Runner", int], dict[str, float]]
log = logging.getLogger(__name__)


def balanced_subset(labels: torch.Tensor, max_n: int) -> torch.Tensor:
    """Indices of at most ``max_n`` items, spread over the classes as evenly as possible.

    Deterministic (no random stream): items are taken round-robin over classes in their order of
    appearance, so every class is present whenever ``max_n`` >= number of classes. Returned sorted.
    """
    labels = labels.detach().to("cpu").reshape(-1)
    n = labels.numel()
    if n <= max_n:
        return torch.arange(n)
    rank = torch.empty(n, dtype=torch.long)
    seen: dict[int, int] = {}
    for i, c in enumerate(labels.tolist()):
        rank[i] = seen.get(c, 0)
        seen[c] = rank[i].item() + 1
    # stable sort by rank within class: first clip of every class, then the second, ...
    order = torch.sort(rank, stable=True).indices[:max_n]
    return torch.sort(order).values


@contextlib.contextmanager
def measuring(device: torch.device) -> Iterator[None]:
    """No gradients, and every random stream restored afterwards (CPU, and the CUDA device in use)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        yield


def pooled_features(backbone, x: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    """The utterance embeddings (N, D) as float64 on the CPU, in eval mode, full precision.

    No autocast and no cache: measurements should not depend on bf16 rounding or on cache state.
    """
    out = []
    with evaluating(backbone):
        for s in range(0, len(x), batch_size):
            out.append(backbone(x[s:s + batch_size].to(device)).pooled.to("cpu", torch.float64))
    return torch.cat(out) if out else torch.empty(0, backbone.embed_dim, dtype=torch.float64)


def _finite(d: dict[str, float]) -> dict[str, float]:
    # NaN (e.g. CKA of a constant block, drift with one class) would only be dropped by the trackers
    return {k: float(v) for k, v in d.items() if math.isfinite(float(v))}


class CKAHook:
    """Per-block linear CKA between the pretrained backbone and the current one (session-1 clips)."""

    def __init__(self, runner: "Runner"):
        max_n = runner.cfg.analysis.max_samples
        train = runner.session(0).train
        self.x = train.x[balanced_subset(train.y, max_n)]
        self.batch_size = runner.ctx.eval_batch_size
        with measuring(runner.device):
            self.reference = block_features(runner.backbone, self.x, self.batch_size)

    def __call__(self, runner: "Runner", t: int) -> dict[str, float]:
        with measuring(runner.device):
            current = block_features(runner.backbone, self.x, self.batch_size)
        if len(current) != len(self.reference):
            raise RuntimeError(f"analysis.cka: the backbone had {len(self.reference)} blocks before "
                               f"session 1 and has {len(current)} now")
        return _finite({f"cka_block_{i}": linear_cka(a, b)
                        for i, (a, b) in enumerate(zip(self.reference, current))})


class DriftHook:
    """Centroid drift of the earlier sessions' classes across one session (see the module doc)."""

    def __init__(self, runner: "Runner"):
        self.max_n = runner.cfg.analysis.max_samples
        self.batch_size = runner.ctx.eval_batch_size
        self.prev_rows: torch.Tensor | None = None  # rows of runner.table, fixed per session
        self.prev_labels: torch.Tensor | None = None
        self.prev_feats: torch.Tensor | None = None

    def _rows_up_to(self, runner: "Runner", t: int) -> torch.Tensor:
        rows = torch.tensor([r for s in runner.scenario.sessions[: t + 1] for r in s.train], dtype=torch.long)
        return rows[balanced_subset(runner.y_all[rows], self.max_n)]

    def __call__(self, runner: "Runner", t: int) -> dict[str, float]:
        rows = self._rows_up_to(runner, t)
        prev = self.prev_rows if self.prev_rows is not None else torch.empty(0, dtype=torch.long)
        # one forward pass over both sets: the earlier clips to compare, this session's set to store
        union, inverse = torch.unique(torch.cat([prev, rows]), return_inverse=True)
        with measuring(runner.device):
            feats = pooled_features(runner.backbone, runner.table.x[union], runner.device, self.batch_size)
        out: dict[str, float] = {}
        if self.prev_rows is not None:
            d = representation_drift(self.prev_feats, self.prev_labels, feats[inverse[: len(prev)]])
            out = _finite({"drift_shift": d.centroid_shift, "drift_interclass": d.inter_class_distance,
                           "drift_ratio": d.ratio})
        self.prev_rows, self.prev_labels = rows, runner.y_all[rows]
        self.prev_feats = feats[inverse[len(prev):]]
        return out


def build_hooks(runner: "Runner") -> list[Hook]:
    """The hooks ``runner.cfg.analysis`` asks for; empty when all analyses are off (the default)."""
    cfg = runner.cfg.analysis
    hooks: list[Hook] = []
    if cfg.cka:
        if runner.backbone.num_blocks > 0:
            hooks.append(CKAHook(runner))
        else:
            log.warning("analysis.cka: backbone %s has no blocks; no CKA is measured", runner.backbone.name)
    if cfg.drift:
        hooks.append(DriftHook(runner))
    return hooks
