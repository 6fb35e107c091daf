"""Subspace-constrained LoRA updates (PACE section 5.4, following LoRA-DRS).

Pipeline for session t:

1. ``collect_input_covariances``: run the current data through the "unlearned" model (LoRA
   subtraction, ``LoRAManager.subtracted()``) and accumulate, per wrapped layer, the uncentred
   covariance ``C = (1/n) X^T X`` of the layer's inputs over every token of every clip (float64).
2. ``energy_basis``: keep the leading eigenvectors ``U`` (in x k) of ``C`` holding a fraction
   ``rho_svd`` of the energy.
3. ``GradientProjector``: constrain the newest LoRA stack so that its input-side factor ``A``
   (r x in) only ever has rows in an allowed subspace.

Why the input side. A LoRA layer computes ``y = W0 x + s B A x``. If every row of ``A`` lies in a
subspace ``S`` then ``A x = A P_S x`` (``P_S`` the orthogonal projector onto ``S``), so the stack's
contribution to ``y`` is zero for every input orthogonal to ``S``, *whatever B is*. Projecting
``A``'s gradient as ``g -> g P_S`` keeps ``A`` inside ``S`` during training.

B handling. ``B`` is trained freely and never projected. Projecting ``A``'s gradient alone is not
enough, though: ``B`` starts at zero but gets a non-zero gradient, so after training the output
change on an input ``x`` is ``s B' (A0 + dA) x``, and the random initial ``A0`` is not in ``S``.
The projector therefore also projects ``A``'s *initial value* into ``S`` when it is created
(``constrain_init=True``, the default). With that, ``A`` stays in ``S`` for any optimiser whose
step is a linear combination of past gradients (SGD, momentum, Nesterov, no weight decay on A).
Adam/AdamW rescale the gradient element-wise (and decay ``A`` itself), which leaves ``S``;
``attach(optimizer)`` re-projects ``A`` after every step, making the guarantee exact for any
optimiser.

Modes and what they protect (``U`` = basis from step 2):

* ``"onto"`` (default; the LoRA-DRS convention): ``g -> g U U^T``, i.e. ``S = span(U)``. Updates
  act only along the high-energy directions of the current data under the unlearned model (its
  "drift-resistant" space); outputs on inputs in ``span(U)^perp`` are left exactly unchanged.
* ``"complement"``: ``g -> g (I - U U^T)``, i.e. ``S = span(U)^perp`` (the GPM / null-space
  convention). Outputs on inputs in ``span(U)`` are left exactly unchanged, so ``U`` should then be
  computed from the data whose behaviour must be kept.

Only the newest stack is touched; frozen stacks receive no gradient anyway.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterable, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pace.modes import evaluating

from pace.peft.lora import LoRAManager

Energy = Literal["eig", "sv2"]
ProjectionMode = Literal["onto", "complement"]


class CovarianceAccumulator:
    """Running sum of the float64 Grams X^T X of a layer's input rows; ``value()`` = (1/n) X^T X."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.n = 0

    def add(self, gram: torch.Tensor, n: int) -> None:
        """Add the Gram ``X^T X`` of ``n`` rows (a layer's ``watch_input_grams`` computes it)."""
        self.sum = gram if self.sum is None else self.sum + gram
        self.n += n

    def value(self) -> torch.Tensor:
        if self.sum is None or self.n == 0:
            raise RuntimeError("no inputs were recorded for this layer")
        return (self.sum / self.n).cpu()


