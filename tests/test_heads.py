"""Numerical identities of the heads: recursive ridge == batch ridge, one-decomposition ridge path ==
one solve per lam, prototypes == class means, plus state round trips and input checks."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from pace.heads import (
    RIDGE_GRID,
    AnalyticHead,
    CosineHead,
    LinearHead,
    NCMHead,
    RandomProjection,
    RidgePath,
    fit_session_ranpac,
    select_ridge,
    cheaper_form,
    select_ridge_direct,
    select_ridge_reference,
    solve_ridge,
)
from pace.heads._util import one_hot
from pace.heads.analytic import ridge_floor

F64 = torch.float64
M = 64  # projected dimension in the tests
K = 10  # classes
PER_CLASS = 30  # so 1 class (30) and 2 classes (60) are sessions with N < M, 6 classes (180) N > M


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The matrices here are tiny (64 x 64); multi-threaded LAPACK on them is dominated by thread
    # start-up (10-100x slower on a 2-core box), so these tests run single-threaded.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clustered(per_class: int, k: int = K, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone-like features with class structure, sorted by class (sessions = contiguous ids)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=g, dtype=F64)
    y = torch.arange(k).repeat_interleave(per_class)
    z = means[y] + 0.5 * torch.randn(len(y), dim, generator=g, dtype=F64)
    return z, y


def projected(per_class: int = PER_CLASS, seed: int = 0, scale: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    z, y = clustered(per_class, seed=seed)
    proj = RandomProjection(16, M, "relu", scale=scale, seed=7, dtype=F64)
    return proj(z), y


def batch_ridge(H: torch.Tensor, y: torch.Tensor, lam: float, k: int = K) -> torch.Tensor:
    """Joint ridge on all data at once, written out independently of the head (normal equations)."""
    A = H.T @ H + lam * torch.eye(H.shape[1], dtype=F64)
    return torch.linalg.solve(A, H.T @ one_hot(y, k))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def class_sessions(y: torch.Tensor, class_splits: list[int]) -> list[torch.Tensor]:
    """Row indices of sessions holding classes [0, s1), [s1, s2), ... (contiguous new ids)."""
    bounds = [0, *class_splits, K]
    return [torch.nonzero((y >= lo) & (y < hi)).squeeze(1) for lo, hi in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------------------------------
# Analytic head: recursive == batch ridge, Gram == recursive


@pytest.mark.parametrize(
    "class_splits, chunk_size",
    [
        ([], 4096),  # one session (N = 300 > M)
        ([2, 8], 4096),  # 3 unequal sessions: 60 (< M), 180 (> M), 60 rows
        (list(range(1, K)), 4096),  # 10 one-class sessions of 30 rows (< M)
        ([2, 8], 25),  # same partition, chunked Woodbury steps (25 x 25 inverses only)
    ],
)
def test_recursive_equals_batch_ridge_on_union(class_splits: list[int], chunk_size: int) -> None:
    H, y = projected()
    lam = 0.3
    head = AnalyticHead(M, "recursive", lam=lam, chunk_size=chunk_size)
    seen = 0
    for idx in class_sessions(y, class_splits):
        head.accumulate(H[idx], y[idx])
        seen = int(y[idx].max()) + 1
        assert head.num_classes == seen  # columns grow with the new classes only
    assert head.num_samples == len(y)
    assert rel_err(head.solve(), batch_ridge(H, y, lam)) < 1e-8


def test_recursive_mid_stream_equals_ridge_on_data_so_far() -> None:
    # After each session W is the ridge solution over the classes seen so far (zero-padded targets).
    H, y = projected()
    head = AnalyticHead(M, "recursive", lam=0.3)
    for idx in class_sessions(y, [3, 5]):
        head.accumulate(H[idx], y[idx])
        upto = y <= y[idx].max()
        k = int(y[idx].max()) + 1
        assert rel_err(head.W, batch_ridge(H[upto], y[upto], 0.3, k)) < 1e-8


def test_gram_form_equals_recursive_form() -> None:
    H, y = projected()
    lam = 0.3
    gram, rec = AnalyticHead(M, "gram"), AnalyticHead(M, "recursive", lam=lam)
    for idx in class_sessions(y, [1, 4, 9]):
        gram.accumulate(H[idx], y[idx])
        rec.accumulate(H[idx], y[idx])
    W = gram.solve(lam)
    assert rel_err(W, rec.W) < 1e-9
    assert rel_err(gram.logits(H), rec.logits(H)) < 1e-9
    assert torch.equal(gram.logits(H).argmax(1), rec.logits(H).argmax(1))


def test_gram_resolves_any_lam_without_data_and_refuses_stale_weights() -> None:
    H, y = projected()
    head = AnalyticHead(M, "gram")
    head.accumulate(H[:150], y[:150])
    with pytest.raises(RuntimeError):
        head.logits(H)  # accumulate without solve
    for lam in (1e3, 1e-2, 10.0):  # any order, from the same statistics
        assert rel_err(head.solve(lam), batch_ridge(H[:150], y[:150], lam, k=5)) < 1e-10
    head.accumulate(H[150:], y[150:])
    with pytest.raises(RuntimeError):
        head.logits(H)
    assert rel_err(head.solve(10.0), batch_ridge(H, y, 10.0)) < 1e-10


def test_recursive_form_has_lam_baked_in() -> None:
    H, y = projected()
    head = AnalyticHead(M, "recursive", lam=0.5)
    head.accumulate(H, y)
    head.solve(0.5)
    with pytest.raises(ValueError):
        head.solve(1.0)


def test_num_classes_grows_with_explicit_count() -> None:
    H, y = projected()
    for form in ("gram", "recursive"):
        head = AnalyticHead(M, form)
        head.accumulate(H[:30], y[:30], num_classes=4)  # one class present, four announced
        assert head.num_classes == 4
        assert head.solve().shape == (M, 4)
        assert torch.all(head.W[:, 1:] == 0)  # absent classes keep zero weights


# --------------------------------------------------------------------------------------------------
# Ridge selection: one decomposition == one solve per lam


@pytest.mark.parametrize("n_fit, dual", [(40, True), (240, False)])  # N < M and N > M
def test_ridge_path_equals_direct_solve_at_every_grid_value(n_fit: int, dual: bool) -> None:
    # scale 1/16 puts the Gram spectrum near 1, so even lam = 1e-8 has cond(G + lam I) <~ 1e8.
    H, y = projected(scale=1.0 / 16)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    H, y = H[perm], y[perm]
    Htr, ytr, Hval, yval = H[:n_fit], y[:n_fit], H[n_fit:n_fit + 60], y[n_fit:n_fit + 60]
    Y = one_hot(ytr, K)
    path = RidgePath(Htr, Y)
    assert path.dual is dual
    G, C = Htr.T @ Htr, Htr.T @ Y
    e_max = float(torch.linalg.eigvalsh(G).max())
    # roundoff of either solve grows with cond(G + lam I) <= (e_max + lam) / lam
    tols = torch.tensor([1e-12 + 1e-15 * (e_max + lam) / lam for lam in RIDGE_GRID], dtype=F64)
    for lam, tol in zip(RIDGE_GRID, tols.tolist()):
        W_direct = solve_ridge(G, C, lam)
        assert rel_err(path.weights(lam), W_direct) < tol, lam
        assert rel_err(path.predict(Hval, [lam])[0], Hval @ W_direct) < tol, lam

    for criterion in ("mse", "accuracy"):
        fast = select_ridge(Htr, ytr, Hval, yval, criterion=criterion, num_classes=K)
        ref = select_ridge_direct(Htr, ytr, Hval, yval, criterion=criterion, num_classes=K)
        assert torch.all((fast.mse - ref.mse).abs() <= tols * ref.mse)
        assert torch.equal(fast.accuracy, ref.accuracy)
        assert (fast.lam, fast.index) == (ref.lam, ref.index)


def test_selected_lam_is_the_argmin_of_validation_mse() -> None:
    H, y = projected()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(2))
    Htr, ytr, Hval, yval = H[perm[:240]], y[perm[:240]], H[perm[240:]], y[perm[240:]]
    # Scores by hand from the direct solutions.
    G, C = Htr.T @ Htr, Htr.T @ one_hot(ytr, K)
    preds = [Hval @ solve_ridge(G, C, lam) for lam in RIDGE_GRID]
    mse = torch.tensor([float(((p - one_hot(yval, K)) ** 2).mean()) for p in preds], dtype=F64)
    acc = torch.tensor([float((p.argmax(1) == yval).double().mean()) for p in preds], dtype=F64)

    sel = select_ridge(Htr, ytr, Hval, yval, criterion="mse")
    assert torch.allclose(sel.mse, mse, rtol=1e-8, atol=0)
    assert sel.index == int(mse.argmin()) and sel.lam == RIDGE_GRID[sel.index]
    assert 0 < sel.index < len(RIDGE_GRID) - 1  # the data make the optimum interior, not a grid edge
    assert torch.equal(sel.scores, sel.mse)

    sel_acc = select_ridge(Htr, ytr, Hval, yval, criterion="accuracy")
    assert torch.equal(sel_acc.accuracy, acc)
    best = acc == acc.max()
    assert best[sel_acc.index]
    assert sel_acc.mse[sel_acc.index] == sel_acc.mse[best].min()  # ties broken by MSE


def test_fit_session_ranpac_selects_on_session_and_solves_cumulative() -> None:
    H, y = projected()
    head = AnalyticHead(M, "gram")
    sessions = class_sessions(y, [5])
    for idx in sessions:
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(3))]  # loader order
        Hs, ys = H[idx], y[idx]
        sel = fit_session_ranpac(head, Hs, ys)
        n_fit = int(0.8 * len(idx))
        ref = select_ridge_direct(Hs[:n_fit], ys[:n_fit], Hs[n_fit:], ys[n_fit:], num_classes=head.num_classes)
        assert sel.lam == ref.lam
    assert rel_err(head.W, batch_ridge(H, y, sel.lam)) < 1e-10  # cumulative G, C with this session's lam


# --------------------------------------------------------------------------------------------------
# Input checks


def test_non_finite_inputs_and_statistics_raise() -> None:
    H, y = projected()
    bad = H[:20].clone()
    bad[3, 5] = float("nan")
    for form in ("gram", "recursive"):
        head = AnalyticHead(M, form)
        with pytest.raises(ValueError):
            head.accumulate(bad, y[:20])
        head.accumulate(H, y)
        head.solve()
        with pytest.raises(ValueError):
            head.logits(bad)
        state = head.state_dict()
        key = "G" if form == "gram" else "R"
        state[key] = state[key].clone()
        state[key][0, 0] = float("inf")
        with pytest.raises(ValueError):
            AnalyticHead(M, form).load_state_dict(state)
    with pytest.raises(ValueError):
        select_ridge(bad, y[:20], H[20:40], y[20:40])
    with pytest.raises(ValueError):
        NCMHead(M).accumulate(bad, y[:20])
    with pytest.raises(ValueError):
        AnalyticHead(M).accumulate(H[:5], torch.tensor([0.0, 1, 1, 2, 3]))  # float labels


def test_recursive_ill_conditioned_update_raises_not_nan() -> None:
    H, y = projected()
    head = AnalyticHead(M, "recursive", lam=1e-300)  # R = I / lam overflows to inf
    with pytest.raises(ValueError):
        head.accumulate(H, y)


# --------------------------------------------------------------------------------------------------
# Random projection


def test_random_projection_reproducible_and_seed_dependent() -> None:
    a, b, c = RandomProjection(16, 256, seed=5), RandomProjection(16, 256, seed=5), RandomProjection(16, 256, seed=6)
    assert torch.equal(a.weight, b.weight)
    assert not torch.allclose(a.weight, c.weight)
    # unscaled N(0, 1) entries (RanPAC), times scale
    assert abs(float(a.weight.mean())) < 0.05 and abs(float(a.weight.std()) - 1) < 0.05
    assert torch.allclose(RandomProjection(16, 256, seed=5, scale=0.5).weight, 0.5 * a.weight)
    z = torch.randn(8, 16)
    assert torch.equal(a(z), torch.relu(z @ a.weight))
    assert torch.equal(RandomProjection(16, 256, "identity", seed=5)(z), z @ a.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a learner's bf16 region must not round h
        h = a(z)
    assert h.dtype == torch.float32 and torch.equal(h, torch.relu(z @ a.weight))
    for none in (0, None):
        raw = RandomProjection(16, none)
        assert raw.weight is None and raw.out_features == 16 and torch.equal(raw(z), z)


@pytest.mark.parametrize("store_weight", [False, True])
def test_random_projection_state_roundtrip(store_weight: bool) -> None:
    src = RandomProjection(16, 128, scale=0.1, seed=11, store_weight=store_weight)
    state = roundtrip(src.state_dict())
    assert ("weight" in state) is store_weight  # by default only the recipe is stored
    dst = RandomProjection(16, 128, scale=0.1, seed=99, store_weight=store_weight)  # other seed: adopts 11
    dst.load_state_dict(state)
    assert dst.seed == 11 and torch.equal(dst.weight, src.weight)
    # a recipe or stored weight that no longer matches its fingerprint is refused, not used
    if store_weight:
        state["weight"] = state["weight"].clone()
        state["weight"][0, 0] += 1.0
    else:
        state["_extra_state"]["seed"] = 12
    with pytest.raises(ValueError):
        RandomProjection(16, 128, seed=0, store_weight=store_weight).load_state_dict(state)


# --------------------------------------------------------------------------------------------------
# State round trips of the analytic head


@pytest.mark.parametrize("form", ["gram", "recursive"])
def test_analytic_head_roundtrip_resumes_exactly(form: str) -> None:
    H, y = projected()
    first, second = class_sessions(y, [4])
    head = AnalyticHead(M, form, lam=0.3)
    head.accumulate(H[first], y[first])
    head.solve()

    class Holder(nn.Module):  # a learner nesting the head: the growing shapes must load through it
        def __init__(self) -> None:
            super().__init__()
            self.head = AnalyticHead(M, form, lam=0.3)

    saved = Holder()
    saved.head = head
    fresh = Holder()
    fresh.load_state_dict(roundtrip(saved.state_dict()))
    resumed = fresh.head
    assert resumed.num_classes == 4 and resumed.num_samples == len(first)
    assert torch.equal(resumed.logits(H), head.logits(H))
    for h in (head, resumed):
        h.accumulate(H[second], y[second])
        h.solve()
    assert torch.equal(resumed.W, head.W)
    assert rel_err(resumed.W, batch_ridge(H, y, 0.3)) < 1e-8


# --------------------------------------------------------------------------------------------------
# NCM


def test_ncm_prototypes_are_class_means_and_logits_are_cosines() -> None:
    z, y = clustered(12, k=4)
    head = NCMHead(16)
    head.accumulate(z[y < 2], y[y < 2])  # session 1
    head.accumulate(z[y >= 2], y[y >= 2])  # session 2
    means = torch.stack([z[y == c].mean(0) for c in range(4)])
    assert torch.allclose(head.prototypes, means, rtol=1e-12, atol=1e-14)
    q = torch.randn(5, 16, dtype=F64)
    cos = torch.stack([torch.stack([torch.dot(a, m) / (a.norm() * m.norm()) for m in means]) for a in q])
    assert torch.allclose(head.logits(q), cos, rtol=1e-12, atol=1e-14)
    # a class announced but not yet seen can never win
    head.expand(6)
    assert torch.isneginf(head.logits(q)[:, 4:]).all()
    assert head.logits(q).argmax(1).max() < 4


def test_ncm_roundtrip_into_fresh_head() -> None:
    z, y = clustered(6, k=3)
    head = NCMHead(16)
    head.accumulate(z, y)
    fresh = NCMHead(16)
    fresh.load_state_dict(roundtrip(head.state_dict()))
    assert fresh.num_classes == 3
    assert torch.equal(fresh.prototypes, head.prototypes)
    assert torch.equal(fresh.counts, torch.full((3,), 6.0, dtype=F64))


# --------------------------------------------------------------------------------------------------
# Linear and cosine heads


def test_linear_head_expand_keeps_old_rows() -> None:
    head = LinearHead(8, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    old_w, old_b = head.weight.detach().clone(), head.bias.detach().clone()
    head.expand(5, generator=torch.Generator().manual_seed(1))
    assert head.num_classes == 5 and head.weight.requires_grad
    assert torch.equal(head.weight[:3], old_w) and torch.equal(head.bias[:3], old_b)
    assert torch.equal(head.bias[3:], torch.zeros(2))
    assert head.weight[3:].abs().max() <= 8**-0.5 and head.weight[3:].abs().min() > 0
    x = torch.randn(4, 8)
    assert torch.allclose(head(x), x @ head.weight.T + head.bias)
    head.expand(2)  # shrinking is a no-op
    assert head.num_classes == 5


def test_cosine_head_is_scaled_cosine_with_learnable_scale() -> None:
    head = CosineHead(8, 4, scale=3.0, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 8)
    expected = 3.0 * (x / x.norm(dim=1, keepdim=True)) @ (head.weight / head.weight.norm(dim=1, keepdim=True)).T
    out = head(x)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(head(10 * x), out, atol=1e-5)  # invariant to feature scale
    out.sum().backward()
    assert head.scale.grad is not None and head.weight.grad is not None
    assert isinstance(CosineHead(8, 4, learn_scale=False).scale, torch.Tensor)
    assert not isinstance(CosineHead(8, 4, learn_scale=False).scale, nn.Parameter)


@pytest.mark.parametrize("cls", [LinearHead, CosineHead])
def test_linear_heads_roundtrip_into_smaller_head(cls: type[LinearHead]) -> None:
    head = cls(8, 2)
    head.expand(6)
    fresh = cls(8)  # 0 classes, as a learner is built before any session
    fresh.load_state_dict(roundtrip(head.state_dict()))
    x = torch.randn(3, 8)
    assert fresh.num_classes == 6 and torch.equal(fresh(x), head(x))


# --------------------------------------------------------------------------------------------------
# Bottom of the grid with N < M: which path is right


def _unscaled_small_session(n_fit: int = 40, dim: int = 512, seed: int = 3):
    """Unscaled ReLU projection (RanPAC's), N << M: H^T H + 1e-8 I has cond ~ 1e13 or worse."""
    z, y = clustered(10, seed=seed)
    H = RandomProjection(16, dim, "relu", seed=11, dtype=F64)(z)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    H, y = H[perm], y[perm]
    return H[:n_fit], y[:n_fit], H[n_fit:n_fit + 40], y[n_fit:n_fit + 40]


def test_reference_is_the_dual_solve_when_n_below_m() -> None:
    Htr, ytr, Hval, yval = _unscaled_small_session()
    ref = select_ridge_reference(Htr, ytr, Hval, yval, num_classes=K)
    Y = one_hot(ytr, K)
    Kx = Htr @ Htr.T
    for i, lam in enumerate(RIDGE_GRID):  # written out: dual solve by LU, validation MSE by hand
        pred = Hval @ (Htr.T @ torch.linalg.solve(Kx + lam * torch.eye(len(ytr), dtype=F64), Y))
        mse = float((pred - one_hot(yval, K)).square().mean())
        assert abs(float(ref.mse[i]) - mse) <= 1e-10 * mse, lam


def test_one_decomposition_selection_matches_the_f64_reference_at_the_bottom_of_the_grid() -> None:
    Htr, ytr, Hval, yval = _unscaled_small_session()
    ref = select_ridge_reference(Htr, ytr, Hval, yval, num_classes=K)
    fast = select_ridge(Htr, ytr, Hval, yval, num_classes=K)
    assert float(((fast.mse - ref.mse).abs() / ref.mse).max()) < 1e-8  # every lam, 1e-8 included
    assert (fast.lam, fast.index) == (ref.lam, ref.index)
    assert torch.equal(fast.accuracy, ref.accuracy)
    # The per-lam M x M solve is the inaccurate one down there (cond ~ ||G|| / lam).
    direct = select_ridge_direct(Htr, ytr, Hval, yval, num_classes=K)
    assert float((direct.mse[0] - ref.mse[0]).abs() / ref.mse[0]) > 1e3 * float(
        (fast.mse[0] - ref.mse[0]).abs() / ref.mse[0])


def test_cheaper_form_and_auto_classifier_give_the_same_ridge() -> None:
    from pace.methods.parts import AnalyticClassifier, AnalyticConfig

    assert cheaper_form(8192, 16) == "recursive" and cheaper_form(8192, 5000) == "gram"
    z, y = clustered(PER_CLASS)
    sessions = class_sessions(y, [2, 5])  # first session: 60 rows

    def fit(form: str, proj: int) -> AnalyticClassifier:
        cfg = AnalyticConfig(proj_dim=proj, ridge="fixed", lam=0.3, form=form, scale=0.25)
        clf = AnalyticClassifier(16, cfg, seed=7)
        for idx in sessions:
            clf.fit_session(z[idx].float(), y[idx], int(y[idx].max()) + 1, torch.Generator())
        return clf

    auto, gram = fit("auto", 512), fit("gram", 512)
    assert auto.head.form == "recursive"  # 6 * 60 < 512
    assert fit("auto", 64).head.form == "gram"  # 6 * 60 > 64
    assert rel_err(auto.logits(z.float()), gram.logits(z.float())) < 1e-9
    assert torch.equal(auto.logits(z.float()).argmax(1), gram.logits(z.float()).argmax(1))


def test_recursive_head_adds_classes_without_copying_w_and_round_trips() -> None:
    H, y = projected()
    head = AnalyticHead(M, "recursive", lam=0.3)
    sessions = class_sessions(y, list(range(1, K)))  # ten one-class sessions
    head.accumulate(H[sessions[0]], y[sessions[0]])
    ptr = head.W.data_ptr()
    for idx in sessions[1:8]:
        head.accumulate(H[idx], y[idx])
    assert head.W.shape == (M, 8) and head.W.data_ptr() == ptr  # grown in place (capacity 16)
    assert rel_err(head.W, batch_ridge(H[y < 8], y[y < 8], 0.3, 8)) < 1e-8
    fresh = AnalyticHead(M, "recursive", lam=0.3)
    fresh.load_state_dict(roundtrip(head.state_dict()))
    assert torch.equal(fresh.W, head.W) and torch.equal(fresh.R, head.R)
    for idx in sessions[8:]:  # the loaded head grows on (a new spare) and stays the same ridge
        head.accumulate(H[idx], y[idx])
        fresh.accumulate(H[idx], y[idx])
    assert torch.equal(fresh.W, head.W) and rel_err(head.W, batch_ridge(H, y, 0.3)) < 1e-8


def test_cumulative_solve_at_the_grid_bottom_equals_the_exact_dual_solution_when_n_below_m() -> None:
    """RanPAC's selection can pick lam = 1e-8 on one session; the cumulative system then has fewer
    samples than M, and a plain solve of (G + 1e-8 I) amplified the roundoff in G's null space
    (test logits off by several times their size). The solve must equal the exact dual solution."""
    Htr, ytr, Hval, _ = _unscaled_small_session()
    Htr, Hval = 100 * Htr, 100 * Hval  # the scale of Whisper embeddings' projections (trace(G) ~ 1e9)
    assert Htr.shape[0] < Htr.shape[1]
    head = AnalyticHead(Htr.shape[1], form="gram")
    head.accumulate(Htr, ytr, K)
    head.solve(1e-8)
    exact = Htr.T @ torch.linalg.solve(Htr @ Htr.T + 1e-8 * torch.eye(len(ytr), dtype=F64), one_hot(ytr, K))
    err = float((head.logits(Hval) - Hval @ exact).norm() / (Hval @ exact).norm())
    assert err < 1e-5  # the plain solve: 0.98
    assert head.lam == 1e-8 and head.lam_used == ridge_floor(head.G) > 1e-8
    # well above the floor nothing changes
    head.solve(10.0)
    assert head.lam_used == 10.0
