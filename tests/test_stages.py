"""Stage reuse (pace.methods.stages): keys hold every deciding input, and reuse changes no result.

A wrong key is a silent wrong result, so it is checked both ways: every config field outside a
stage's declared downstream set changes the key, and changing every downstream field at once leaves
the stage's outcome bit-identical when it is recomputed. End to end, a run that loads a stage gives
the same accuracy matrix as one that computes it.
"""

import typing

import pytest
import torch
from pydantic import BaseModel

from pace.cache import TensorCache
from pace.config import validate_config
from pace.methods.pace import FSA_DOWNSTREAM
from pace.methods.stages import default_fields, pack, stage_key, unpack
from pace.runner import Runner

TINY_PACE = {"fsa_epochs": 1, "msa_epochs": 1, "n_views": 4, "loss_views": 2, "cka_samples": 16,
             "analytic": {"proj_dim": 256}}
TINY_RANPAC = {"name": "ranpac", "fsa": {"train": {"epochs": 1}}, "analytic": {"proj_dim": 256}}


def _cfg(method: dict, cache_dir, backbone="eat-tiny", reuse=True, sessions=3):
    return validate_config({
        "name": "stages",
        "data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 6, "synthetic_clips_per_class": 6},
        "scenario": {"num_sessions": sessions},
        "backbone": {"name": backbone, **({"num_samples": 4000} if backbone.startswith("wav2vec2") else
                                          {"target_frames": 48})},
        "method": method,
        "runtime": {"progress": False, "batch_size": 8, "cache_dir": str(cache_dir), "reuse_stages": reuse},
    })


def _run(out, method, cache_dir, **kw):
    runner = Runner(_cfg(method, cache_dir, **kw), out)
    final = runner.run()
    return runner, final


def _session1(runner):
    return runner.results[0].diagnostics


# ------------------------------------------------------------------ keys

