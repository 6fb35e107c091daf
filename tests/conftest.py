import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fsdd_root() -> Path:
    return Path(os.environ.get("PACE_FSDD_ROOT") or REPO.parent / "shared" / "datasets" / "fsdd")


@pytest.fixture
def fsdd() -> Path:
    root = fsdd_root()
    if not (root / "recordings").is_dir():
        pytest.skip(f"FSDD not found at {root} (set PACE_FSDD_ROOT)")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never touch the user's cache; one cache per session keeps repeated features cheap.
    monkeypatch.setenv("PACE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "pace-cache"))
