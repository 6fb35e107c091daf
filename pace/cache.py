"""Content-addressed cache of tensors: frontend features of the old format, embeddings, stage outcomes.

An entry is a safetensors file named by the sha256 of its key (a string describing every input that
decides the output). It is written to a temporary file and renamed into place, so a reader never sees
a half-written entry, and it carries a checksum of its tensors, so a corrupt entry is detected on read,
removed and recomputed. A missing entry is computed by one process while concurrent ones wait for it
(``pace.lock``). On a cluster, point ``runtime.cache_dir`` at shared storage.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pace.lock import file_lock


class CacheError(RuntimeError):
    """The cache cannot be written (read-only, full disk); the message says how to run without it."""


def write_error(root: Path, exc: BaseException) -> CacheError:
    """The one message for a cache (or feature store) folder that cannot be written."""
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return CacheError(f"cannot write to the feature cache {root} ({why}); free space there, point "
                      "runtime.cache_dir (or $PACE_CACHE_DIR) at a writable folder, or set "
                      "runtime.use_cache: false")


def default_cache_dir() -> Path:
    return Path(os.environ.get("PACE_CACHE_DIR") or Path.home() / ".cache" / "pace")


def hash_tensor(h, t: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to hashlib object ``h`` (one rule for every digest)."""
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of a 512 MiB Gram matrix


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        h.update(name.encode())
        hash_tensor(h, tensors[name])
    return h.hexdigest()


class TensorCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.safetensors"

    def load(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            return self._discard(path, f"unreadable ({exc})")
        if meta.get("pace_key") != key:
            return self._discard(path, "key mismatch")
        if meta.get("pace_checksum") != _checksum(tensors):
            return self._discard(path, "checksum mismatch")
        return tensors, {k: v for k, v in meta.items() if not k.startswith("pace_")}

    def _discard(self, path: Path, why: str) -> None:
        warnings.warn(f"cache entry {path} is corrupt ({why}); recomputing", stacklevel=3)
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only cache: the entry is recomputed and the write then says why it fails
        return None

    def save(self, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> Path:
        path = self.path(key)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        full_meta = {**(meta or {}), "pace_key": key, "pace_checksum": _checksum(tensors)}
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            save_file(tensors, tmp, metadata=full_meta)
            os.replace(tmp, path)
        except (OSError, SafetensorError) as exc:
            raise write_error(self.root, exc) from None
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def get_or_compute(self, key: str, compute: Callable[[], dict[str, torch.Tensor]],
                       meta: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
        hit = self.load(key)
        if hit is None:
            # Single flight: one process (on any node sharing the cache) computes, the others wait and read.
            with file_lock(self.path(key).with_suffix(".lock")):
                hit = self.load(key)
                if hit is None:
                    self.misses += 1
                    tensors = compute()
                    self.save(key, tensors, meta)
                    return tensors
        self.hits += 1
        return hit[0]


def tensor_digest(keys: list[str]) -> str:
    """Digest of an ordered list of clip keys (identifies which clips a tensor holds)."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
