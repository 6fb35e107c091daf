"""The feature store: byte-identical rows and runs with and without it, compact entries, old cache
entries converted, a lazily indexed split view, and single-flight creation across processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pace.backbones.logmel import MaskedFbankFrontend
from pace.cache import TensorCache
from pace.config import validate_config
from pace.data.features import features_identity, extract_features
from pace.data.frontend import FbankFrontend, WaveformFrontend
from pace.data.synthetic import make_synthetic
from pace.lock import file_lock, is_stale
from pace.runner import Runner
from pace.store import LazyRows, StoreError

REPO = Path(__file__).resolve().parents[1]


def _dataset():
    # 0.6 s clips: 59 real fbank frames of 96, so every row has padding to trim
    return make_synthetic(num_classes=3, clips_per_class=4, seconds=0.6)


@pytest.mark.parametrize("frontend", [FbankFrontend(target_frames=96), WaveformFrontend(num_samples=12_000),
                                      MaskedFbankFrontend(target_frames=96)],
                         ids=["fbank", "waveform", "masked-fbank"])
def test_store_rows_are_byte_identical_to_the_frontend(tmp_path, frontend):
    ds = _dataset()
    ref = extract_features(ds, frontend, None, progress=False)  # in memory, no store
    cache = TensorCache(tmp_path)
    tab = extract_features(ds, frontend, cache, progress=False)
    assert isinstance(tab.x, LazyRows) and cache.misses == 1
    assert torch.equal(tab.x[:], ref.x)
    idx = torch.tensor([5, 0, 11, 5])
    assert torch.equal(tab.x[idx], ref.x[idx]) and torch.equal(tab.x[3], ref.x[3])
    assert torch.equal(tab.x[np.int64(-2)], ref.x[-2]) and torch.equal(tab.x[torch.tensor(4)], ref.x[4])
    mask = torch.arange(len(ref.x)) % 3 == 0
    assert torch.equal(tab.x[mask], ref.x[mask]) and torch.equal(tab.x[2:9:3], ref.x[2:9:3])
    assert torch.equal(tab.x.take([2, 7])[1:], ref.x[[7]])
    again = extract_features(ds, frontend, cache, progress=False)  # opened, not recomputed
    assert cache.hits == 1 and torch.equal(again.x[:], ref.x)
    entry = tab.x._store
    assert entry.verify()
    if isinstance(frontend, FbankFrontend):  # trailing padding is not stored
        assert entry.nbytes < 0.7 * ref.x.numel() * 4


def test_float16_store_rounds_frames_but_keeps_padding_exact(tmp_path):
    ds, fe = _dataset(), FbankFrontend(target_frames=96)
    ref = extract_features(ds, fe, None, progress=False).x
    half = extract_features(ds, fe, TensorCache(tmp_path), progress=False, dtype="float16").x[:]
    is_pad = (ref == fe.pad_row()).all(dim=-1, keepdim=True)
    assert is_pad[:, 80:].all() and not is_pad[:, :50].any()
    assert torch.equal(half, torch.where(is_pad, ref, ref.half().float()))  # real frames rounded, padding exact


def test_lazy_rows_behave_like_the_split_tensor(tmp_path):
    ds, fe = _dataset(), FbankFrontend(target_frames=96)
    ref = extract_features(ds, fe, None, progress=False).x
    view = extract_features(ds, fe, TensorCache(tmp_path), progress=False).x.take([1, 4, 6])
    sub = ref[[1, 4, 6]]
    assert isinstance(view, torch.Tensor) and len(view) == 3 and view.shape == sub.shape
    assert torch.equal(torch.cat([view, view]), torch.cat([sub, sub]))  # torch functions load the rows
    assert torch.equal(view.transpose(-1, -2), sub.transpose(-1, -2))  # so do tensor methods
    buf = io.BytesIO()
    torch.save({"x": view}, buf)  # checkpoints hold a plain tensor
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["x"]
    assert type(loaded) is torch.Tensor and torch.equal(loaded, sub)


def test_old_cache_entry_is_converted_without_recomputing(tmp_path, monkeypatch):
    ds, fe = _dataset(), FbankFrontend(target_frames=96)
    ref = extract_features(ds, fe, None, progress=False).x
    cache = TensorCache(tmp_path)
    # what the pre-store code wrote: the whole padded table in one safetensors entry
    cache.save(features_identity(ds, fe, False), {"x": ref, "kept": torch.arange(len(ref))}, {"bad": "[]"})
    monkeypatch.setattr(fe.__class__, "__call__", lambda *a: pytest.fail("recomputed"))
    tab = extract_features(ds, fe, cache, progress=False)
    assert torch.equal(tab.x[:], ref)


def test_unreadable_store_entry_is_rejected_with_a_clear_message(tmp_path):
    ds, fe = _dataset(), FbankFrontend(target_frames=96)
    cache = TensorCache(tmp_path)
    entry = extract_features(ds, fe, cache, progress=False).x._store
    data = entry.path
    data.write_bytes(data.read_bytes()[:-8])  # truncated
    with pytest.raises(StoreError, match=r"\.rows has \d+ bytes, its index says \d+"):
        extract_features(ds, fe, cache, progress=False)
    index = data.with_suffix(".json")
    meta = json.loads(index.read_text())
    index.write_text(json.dumps({**meta, "format": 0}))
    with pytest.raises(StoreError, match="format 0"):
        extract_features(ds, fe, cache, progress=False)


def _run_cfg(method: dict, use_cache: bool, cache_dir: Path, backbone: str = "eat-tiny"):
    return validate_config({
        "name": "s",
        "data": {"dataset": "synthetic", "label": "fine", "synthetic_classes": 6, "synthetic_clips_per_class": 6,
                 "synthetic_seconds": 0.4},
        "scenario": {"num_sessions": 3},
        "backbone": {"name": backbone, "target_frames": 48},
        "method": method,
        "runtime": {"progress": False, "batch_size": 8, "use_cache": use_cache, "cache_dir": str(cache_dir),
                    "num_threads": 1},
    })


@pytest.mark.parametrize("method", [
    {"name": "simplecil"},
    {"name": "ranpac", "fsa": {"train": {"epochs": 1}}, "analytic": {"proj_dim": 256}},
    {"name": "joint_lora", "train": {"epochs": 1}},  # replays every split (torch.cat of splits)
    {"name": "lorasub", "train": {"epochs": 1}},  # input covariances over a whole split
    {"name": "pace", "fsa_epochs": 1, "msa_epochs": 1, "n_views": 4, "loss_views": 2, "cka_samples": 16,
     "analytic": {"proj_dim": 256}},
], ids=lambda m: m["name"])
def test_runs_are_byte_identical_with_and_without_the_store(tmp_path, method):
    out = {}
    for use_cache in (False, True):
        runner = Runner(_run_cfg(method, use_cache, tmp_path / "cache"), tmp_path / str(use_cache))
        runner.run()
        out[use_cache] = (tmp_path / str(use_cache) / "accuracy_matrix.csv").read_text()
        assert isinstance(runner.table.x, LazyRows) == use_cache
    assert out[True] == out[False]


# ---------------------------------------------------------------------------------------------- locks

WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from pace.store import FeatureStore
    root, name, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    deadline = time.monotonic() + 600  # waits end with a message, never hang

    def wait(cond, what):
        while not cond():
            if time.monotonic() > deadline:
                sys.exit(f"{name}: timed out after 600 s waiting for {what}")
            time.sleep(0.01)

    (root / f"ready.{name}").touch()
    wait(go.exists, "the go file")  # start together: both miss the entry
    def count():
        with open(root / "computations", "a") as f:  # count computations
            f.write(name + "\\n")
        # Compute only once the other process has asked for the entry too: without single flight it
        # would then compute as well, whatever the timing.
        wait(lambda: all((root / f"entered.{n}").exists() for n in "ab"), "the other process to ask")

    (root / f"entered.{name}").touch()

    if sys.argv[4] == "store":
        def create(st):
            count()
            rows = ((i, torch.full((4, 3), float(i))) for i in range(5))
            return st.write("k", rows, (4, 3), torch.zeros(3))

        print(FeatureStore(root / "cache").get_or_create("k", create).rows(range(5)).sum().item())
    else:
        from pace.cache import TensorCache
        out = TensorCache(root / "cache").get_or_compute("k", lambda: count() or {"z": torch.arange(5.0)})
        print(out["z"].sum().item() * 12)
""")


