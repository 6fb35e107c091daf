"""Truncated-SVD least squares on random features: the head of LoRanPAC (Peng et al., ICLR 2025).

Notation as in ``pace.heads.analytic``: ``H`` (N, M) projected features, ``Y`` (N, K) one-hot targets,
``C = H^T Y`` (M, K). With the thin SVD ``H = P diag(s) V^T`` (``V`` (M, r) spans the row space of H),
LoRanPAC keeps only the top-k singular pairs instead of adding a ridge term:

    W = V_k diag(1 / (s_k^2 + ridge)) V_k^T C

At ridge 0 that is ``V_k diag(1 / s_k) P_k^T Y``: the minimum-norm least-squares solution
``pinv(H) Y`` when k = rank(H), the rank-k truncated solution when k is smaller. The official code
runs at ridge 0 and keeps ``k = min(round(n (1 - p / 100)), rank_cap)`` of the n rows seen so far
(``truncate_percent`` p = 25, ``rank_cap = min(rank, round(M (1 - p / 100)))``).

Only ``(V, s)`` and ``C`` are stored, never the rows. New rows ``B`` (b, M) are folded in with the
incremental truncated SVD of the official code: with ``Q R = qr(B^T - V V^T B^T)``,

    [V diag(s), B^T] = [V, Q] [[diag(s), V^T B^T], [0, R]]

so the SVD of the small (k + b) x (k + b) core gives the SVD of the left-hand side; the top k' pairs
are kept. What that guarantees: after every fold, ``(V, s)`` are exactly the top-k' left singular
pairs of ``[V_old diag(s_old), B^T]``. It equals the batch truncated SVD of all rows seen when no
fold discarded a non-zero singular value (no truncation, or data of rank at most k); otherwise the
directions dropped earlier are gone for good (the approximation the paper accepts).

Rows wait in a buffer and are folded when ``flush_rows`` have gathered (the official code folds
after 10,000 rows) and whenever ``solve`` runs. Everything is float64 (the official code: float32).
A numerical guard the official code lacks: singular values at or below pinv's tolerance
(``s_max * max(M, n) * eps``) are dropped when folding; they carry roundoff, not data, and at ridge
0 their inverse squares would swamp the solution.
"""

from __future__ import annotations

from typing import Any

import torch

from pace.heads._util import F64, GrowingBuffers, as_features, as_labels, check_finite, one_hot, pad_columns


def kept_rank(num_samples: int, dim: int, truncate_percent: float, rank: int | None) -> int:
    """How many singular pairs the official rule keeps after ``num_samples`` rows (before the
    numerical-rank guard): ``min(round(n * f), min(rank, round(M * f)))`` with f = 1 - p / 100."""
    keep = 1.0 - truncate_percent / 100.0
    cap = round(dim * keep)
    if rank is not None:
        cap = min(cap, int(rank))
    return max(0, min(round(num_samples * keep), cap))


def svd_rtol(dim: int, num_samples: int) -> float:
    """Singular values at or below this times the largest are roundoff (``torch.linalg.pinv``'s
    default rtol for an (n, M) matrix)."""
    return max(int(dim), int(num_samples)) * torch.finfo(F64).eps


