"""CKA, drift, perturbations, boundary set and the boundary-aware loss, on hand-checkable inputs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pace.analysis import blockwise_cka, linear_cka, representation_drift
from pace.backbones.base import Backbone, BackboneOutput
from pace.data.frontend import FbankFrontend
from pace.losses import boundary_loss, boundary_set, perturb


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TinyMLPBackbone(Backbone):
    """2 residual MLP blocks over (B, T, F) fbank tokens, mean pooled."""

    def __init__(self, n_mels: int = 8, dim: int = 16, blocks: int = 2):
        super().__init__(FbankFrontend(num_mel_bins=n_mels, target_frames=10), dim, blocks, "mean")
        self.embed = nn.Linear(n_mels, dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"fc1": nn.Linear(dim, 2 * dim), "fc2": nn.Linear(2 * dim, dim)})
            for _ in range(blocks))

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        h, hidden = self.embed(x), []
        for blk in self.blocks:
            h = h + blk["fc2"](torch.tanh(blk["fc1"](h)))
            hidden.append(h)
        return BackboneOutput(self.pool(h), hidden if output_hidden_states else [])

    def linear_layers(self) -> dict[int, dict[str, str]]:
        return {b: {r: f"blocks.{b}.{r}" for r in ("fc1", "fc2")} for b in range(self.num_blocks)}


# ---- CKA ----------------------------------------------------------------------------------------


def _cka_by_gram(x: torch.Tensor, y: torch.Tensor) -> float:
    """Independent reference: HSIC on centred linear Gram matrices."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((kx * ky).sum() / ((kx * kx).sum() * (ky * ky).sum()).sqrt())


def test_linear_cka_identities():
    x = torch.randn(60, 7, generator=gen(0), dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=gen(1), dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)  # orthogonal map
    assert linear_cka(x, 3.7 * x) == pytest.approx(1.0, abs=1e-12)  # isotropic scaling
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0, abs=1e-12)  # centred: translation too
    assert linear_cka(x.float(), x @ q) == pytest.approx(1.0, abs=1e-6)  # float32 in, float64 inside
    aniso = x * torch.tensor([10.0, 1, 1, 1, 1, 1, 0.1], dtype=torch.float64)
    assert linear_cka(x, aniso) < 0.9  # not invariant to anisotropic scaling
    other = torch.randn(60, 7, generator=gen(2), dtype=torch.float64)
    assert linear_cka(x, other) < 0.4
    assert linear_cka(x, other) == pytest.approx(_cka_by_gram(x, other), rel=1e-10)
    y = torch.randn(60, 3, generator=gen(3), dtype=torch.float64)  # different widths are fine
    assert linear_cka(x, y) == pytest.approx(_cka_by_gram(x, y), rel=1e-10)
    assert math.isnan(linear_cka(x, torch.ones(60, 2)))


def test_blockwise_cka_per_block():
    torch.manual_seed(0)
    a = TinyMLPBackbone()
    b = copy.deepcopy(a)
    x = torch.randn(40, 10, 8, generator=gen(4))
    same = blockwise_cka(a, b, x, batch_size=16)
    assert len(same) == 2 and all(v == pytest.approx(1.0, abs=1e-9) for v in same)
    with torch.no_grad():  # change only block 1: block 0 must still match exactly
        b.blocks[1]["fc1"].weight.normal_(0, 1.0, generator=gen(5))
    changed = blockwise_cka(a, b, x, batch_size=16)
    assert changed[0] == pytest.approx(1.0, abs=1e-9)
    assert changed[1] < 0.99
    assert a.training and b.training  # modes restored


# ---- drift --------------------------------------------------------------------------------------