def _batches(data: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        return (data[i : i + batch_size] for i in range(0, data.shape[0], batch_size))
    return data


@torch.no_grad()
def collect_input_covariances(
    manager: LoRAManager,
    forward: Callable[[torch.Tensor], object],
    data: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    subtracted: bool = True,
) -> dict[str, torch.Tensor]:
    """Uncentred input covariance (in x in, float64, CPU) of every layer ``manager`` wraps.

    ``forward`` runs the model on one batch (e.g. the backbone itself); ``data`` is a tensor split
    into ``batch_size`` chunks or an iterable of batches, each moved to ``device`` when given. The
    pass runs in eval mode and, by default, on the subtracted ("unlearned") model.
    """
    accs = {name: CovarianceAccumulator() for name in manager.modules}
    handles = [m.watch_input_grams(accs[name].add) for name, m in manager.modules.items()]
    try:
        with evaluating(manager.model), manager.subtracted() if subtracted else nullcontext():
            for xb in _batches(data, batch_size):
                forward(xb.to(device) if device is not None else xb)
    finally:
        for h in handles:
            h.remove()
    return {name: acc.value() for name, acc in accs.items()}


def energy_spectrum(cov: torch.Tensor, energy: Energy = "eig") -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors of a symmetric PSD ``cov`` (columns, descending) and their energies.

    ``"eig"``: energy of direction i is the eigenvalue lambda_i of C = (1/n) X^T X, i.e. the mean
    squared projection of the inputs on it (= sigma_i(X)^2 / n, the squared singular values of the
    *data* matrix, the GPM convention). ``"sv2"``: energy is the squared singular value of the
    *covariance* matrix itself, lambda_i^2 (what an SVD of C followed by S**2 gives); it weights
    the leading directions more, so it keeps fewer of them for the same rho.
    """
    if energy not in ("eig", "sv2"):
        raise ValueError(f"energy must be 'eig' or 'sv2', got {energy!r}")
    c = cov.to(torch.float64)
    evals, evecs = torch.linalg.eigh((c + c.T) / 2)  # symmetrise: accumulated sums drift by ulps
    evals = evals.flip(0).clamp_min(0.0)  # PSD up to rounding
    evecs = evecs.flip(1)
    return evecs, evals if energy == "eig" else evals**2


def energy_basis(cov: torch.Tensor, rho: float = 0.99, energy: Energy = "eig") -> torch.Tensor:
    """Orthonormal basis U (in x k, float64) of the fewest leading directions holding >= rho energy.

    An all-zero covariance gives an empty basis (in x 0).
    """
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    evecs, e = energy_spectrum(cov, energy)
    total = e.sum()
    if total <= 0:
        return evecs[:, :0]
    ratio = torch.cumsum(e, 0) / total
    # Tolerance: a ratio that equals rho mathematically may land an ulp below it.
    k = int((ratio < rho - 1e-12).sum().item()) + 1
    return evecs[:, : min(k, e.numel())]


def subspace_bases(covs: dict[str, torch.Tensor], rho: float = 0.99,
                   energy: Energy = "eig") -> dict[str, torch.Tensor]:
    return {name: energy_basis(c, rho, energy) for name, c in covs.items()}


class GradientProjector:
    """Keeps the rows of each layer's newest LoRA ``A`` inside an allowed subspace.

    See the module docstring for the modes (``"onto"``: allowed = span(U), protects span(U)^perp;
    ``"complement"``: allowed = span(U)^perp, protects span(U)) and for why ``A``'s initial value is
    projected too. Hooks project ``A``'s gradient on every backward; ``attach(optimizer)`` also
    re-projects ``A`` after each optimiser step. ``remove()`` detaches everything.
    """

    def __init__(self, manager: LoRAManager, bases: dict[str, torch.Tensor],
                 mode: ProjectionMode = "onto", constrain_init: bool = True):
        if mode not in ("onto", "complement"):
            raise ValueError(f"mode must be 'onto' or 'complement', got {mode!r}")
        missing = set(manager.modules) - set(bases)
        if missing:
            raise ValueError(f"no projection basis for layers {sorted(missing)}")
        self.mode = mode
        self._handles: list[RemovableHandle] = []
        self._params: list[tuple[nn.Parameter, torch.Tensor]] = []
        for name, m in manager.modules.items():
            a, _ = m.trainable_stack()
            u = bases[name].to(device=a.device, dtype=a.dtype)
            if u.shape[0] != a.shape[1]:
                raise ValueError(f"{name}: basis has dim {u.shape[0]}, layer input has {a.shape[1]}")
            self._params.append((a, u))
            self._handles.append(a.register_hook(lambda g, u=u: self.project(g, u)))
        if constrain_init:
            self.reproject()

    def project(self, rows: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Rows of ``rows`` (.. x in) mapped into the allowed subspace."""
        along = (rows @ u) @ u.T  # rows U U^T without forming the in x in projector
        return along if self.mode == "onto" else rows - along

    @torch.no_grad()
    def reproject(self) -> None:
        """Project every constrained ``A`` into its allowed subspace (idempotent)."""
        for a, u in self._params:
            a.copy_(self.project(a, u))

    @torch.no_grad()
    def span_fraction(self) -> float:
        """Share of the constrained ``A``s' squared norm inside span(U), over every layer: 1 under
        ``"onto"``, 0 under ``"complement"`` (up to rounding); NaN when every ``A`` is zero. A record of
        what the mode did to the trained stack (it reads, never changes, the parameters)."""
        inside = total = 0.0
        for a, u in self._params:
            inside += float((a @ u).double().pow(2).sum())  # ||A U||^2 = ||A U U^T||^2, U orthonormal
            total += float(a.double().pow(2).sum())
        return inside / total if total > 0 else float("nan")

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Re-project after every ``optimizer.step()`` (exact for Adam, weight decay, ...)."""
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.reproject()))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
