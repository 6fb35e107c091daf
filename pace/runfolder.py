"""A run's result folder: how it is written and when a run may continue in it.

A result folder never mixes configs, data or corrupt state:

- every file is written under a temporary name and renamed into place (``splits/`` as a whole
  folder), so a reader sees the old file or the new one, never half of one;
- the checkpoint carries the resolved config, the identity of the data it was trained on (clip keys,
  labels, file sizes and mtimes, the clips kept and the resolved splits) and a checksum of all of
  its contents, computed with the feature cache's tensor checksum;
- before anything is written, an existing folder is checked: a run continues in it only under the
  same config and data, from an intact checkpoint; anything else is refused with a hint
  (``--out NEW`` or ``--no-resume``) and leaves the folder as it was.

Write failures (a full disk, a read-only folder) become one-line errors naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import shutil
import secrets
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from pace.cache import _checksum as tensor_checksum

CHECKPOINT = "checkpoint.pt"
#: files that hold results; a folder with any of them is checked before a run writes into it
RESULT_FILES = (CHECKPOINT, "metrics.json", "sessions.json", "accuracy_matrix.csv")
#: runtime fields that never change a result: a run may continue in its folder with other values
RESULT_NEUTRAL = ("progress", "num_threads", "cache_dir", "use_cache", "reuse_stages", "checkpoint_every")
HINT = "use --out NEW for a separate run, or --no-resume to start over in this folder"


class RunFolderError(RuntimeError):
    """A result folder that cannot be used or written; the message names the file and a way out."""


# ---------------------------------------------------------------- atomic writes


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (" (free some space)" if exc.errno == errno.ENOSPC else "")
    return str(exc)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _stage(path: Path, content: bytes | memoryview | Callable[[Path], None]) -> Path:
    """Write ``content`` (bytes, or a function that fills a folder) under a temporary name beside
    ``path``; a failure (a full disk) removes the temporary and names ``path``."""
    tmp = _tmp_name(path)
    try:
        if callable(content):
            tmp.mkdir()
            content(tmp)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for open()
            try:
                _write_all(fd, content)
            finally:
                os.close(fd)
    except OSError as exc:
        _remove(tmp)
        raise RunFolderError(f"cannot write {path}: {_why(exc)}") from None
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _put(tmp: Path, path: Path) -> None:
    """Rename a staged file or folder into place (a folder replaces the old one as a whole)."""
    try:
        if tmp.is_dir() and path.exists():
            old = _tmp_name(path)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise RunFolderError(f"cannot write {path}: {_why(exc)}") from None


def write_all(files: dict[Path, bytes | memoryview | Callable[[Path], None]],
              before: Callable[[], None] | None = None) -> None:
    """Write several files/folders: all are staged first, so a full disk changes none of them;
    then ``before()`` runs and they are renamed into place."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, content in files.items():
            staged.append((_stage(Path(path), content), Path(path)))
        if before is not None:
            before()
    except BaseException:
        for tmp, _ in staged:
            _remove(tmp)
        raise
    for tmp, path in staged:
        _put(tmp, path)


def write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    write_all({Path(path): data})


def strict(obj: Any) -> Any:
    """A strict-JSON copy of ``obj``: NaN/inf -> None (strict JSON has no NaN), tensors and tuples ->
    lists, keys -> str."""
    if isinstance(obj, torch.Tensor):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def json_bytes(obj: Any) -> bytes:
    """Strict JSON (NaN -> null), so every JSON reader accepts the file."""
    return json.dumps(strict(obj), indent=1, allow_nan=False, default=str).encode()


# ---------------------------------------------------------------- checkpoints


