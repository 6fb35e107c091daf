"""MOS: adapter merging (float64 identity and during real training), self-refined retrieval on a
constructed case, stored adapters untouched by later sessions, one end-to-end run, a checkpoint
round trip. One Runner run (module fixture) serves the learner-level checks."""


import pytest
import torch

from pace.backbones.registry import build_backbone
from pace.config import validate_config
from pace.heads.ncm import NCMHead
from pace.methods.base import Context, build_learner
from pace.methods.mos import merge_adapter, self_refined_logits
from pace.runner import Runner
from learners import restored_learner

F64 = torch.float64
EPOCHS, CLIPS_PER_SESSION, BATCH = 5, 12, 8


def _cfg(backbone: str = "eat-tiny", **method):
    return validate_config({
        "name": "mos",
        "data": {"dataset": "synthetic", "label": "coarse", "synthetic_classes": 6, "synthetic_clips_per_class": 8},
        "scenario": {"num_sessions": 3},
        "backbone": {"name": backbone, "target_frames": 48},
        "method": {"name": "mos", "train": {"epochs": EPOCHS, "lr": 0.05}, "ca_epochs": 10, **method},
        "runtime": {"progress": False, "batch_size": BATCH},
    })


def _clone(state):
    return {n: (a.clone(), b.clone()) for n, (a, b) in state.items()}


class _Snapshots:
    """Copies of the stored adapters as each session ends."""

    def __init__(self):
        self.after: list[list[dict]] = []

    def on_start(self, runner): ...

    def on_session(self, runner, result):
        self.after.append([_clone(s) for s in runner.learner.adapters])

    def on_end(self, runner, final): ...


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    snaps = _Snapshots()
    runner = Runner(_cfg(), tmp_path_factory.mktemp("mos"), [snaps])
    runner.prepare()
    learner = runner.learner
    merges = []  # (session, live adapter before, after) for every merge the training loop asked for
    step = learner.merge_step

    def recorded():
        before = learner._snapshot()
        step()
        merges.append((len(learner.adapters), before, learner._snapshot()))

    learner.merge_step = recorded
    final = runner.run()
    return runner, final, snaps, merges


# --------------------------------------------------------------------------- adapter merging


def test_merge_is_the_momentum_average_of_the_earlier_adapters():
    g = torch.Generator().manual_seed(0)

    def rand():
        return {"l": (torch.randn(4, 6, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64))}

    cur, earlier = rand(), [rand(), rand(), rand()]
    out = merge_adapter(cur, earlier, 0.1)
    for i in range(2):
        mean = (earlier[0]["l"][i] + earlier[1]["l"][i] + earlier[2]["l"][i]) / 3
        torch.testing.assert_close(out["l"][i], 0.9 * cur["l"][i] + 0.1 * mean, rtol=1e-15, atol=1e-15)
    assert out["l"][0].dtype == F64
    # m = 0: no merging; m = 1: the mean itself
    assert torch.equal(merge_adapter(cur, earlier, 0.0)["l"][1], cur["l"][1])


