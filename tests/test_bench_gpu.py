"""bench/gpu.py runs in a GPU session's few minutes: its dry run (the CPU in the GPU's place, small
sizes) goes through every check here, so a bug in the script shows before a GPU is lent."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_bench_dry_run_reaches_every_check(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for line in ("dry run: the CPU stands in", "peak: bf16 matmul", "agreement: eat-tiny pooled output",
                 "agreement: analytic head gram", "agreement: analytic head recursive",
                 "agreement: one PACE session (eat-tiny, fp32) CPU vs GPU accuracy rows identical: True",
                 "throughput: eat-tiny", "recursive total head time", "gram      total head time",
                 "packing: 4 PACE trials (eat-tiny, 3 sessions)"):
        assert line in out, f"missing {line!r} in:\n{out}"
    # the same device on both sides of every agreement check: exact, so a wiring error (the wrong
    # model, features or head compared) shows as a difference
    assert "GPU fp32 vs CPU rel. err 0.0e+00" in out
    assert out.count("GPU vs CPU logits rel. err 0.0e+00, same argmax True") == 2