def _flatten(obj: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """The non-tensor skeleton of ``obj``; its tensors go into ``tensors`` under their paths."""
    if isinstance(obj, torch.Tensor):
        tensors[name] = obj.detach().cpu()
        return {"<tensor>": name}
    if isinstance(obj, dict):
        return {f"{type(k).__name__}:{k}": _flatten(v, f"{name}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{name}/{i}", tensors) for i, v in enumerate(obj)]
    return obj


def state_checksum(state: dict[str, Any]) -> str:
    """Checksum of a checkpoint's whole state: every tensor's bytes plus every other value."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_flatten(state, "", tensors), sort_keys=True, default=repr)
    tensors["<skeleton>"] = torch.frombuffer(bytearray(skeleton.encode()), dtype=torch.uint8)
    return tensor_checksum(tensors)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> int:
    """Serialise in memory first: a full disk then fails in a plain write that names the file.
    Returns the bytes written."""
    buf = io.BytesIO()
    torch.save({**state, "checksum": state_checksum(state)}, buf)
    write_bytes(path, buf.getbuffer())  # a view, not a copy: learner states can be large
    return buf.getbuffer().nbytes


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)

    def corrupt(why: str) -> RunFolderError:
        return RunFolderError(f"checkpoint {path} is unusable ({why}); use --no-resume to start over "
                              "in this folder (its results are replaced), or --out NEW")

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise corrupt(f"cannot read it: {_why(exc)}") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (zip, pickle and tensor errors alike mean a damaged file)
        raise corrupt(f"truncated or corrupt: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(state, dict) or "checksum" not in state:
        raise corrupt("no checksum: written by an older pace or not a pace checkpoint")
    expected = state.pop("checksum")
    if state_checksum(state) != expected:
        raise corrupt("checksum mismatch: its contents changed after it was written")
    return state


# ---------------------------------------------------------------- data identity


def data_identity(dataset, table, scenario) -> dict[str, Any]:
    """What a run's results depend on besides its config: the data set's files (keys, labels, sizes,
    mtimes), the clips kept after bad files were skipped and the resolved splits."""
    h = hashlib.sha256(dataset.fingerprint().encode())
    h.update("\n".join(it.key for it in table.items).encode())
    h.update(json.dumps(scenario.to_dict(), sort_keys=True).encode())
    return {"fingerprint": h.hexdigest()[:16], "dataset": dataset.name, "clips": len(table.items),
            "classes": scenario.num_classes}


def _describe_data(d: dict[str, Any]) -> str:
    return f"{d.get('dataset', '?')}: {d.get('clips', '?')} clips, {d.get('classes', '?')} classes"


# ---------------------------------------------------------------- the folder


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            out += _diff(old.get(k, "<unset>"), new.get(k, "<unset>"), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def _comparable(config: Any) -> Any:
    if not isinstance(config, dict) or not isinstance(config.get("runtime"), dict):
        return config
    runtime = {k: v for k, v in config["runtime"].items() if k not in RESULT_NEUTRAL}
    return {**config, "runtime": runtime}


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def check_path(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"output folder {self.path} is a file, not a folder; choose another --out")

    def results(self) -> list[str]:
        return [f for f in RESULT_FILES if (self.path / f).exists()]

    def check_config(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """Before a resumed run writes anything: the folder's results must come from ``config``.

        Returns the verified checkpoint state to resume from, or None to start at session 1.
        """
        self.check_path()
        found = self.results()
        if not found:
            return None
        ckpt = self.path / CHECKPOINT
        if ckpt.exists():
            state = load_checkpoint(ckpt)
            recorded, source = state.get("config"), ckpt
        else:
            state, source = None, self.path / "config.yaml"
            try:
                recorded = yaml.safe_load(source.read_text())
            except (OSError, yaml.YAMLError):
                raise RunFolderError(f"{self.path} holds results ({', '.join(found)}) but no readable "
                                     f"config.yaml or checkpoint says which config made them; {HINT}") from None
        if _comparable(recorded) != _comparable(config):
            changed = _diff(_comparable(recorded), _comparable(config))
            shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise RunFolderError(f"{self.path} holds results of a different config ({source.name}: {shown}); "
                                 f"{HINT}")
        return state

    def check_data(self, state: dict[str, Any] | None, data: dict[str, Any]) -> None:
        """The data must be what the folder's results were computed from."""
        if state is not None:
            recorded, source = state.get("data"), self.path / CHECKPOINT
        elif self.results():
            source = self.path / "run_info.json"
            try:
                recorded = json.loads(source.read_text()).get("data")
            except (OSError, ValueError, AttributeError):
                recorded = None
            if recorded is None:
                return  # an older folder without a record; no checkpoint, so the run restarts anyway
        else:
            return
        if not recorded or recorded.get("fingerprint") != data["fingerprint"]:
            then = _describe_data(recorded) if recorded else "not recorded"
            raise RunFolderError(f"{source} was made from different data (then {then}; now "
                                 f"{_describe_data(data)}; files added, removed or changed); {HINT}")

    def clear_results(self) -> None:
        """--no-resume: drop the old results first, so a failed new run cannot leave them mixed in."""
        for name in RESULT_FILES:
            try:
                (self.path / name).unlink(missing_ok=True)
            except OSError as exc:
                raise RunFolderError(f"cannot remove {self.path / name}: {_why(exc)}") from None

    def make(self) -> None:
        self.check_path()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"cannot create output folder {self.path}: {_why(exc)}") from None
