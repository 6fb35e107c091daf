"""Random projection and the analytic (ridge regression) classifier: RanPAC's Gram form and the
recursive (Woodbury) form of ACL and PACE (pace_method.md 5.3, cl_reference.md 2.1-2.2).

Notation: ``H`` (N, M) projected features, ``Y`` (N, K) one-hot targets over the classes seen so far,
``G = sum H^T H`` (M, M), ``C = sum H^T Y`` (M, K). The ridge classifier is
``W(lam) = (G + lam I)^-1 C`` and the logits of a projected feature ``h`` are ``h W``.

Both forms give the joint ridge solution over all sessions, independent of how classes were split:
- Gram form keeps (G, C); ``solve(lam)`` can be repeated for any lam without touching data.
- Recursive form keeps ``R = (G + lam I)^-1`` and ``W``; lam is baked into R at construction, and
  each update inverts only an (N_b, N_b) matrix.

Ridge selection (``select_ridge``) evaluates a whole lam grid from ONE symmetric eigendecomposition
of the smaller Gram matrix of the fit features; ``select_ridge_direct`` does one M x M solve per grid
value, as RanPAC's code does, and ``select_ridge_reference`` one solve per value in the better
conditioned of the primal and dual systems (the float64 reference the tests hold the others to).

Cost per session of b rows (M projected dims, K classes): Gram form ``M^2 b`` to accumulate plus
``M^3 / 3`` for every solve (a new lam, or any lam after new data); recursive form ``~2 M^2 b``.
Many small sessions -> recursive (fixed lam); few sessions larger than ~M/6 rows, or a lam chosen
per session -> Gram. ``cheaper_form`` encodes that rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import nn

from pace.heads._util import F64, GrowingBuffers, as_features, as_labels, check_finite, one_hot, pad_columns

#: RanPAC's grid, 10^-8 .. 10^8 (17 values)
RIDGE_GRID: tuple[float, ...] = tuple(10.0**k for k in range(-8, 9))

Form = Literal["gram", "recursive"]
Criterion = Literal["mse", "accuracy"]


# --------------------------------------------------------------------------------------------------
# Random projection


class RandomProjection(nn.Module):
    """``h = act(scale * z W)`` with a fixed ``W`` (in_dim, out_dim) of i.i.d. N(0, 1) entries.

    RanPAC draws W once, unscaled, and uses ReLU; ``scale`` lets ACL-like smaller projections be
    tried (the scale interacts with the ridge strength). W comes from a CPU ``torch.Generator``
    seeded with ``seed``, so it is a pure function of (seed, in_dim, out_dim, scale) and by default
    is *not* stored in the state dict: the state holds that recipe plus a fingerprint, and loading
    regenerates W and checks the fingerprint (an error if torch's generator ever changed). Pass
    ``store_weight=True`` to keep W itself in checkpoints instead.

    ``out_dim`` 0 or None means no projection: features pass through unchanged (ridge on the raw
    backbone features, RanPAC's M = 0 ablation) and the activation is not applied.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = 8192,
        activation: Literal["relu", "identity"] = "relu",
        scale: float = 1.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        store_weight: bool = False,
    ):
        super().__init__()
        if activation not in ("relu", "identity"):
            raise ValueError(f"activation must be 'relu' or 'identity', got {activation!r}")
        if in_dim < 1 or (out_dim is not None and out_dim < 0):
            raise ValueError(f"bad projection shape ({in_dim}, {out_dim})")
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim or 0)
        self.activation = activation
        self.scale = float(scale)
        self.seed = int(seed)
        self.store_weight = bool(store_weight)
        weight = self._draw(dtype) if self.out_dim else None
        self.register_buffer("weight", weight, persistent=self.store_weight)

    @property
    def out_features(self) -> int:
        return self.out_dim or self.in_dim

    def _draw(self, dtype: torch.dtype) -> torch.Tensor:
        # Always drawn in float32 on the CPU so the values do not depend on dtype or device.
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed)
        w = torch.randn(self.in_dim, self.out_dim, generator=g, dtype=torch.float32)
        return (w * self.scale).to(dtype)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return z
        # Outside autocast: under a bf16 region the product would be rounded before the ridge sees it.
        with torch.autocast(device_type=self.weight.device.type, enabled=False):
            h = z.to(self.weight.dtype) @ self.weight
        return torch.relu(h) if self.activation == "relu" else h

    def _fingerprint(self) -> torch.Tensor:
        w = self.weight.detach().to("cpu", F64)
        return torch.stack([w.sum(), w.square().sum(), w.reshape(-1)[:: 97].sum()])

    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "in_dim": self.in_dim, "out_dim": self.out_dim, "activation": self.activation,
            "scale": self.scale, "seed": self.seed,
        }
        if self.weight is not None:
            state["fingerprint"] = self._fingerprint()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.in_dim, self.out_dim = int(state["in_dim"]), int(state["out_dim"])
        self.activation, self.scale, self.seed = state["activation"], float(state["scale"]), int(state["seed"])
        if not self.out_dim:
            self.weight = None
            return
        if not self.store_weight:  # regenerate from the recipe (a stored weight was already loaded)
            old = self.weight
            dtype = old.dtype if old is not None else torch.float32
            device = old.device if old is not None else torch.device("cpu")
            self.weight = self._draw(dtype).to(device)
        if not torch.allclose(self._fingerprint(), state["fingerprint"].to(F64), rtol=1e-9, atol=0.0):
            raise ValueError("random projection does not match its checkpoint fingerprint "
                             "(different torch generator or corrupted weight)")