def test_training_merges_after_every_step_towards_the_stored_adapters(run):
    runner, _, _, merges = run
    learner = runner.learner
    steps_per_session = EPOCHS * -(-CLIPS_PER_SESSION // BATCH)
    # no merge in session 1 (nothing stored yet), one per optimizer step in sessions 2 and 3
    assert [t for t, _, _ in merges] == [1] * steps_per_session + [2] * steps_per_session
    for t, before, after in merges:
        earlier = learner.adapters[:t]
        for n, (a, b) in after.items():
            for i, got in enumerate((a, b)):
                mean = torch.stack([e[n][i].double() for e in earlier]).mean(0)
                want = 0.9 * before[n][i].double() + 0.1 * mean
                torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
    # the merge pulled the live adapter: the final step's output is not its input
    _, before, after = merges[-1]
    assert any(not torch.equal(before[n][1], after[n][1]) for n in after)


def test_earlier_adapters_are_unchanged_by_later_training(run):
    runner, _, snaps, _ = run
    adapters = runner.learner.adapters
    assert len(adapters) == 3 and [len(s) for s in snaps.after] == [1, 2, 3]
    for j in range(3):
        for later in snaps.after[j:]:
            for n, (a, b) in adapters[j].items():
                assert torch.equal(later[j][n][0], a) and torch.equal(later[j][n][1], b)
    # ... while later sessions did train: each adapter differs from the one before it
    for j in range(1, 3):
        assert any(not torch.equal(adapters[j][n][1], adapters[j - 1][n][1]) for n in adapters[j])


# --------------------------------------------------------------------------- retrieval


def _tasks(c: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(c, torch.tensor([2, 4, 6]), right=True)  # 3 sessions of 2 classes


def test_retrieval_starts_at_the_session_whose_prototype_matches():
    # 6 orthogonal class prototypes; a query next to class 3's (session 1) retrieves adapter 1, and
    # adapter 1's feature, classified as class 3, confirms it
    protos = NCMHead(6)
    protos.accumulate(torch.eye(6, dtype=F64) * 2.0, torch.arange(6))
    z_ret = torch.tensor([[0.1, 0.0, 0.2, 1.0, 0.0, 0.1]])
    orig = protos.logits(z_ret).float()
    feats = torch.zeros(3, 1, 6)
    feats[0, 0, 0] = feats[1, 0, 3] = feats[2, 0, 5] = 1.0  # each adapter's feature names its own class
    final, chosen = self_refined_logits(orig, feats, lambda z: z, _tasks)
    assert chosen.tolist() == [1]
    assert torch.equal(final, feats[1])


def test_refinement_moves_to_the_session_the_adapter_points_to_and_stops_after_max_iter():
    orig = torch.zeros(2, 6)
    orig[0, 0] = orig[1, 0] = 1.0  # both start at session 0
    feats = torch.zeros(3, 2, 6)
    # sample 0: adapter 0 says class 5 (session 2), adapter 2 says class 4 (session 2): settles on 2
    feats[0, 0, 5] = feats[2, 0, 4] = 1.0
    # sample 1: adapter 0 says class 2 (session 1), adapter 1 says class 0 (session 0): it oscillates
    feats[0, 1, 2] = feats[1, 1, 0] = 1.0
    final, chosen = self_refined_logits(orig, feats, lambda z: z, _tasks, max_iter=4)
    assert chosen.tolist() == [2, 1]  # sample 1: tries 0, 1, 0, 1 and stops at the 4th
    assert torch.equal(final[0], feats[2, 0]) and torch.equal(final[1], feats[1, 1])
    _, chosen3 = self_refined_logits(orig, feats, lambda z: z, _tasks, max_iter=3)
    assert chosen3.tolist() == [2, 0]


# --------------------------------------------------------------------------- end to end


def test_end_to_end_on_separable_synthetic_data(run):
    # 6 coarse classes in 3 sessions of 2, 12 test clips: chance is 1/6 = 16.7 %. Measured on eat-tiny
    # (5 epochs at lr 0.05, 10 alignment epochs): 100 / 87.5 / 91.7 % after sessions 1 / 2 / 3, the
    # retrieval picking the clip's own session for 11 of 12. Floors: 66.7 % (8 of 12) and 9 of 12.
    runner, final, _, _ = run
    assert final["accuracy_per_session"][-1] >= 66.6
    learner = runner.learner
    right = 0
    for i in range(3):
        split = runner.test_split(i)
        with torch.inference_mode():
            orig = learner.prototypes.logits(learner._embed(split, 0))[:, : learner.num_seen]
            feats = torch.stack([learner._embed(split, j) for j in range(3)])
            _, chosen = self_refined_logits(orig.float(), feats, learner.head, learner.task_of_class)
        right += int((chosen == i).sum())
    assert right >= 9


def test_checkpoint_round_trip_gives_identical_predictions(run):
    runner, _, _, _ = run
    fresh = restored_learner(runner, Context(batch_size=BATCH, seeds=runner.cfg.seeds))
    for i in range(3):
        x = runner.test_split(i).x
        with torch.inference_mode():
            assert torch.equal(fresh.predict(x), runner.learner.predict(x))


def test_blockless_backbone_is_refused():
    cfg = validate_config({"name": "m", "data": {"dataset": "synthetic"}, "backbone": {"name": "logmel-stats"},
                           "method": {"name": "mos"}})
    with pytest.raises(ValueError, match="mos: backbone 'logmel-stats' has no transformer blocks"):
        build_learner(cfg.method, build_backbone(cfg.backbone), Context())