@pytest.mark.parametrize("kind", ["store", "cache"])
def test_two_processes_compute_a_missing_entry_once(tmp_path, kind):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), n, str(go), kind], env=env,
                              stdout=subprocess.PIPE, text=True) for n in ("a", "b")]
    deadline = time.monotonic() + 600
    while not all((tmp_path / f"ready.{n}").exists() for n in ("a", "b")):
        if any(p.poll() is not None for p in procs):
            break
        assert time.monotonic() < deadline, "the workers did not start within 600 s"
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len((tmp_path / "computations").read_text().split()) == 1
    assert outs[0] == outs[1] == str(float(sum(4 * 3 * i for i in range(5))))


def test_stale_lock_of_a_dead_holder_is_taken_over(tmp_path):
    lock = tmp_path / "x.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    lock.write_text(f"{socket.gethostname()} {dead.stdout.strip()}")  # a crashed holder on this host
    assert is_stale(lock)
    with file_lock(lock) as free:
        assert not free and lock.read_text().endswith(f" {os.getpid()}")
    assert not lock.exists()
    # a live holder elsewhere whose heartbeat stopped long ago
    lock.write_text("other-node 1")
    os.utime(lock, (1.0, 1.0))
    assert is_stale(lock, stale_after=60.0)
    lock.write_text("other-node 1")  # fresh heartbeat: not stale
    assert not is_stale(lock, stale_after=60.0)
