"""cluster.yaml passes the Ray cluster launcher's own checks (no cloud calls) and keeps its promises."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(ray.__version__ != "2.60.0",
                                reason="prepare_config/validate_config are private Ray API; checked on 2.60.0")

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _load() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def _validated(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(cfg))
    validate_config(cfg)
    return cfg


def test_cluster_yaml_validates():
    cfg = _validated(_load())
    assert cfg["head_node_type"] in cfg["available_node_types"]
    gpu = [t for t in cfg["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpu and all(isinstance(t["resources"]["GPU"], int) and t["resources"]["GPU"] >= 1 for t in gpu)


def test_fractional_gpu_node_type_is_rejected():
    cfg = _load()
    cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(Exception, match="integer"):
        _validated(cfg)


def test_storage_cache_and_mlflow_server():
    cfg = _load()
    head = " ".join(cfg["head_start_ray_commands"])
    workers = " ".join(cfg["worker_start_ray_commands"])
    setup = " ".join(cfg["setup_commands"])
    assert "pip install" in setup and "$HOME/pace" in setup and cfg["file_mounts"]["~/pace"] == "."
    for cmds in (head, workers):  # trials inherit ray start's environment
        assert "PACE_CACHE_DIR=/mnt/shared/pace-cache" in cmds and "RAY_AUTH_MODE=token" in cmds
    assert "mlflow server" in head and "--host 127.0.0.1" in head
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in head
    assert "--artifacts-destination /mnt/shared/mlflow-artifacts" in head
    assert "sqlite:///$HOME/mlflow/mlflow.db" in head  # the database stays off NFS
    assert "/mnt/shared/ray_results" in setup