# --------------------------------------------------------------------------------------------------
# Linear algebra shared by the heads and the ridge selection


#: lam below this multiple of eps * trace(G) is under the roundoff already in G (accumulated in float64):
#: where the data span fewer directions than M, (G + lam I) then solves for noise in G's null space
RIDGE_FLOOR_EPS = 1e4


def ridge_floor(G: torch.Tensor | None = None, trace: float | None = None) -> float:
    """The smallest lam for which a Cholesky solve of ``G + lam I`` is accurate (see ``AnalyticHead.solve``);
    ``trace``: trace(G) when G is not formed (= ||H||_F^2 for G = H^T H)."""
    return RIDGE_FLOOR_EPS * torch.finfo(F64).eps * (float(G.diagonal().sum()) if trace is None else trace)


def solve_ridge(G: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """``(G + lam I)^-1 C`` by Cholesky (never an explicit inverse).

    If roundoff makes ``G + lam I`` numerically indefinite (lam below ~eps * ||G||, e.g. the low end of
    RanPAC's grid on unscaled ReLU features), fall back to an LU solve, which is what RanPAC does.
    """
    if not lam > 0:
        raise ValueError(f"ridge strength must be > 0, got {lam}")
    A = G.clone()
    A.diagonal().add_(lam)
    L, info = torch.linalg.cholesky_ex(A)
    W = torch.cholesky_solve(C, L) if int(info) == 0 else torch.linalg.solve(A, C)
    check_finite(W, f"ridge solution at lam={lam:g}", "use a larger lam")
    return W


class RidgePath:
    """The ridge solutions for every lam from one eigendecomposition.

    With fit features H (N, M) and targets Y (N, K):
    - N >= M (primal): ``H^T H = V diag(e) V^T`` and ``W(lam) = V diag(1/(e+lam)) V^T H^T Y``;
    - N <  M (dual):   ``H H^T = U diag(e) U^T`` and, by the push-through identity
      ``(H^T H + lam I)^-1 H^T = H^T (H H^T + lam I)^-1``, ``W(lam) = H^T U diag(1/(e+lam)) U^T Y``.
      This is the thin-SVD formula ``V diag(s/(s^2+lam)) U^T Y`` with ``e = s^2``, but an N x N
      eigendecomposition is several times cheaper than an SVD of the N x M matrix.

    Either way ``X W(lam) = P diag(1/(e+lam)) B`` with ``P = project(X)`` and ``B`` fixed, so a lam
    costs one rescale. Eigenvalues are clamped at 0: the Gram matrix is PSD, and a roundoff-negative
    eigenvalue could otherwise cancel a small lam.
    """

    def __init__(self, H: torch.Tensor, Y: torch.Tensor):
        if H.dtype != F64 or Y.dtype != F64:
            raise TypeError("RidgePath expects float64 H and Y")
        self.dual = H.shape[0] < H.shape[1]
        self._H = H
        gram = H @ H.T if self.dual else H.T @ H
        evals, self.basis = torch.linalg.eigh(gram)
        del gram
        self.evals = evals.clamp_min(0.0)
        self.coef = self.basis.T @ (Y if self.dual else H.T @ Y)  # (r, K)

    def project(self, X: torch.Tensor) -> torch.Tensor:
        """(n, M) features -> (n, r) coordinates in the eigenbasis."""
        return (X @ self._H.T) @ self.basis if self.dual else X @ self.basis

    def weights(self, lam: float) -> torch.Tensor:
        scaled = self.coef / (self.evals + lam)[:, None]
        return self._H.T @ (self.basis @ scaled) if self.dual else self.basis @ scaled

    def predict(self, X: torch.Tensor, grid: Sequence[float]) -> torch.Tensor:
        """(len(grid), n, K) predictions ``X W(lam)`` for every lam in grid."""
        P = self.project(X)
        lams = torch.as_tensor(list(grid), dtype=F64, device=X.device)
        inv = 1.0 / (self.evals[None, :] + lams[:, None])  # (L, r)
        return torch.einsum("nr,lr,rk->lnk", P, inv, self.coef)


@dataclass
class RidgeSelection:
    lam: float
    index: int
    grid: tuple[float, ...]
    criterion: str
    mse: torch.Tensor  # (len(grid),) validation MSE against one-hot targets
    accuracy: torch.Tensor  # (len(grid),) validation top-1 accuracy

    @property
    def scores(self) -> torch.Tensor:
        """The selection criterion per grid value (MSE: lower is better; accuracy: higher)."""
        return self.mse if self.criterion == "mse" else self.accuracy


def _check_grid(grid: Sequence[float]) -> tuple[float, ...]:
    grid = tuple(float(g) for g in grid)
    if not grid or min(grid) <= 0:
        raise ValueError(f"ridge grid must be non-empty and positive, got {grid}")
    return grid


def _select(preds: torch.Tensor, y_val: torch.Tensor, grid: tuple[float, ...], criterion: str) -> RidgeSelection:
    """Pick lam from (L, n, K) validation predictions.

    MSE: the first argmin (RanPAC). Accuracy: the best accuracy, ties (common: many lam give the same
    count of correct clips) broken by the lower MSE so the choice is not an artefact of grid order.
    """
    if criterion not in ("mse", "accuracy"):
        raise ValueError(f"criterion must be 'mse' or 'accuracy', got {criterion!r}")
    target = one_hot(y_val, preds.shape[-1])
    mse = (preds - target).square().mean(dim=(1, 2))
    acc = (preds.argmax(dim=-1) == y_val).to(F64).mean(dim=1)
    if criterion == "mse":
        index = int(torch.argmin(mse))
    else:
        tied = acc == acc.max()
        index = int(torch.argmin(torch.where(tied, mse, torch.full_like(mse, float("inf")))))
    return RidgeSelection(grid[index], index, grid, criterion, mse.cpu(), acc.cpu())


def _prepare(H_train: torch.Tensor, y_train: torch.Tensor, H_val: torch.Tensor, y_val: torch.Tensor,
             num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    if H_train.dim() != 2 or H_train.shape[0] == 0 or H_val.shape[0] == 0:
        raise ValueError("ridge selection needs non-empty (N, M) fit and validation features")
    device, dim = H_train.device, H_train.shape[1]
    Htr, Hval = as_features(H_train, dim, device, "fit features"), as_features(H_val, dim, device, "val features")
    ytr, yval = as_labels(y_train, Htr.shape[0], device), as_labels(y_val, Hval.shape[0], device)
    k = max(int(ytr.max()), int(yval.max())) + 1
    if num_classes is not None:
        if num_classes < k:
            raise ValueError(f"num_classes={num_classes} but labels go up to {k - 1}")
        k = num_classes
    return Htr, one_hot(ytr, k), Hval, yval, k


def select_ridge(H_train: torch.Tensor, y_train: torch.Tensor, H_val: torch.Tensor, y_val: torch.Tensor,
                 grid: Sequence[float] = RIDGE_GRID, criterion: Criterion = "mse",
                 num_classes: int | None = None) -> RidgeSelection:
    """Choose lam on held-out data, every grid value from one eigendecomposition (``RidgePath``).

    Labels are global class ids; targets are one-hot over ``num_classes`` (default: the largest id
    seen + 1). Runs on the features' device, in float64.
    """
    grid = _check_grid(grid)
    Htr, Ytr, Hval, yval, _ = _prepare(H_train, y_train, H_val, y_val, num_classes)
    preds = RidgePath(Htr, Ytr).predict(Hval, grid)
    check_finite(preds, "validation predictions", "the fit features are too ill-conditioned")
    return _select(preds, yval, grid, criterion)


def select_ridge_reference(H_train: torch.Tensor, y_train: torch.Tensor, H_val: torch.Tensor,
                           y_val: torch.Tensor, grid: Sequence[float] = RIDGE_GRID, criterion: Criterion = "mse",
                           num_classes: int | None = None) -> RidgeSelection:
    """Float64 reference: one solve per grid value, in the system that is well conditioned.

    With N < M fit rows the primal ``H^T H + lam I`` (M x M) has M - N eigenvalues equal to lam, so its
    condition number is ~||G|| / lam (1e14 and worse at the bottom of RanPAC's grid on unscaled ReLU
    features) and its solve loses most digits; the dual ``H H^T + lam I`` (N x N) has the same
    solution (push-through identity) with condition (e_max + lam) / (e_min + lam), bounded by the data.
    """
    grid = _check_grid(grid)
    Htr, Ytr, Hval, yval, _ = _prepare(H_train, y_train, H_val, y_val, num_classes)
    if Htr.shape[0] < Htr.shape[1]:
        Kx = Htr @ Htr.T
        preds = torch.stack([(Hval @ Htr.T) @ solve_ridge(Kx, Ytr, lam) for lam in grid])
    else:
        G, C = Htr.T @ Htr, Htr.T @ Ytr
        preds = torch.stack([Hval @ solve_ridge(G, C, lam) for lam in grid])
    return _select(preds, yval, grid, criterion)


def select_ridge_direct(H_train: torch.Tensor, y_train: torch.Tensor, H_val: torch.Tensor, y_val: torch.Tensor,
                        grid: Sequence[float] = RIDGE_GRID, criterion: Criterion = "mse",
                        num_classes: int | None = None) -> RidgeSelection:
    """Reference for ``select_ridge``: one M x M solve per grid value (RanPAC's official loop)."""
    grid = _check_grid(grid)
    Htr, Ytr, Hval, yval, _ = _prepare(H_train, y_train, H_val, y_val, num_classes)
    G, C = Htr.T @ Htr, Htr.T @ Ytr
    preds = torch.stack([Hval @ solve_ridge(G, C, lam) for lam in grid])
    return _select(preds, yval, grid, criterion)


# --------------------------------------------------------------------------------------------------
# The head


def cheaper_form(dim: int, session_rows: int) -> Form:
    """The exact form that costs less for sessions of ``session_rows`` at a fixed lam.

    Per session, Gram: ``M^2 b`` (accumulate) + ``M^3 / 3`` (Cholesky); recursive: ``~3 M^2 b``
    (R X^T, the rank-b downdate of R, the b x b factorisation is negligible). Recursive wins while
    ``2 M^2 b < M^3 / 3``, i.e. ``b < M / 6``. Both give the joint ridge solution (to roundoff).
    """
    return "recursive" if 6 * int(session_rows) < int(dim) else "gram"


class AnalyticHead(GrowingBuffers):
    """Ridge classifier on projected features, in Gram or recursive form, one API.

    - ``accumulate(H, labels)`` adds a batch/session (labels: global ids 0..K-1; new ids add columns).
    - ``solve(lam=None)`` computes W. Gram form: from (G, C), for any lam, as often as wanted;
      ``logits`` refuses to run on a W that predates the last ``accumulate``. Recursive form: W is
      already current after ``accumulate``; lam is fixed at construction (R bakes it in).
    - ``logits(H)`` -> (N, K) float64 scores over all classes seen.

    Statistics are float64 buffers on the head's device (``.to(device)`` moves them; do not cast the
    head to a lower precision). Non-finite inputs or statistics raise ValueError.
    """

    G: torch.Tensor
    C: torch.Tensor
    R: torch.Tensor
    W: torch.Tensor

    def __init__(self, dim: int, form: Form = "gram", lam: float = 1.0, chunk_size: int = 4096,
                 device: torch.device | str | None = None):
        super().__init__()
        if form not in ("gram", "recursive"):
            raise ValueError(f"form must be 'gram' or 'recursive', got {form!r}")
        if not lam > 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        self.dim, self.form, self.lam, self.chunk_size = int(dim), form, float(lam), int(chunk_size)
        self.lam_used = self.lam  # gram form: the lam of the last solve after the roundoff floor
        self.num_samples = 0
        self._stale = False  # gram form: accumulated since the last solve
        dev = torch.device(device) if device is not None else torch.device("cpu")
        gram = form == "gram"
        # Unused statistics are empty tensors so every head has the same state-dict keys.
        self.register_buffer("G", torch.zeros((dim, dim) if gram else (0, 0), dtype=F64, device=dev))
        self.register_buffer("C", torch.zeros((dim, 0) if gram else (0, 0), dtype=F64, device=dev))
        R = torch.eye(dim, dtype=F64, device=dev) / self.lam if not gram else torch.zeros(0, 0, dtype=F64, device=dev)
        self.register_buffer("R", R)  # R_0 = I / lam: the recursion then yields (G + lam I)^-1
        self.register_buffer("W", torch.zeros(dim, 0, dtype=F64, device=dev))

    # -- bookkeeping ---------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return int(self.C.shape[1] if self.form == "gram" else self.W.shape[1])

    def expand(self, num_classes: int) -> None:
        """Grow to ``num_classes`` columns (new classes: zero statistics / zero weights)."""
        if self.form == "gram":
            self.C = pad_columns(self.C, num_classes)
            self._stale = self._stale or self.W.shape[1] != self.C.shape[1]
        else:
            self._grow_w(num_classes)

    def _grow_w(self, k: int) -> None:
        """Recursive form: W is a column prefix of a zero-filled (M, capacity) tensor that doubles when
        full, so adding a session's classes does not copy W (that copy grew with K every session)."""
        W = self.W
        if W.shape[1] >= k:
            return
        spare = getattr(self, "_w_spare", None)
        if spare is None or spare.data_ptr() != W.data_ptr() or spare.shape[1] < k or spare.device != W.device:
            spare = W.new_zeros(W.shape[0], max(k, 2 * W.shape[1], 16))
            spare[:, : W.shape[1]] = W
            self._w_spare = spare  # plain attribute, not state: a loaded or moved W starts a new one
        self.W = spare[:, :k]

    def _require_f64(self) -> None:
        for name in ("G", "C", "R", "W"):
            if getattr(self, name).dtype != F64:
                raise TypeError(f"AnalyticHead.{name} must stay float64 (was the head cast with .to(dtype)?)")

    # -- updates -------------------------------------------------------------------------------

    def accumulate(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> None:
        """Add (projected features, global labels). ``num_classes`` grows K even for absent classes."""
        self._require_f64()
        H = as_features(features, self.dim, self.device)
        y = as_labels(labels, H.shape[0], self.device)
        if H.shape[0] == 0:
            return
        self.expand(max(self.num_classes, int(y.max()) + 1, num_classes or 0))
        k = self.num_classes
        for start in range(0, H.shape[0], self.chunk_size):  # bounds the (chunk, M) and (chunk, chunk) temporaries
            Hb, Yb = H[start:start + self.chunk_size], one_hot(y[start:start + self.chunk_size], k)
            if self.form == "gram":
                self.G.addmm_(Hb.T, Hb)
                self.C.addmm_(Hb.T, Yb)
            else:
                self._woodbury(Hb, Yb)
        self.num_samples += H.shape[0]
        if self.form == "gram":
            check_finite(self.G, "Gram statistics G")
            self._stale = True

    def _woodbury(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        """One recursive step with a (b, M) block, inverting only b x b (Eq. 2-3 of PACE).

        R_new = R - R X^T S^-1 X R with S = I + X R X^T, and
        W_new = [W, 0] - R_new X^T X [W, 0] + R_new X^T Y = W + R_new X^T (Y - X W).
        """
        RX = self.R @ X.T  # (M, b); R is symmetric
        S = X @ RX
        S.diagonal().add_(1.0)
        L, info = torch.linalg.cholesky_ex(S)
        if int(info) != 0:
            raise ValueError("recursive ridge update lost positive definiteness; use a larger lam")
        T = torch.linalg.solve_triangular(L, RX.T, upper=False)  # L^-1 X R, (b, M)
        self.R.addmm_(T.T, T, alpha=-1.0)  # R - (X R)^T S^-1 (X R), in place (no M x M temporary)
        # R_new X^T = R X^T S^-1 (push-through), so no second M x M product is needed.
        RnX = torch.cholesky_solve(RX.T, L).T
        resid = Y - X @ self.W
        hint = "the features are too ill-conditioned for this lam; use a larger lam"
        # R and W were finite before and change only by T^T T and RnX resid: checking the small factors
        # (b x M, M x b, b x K) instead of R and W saves full passes over the (M, M) R and the (M, K) W
        # per step (they dominated small sessions); the arithmetic is unchanged.
        check_finite(T, "recursive statistics R", hint)
        check_finite(RnX, "recursive ridge weights W", hint)
        check_finite(resid, "recursive ridge weights W", hint)
        self.W.add_(RnX @ resid)

    def solve(self, lam: float | None = None) -> torch.Tensor:
        """Compute (Gram) or return (recursive) W = (G + lam I)^-1 C, shape (M, K)."""
        self._require_f64()
        if self.form == "recursive":
            if lam is not None and float(lam) != self.lam:
                raise ValueError(f"the recursive form is fixed at lam={self.lam:g}; use form='gram' to re-solve")
            return self.W
        lam = self.lam if lam is None else float(lam)
        # With fewer samples than M (every early session at M = 8192), G has a null space that holds
        # only roundoff (~eps * trace(G)); a lam below that, e.g. RanPAC's grid bottom 1e-8 on ReLU
        # features, amplified it into the weights (a cross-soundfont run fell from 100 % to 10 %). Above
        # the floor the solve equals the exact (dual) ridge solution at the asked lam to ~1e-7
        # (tests/test_heads.py), so the floor changes the numerics, not the statistics.
        self.lam_used = max(lam, ridge_floor(self.G))
        self.W = solve_ridge(self.G, self.C, self.lam_used)
        self.lam, self._stale = lam, False
        return self.W

    # -- inference -----------------------------------------------------------------------------

    @property
    def weight(self) -> torch.Tensor:
        if self.form == "gram" and self._stale:
            raise RuntimeError("statistics changed since the last solve(); call solve(lam) first")
        return self.W

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, M) projected features -> (N, K) float64 logits on the head's device."""
        W = self.weight
        return as_features(features, self.dim, self.device) @ W

    forward = logits

    # -- state ---------------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        return {"dim": self.dim, "form": self.form, "lam": self.lam, "lam_used": self.lam_used,
                "chunk_size": self.chunk_size,
                "num_samples": self.num_samples, "stale": self._stale}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.dim, self.form, self.lam = int(state["dim"]), state["form"], float(state["lam"])
        self.lam_used = float(state.get("lam_used", self.lam))  # older checkpoints: not recorded
        self.chunk_size, self.num_samples = int(state["chunk_size"]), int(state["num_samples"])
        self._stale = bool(state["stale"])
        for name in ("G", "C", "R", "W"):
            check_finite(getattr(self, name), f"loaded AnalyticHead.{name}")
        self._check_shapes()

    def _check_shapes(self) -> None:
        m = self.dim
        ok = self.W.shape[0] == m and (
            (self.G.shape == (m, m) and self.C.shape[0] == m) if self.form == "gram" else self.R.shape == (m, m))
        if not ok:
            raise ValueError(f"loaded AnalyticHead statistics do not match dim={m} and form={self.form!r}")


def fit_rows(n: int, fit_fraction: float = 0.8) -> int:
    """RanPAC's split of a session for choosing lam: the first this many rows fit, the rest validate."""
    if n < 2:
        raise ValueError("ridge selection needs at least 2 samples in the session")
    return min(max(int(fit_fraction * n), 1), n - 1)


def fresh_head_logits(H_fit: torch.Tensor, y_fit: torch.Tensor, H_eval: torch.Tensor, lam: float,
                      num_classes: int, floor: bool = True) -> torch.Tensor:
    """Logits on ``H_eval`` of a fresh head fit on one batch of rows and solved at ``lam``.

    The same ridge solution a new ``AnalyticHead`` gives after ``accumulate`` + ``solve(lam)``, from
    the N x N system when N < M (``RidgePath``, dual) instead of the M x M one: milliseconds instead
    of an M x M Cholesky. ``floor``: raise lam to the Gram form's roundoff floor as ``solve`` does
    (trace(G) = ||H||_F^2), so both pick the same lam_used.
    """
    H = as_features(H_fit, H_fit.shape[1], H_fit.device, "fit features")
    lam = float(lam)
    if floor:
        lam = max(lam, ridge_floor(trace=float(H.square().sum())))
    Y = one_hot(as_labels(y_fit, H.shape[0], H.device), num_classes)
    X = as_features(H_eval, H.shape[1], H.device, "eval features")
    out = RidgePath(H, Y).predict(X, [lam])[0]
    check_finite(out, f"fresh-head logits at lam={lam:g}", "use a larger lam")
    return out


def fit_session_ranpac(head: AnalyticHead, features: torch.Tensor, labels: torch.Tensor,
                       grid: Sequence[float] = RIDGE_GRID, criterion: Criterion = "mse",
                       fit_fraction: float = 0.8, num_classes: int | None = None) -> RidgeSelection:
    """RanPAC's per-session step on a Gram-form head.

    1. add the whole session to the cumulative (G, C);
    2. choose lam on this session alone: the first ``fit_fraction`` of the rows (in the order given;
       RanPAC's is its shuffled loader order) fit, the rest validate;
    3. solve the cumulative system with that lam.
    """
    if head.form != "gram":
        raise ValueError("RanPAC's flow re-solves for a new lam each session: it needs form='gram'")
    n_fit = fit_rows(int(features.shape[0]), fit_fraction)
    head.accumulate(features, labels, num_classes)
    sel = select_ridge(features[:n_fit], labels[:n_fit], features[n_fit:], labels[n_fit:], grid, criterion,
                       num_classes=head.num_classes)
    head.solve(sel.lam)
    return sel