def test_representation_drift_on_hand_made_centroids():
    centres = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # pairwise distances 3, 4, 5
    shifts = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # norms 1, 2, 0
    offsets = torch.tensor([[0.5, 0.5], [-0.5, -0.5]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    prev = centres[labels] + offsets.repeat(3, 1)
    cur = centres[labels] + shifts[labels] + 2.0 * offsets.repeat(3, 1)  # spread changes, centroid not
    drift = representation_drift(prev, labels, cur)
    assert drift.centroid_shift == pytest.approx(1.0)
    assert drift.inter_class_distance == pytest.approx(4.0)
    assert drift.ratio == pytest.approx(0.25)
    assert set(drift.as_dict()) == {"centroid_shift", "inter_class_distance", "ratio"}
    none = representation_drift(prev, labels, prev.clone())
    assert none.centroid_shift == 0.0 and none.ratio == 0.0


# ---- perturbations ------------------------------------------------------------------------------


def _band_of(mask: torch.Tensor) -> tuple[int, int]:
    """(start, width) of the single contiguous True run in a 1-D bool mask."""
    idx = torch.nonzero(mask).flatten()
    assert idx.numel() > 0
    assert torch.equal(idx, torch.arange(idx[0], idx[-1] + 1)), "band is not contiguous"
    return int(idx[0]), idx.numel()


def test_mask_views_mask_one_time_and_one_mel_band_only():
    x = torch.randn(3, 50, 20, generator=gen(0))  # no exact zeros
    views = perturb(x, "mask", n_views=20, generator=gen(1), r_t=0.2, r_f=0.2)
    assert views.shape == (3, 20, 50, 20)
    for b in range(3):
        for v in range(20):
            changed = views[b, v] != x[b]
            rows, cols = changed.all(dim=1), changed.all(dim=0)
            _, wt = _band_of(rows)
            _, wf = _band_of(cols)
            assert 1 <= wt <= 10 and 1 <= wf <= 4  # floor(0.2 * 50), floor(0.2 * 20)
            assert torch.equal(changed, rows[:, None] | cols[None, :])  # nothing else touched
            assert torch.all(views[b, v][changed] == 0.0)


def test_perturbations_are_reproducible_with_a_seeded_generator():
    x = torch.randn(2, 30, 16, generator=gen(0))
    for kind in ("mask", "noise", "pitch"):
        a = perturb(x, kind, n_views=5, generator=gen(7))
        assert torch.equal(a, perturb(x, kind, n_views=5, generator=gen(7)))
        assert not torch.equal(a, perturb(x, kind, n_views=5, generator=gen(8)))


def test_mask_value_and_disabled_axis():
    x = torch.randn(1, 30, 16, generator=gen(0))
    views = perturb(x, "mask", n_views=4, generator=gen(1), r_t=0.0, r_f=0.25, mask_value=-1.5)
    changed = views != x[:, None]
    assert torch.equal(changed.all(dim=2, keepdim=True).expand_as(changed), changed)  # mel bands only
    assert torch.all(views[changed] == -1.5)


def test_noise_views_hit_the_requested_snr():
    x = torch.randn(2, 200, 64, generator=gen(0)) * 3.0 + 1.0
    views = perturb(x, "noise", n_views=4, generator=gen(1), snr_db=10.0)
    noise_power = (views - x[:, None]).pow(2).mean(dim=(1, 2, 3))
    signal_power = x.pow(2).mean(dim=(1, 2))
    assert torch.allclose(noise_power / signal_power, torch.full((2,), 0.1), rtol=0.03)


def test_pitch_views_are_mel_shifts_with_edge_repeat():
    x = torch.randn(2, 10, 16, generator=gen(0))
    views = perturb(x, "pitch", n_views=40, generator=gen(1), max_shift=3)
    seen = set()
    for b in range(2):
        for v in range(40):
            matches = [k for k in (-3, -2, -1, 1, 2, 3)
                       if torch.equal(views[b, v], x[b][:, (torch.arange(16) - k).clamp(0, 15)])]
            assert len(matches) == 1
            seen.add(matches[0])
    assert seen == {-3, -2, -1, 1, 2, 3}


def test_perturb_rejects_unknown_kind_and_bad_shape():
    with pytest.raises(ValueError, match="kind"):
        perturb(torch.zeros(1, 4, 4), "reverb")
    with pytest.raises(ValueError, match="B, T, F"):
        perturb(torch.zeros(4, 4), "mask")


# ---- boundary set -------------------------------------------------------------------------------


def _mean_sign_model(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 if the clip's mean is positive; features = per-mel means."""
    m = x.mean(dim=(1, 2))
    return x.mean(dim=1), torch.stack([m, -m], dim=1)


def test_boundary_set_finds_the_sample_near_the_decision_boundary():
    z = torch.randn(3, 10, 10, generator=gen(0))
    z = z - z.mean(dim=(1, 2), keepdim=True)
    x = z + torch.tensor([5.0, 0.02, -5.0])[:, None, None]  # far / at the boundary / far
    y = torch.tensor([0, 0, 1])
    # 0 dB noise moves a clip mean by ~0.1: only the middle clip flips, about 40% of the time.
    bs = boundary_set(_mean_sign_model, x, y, n_views=40, rho_p=0.3, kind="noise", generator=gen(1),
                      batch_size=2, snr_db=0.0)
    assert bs.indices.tolist() == [1] and len(bs) == 1
    assert bs.error_rate[0] == 0.0 and bs.error_rate[2] == 0.0 and 0.3 < bs.error_rate[1] < 0.7
    assert torch.equal(bs.points, _mean_sign_model(x[1:2])[0])
    assert bs.labels.tolist() == [0]
    views = boundary_set(_mean_sign_model, x, y, n_views=40, rho_p=0.3, kind="noise",
                         generator=gen(1), snr_db=0.0, points="views")
    assert views.indices.tolist() == [1]
    assert views.points.mean() < 0  # the misclassified views lie on the class-1 side


@pytest.mark.parametrize("n_views, rho_p", [(20, 0.3), (10, 0.3), (7, 0.5), (20, 0.0), (20, 0.95), (5, 1.0)])
def test_early_decision_gives_the_set_of_evaluating_every_view(n_views, rho_p):
    """Membership, points and the generator's stream are those of the full evaluation, for fewer views."""
    torch.manual_seed(0)
    backbone, head = TinyMLPBackbone().eval(), nn.Linear(16, 3)
    seen = []

    def model_fn(xb):
        seen.append(xb.shape[0])
        f = backbone(xb).pooled
        return f, head(f)

    x, y = torch.randn(13, 10, 8, generator=gen(0)), torch.randint(0, 3, (13,), generator=gen(2))
    kw = dict(n_views=n_views, rho_p=rho_p, kind="mask", batch_size=5)
    g_full, g_early = gen(1), gen(1)
    full = boundary_set(model_fn, x, y, generator=g_full, early_decision=False, **kw)
    full_views, seen[:] = sum(seen) - len(x), []
    early = boundary_set(model_fn, x, y, generator=g_early, **kw)
    early_views = sum(seen) - len(x)
    assert torch.equal(early.indices, full.indices) and torch.equal(early.points, full.points)
    assert torch.equal(early.candidates, full.candidates) and torch.equal(early.labels, full.labels)
    assert torch.equal(g_full.get_state(), g_early.get_state())  # every view was still drawn
    assert full.views_evaluated == full_views == len(x) * n_views
    assert early.views_evaluated == early_views <= full_views
    assert torch.equal(early.error_rate > rho_p, full.error_rate > rho_p)
    assert early_views < full_views  # some samples were decided before their last view


def test_early_decision_stops_at_the_fewest_views_that_decide():
    """A model right on every view: out after V - need + 1 views (14 of 20 at 0.3); wrong on every view:
    in after need (7)."""
    def always(label):
        return lambda xb: (xb.mean(dim=1), torch.nn.functional.one_hot(
            torch.full((xb.shape[0],), label), 2).float())

    x, y = torch.randn(4, 6, 5, generator=gen(0)), torch.zeros(4, dtype=torch.long)
    right = boundary_set(always(0), x, y, n_views=20, rho_p=0.3, generator=gen(1), batch_size=4)
    assert len(right) == 0 and right.views_evaluated == 4 * 14 and right.error_rate.tolist() == [0.0] * 4
    wrong = boundary_set(always(1), x, y, n_views=20, rho_p=0.3, generator=gen(1), batch_size=4)
    assert wrong.indices.tolist() == [0, 1, 2, 3] and wrong.views_evaluated == 4 * 7
    assert wrong.error_rate.tolist() == [1.0] * 4


def test_boundary_set_works_with_a_backbone_and_mask_views():
    torch.manual_seed(0)
    backbone, head = TinyMLPBackbone().eval(), nn.Linear(16, 3)

    def model_fn(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = backbone(xb).pooled
        return f, head(f)

    x, y = torch.randn(5, 10, 8, generator=gen(0)), torch.tensor([0, 1, 2, 0, 1])
    bs = boundary_set(model_fn, x, y, n_views=6, generator=gen(1), batch_size=4)
    assert bs.error_rate.shape == (5,) and bs.points.shape == (len(bs), 16)
    assert torch.equal(bs.indices, torch.nonzero(bs.error_rate > 0.3).flatten())
    # every clean feature comes back (PACE's class centres use them instead of a second forward pass),
    # equal to the model's own in the same batches
    with torch.no_grad():
        clean = torch.cat([model_fn(x[:4])[0], model_fn(x[4:])[0]])
    assert torch.equal(bs.candidates, clean) and torch.equal(bs.points, clean[bs.indices])


# ---- boundary loss ------------------------------------------------------------------------------


def _two_d_example():
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    anchors = torch.tensor([[1.0, 0.0], [5.0, 0.0]], requires_grad=True)
    views = torch.tensor([[[0.0, 1.0], [1.0, 1.0]], [[4.0, 0.0], [4.0, 0.5]]], requires_grad=True)
    boundary = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    return views, torch.tensor([0, 1]), anchors, boundary, centres


def test_boundary_loss_matches_hand_computation():
    views, labels, anchors, boundary, centres = _two_d_example()
    loss = boundary_loss(views, labels, anchors, boundary, centres, delta=0.25)
    # Sample 0: pull = (1 + 2) / 2 = 1.5, push = min(1, 9) = 1 -> 0.25 + 1.5 - 1 = 0.75
    # Sample 1: pull = (0 + 0.25) / 2 = 0.125, push = min(9, 25) = 9 -> hinge 0
    assert loss.item() == pytest.approx(0.375)
    loss.backward()
    # d/d anchor0 of (-||a - b||^2) / 2 = -(a - b) = (1, 0): descent moves it away from b = (2, 0)
    assert torch.allclose(anchors.grad, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    # d/d view of (||u - mu||^2 / 2) / 2 = (u - mu) / 2 for sample 0; sample 1 is inactive
    assert torch.allclose(views.grad[0], torch.tensor([[0.0, 0.5], [0.5, 0.5]]))
    assert torch.all(views.grad[1] == 0)


def test_boundary_loss_with_normalisation_equals_the_formula_on_unit_vectors():
    views, labels, anchors, boundary, centres = _two_d_example()
    centres = centres + torch.tensor([[0.5, 0.5], [0.0, 0.0]])  # avoid normalising a zero vector

    def unit(t: torch.Tensor) -> torch.Tensor:
        return t / t.norm(dim=-1, keepdim=True)

    expected = []
    views_d, anchors_d = views.detach(), anchors.detach()
    for i in range(2):
        pull = ((unit(views_d[i]) - unit(centres[labels[i]])) ** 2).sum(-1).mean()
        push = ((unit(anchors_d[i]) - unit(boundary)) ** 2).sum(-1).min()
        expected.append(torch.clamp(0.25 + pull - push, min=0))
    loss = boundary_loss(views, labels, anchors, boundary, centres, normalize=True)
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)


def test_boundary_loss_is_zero_with_grad_for_an_empty_boundary_set():
    views, labels, anchors, _, centres = _two_d_example()
    loss = boundary_loss(views, labels, anchors, torch.zeros(0, 2), centres)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(anchors.grad == 0)


def test_boundary_loss_can_exclude_a_sample_s_own_point():
    views, labels, anchors, boundary, centres = _two_d_example()
    # Say boundary point 0 is sample 0's own point: its push becomes min over {(1, 3)} = 9.
    loss = boundary_loss(views, labels, anchors, boundary, centres,
                         anchor_index=torch.tensor([0, 1]), boundary_index=torch.tensor([0, 7]))
    assert loss.item() == pytest.approx(0.0)  # 0.25 + 1.5 - 9 < 0 and sample 1 as before
    only_own = boundary_loss(views[:1], labels[:1], anchors[:1], boundary[:1], centres,
                             anchor_index=torch.tensor([0]), boundary_index=torch.tensor([0]))
    assert only_own.item() == 0.0
    only_own.backward()
    assert torch.isfinite(anchors.grad).all()