def fold_rows(V: torch.Tensor, s: torch.Tensor, B: torch.Tensor, keep: int,
              rtol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One incremental truncated-SVD step: the top ``keep`` left singular pairs of
    ``[V diag(s), B^T]`` from those of ``V diag(s)`` and the new rows ``B`` (b, M), all float64.

    Returns ``(V', s', discarded)`` where ``discarded`` is the largest singular value dropped by
    the ``keep`` cut (0 when none). Values <= ``rtol * s_max`` are dropped as well (roundoff, not
    counted as discarded).
    """
    k = V.shape[1]
    P = V.T @ B.T  # (k, b): the new rows in the kept basis
    resid = B.T - V @ P
    resid -= V @ (V.T @ resid)  # orthogonalise twice: one Gram-Schmidt pass loses orthogonality
    Q, R = torch.linalg.qr(resid)  # (M, b'), (b', b) with b' = min(M, b)
    core = torch.cat([torch.cat([torch.diag(s), P], dim=1),
                      torch.cat([R.new_zeros(R.shape[0], k), R], dim=1)], dim=0)
    Uc, sc, _ = torch.linalg.svd(core, full_matrices=False)
    n_ok = int((sc > rtol * sc[0]).sum()) if len(sc) else 0
    k_new = min(keep, n_ok)
    discarded = float(sc[k_new]) if k_new < n_ok else 0.0
    Vn = torch.cat([V, Q], dim=1) @ Uc[:, :k_new]
    # [V, Q] and Uc are orthonormal, so Vn is too up to roundoff; re-orthonormalise so the error
    # does not build up over many folds (the official code does the same). QR may flip a column's
    # sign, which V diag(.) V^T does not see.
    Vn, Rn = torch.linalg.qr(Vn)
    Vn = Vn * torch.where(torch.diagonal(Rn) < 0, -1.0, 1.0)
    return Vn, sc[:k_new].clone(), discarded


class TruncatedSVDHead(GrowingBuffers):
    """Least squares on projected features through an incrementally updated truncated SVD.

    - ``accumulate(H, labels)`` adds rows: ``C += H^T Y`` at once, the rows themselves to a buffer
      folded into ``(V, s)`` once ``flush_rows`` have gathered.
    - ``solve()`` folds what is buffered and computes ``W`` (M, K).
    - ``logits(H)`` -> (N, K) float64 scores over all classes seen; refuses a ``W`` older than the
      last ``accumulate``.
    """

    V: torch.Tensor
    s: torch.Tensor
    C: torch.Tensor
    W: torch.Tensor
    pending: torch.Tensor

    def __init__(self, dim: int, truncate_percent: float = 25.0, rank: int | None = 10_000,
                 ridge: float = 0.0, flush_rows: int = 10_000, device: torch.device | str | None = None):
        super().__init__()
        if not 0.0 <= truncate_percent < 100.0:
            raise ValueError(f"truncate_percent must be in [0, 100), got {truncate_percent}")
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be >= 1, got {flush_rows}")
        self.dim = int(dim)
        self.truncate_percent, self.rank, self.ridge = float(truncate_percent), rank, float(ridge)
        self.flush_rows = int(flush_rows)
        self.num_samples = 0  # rows accumulated, folded or buffered (the official num_total_samples)
        #: largest singular value the rank cut dropped at the last fold (0: nothing with data dropped)
        self.last_discarded = 0.0
        self._stale = False
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.register_buffer("V", torch.zeros(self.dim, 0, dtype=F64, device=dev))
        self.register_buffer("s", torch.zeros(0, dtype=F64, device=dev))
        self.register_buffer("C", torch.zeros(self.dim, 0, dtype=F64, device=dev))
        self.register_buffer("W", torch.zeros(self.dim, 0, dtype=F64, device=dev))
        self.register_buffer("pending", torch.zeros(0, self.dim, dtype=F64, device=dev))

    @property
    def num_classes(self) -> int:
        return int(self.C.shape[1])

    @property
    def kept(self) -> int:
        return int(self.s.shape[0])

    def expand(self, num_classes: int) -> None:
        if num_classes > self.num_classes:
            self.C = pad_columns(self.C, num_classes)
            self._stale = True

    def accumulate(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> None:
        H = as_features(features, self.dim, self.device)
        y = as_labels(labels, H.shape[0], self.device)
        if H.shape[0] == 0:
            return
        self.expand(max(self.num_classes, int(y.max()) + 1, num_classes or 0))
        self.C.addmm_(H.T, one_hot(y, self.num_classes))
        self.pending = torch.cat([self.pending, H])
        self.num_samples += H.shape[0]
        self._stale = True
        if self.pending.shape[0] >= self.flush_rows:
            self.fold()

    def fold(self) -> None:
        """Fold the buffered rows into the truncated SVD (the official ``update_svd``)."""
        if self.pending.shape[0] == 0:
            return
        keep = kept_rank(self.num_samples, self.dim, self.truncate_percent, self.rank)
        V, s, self.last_discarded = fold_rows(self.V, self.s, self.pending, keep,
                                              svd_rtol(self.dim, self.num_samples))
        check_finite(V, "truncated-SVD basis")
        self.V, self.s = V, s
        self.pending = self.pending.new_zeros(0, self.dim)

    def solve(self) -> torch.Tensor:
        """W = V diag(1 / (s^2 + ridge)) V^T C after folding what is buffered."""
        self.fold()
        self.W = self.V @ ((self.V.T @ self.C) / (self.s.square() + self.ridge)[:, None])
        check_finite(self.W, "truncated-SVD weights", "raise truncate_percent or set a ridge")
        self._stale = False
        return self.W

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if self._stale:
            raise RuntimeError("rows were added since the last solve(); call solve() first")
        return as_features(features, self.dim, self.device) @ self.W

    forward = logits

    def get_extra_state(self) -> dict[str, Any]:
        return {"dim": self.dim, "truncate_percent": self.truncate_percent, "rank": self.rank,
                "ridge": self.ridge, "flush_rows": self.flush_rows, "num_samples": self.num_samples,
                "last_discarded": self.last_discarded, "stale": self._stale}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.dim, self.truncate_percent = int(state["dim"]), float(state["truncate_percent"])
        self.rank = None if state["rank"] is None else int(state["rank"])
        self.ridge, self.flush_rows = float(state["ridge"]), int(state["flush_rows"])
        self.num_samples, self.last_discarded = int(state["num_samples"]), float(state["last_discarded"])
        self._stale = bool(state["stale"])
        ok = (self.V.shape[0] == self.dim and self.s.shape[0] == self.V.shape[1]
              and self.C.shape[0] == self.dim and self.pending.shape[1] == self.dim)
        if not ok:
            raise ValueError(f"loaded TruncatedSVDHead shapes do not match dim={self.dim}")
        for name in ("V", "s", "C", "W"):
            check_finite(getattr(self, name), f"loaded TruncatedSVDHead.{name}")
