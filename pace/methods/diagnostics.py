"""Is the adaptation doing anything? Per-session instruments of backbone adaptation.

A learner that trains LoRA in a session (PACE's FSA and MSA, RanPAC's/ACL's FSA) records, in
``ctx.diagnostics`` (the runner copies it to ``SessionResult.diagnostics``, ``sessions.json`` and,
numbers only with a ``diag_`` prefix, to every tracker):

- ``adapted``: 1 when the backbone was trained this session, else 0; ``stage``: fsa | msa | none.
- ``lora_trained_params``: elements of the LoRA stack trained this session (A and B).
- ``delta_w_norm``: ||s B A||_F of this session's stack over all adapted layers (root of the sum of
  squares); ``delta_w_norm_block``: the same per block; ``delta_w_total_norm``: all stacks so far
  (W - W0); ``base_w_norm``: ||W0||_F of the adapted layers; ``delta_w_rel`` = total / base;
  ``delta_w_session_rel`` = this session's / base.
- ``emb_cosine``: mean cosine, over this session's training clips, between their embeddings before
  and after this session's adaptation; ``emb_cosine_session1``: the same for session 1's training
  clips, pretrained backbone vs the backbone now (how far the features the analytic head already
  holds have moved).
- ``head_acc_before`` / ``head_acc_after`` (%): a fresh analytic head (same projection and ridge
  rule as the learner's) fit on the session's training embeddings before / after the adaptation.
  Evaluated on the session's validation split when the scenario carves one (``head_acc_eval: val``),
  else by 2-fold cross-validation over its training clips (class-stratified, deterministic;
  ``head_acc_eval: cv2``): held-out accuracy either way, never test data. In session 1 "before" is
  the pretrained backbone, i.e. the analytic head without FSA. ``head_acc_n``: the held-out clips
  they count.
- ``ridge_lam``: the ridge strength the analytic head chose this session (every session). A small
  one fits the stored statistics tightly, so old classes break under even a small feature drift.
- ``ridge_lam_used``: the lam the cumulative system was solved with: ``ridge_lam`` raised to the
  roundoff floor of the Gram matrix when it was below it (``pace.heads.analytic.ridge_floor``).
- PACE adds ``cka_block`` (the probe's CKA per block), ``l_tune``, ``cka_fallback`` (1 when no
  block fell below rho_layer and only the last block was adapted), ``msa_ran``, ``basis_rank_block``
  (mean projection-basis rank over the block's LoRA layers) and ``basis_dim`` (their input width).

The instruments run after the learner's own work, on clips it already has, under ``no_grad`` with
their own named random streams, and their forward passes are not added to the learner's counters;
their wall time is in ``diag_time_s`` (and inside ``time_s``).

A run is flagged ``adaptation_inert`` (metrics.json, plus a WARNING in the run output) when a stage
(fsa, or msa over all its sessions) left the features where they were in every session it adapted:
``delta_w_session_rel < INERT_DELTA_REL`` (1e-3) or ``emb_cosine > INERT_COSINE`` (0.999); the
reasons end with the learner time the inert stage's sessions took.

The two head-accuracy flags are named by what they measure: a fresh analytic head's accuracy on
held-out clips of the *session's own classes*, fitted on the features before and after that session's
adaptation. ``head_acc_unchanged``: exactly unchanged while below 100 % (a saturated set cannot show a
gain). ``head_acc_fell``: it fell by more than one held-out clip (100 / ``head_acc_n`` points), e.g.
an FSA rate searched on sessions of 16 clips taking 10x the steps on sessions of 160. Neither predicts
the run's outcome over all sessions: a run flagged ``head_acc_fell`` in session 1 can still end with
the best last accuracy of a study, so the flags describe an adaptation, never rank a run (they stay
out of any search objective). A run that adapts nothing by configuration (RanPAC w/o FSA, SimpleCIL)
is not flagged.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from pace.runfolder import strict as json_safe  # noqa: F401  (one strict-JSON rule for every file a run writes)

INERT_DELTA_REL = 1e-3
INERT_COSINE = 0.999


# ------------------------------------------------------------------------------------ measures

def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of cos(a_i, b_i) (float64)."""
    return float(F.cosine_similarity(a.double(), b.double(), dim=1).mean())


@torch.no_grad()
def lora_stats(adapter) -> dict[str, Any]:
    """Sizes and norms of the newest LoRA stack and of all stacks, per block and in total."""
    manager, bb = adapter.manager, adapter.backbone
    if manager is None or manager.num_sessions == 0:
        return {}
    block_of = {name: b for b in adapter.blocks
                for name in bb.lora_target_names([b], list(adapter.cfg.targets))}
    new_sq: dict[int, float] = {}
    total_sq = base_sq = 0.0
    params = 0
    for name, m in manager.modules.items():
        a, b = m.lora_A[-1], m.lora_B[-1]
        params += a.numel() + b.numel()
        d = m.scaling(m.num_sessions - 1) * (b.double() @ a.double())
        blk = block_of[name]
        new_sq[blk] = new_sq.get(blk, 0.0) + float(d.square().sum())
        total = sum(m.scaling(s) * (m.lora_B[s].double() @ m.lora_A[s].double()) for s in range(m.num_sessions))
        total_sq += float(total.square().sum())
        base_sq += float(m.base.weight.double().square().sum())
    return {"lora_trained_params": params,
            "delta_w_norm": math.sqrt(sum(new_sq.values())),
            "delta_w_norm_block": {str(k): math.sqrt(v) for k, v in sorted(new_sq.items())},
            "delta_w_total_norm": math.sqrt(total_sq),
            "base_w_norm": math.sqrt(base_sq),
            "delta_w_rel": math.sqrt(total_sq) / math.sqrt(base_sq) if base_sq > 0 else 0.0,
            "delta_w_session_rel": math.sqrt(sum(new_sq.values())) / math.sqrt(base_sq) if base_sq > 0 else 0.0}