def _alternative(annotation, value):
    """A different valid value for a config leaf, from its annotation."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return next(a for a in args if a != value)
    if value is None:
        inner = next(a for a in args if a is not type(None))
        return {int: 2, float: 0.001}.get(inner, [0])  # list[int] | None: blocks
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, list):
        return value[:1] if len(value) > 1 else value + ["k"]
    raise AssertionError(f"no alternative for {value!r} ({annotation})")


def _leaves(model_cls: type[BaseModel], values: dict, prefix=()):
    for name, field in model_cls.model_fields.items():
        ann, value = field.annotation, values[name]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaves(ann, value, prefix + (name,))
        elif name != "name":
            yield prefix + (name,), ann, value


def _with(values: dict, path, new) -> dict:
    out = {**values}
    if len(path) == 1:
        out[path[0]] = new
    else:
        out[path[0]] = _with(values[path[0]], path[1:], new)
    return out


def _fsa_key(runner, method_values: dict) -> str:
    cfg = type(runner.learner.cfg)(**method_values)
    learner = runner.learner
    learner.cfg, saved = cfg, learner.cfg
    try:
        return stage_key(learner, "fsa", default_fields(learner, "fsa"), runner.session(0).train)
    finally:
        learner.cfg = saved


@pytest.mark.parametrize("method,downstream", [({"name": "pace", **TINY_PACE}, FSA_DOWNSTREAM),
                                               (TINY_RANPAC, frozenset({"analytic"}))],
                         ids=["pace", "ranpac"])
def test_every_field_outside_the_downstream_set_changes_the_fsa_key(tmp_path, method, downstream):
    runner = Runner(_cfg(method, tmp_path / "cache"), tmp_path / "run")
    runner.prepare()
    base = runner.learner.cfg.model_dump()
    key = _fsa_key(runner, base)
    checked = {"key": 0, "same": 0}
    for path, ann, value in _leaves(type(runner.learner.cfg), base):
        changed = _with(base, path, _alternative(ann, value))
        other = _fsa_key(runner, changed)
        if path[0] in downstream:
            assert other == key, f"{'.'.join(path)} is declared downstream of FSA but changes its key"
            checked["same"] += 1
        else:
            assert other != key, f"{'.'.join(path)} decides FSA but leaves its key unchanged"
            checked["key"] += 1
    assert checked["key"] >= 5 and checked["same"] >= 5
    # the run context is in the key too: another seed, another split of the data, another weight state
    assert stage_key(runner.learner, "fsa", {}, runner.session(1).train) != \
        stage_key(runner.learner, "fsa", {}, runner.session(0).train)
    torch.manual_seed(1234)  # the global stream (dropout) before the stage
    assert stage_key(runner.learner, "fsa", {}, runner.session(0).train) != \
        stage_key(runner.learner, "fsa", {}, runner.session(0).train.subset([0, 1]))


def test_declared_downstream_fields_leave_the_fsa_outcome_bit_identical(tmp_path):
    """Recomputed (no reuse) with every downstream field changed at once: same LoRA, CKA and trace."""
    outcomes = []
    for changes in ({}, {"msa": False, "msa_stop": "fixed", "n_stop": 3, "t3": 3, "msa_epochs": 2, "msa_lr": 0.3,
                         "projection": False, "projection_mode": "onto", "projection_basis": "memory",
                         "rho_svd": 0.5, "energy": "sv2", "analytic": {"proj_dim": 128, "ridge": "fixed"}}):
        assert set(changes) in (set(), set(FSA_DOWNSTREAM))
        runner = Runner(_cfg({"name": "pace", **TINY_PACE, **changes}, tmp_path / f"c{len(outcomes)}", reuse=False),
                        tmp_path / f"r{len(outcomes)}")
        runner.prepare()
        runner.learner.learn(runner.session(0))
        outcomes.append(runner.learner._fsa_state())
    a, b = outcomes
    assert a["l_tune"] == b["l_tune"] and a["cka"] == b["cka"] and a["trace"] == b["trace"]
    la, lb = a["adapter"]["lora"]["layers"], b["adapter"]["lora"]["layers"]
    assert set(la) == set(lb)
    for name in la:
        for ta, tb in zip(_tensors(la[name]), _tensors(lb[name]), strict=True):
            assert torch.equal(ta, tb), name


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for k in sorted(obj):
            yield from _tensors(obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_probe_outcome_depends_only_on_its_key_fields(tmp_path):
    """rho_layer, the head strategy and the boundary loss act after the probe: same CKA values."""
    cka = []
    for changes in ({}, {"rho_layer": 0.5, "head_strategy": "same_lr", "temp_head": "cosine", "boundary_loss": False,
                         "lr_head": 0.3, "head_epochs": 3}):
        runner = Runner(_cfg({"name": "pace", **TINY_PACE, **changes}, tmp_path / f"c{len(cka)}", reuse=False),
                        tmp_path / f"r{len(cka)}")
        runner.prepare()
        runner.learner.learn(runner.session(0))
        cka.append(runner.learner.cka)
        fields = runner.learner._probe_fields()
    assert cka[0] == cka[1] and len(cka[0]) == 2
    assert set(fields) == {"train", "lora", "cka_samples"} and fields["train"]["epochs"] == 1


def test_pack_round_trips_nested_state():
    state = {"a": [1, 2.5, None, "x", True], "t": torch.arange(6).reshape(2, 3), "d": {"u": [torch.ones(2)]}}
    back = unpack(pack(state))
    assert back["a"] == state["a"] and torch.equal(back["t"], state["t"])
    assert torch.equal(back["d"]["u"][0], torch.ones(2))


# ------------------------------------------------------------------ end to end

def test_a_downstream_variant_loads_fsa_and_gives_the_same_matrix_as_computing_it(tmp_path):
    cache = tmp_path / "cache"
    _, _ = _run(tmp_path / "full", {"name": "pace", **TINY_PACE}, cache)
    wo_msa = {"name": "pace", **TINY_PACE, "msa": False, "analytic": {"proj_dim": 128}}
    reused, final_reused = _run(tmp_path / "reused", wo_msa, cache)
    computed, final_computed = _run(tmp_path / "computed", wo_msa, tmp_path / "other-cache")
    assert _session1(reused)["stage_reused_fsa"] == 1 and _session1(computed)["stage_reused_fsa"] == 0
    assert (tmp_path / "reused" / "accuracy_matrix.csv").read_bytes() == \
        (tmp_path / "computed" / "accuracy_matrix.csv").read_bytes()
    assert final_reused["accuracy_per_session"] == final_computed["accuracy_per_session"]
    # what the stage recorded about itself comes back with it
    for k in ("l_tune", "cka_block", "cka_fallback"):
        assert _session1(reused)[k] == _session1(computed)[k]
    assert reused.learner.trace == computed.learner.trace
    # the loaded stage cost no training: fewer backward passes than the computed one
    assert reused.results[0].counters.get("backward_samples", 0) < computed.results[0].counters["backward_samples"]


def test_a_field_that_decides_fsa_recomputes_it_and_rho_layer_shares_only_the_probe(tmp_path):
    cache = tmp_path / "cache"
    _run(tmp_path / "a", {"name": "pace", **TINY_PACE}, cache)
    other, _ = _run(tmp_path / "b", {"name": "pace", **TINY_PACE, "rho_layer": 0.5}, cache)
    d = _session1(other)
    assert d["stage_reused_fsa"] == 0 and d["stage_reused_probe"] == 1
    lr, _ = _run(tmp_path / "c", {"name": "pace", **TINY_PACE, "lr_backbone": 0.01}, cache)
    assert _session1(lr)["stage_reused_fsa"] == 0 and _session1(lr)["stage_reused_probe"] == 0


def test_ranpac_variants_of_the_head_share_fsa_and_reuse_off_recomputes(tmp_path):
    cache = tmp_path / "cache"
    _run(tmp_path / "a", TINY_RANPAC, cache)
    fixed = {**TINY_RANPAC, "analytic": {"proj_dim": 128, "ridge": "fixed", "lam": 10.0}}
    reused, _ = _run(tmp_path / "b", fixed, cache)
    off, _ = _run(tmp_path / "c", fixed, cache, reuse=False)
    assert _session1(reused)["stage_reused_fsa"] == 1
    assert "stage_reused_fsa" not in _session1(off)  # not asked: computed as before, nothing stored or read
    matrix = "accuracy_matrix.csv"
    assert (tmp_path / "b" / matrix).read_bytes() == (tmp_path / "c" / matrix).read_bytes()
    lr, _ = _run(tmp_path / "d", {**TINY_RANPAC, "fsa": {"train": {"epochs": 1, "lr": 0.2}}}, cache)
    assert _session1(lr)["stage_reused_fsa"] == 0


def test_an_entry_that_does_not_rebuild_the_backbone_is_refused(tmp_path):
    cache = tmp_path / "cache"
    first, _ = _run(tmp_path / "a", TINY_RANPAC, cache)
    # rewrite the stored FSA outcome with other LoRA weights under the same key (a valid checksum)
    store = TensorCache(cache)
    runner = Runner(_cfg(TINY_RANPAC, cache), tmp_path / "b")
    runner.prepare()
    torch.manual_seed(runner.ctx.generator("torch-global").initial_seed())  # as the run starts
    key = stage_key(runner.learner, "fsa", default_fields(runner.learner, "fsa"), runner.session(0).train)
    tensors, meta = store.load(key)
    record = unpack(tensors)
    layers = record["state"]["lora"]["layers"]
    name = sorted(layers)[0]
    bumped = next(_tensors(layers[name]))
    bumped.add_(1.0)
    store.save(key, pack(record), {"pace_stage": "fsa"})
    with pytest.raises(RuntimeError, match="does not rebuild the backbone"):
        runner.run()


def test_runs_do_not_depend_on_the_global_random_state_left_by_an_earlier_trial(tmp_path):
    """Ray reuses worker processes: a trial must not inherit the stream an earlier one consumed."""
    finals, lora = [], []
    for i, seed in enumerate((1, 2)):
        torch.manual_seed(seed)
        torch.rand(1000)
        # wav2vec2's dropout (p = 0.1) draws from the global stream while LoRA trains
        runner, final = _run(tmp_path / f"r{i}", {**TINY_RANPAC, "fsa": {"train": {"epochs": 2}}}, tmp_path / f"c{i}",
                             backbone="wav2vec2-tiny", reuse=False)
        finals.append(final["accuracy_per_session"])
        lora.append(list(_tensors(runner.learner.adapter.state_dict())))
    assert finals[0] == finals[1]
    assert len(lora[0]) > 0 and all(torch.equal(a, b) for a, b in zip(*lora, strict=True))
