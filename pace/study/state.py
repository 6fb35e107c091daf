"""A study's folder in storage, and whether ``--resume`` / ``--fresh`` may use it.

``<storage>/<name>/`` holds Tune's experiment (its saved state, the trial folders), ``pace_study.json``
(what ``--resume`` needs: the resolved base, the tracking ids, the study instance) and
``summary.csv``. Storage is a local or shared path, or a URI pyarrow opens (s3://...).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

from pace.study import SpecError

STATE_FILE = "pace_study.json"


def storage_root(spec_storage: str | None, cli_storage: str | None, cwd: str) -> str:
    root = cli_storage or spec_storage or "ray_results"
    return root if "://" in root else str((Path(cwd) / root).resolve())


def _fs(exp_path: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(exp_path) if "://" in exp_path else (pafs.LocalFileSystem(), exp_path)


def read_state(exp_path: str) -> dict[str, Any] | None:
    import pyarrow.fs as pafs

    fs, path = _fs(exp_path)
    target = f"{path}/{STATE_FILE}"
    if fs.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as f:
        return json.loads(f.read().decode())


def write_file(exp_path: str, name: str, text: str) -> None:
    fs, path = _fs(exp_path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{name}") as f:
        f.write(text.encode())


def damaged_tune_state(exp_path: str) -> str | None:
    """The newest experiment state or searcher state file that does not load, if any (local storage)."""
    if "://" in exp_path:
        return None
    for pattern, load in (("experiment_state-*.json", lambda b: json.loads(b)),
                          ("searcher-state-*.pkl", lambda b: __import__("pickle").loads(b))):
        files = sorted(glob.glob(os.path.join(exp_path, pattern)))
        if files:
            try:
                with open(files[-1], "rb") as f:
                    load(f.read())
            except Exception:  # noqa: BLE001 - any failure to load is damage
                return files[-1]
    return None


def _saved_by_tune(exp_path: str) -> bool:
    """Whether Tune saved its experiment state here (``Tuner.can_restore`` only sees tuner.pkl,
    which is written before the first state, so a restore from it alone would start over)."""
    if "://" in exp_path:
        return True  # Tune finds out itself
    return bool(glob.glob(os.path.join(exp_path, "experiment_state-*.json")))


def check_resumable(spec, state: dict[str, Any] | None, exp_path: str, path: str) -> None:
    """Raise, naming the command that helps, unless ``exp_path`` holds a study of ``spec``'s kind that
    Tune can restore."""
    from ray import tune

    from pace.study.spec import SPEC_TYPES

    if state is None:
        raise SpecError(f"nothing to resume at {exp_path}; run `pace {spec.command} {path}` without --resume")
    if state.get("kind") != spec.kind:
        other = SPEC_TYPES.get(state.get("kind"))
        how = f"resume it with `pace {other.command} SPEC --resume`, " if other else ""
        raise SpecError(f"{exp_path} holds a {state.get('kind')} named {state.get('name')!r}, not a {spec.kind}: "
                        f"{how}start over with `pace {spec.command} {path} --fresh`, or change 'name'")
    if not tune.Tuner.can_restore(exp_path) or not _saved_by_tune(exp_path):
        raise SpecError(f"nothing to resume at {exp_path}: the study was stopped before Tune saved its first "
                        f"state; start over with `pace {spec.command} {path} --fresh`")
    damaged = damaged_tune_state(exp_path)
    if damaged:
        raise SpecError(f"{damaged}: Tune's saved state was cut off mid-write (the driver was killed while "
                        "saving it), so Tune would silently start over; start over with --fresh")
    if (state.get("spec") or {}).get("scheduler") and not state.get("scheduler_journal"):
        raise SpecError(f"{exp_path}: this study's ASHA scheduler was started by an older pace that did not "
                        "journal its decisions, so a resume would decide differently; start over with --fresh")