def basis_ranks(adapter, bases: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Mean rank of the projection bases per block, and the layers' input width."""
    bb = adapter.backbone
    out: dict[str, float] = {}
    for b in adapter.blocks:
        ranks = [int(bases[n].shape[1]) for n in bb.lora_target_names([b], list(adapter.cfg.targets)) if n in bases]
        if ranks:
            out[str(b)] = sum(ranks) / len(ranks)
    dim = max((int(u.shape[0]) for u in bases.values()), default=0)
    return {"basis_rank_block": out, "basis_dim": dim}


def _folds(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-stratified halves: within each class, clips alternate between fold 0 and fold 1."""
    fold = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(y):
        idx = (y == c).nonzero().flatten()
        fold[idx[1::2]] = True
    return (~fold).nonzero().flatten(), fold.nonzero().flatten()


def head_accuracy(analytic_cfg, in_dim: int, seed: int, generator: torch.Generator, z: torch.Tensor,
                  y: torch.Tensor, z_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None) -> float:
    """Held-out accuracy (%) of a fresh analytic head (the learner's projection seed and ridge rule).

    The head is the one ``AnalyticClassifier.fit_session`` would build (same projection, same
    shuffled split and lam choice under ``ridge: select``, same lam floor), solved in the dual
    (``fresh_head_logits``): a session has far fewer clips than M, so this costs an N x N
    eigendecomposition where the classifier would factor its M x M system.
    """
    from pace.heads.analytic import RIDGE_GRID, RandomProjection, fit_rows, fresh_head_logits, select_ridge
    from pace.methods.parts import first_session_form

    if z_val is not None and y_val is not None and len(y_val) > 0:
        pairs = [(torch.arange(len(y)), None)]
    else:
        a, b = _folds(y)
        pairs = [(a, b), (b, a)] if len(a) >= 2 and len(b) >= 1 else []
    cfg = analytic_cfg
    proj = RandomProjection(in_dim, cfg.proj_dim or None, cfg.activation, cfg.scale, seed)
    k = int(y.max()) + 1
    correct = total = 0
    for fit, held in pairs:
        if len(fit) < 2:
            continue
        h, yf = proj(z[fit].float()), y[fit]
        form = first_session_form(cfg, proj.out_features, len(yf))
        if cfg.ridge == "select":
            order = torch.randperm(len(yf), generator=generator)  # as fit_session: RanPAC's loader order
            h, yf = h[order], yf[order]
            n_fit = fit_rows(len(yf))
            lam = select_ridge(h[:n_fit], yf[:n_fit], h[n_fit:], yf[n_fit:], RIDGE_GRID, cfg.criterion,
                               num_classes=k).lam
        else:
            lam = cfg.lam
        zt, yt = (z_val, y_val) if held is None else (z[held], y[held])
        logits = fresh_head_logits(h, yf, proj(zt.float()), lam, k, floor=form == "gram")
        correct += int((logits.argmax(-1).cpu() == yt.cpu()).sum())
        total += len(yt)
    return 100.0 * correct / total if total else float("nan")


# ------------------------------------------------------------------------------------ recording

@contextlib.contextmanager
def instrumenting(ctx) -> Iterator[dict[str, Any]]:
    """Measure without touching the learner's counters; time the measurement."""
    saved = dict(ctx.counters)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            yield ctx.diagnostics
    finally:
        ctx.counters.clear()
        ctx.counters.update(saved)
        ctx.diagnostics["diag_time_s"] = ctx.diagnostics.get("diag_time_s", 0.0) + time.perf_counter() - t0


def record_adaptation(learner, session, z_before: torch.Tensor, z_after: torch.Tensor, stage: str,
                      analytic_cfg) -> None:
    """The diagnostics of a session in which ``learner.adapter`` got a new trained stack."""
    from pace.methods.common import split_embeddings

    ctx = learner.ctx
    with instrumenting(ctx) as d:
        d["adapted"] = 1
        d["stage"] = stage
        d.update(lora_stats(learner.adapter))
        d["emb_cosine"] = mean_cosine(z_before, z_after)
        y = session.train.y
        zv_before = zv_after = yv = None
        if session.val is not None and len(session.val) > 0:
            yv = session.val.y
            zv_after = split_embeddings(learner, session.val)
            zv_before = getattr(learner, "_diag_val_before", None)
        d["head_acc_eval"] = "val" if zv_before is not None else "cv2"
        kw = dict(analytic_cfg=analytic_cfg, in_dim=z_after.shape[1], seed=ctx.seeds.init, y=y, y_val=yv)
        d["head_acc_before"] = head_accuracy(generator=ctx.generator(f"diag-head:{session.index}"),
                                             z=z_before, z_val=zv_before, **kw)
        d["head_acc_after"] = head_accuracy(generator=ctx.generator(f"diag-head:{session.index}"),
                                            z=z_after, z_val=zv_after if zv_before is not None else None, **kw)
        d["head_acc_n"] = len(yv) if zv_before is not None else len(y)


def embeddings_before(learner, session) -> torch.Tensor:
    """Embeddings of the session's training (and validation) clips before adaptation."""
    from pace.methods.common import split_embeddings

    with instrumenting(learner.ctx):
        z = split_embeddings(learner, session.train)
        learner._diag_val_before = (split_embeddings(learner, session.val)
                                    if session.val is not None and len(session.val) > 0 else None)
    return z


def not_adapted(ctx) -> None:
    ctx.diagnostics.setdefault("adapted", 0)
    ctx.diagnostics.setdefault("stage", "none")


# ------------------------------------------------------------------------------------ outputs

def diagnostic_metrics(diags: dict[str, Any]) -> dict[str, float]:
    """Numbers only, ``diag_`` prefixed; lists and dicts flattened (``diag_cka_block_3``)."""
    out: dict[str, float] = {}

    def put(name: str, v: Any) -> None:
        if isinstance(v, bool):
            out[name] = float(v)
        elif isinstance(v, (int, float)) and math.isfinite(float(v)):
            out[name] = float(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                put(f"{name}_{k}", x)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                put(f"{name}_{i}", x)

    for k, v in diags.items():
        put(k if k.startswith("diag_") else f"diag_{k}", v)
    return out


def _inert_reasons(t: int, d: dict[str, Any]) -> list[str]:
    rel, cos, where = d.get("delta_w_session_rel"), d.get("emb_cosine"), f"session {t + 1} ({d.get('stage')})"
    out = []
    if rel is not None and rel < INERT_DELTA_REL:
        out.append(f"{where}: ||delta W||/||W0|| = {rel:.2e} < {INERT_DELTA_REL:g}")
    if cos is not None and cos > INERT_COSINE:
        out.append(f"{where}: embeddings' cosine to before = {cos:.5f} > {INERT_COSINE}")
    return out


#: flag -> what its WARNING line says it measured
FLAG_WARNINGS = {"adaptation_inert": "adaptation inert (weights or embeddings did not move)",
                 "head_acc_unchanged": "held-out head accuracy unchanged by the adaptation",
                 "head_acc_fell": "held-out head accuracy fell with the adaptation"}


def inert_flags(session_diags: list[dict[str, Any]], session_times: list[float] | None = None) -> dict[str, Any]:
    """``adaptation_inert`` / ``head_acc_unchanged`` / ``head_acc_fell`` with the reasons (see the
    module docstring).

    A stage (fsa, msa) is inert when every session it adapted is; the run is flagged when any
    stage is. (One MSA session that barely moves is what the projection is for; a stage that
    never moves is not.) With ``session_times`` an inert stage's reasons end with the learner time
    its sessions took, so a user does not pay for a stage that did nothing without being told.
    """
    adapted = [(t, d) for t, d in enumerate(session_diags) if d.get("adapted")]
    if not adapted:
        return {}
    inert, no_gain, harmful = [], [], []
    for stage in dict.fromkeys(d.get("stage") for _, d in adapted):
        reasons = [_inert_reasons(t, d) for t, d in adapted if d.get("stage") == stage]
        if all(reasons):
            inert.extend(r for rs in reasons for r in rs)
            if session_times is not None:
                ts = [session_times[t] for t, d in adapted if d.get("stage") == stage]
                inert.append(f"{stage}: inert in all {len(ts)} session(s) it adapted, which took "
                             f"{sum(ts):.1f} s of learner time")
    for t, d in adapted:
        before, after = d.get("head_acc_before"), d.get("head_acc_after")
        if before is not None and after is not None and before == after and before < 100.0:
            no_gain.append(f"session {t + 1} ({d.get('stage')}): held-out analytic-head accuracy "
                           f"{after:.2f} % unchanged by the adaptation")
        n = d.get("head_acc_n")
        one_clip = 100.0 / n if n else 0.0  # older runs did not record n: any fall
        if before is not None and after is not None and before - after > one_clip + 1e-9:
            harmful.append(f"session {t + 1} ({d.get('stage')}): held-out analytic-head accuracy fell from "
                           f"{before:.2f} % to {after:.2f} % with the adaptation"
                           + (f" ({n} held-out clips)" if n else ""))
    return {"adaptation_inert": bool(inert), "adaptation_inert_reasons": inert,
            "head_acc_unchanged": bool(no_gain), "head_acc_unchanged_reasons": no_gain,
            "head_acc_fell": bool(harmful), "head_acc_fell_reasons": harmful}
