"""Studies against failing infrastructure the tests start themselves: concurrent stores, tracking
servers that go away and come back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pace

#: the pace under test (subprocesses import the same one)
REPO = Path(pace.__file__).resolve().parents[1]

# Each process imports MLflow first, then waits for the go file: the stores are created at once.
_CREATE = """
import os, sys, time
from pace.tracking import MlflowSink
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.01)
sink = MlflowSink(sys.argv[1])
print(sink.experiment(sys.argv[4]))
"""


def test_two_studies_create_a_new_sqlite_store_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _CREATE, uri, str(tmp_path / f"ready{i}"), str(go), f"s{i}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    while not all((tmp_path / f"ready{i}").exists() for i in range(3)):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    results = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
    from mlflow.tracking import MlflowClient

    names = {e.name for e in MlflowClient(tracking_uri=uri).search_experiments()}
    assert {"s0", "s1", "s2"} <= names
