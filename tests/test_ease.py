"""EASE: earlier sessions' LoRA subspaces stay bit-identical; the feature grows by one subspace per
session; old classes' prototypes in a new subspace are the similarity-weighted combination of the
donor classes' prototypes (hand-made case and inside a run); the scores weight each class's own
subspace by 1 and the others by alpha / t; end to end; checkpoints.

One small run (eat-tiny, synthetic coarse, 6 classes in 3 sessions) is shared by the tests.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from pace.backbones.registry import build_backbone
from pace.config import BackboneConfig, validate_config
from pace.embed import embed
from pace.methods.base import Context
from pace.methods.common import batch_embeddings
from pace.methods.ease import EASE, EASEConfig, complement
from pace.runner import Runner
from learners import restored_learner

LR = 0.1
METHOD = {"name": "ease", "train": {"epochs": 5, "lr": LR}}
D = 64  # eat-tiny's width


def _cfg():
    return validate_config({
        "name": "ease",
        "data": {"dataset": "synthetic", "synthetic_classes": 6, "synthetic_clips_per_class": 8},
        "scenario": {"num_sessions": 3},
        "backbone": {"name": "eat-tiny", "target_frames": 48},
        "method": METHOD,
        "runtime": {"progress": False, "batch_size": 8},
    })


def _clone(state):
    return {n: [t.clone() for t in layer["A"] + layer["B"]] for n, layer in state["layers"].items()}


class Record:
    """After each session: the width of the concatenated feature of a probe batch, the probe's
    embedding under session 1's subspace, and a copy of that subspace's LoRA tensors."""

    def __init__(self):
        self.widths, self.first, self.first_state = [], [], []

    def on_start(self, runner): ...

    def on_session(self, runner, result):
        learner = runner.learner
        x = runner.test_split(0).x[:3]
        self.widths.append(learner.features(x).shape[1])
        learner.use(0)
        self.first.append(batch_embeddings(learner, x).cpu())
        self.first_state.append(_clone(learner.subspaces[0]))

    def on_end(self, runner, final): ...


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    real_sgd, groups = torch.optim.SGD, []

    def spy(params, *args, **kwargs):
        opt = real_sgd(params, *args, **kwargs)
        groups.append([(g["lr"], list(g["params"])) for g in opt.param_groups])
        return opt

    record = Record()
    with pytest.MonkeyPatch.context() as mp:
        # module-scoped: set the test cache here (conftest's autouse fixture is function-scoped)
        mp.setenv("PACE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "pace-cache"))
        mp.setattr(torch.optim, "SGD", spy)
        runner = Runner(_cfg(), tmp_path_factory.mktemp("ease"), [record])
        final = runner.run()
    return runner, final, record, groups


# ---------------------------------------------------------------------------------- the mechanism


def test_earlier_subspaces_stay_frozen_and_the_feature_grows_by_one_subspace_per_session(run):
    runner, _, record, groups = run
    learner = runner.learner
    assert record.widths == [D, 2 * D, 3 * D]
    assert len(learner.subspaces) == 3
    # session 1's subspace: the same tensors and the same embedding, bit for bit, after sessions 2 and 3
    for later in (1, 2):
        assert all(torch.equal(a, b) for n in record.first_state[0]
                   for a, b in zip(record.first_state[0][n], record.first_state[later][n]))
        assert torch.equal(record.first[0], record.first[later])
    # each session trained only a fresh stack (one A and one B per adapted layer) and its proxy head
    layers = len(learner.adapter.manager.modules)
    assert len(groups) == 3
    for (lora_lr, lora), (head_lr, _) in groups:
        assert len(lora) == 2 * layers and lora_lr == head_lr == LR
    # ... and the subspaces are real, distinct adaptations, not the pretrained model
    states = [_clone(s) for s in learner.subspaces]
    name = next(iter(states[0]))
    b = [s[name][1] for s in states]  # each layer's B (A is the random init)
    assert all(v.abs().sum() > 0 for v in b) and not torch.equal(b[0], b[1])


def test_complement_on_a_hand_made_case():
    # two old classes, two donors in 2-D; cos(a_hat, a) = [[1, 0], [0, 1]] (a_hat's scale is irrelevant)
    a_hat = torch.tensor([[5.0, 0.0], [0.0, 3.0]])
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    e = math.e
    expected = torch.tensor([[2 * e / (e + 1), 4 / (e + 1)], [2 / (e + 1), 4 * e / (e + 1)]], dtype=torch.float64)
    torch.testing.assert_close(complement(a_hat, a, b), expected, rtol=0, atol=1e-15)
    # a donor at 60 degrees: weights softmax([cos 60, 1]) over donors [rotated, a[1]]
    a60 = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3)], [0.0, 1.0]], dtype=torch.float64)
    w = torch.softmax(torch.tensor([0.5, 0.0], dtype=torch.float64), 0)
    torch.testing.assert_close(complement(a_hat[:1], a60, b), (w @ b.double())[None], rtol=0, atol=1e-15)


def test_the_run_complements_old_prototypes_from_its_real_ones(run):
    runner, _, _, _ = run
    learner = runner.learner
    P = learner.protos
    assert P.shape == (6, 3, D) and P.dtype == torch.float64
    # the real prototypes of the last session's classes: class means under each subspace
    session = runner.session(2)
    for s in range(3):
        learner.use(s)
        z = embed(learner.backbone, session.train.x, runner.ctx).double()
        for c in (4, 5):
            torch.testing.assert_close(P[c, s], z[session.train.y == c].mean(0), rtol=0, atol=1e-12)
    # old classes in later subspaces (recalc_sim): donors are every class of sessions d..3
    for i, d in ((0, 1), (0, 2), (1, 2)):
        old, donors = slice(2 * i, 2 * i + 2), slice(2 * d, 6)
        expected = torch.softmax(F.normalize(P[old, i], dim=1) @ F.normalize(P[donors, i], dim=1).T, 1) @ P[donors, d]
        torch.testing.assert_close(P[old, d], expected, rtol=0, atol=1e-12)
        assert P[old, d].abs().sum() > 0


def test_scores_weight_the_own_subspace_by_one_and_the_others_by_alpha_over_t():
    bb = build_backbone(BackboneConfig(name="eat-tiny", target_frames=48))
    learner = EASE(EASEConfig(alpha=0.3), bb, Context())
    learner.session_ranges = [(0, 1), (1, 3)]
    learner.subspaces = [{}, {}]  # two sessions: t = 1 (only their count matters here)
    learner.num_seen = 3
    g = torch.Generator().manual_seed(0)
    learner.protos = torch.randn(3, 2, D, generator=g, dtype=torch.float64)
    f = torch.randn(4, 2 * D, generator=g, dtype=torch.float64)
    cos = torch.stack([F.cosine_similarity(f[:, None, s * D:(s + 1) * D], learner.protos[None, :, s], dim=-1)
                       for s in range(2)], dim=-1)  # (N, classes, subspaces)
    expected = torch.stack([cos[:, 0, 0] + 0.3 * cos[:, 0, 1],
                            0.3 * cos[:, 1, 0] + cos[:, 1, 1],
                            0.3 * cos[:, 2, 0] + cos[:, 2, 1]], dim=1)
    torch.testing.assert_close(learner.logits_from_features(f), expected, rtol=0, atol=1e-12)
    # with the pretrained backbone as subspace 0 (use_init_ptm): every class adds beta x its cosine there
    ptm = EASE(EASEConfig(alpha=0.3, use_init_ptm=True, beta=0.5), bb, Context())
    ptm.session_ranges, ptm.subspaces, ptm.num_seen = learner.session_ranges, [{}, {}], 3
    p0 = torch.randn(3, 1, D, generator=g, dtype=torch.float64)
    f0 = torch.randn(4, D, generator=g, dtype=torch.float64)
    ptm.protos = torch.cat([p0, learner.protos], dim=1)
    extra = 0.5 * F.cosine_similarity(f0[:, None], p0[None, :, 0], dim=-1)
    torch.testing.assert_close(ptm.logits_from_features(torch.cat([f0, f], 1)), expected + extra, rtol=0, atol=1e-12)


@pytest.mark.parametrize("use_init_ptm", [False, True])
@pytest.mark.parametrize("recalc_sim", [True, False])
def test_which_prototypes_are_complemented_from_which(use_init_ptm, recalc_sim):
    # sessions of 1, 2 and 1 classes after the third session; k = 1 when the pretrained model is subspace 0
    bb = build_backbone(BackboneConfig(name="eat-tiny", target_frames=48))
    learner = EASE(EASEConfig(use_init_ptm=use_init_ptm, recalc_sim=recalc_sim), bb, Context())
    learner.session_ranges = [(0, 1), (1, 3), (3, 4)]
    k = int(use_init_ptm)
    real = torch.randn(4, 3 + k, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    learner.protos = real.clone()
    learner._complement(2)
    targets = [(0, 1), (0, 2), (1, 2)] if recalc_sim else [(0, 2), (1, 2)]
    old_of = {0: slice(0, 1), 1: slice(1, 3)}
    for i, d in targets:
        donors = slice(learner.session_ranges[d][0], 4) if recalc_sim else slice(3, 4)
        want = complement(real[old_of[i], k + i], real[donors, k + i], real[donors, k + d])
        torch.testing.assert_close(learner.protos[old_of[i], k + d], want, rtol=0, atol=0)
    untouched = torch.ones(4, 3 + k, dtype=torch.bool)
    for i, d in targets:
        untouched[old_of[i], k + d] = False
    assert torch.equal(learner.protos[untouched], real[untouched])  # real prototypes are never rewritten


# ---------------------------------------------------------------------------------- end to end


def test_ease_runs_end_to_end_well_above_chance(run):
    _, final, _, _ = run
    acc = final["accuracy_per_session"]
    assert len(acc) == 3
    # chance on all 6 classes is 16.7 %; measured 83.3 % (eat-tiny, CPU); floor 60 %
    assert acc[-1] >= 60.0


def test_checkpoint_round_trip_gives_identical_predictions(run):
    runner, _, _, _ = run
    fresh = restored_learner(runner)
    x = runner.test_split(1).x[:4]
    with torch.inference_mode():
        assert torch.equal(fresh.predict(x), runner.learner.predict(x))
    assert fresh.num_seen == 6


def test_ease_needs_blocks_to_carry_subspaces():
    with pytest.raises(ValueError, match="ease: backbone 'logmel-stats' has no blocks"):
        EASE(EASEConfig(), build_backbone(BackboneConfig(name="logmel-stats")), Context())
