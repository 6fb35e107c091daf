"""LoRanPAC: the incremental truncated SVD and the truncated least-squares head (float64 identities),
one end-to-end run, a checkpoint round trip."""


import pytest
import torch

from pace.backbones.registry import build_backbone
from pace.config import validate_config
from pace.heads.truncated_svd import TruncatedSVDHead, fold_rows, kept_rank
from pace.methods.base import Context, build_learner
from pace.runner import Runner
from learners import restored_learner

F64 = torch.float64


def _relu_features(n: int, m: int = 48, d: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, d, generator=g, dtype=F64) @ torch.randn(d, m, generator=g, dtype=F64))


def _labels(n: int, k: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def _feed(head: TruncatedSVDHead, H: torch.Tensor, y: torch.Tensor, sessions: list[int]) -> None:
    """Sessions of the given sizes, each solved at its end as the learner does."""
    start = 0
    for n in sessions:
        head.accumulate(H[start:start + n], y[start:start + n])
        head.solve()
        start += n


def _batch_svd(H: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, s, Vh = torch.linalg.svd(H, full_matrices=False)
    return s[:k], Vh[:k].T


def _projector(V: torch.Tensor) -> torch.Tensor:
    return V @ V.T


# --------------------------------------------------------------------------- (a) incremental SVD


def test_incremental_svd_equals_batch_svd_when_nothing_is_truncated():
    # 4 sessions, folds inside sessions too (flush_rows 7): every row's direction is kept
    H, y = _relu_features(40), _labels(40, 6)
    head = TruncatedSVDHead(H.shape[1], truncate_percent=0.0, rank=None, flush_rows=7)
    _feed(head, H, y, [9, 13, 10, 8])
    s, V = _batch_svd(H, head.kept)
    assert head.kept == torch.linalg.matrix_rank(H).item() == 40
    torch.testing.assert_close(head.s, s, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(_projector(head.V), _projector(V), rtol=0, atol=1e-11)


def test_incremental_svd_is_exact_under_truncation_when_the_data_has_low_rank():
    # rank-5 features (no ReLU): the 25 % cut keeps >= 5 pairs after every session, so it only ever
    # drops roundoff and the incremental result is the batch truncated SVD of all rows
    g = torch.Generator().manual_seed(3)
    H = torch.randn(30, 5, generator=g, dtype=F64) @ torch.randn(5, 48, generator=g, dtype=F64)
    head = TruncatedSVDHead(48, truncate_percent=25.0, rank=None, flush_rows=100)
    _feed(head, H, _labels(30, 4), [8, 10, 12])
    s, V = _batch_svd(H, 5)
    assert head.kept == 5
    torch.testing.assert_close(head.s, s, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(_projector(head.V), _projector(V), rtol=0, atol=1e-11)


def test_each_fold_is_the_truncated_svd_of_the_kept_factors_and_the_new_rows():
    # Full-rank data with the official 25 % cut: what the incremental algorithm guarantees is that
    # each fold gives the top-k left singular pairs of [V diag(s), B^T], k by the official rule.
    H, y = _relu_features(42, seed=5), _labels(42, 6)
    head = TruncatedSVDHead(H.shape[1], truncate_percent=25.0, rank=None, flush_rows=1000)
    start = 0
    for n in [12, 16, 14]:
        V0, s0, B = head.V.clone(), head.s.clone(), H[start:start + n]
        head.accumulate(B, y[start:start + n])
        head.solve()
        start += n
        k = kept_rank(start, 48, 25.0, None)
        s_ref, V_ref = _batch_svd(torch.cat([V0 * s0, B.T], dim=1).T, k)
        assert head.kept == k
        torch.testing.assert_close(head.s, s_ref, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(_projector(head.V), _projector(V_ref), rtol=0, atol=1e-10)
        assert head.last_discarded > 0  # the cut dropped data: this is the truncating regime
    # ... and that is not the batch truncated SVD of all rows: directions cut early stay cut
    s_all, V_all = _batch_svd(H, head.kept)
    assert (_projector(head.V) - _projector(V_all)).abs().max() > 1e-3


def test_rank_rule_is_the_official_one():
    # min(round(n * 0.75), min(rank, round(E * 0.75))), Python rounding as the official code
    assert kept_rank(36, 8192, 25.0, 10_000) == 27
    assert kept_rank(100_000, 8192, 25.0, 10_000) == 6144
    assert kept_rank(100_000, 100_000, 25.0, 10_000) == 10_000
    assert kept_rank(10, 8192, 25.0, None) == 8  # round(7.5) = 8 (banker's rounding)
    assert kept_rank(50, 8192, 0.0, None) == 50


def test_fold_drops_roundoff_directions():
    # duplicated rows: the residual's QR has zero columns; they must not enter the basis
    B = _relu_features(6, seed=9)
    V, s, _ = fold_rows(torch.zeros(48, 0, dtype=F64), torch.zeros(0, dtype=F64), torch.cat([B, B]), keep=12,
                        rtol=48 * torch.finfo(F64).eps)
    assert V.shape[1] == 6
    torch.testing.assert_close(V.T @ V, torch.eye(6, dtype=F64), rtol=0, atol=1e-13)


# --------------------------------------------------------------------------- (b) the solution


def test_full_rank_solution_is_the_minimum_norm_least_squares_one():
    H, y = _relu_features(40, seed=11), _labels(40, 6)
    head = TruncatedSVDHead(H.shape[1], truncate_percent=0.0, rank=None, flush_rows=9)
    _feed(head, H, y, [14, 14, 12])
    Y = torch.nn.functional.one_hot(y, 6).to(F64)
    torch.testing.assert_close(head.W, torch.linalg.pinv(H) @ Y, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(head.logits(H), H @ torch.linalg.pinv(H) @ Y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("ridge", [0.0, 0.5])
def test_small_rank_solution_is_the_truncated_one(ridge):
    # one session of 40 rows, 25 % cut -> rank 30: W = V_30 diag(s / (s^2 + ridge)) U_30^T Y directly
    H, y = _relu_features(40, seed=13), _labels(40, 6)
    head = TruncatedSVDHead(H.shape[1], truncate_percent=25.0, rank=None, ridge=ridge)
    head.accumulate(H, y)
    head.solve()
    U, s, Vh = torch.linalg.svd(H, full_matrices=False)
    r = 30
    Y = torch.nn.functional.one_hot(y, 6).to(F64)
    W_ref = Vh[:r].T @ torch.diag(s[:r] / (s[:r] ** 2 + ridge)) @ U[:, :r].T @ Y
    assert head.kept == r
    torch.testing.assert_close(head.W, W_ref, rtol=1e-9, atol=1e-11)
    # the cut matters: the full-rank pinv solution is a different classifier
    assert (head.W - torch.linalg.pinv(H) @ Y).abs().max() > 1e-3


def test_logits_refuse_stale_weights():
    H, y = _relu_features(10), _labels(10, 3)
    head = TruncatedSVDHead(48)
    head.accumulate(H, y)
    with pytest.raises(RuntimeError, match="solve"):
        head.logits(H)


# --------------------------------------------------------------------------- the method


def _cfg(method: dict, backbone: str = "eat-tiny"):
    return validate_config({
        "name": "loranpac",
        "data": {"dataset": "synthetic", "label": "coarse", "synthetic_classes": 6, "synthetic_clips_per_class": 8},
        "scenario": {"num_sessions": 3},
        "backbone": {"name": backbone, "target_frames": 48} if backbone.startswith("eat") else {"name": backbone},
        "method": {"name": "loranpac", **method},
        "runtime": {"progress": False, "batch_size": 8},
    })


def test_end_to_end_on_separable_synthetic_data(tmp_path):
    # 6 coarse classes (tones, noise, chirps, ...) in 3 sessions, 12 test clips: chance is 1/6 = 16.7 %.
    # Measured: 100 % after every session (eat-tiny, proj_dim 1024); floor 75 % (at most 3 of 12 wrong).
    runner = Runner(_cfg({"head": {"proj_dim": 1024}}), tmp_path)
    final = runner.run()
    assert final["accuracy_per_session"][-1] >= 75.0
    assert min(final["accuracy_per_session"]) >= 75.0
    head = runner.learner.head
    assert head.kept == kept_rank(sum(final["train_sizes"]), 1024, 25.0, 10_000)  # 36 clips -> 27
    assert runner.results[-1].diagnostics["tsvd_rank"] == head.kept


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    # with first-session adaptation, so the LoRA stack travels too
    cfg = _cfg({"fsa": {"enabled": True, "train": {"epochs": 1}}, "head": {"proj_dim": 512}})
    runner = Runner(cfg, tmp_path)
    runner.run()
    fresh = restored_learner(runner)
    for i in range(3):
        x = runner.test_split(i).x
        with torch.inference_mode():
            assert torch.equal(fresh.predict(x), runner.learner.predict(x))


def test_blockless_backbone_refuses_first_session_adaptation(tmp_path):
    cfg = _cfg({"fsa": {"enabled": True}}, backbone="logmel-stats")
    with pytest.raises(ValueError, match="loranpac: backbone 'logmel-stats' has no transformer blocks"):
        build_learner(cfg.method, build_backbone(cfg.backbone), Context())
