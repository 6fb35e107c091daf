"""SLCA: the slow learner trains the backbone at the configured fraction of the head's lr; the stored
class statistics are the float64 mean and covariance of the session's features; classifier alignment
is a function of the stored statistics and the pre-alignment heads alone; end to end; checkpoints.

One small run (eat-tiny, synthetic coarse, 6 classes in 3 sessions) is shared by the tests.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from pace.backbones.registry import build_backbone
from pace.config import BackboneConfig, validate_config
from pace.embed import embed
from pace.methods.base import Context, build_learner
from pace.methods.slca import SLCA, SLCAConfig, logit_normalised_ce
from pace.runner import Runner
from learners import restored_learner

HEAD_LR, SCALE = 0.1, 0.001
METHOD = {"name": "slca", "train": {"epochs": 10, "lr": HEAD_LR}, "backbone_lr_scale": SCALE,
          "ca_epochs": 20, "ca_lr": 0.1}


def _cfg():
    return validate_config({
        "name": "slca",
        "data": {"dataset": "synthetic", "synthetic_classes": 6, "synthetic_clips_per_class": 8},
        "scenario": {"num_sessions": 3},
        "backbone": {"name": "eat-tiny", "target_frames": 48},
        "method": METHOD,
        "runtime": {"progress": False, "batch_size": 8},
    })


class Record:
    """After each session: the session's features under the backbone as it then stood (a fresh,
    uncached forward) and a copy of the pre-alignment heads."""

    def __init__(self):
        self.features, self.heads = [], []

    def on_start(self, runner): ...

    def on_session(self, runner, result):
        learner, session = runner.learner, runner.session(result.index)
        z = embed(learner.backbone, session.train.x, runner.ctx)
        self.features.append((z.double(), session.train.y.clone(), list(session.classes)))
        self.heads.append(copy.deepcopy(learner.heads.state_dict()))

    def on_end(self, runner, final): ...


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    real_sgd, groups = torch.optim.SGD, []

    def spy(params, *args, **kwargs):
        opt = real_sgd(params, *args, **kwargs)
        groups.append([(g["lr"], {id(p) for p in g["params"]}) for g in opt.param_groups])
        return opt

    record = Record()
    with pytest.MonkeyPatch.context() as mp:
        # module-scoped: set the test cache here (conftest's autouse fixture is function-scoped)
        mp.setenv("PACE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "pace-cache"))
        mp.setattr(torch.optim, "SGD", spy)
        runner = Runner(_cfg(), tmp_path_factory.mktemp("slca"), [record])
        final = runner.run()
    return runner, final, record, groups


def _fresh(runner, seed_offset=0):
    cfg = runner.cfg
    bb = build_backbone(cfg.backbone, init_seed=cfg.seeds.init + seed_offset)
    return build_learner(cfg.method, bb, Context(seeds=cfg.seeds, batch_size=8))


# ---------------------------------------------------------------------------------- the mechanism


def test_slow_learner_trains_the_backbone_at_the_configured_fraction_of_the_head_lr(run):
    runner, _, record, groups = run
    learner = runner.learner
    backbone_ids = {id(p) for p in learner.backbone.parameters()}
    # per session: the slow learner's optimizer (2 groups); from session 2 on also the alignment's (1)
    stage1 = [g for g in groups if len(g) == 2]
    assert len(stage1) == 3 and len(groups) == 5
    for t, ((bb_lr, bb_ids), (head_lr, head_ids)) in enumerate(stage1):
        assert bb_ids == backbone_ids  # the whole backbone trains ...
        assert head_lr == HEAD_LR and bb_lr == pytest.approx(SCALE * head_lr, rel=1e-12)  # ... slowly
        assert head_ids == {id(p) for p in learner.heads[t].parameters()}  # only this session's head
    # the backbone did move, and an earlier session's head did not (frozen while later ones train)
    fresh = build_backbone(runner.cfg.backbone, init_seed=runner.cfg.seeds.init).state_dict()
    trained = learner.backbone.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)
    for k, v in record.heads[0].items():
        assert k.startswith("0.") and torch.equal(learner.heads.state_dict()[k], v)


def test_stored_statistics_are_the_float64_mean_and_covariance_of_each_sessions_features(run):
    runner, _, record, _ = run
    learner = runner.learner
    assert learner.means.dtype == learner.covs.dtype == torch.float64
    assert learner.class_session.tolist() == [0, 0, 1, 1, 2, 2]
    for z, y, classes in record.features:  # z: features under the backbone right after that session
        for c in classes:
            zc = z[y == c]
            torch.testing.assert_close(learner.means[c], zc.mean(0), rtol=0, atol=1e-12)
            torch.testing.assert_close(learner.covs[c], torch.cov(zc.T), rtol=0, atol=1e-12)


def test_alignment_is_a_function_of_the_stored_statistics_and_heads_alone(run):
    runner, _, _, _ = run
    learner = runner.learner
    state = learner.state_dict()
    # A learner on a differently initialised backbone that never saw a clip, given only the heads and
    # the statistics (no backbone weights, no data), aligns to the same head bit for bit ...
    other = _fresh(runner, seed_offset=1)
    kept = {k: state[k] for k in ("num_seen", "session_ranges", "heads", "aligned", "means", "covs",
                                  "class_session")}
    other.load_state_dict(kept)
    other.backbone.forward = None  # any backbone forward would raise
    with torch.no_grad():
        other.aligned[0].weight.zero_()  # wipe the loaded result so it must be recomputed
    other.align(2)
    for k, v in learner.aligned.state_dict().items():
        assert torch.equal(other.aligned.state_dict()[k], v), k
    # ... and alignment is what fixes the heads: the pre-alignment heads, each trained on its own
    # session, misplace stored class means that the aligned heads classify correctly
    means = learner.means.float()
    with torch.no_grad():
        pre = torch.cat([h(means) for h in learner.heads], dim=1).argmax(1)
        post = learner.logits_from_embeddings(means).argmax(1)
    assert post.tolist() == list(range(6))
    assert (pre == torch.arange(6)).sum() < 6


def test_logit_normalised_cross_entropy_on_hand_made_logits():
    logits = torch.tensor([[3.0, 4.0, 0.0, 1.0], [1.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([1, 2])
    ranges = [(0, 2), (2, 4)]
    # row 0: session norms 5 and 1 -> mean 3; row 1: 1 and sqrt(8)
    norms = torch.tensor([[3.0], [(1 + 8 ** 0.5) / 2]], dtype=torch.float64)
    expected = F.cross_entropy(logits / norms / 0.1, y)
    torch.testing.assert_close(logit_normalised_ce(logits, y, ranges, 0.1), expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(logit_normalised_ce(logits, y, ranges, 0.0), F.cross_entropy(logits, y))


# ---------------------------------------------------------------------------------- end to end


def test_slca_runs_end_to_end_well_above_chance(run):
    _, final, _, _ = run
    acc = final["accuracy_per_session"]
    assert len(acc) == 3
    # chance on all 6 classes is 16.7 %; measured 83.3 % (eat-tiny, CPU); floor 60 %
    assert acc[-1] >= 60.0


def test_checkpoint_round_trip_gives_identical_predictions(run):
    runner, _, _, _ = run
    fresh = restored_learner(runner)
    x = runner.test_split(0).x[:4]
    with torch.inference_mode():
        assert torch.equal(fresh.predict(x), runner.learner.predict(x))
    assert fresh.num_seen == 6


def test_slca_needs_a_backbone_with_parameters_unless_frozen():
    bb = build_backbone(BackboneConfig(name="logmel-stats"))
    with pytest.raises(ValueError, match="slca: backbone 'logmel-stats' has no parameters"):
        SLCA(SLCAConfig(), bb, Context())
    SLCA(SLCAConfig(backbone_lr_scale=0), bb, Context())  # a frozen backbone needs none
