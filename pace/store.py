"""The feature store: frontend features of a whole data set on disk, memory-mapped, read per batch.

One entry per (data set, frontend, storage dtype): ``<root>/features/<sha>.rows`` holds the rows back
to back in a flat raw array (``numpy.memmap``-able as is), and ``<sha>.json`` the index (key, row
shape, dtype, per-row offsets, kept items, bad files, checksum). Why a raw array and not safetensors
or zarr: rows are written one clip at a time as they are computed (safetensors needs every tensor in
memory to write a file), a clip is one contiguous byte range that a single ``pread`` fetches from the
OS page cache every trial on a node shares, and nothing beyond numpy is needed.

Compact: a frontend pads every clip to its fixed length (``target_frames``) with a constant row; the
store keeps each clip only up to its last non-padding row and restores the padding on read, so a
1 s clip costs 1 s of frames whatever ``target_frames`` is, and what a trial reads is byte-identical
to the frontend's output. ``dtype="float16"`` halves the file again (real frames rounded to fp16; the
padding stays exact).

Writes go to temporary files renamed into place, the index last: an entry exists once its index
does. A reader checks the index's key and the data file's size; ``verify()`` re-reads every byte
against the checksum (the cache does that for entries it writes, not on every open: a 27 GB store
would be read in full by every trial).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from pace.lock import file_lock

FORMAT = 1
DTYPES = {"float32": np.float32, "float16": np.float16}


class StoreError(RuntimeError):
    """A store entry that cannot be used (unreadable, truncated, written by another format)."""


@dataclass
class StoredFeatures:
    """An open entry: rows of the data set's kept clips, read on demand."""

    path: Path
    key: str
    row_shape: tuple[int, ...]  # the frontend's full output shape per clip
    offsets: np.ndarray  # (n + 1,) int64, in leading-dim units of the flat array
    pad_row: torch.Tensor  # float32 (*row_shape[1:]) restored after each clip's stored rows
    kept: list[int]
    bad: list[tuple[str, str]]
    checksum: str
    dtype: np.dtype  # storage dtype

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    @property
    def row_bytes(self) -> int:
        """Bytes per stored leading-dim row (one frame / one sample)."""
        return int(np.prod(self.row_shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1]) * self.row_bytes

    @property
    def flat(self) -> np.ndarray:
        """The whole entry as a read-only ``numpy.memmap`` (tools; trials read with ``rows``)."""
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(int(self.offsets[-1]), *self.row_shape[1:]))

    def _fd(self) -> int:
        fd = getattr(self, "_fd_cache", None)
        if fd is None or getattr(self, "_fd_pid", None) != os.getpid():
            fd = os.open(self.path, os.O_RDONLY)
            self._fd_cache, self._fd_pid = fd, os.getpid()
        return fd

    def rows(self, idx: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """float32 (len(idx), *row_shape), padded exactly as the frontend pads.

        Read with ``pread`` from the OS page cache, which every trial on the node shares; a memory map
        would do the same I/O but charge every page a trial ever touched to that trial's RSS.
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        out = torch.empty((len(idx), *self.row_shape), dtype=torch.float32)
        out[:] = self.pad_row
        dst = out.numpy()  # shares memory with out
        fd, rb, tail = self._fd(), self.row_bytes, self.row_shape[1:]
        for j, i in enumerate(idx.tolist()):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            if b <= a:
                continue
            if self.dtype == np.float32:  # straight into the output, no intermediate copy
                got = os.preadv(fd, [memoryview(dst[j, : b - a]).cast("B")], a * rb)
            else:
                raw = os.pread(fd, (b - a) * rb, a * rb)
                got = len(raw)
                dst[j, : b - a] = np.frombuffer(raw, dtype=self.dtype).reshape(b - a, *tail)
            if got != (b - a) * rb:
                raise StoreError(f"feature store data {self.path} is shorter than its index (truncated?)")
        return out

    def verify(self) -> bool:
        """Re-read every byte against the checksum written with the entry."""
        h = hashlib.blake2b(digest_size=16)
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        return h.hexdigest() == self.checksum

    def __del__(self) -> None:
        fd = getattr(self, "_fd_cache", None)
        if fd is not None and getattr(self, "_fd_pid", None) == os.getpid():
            with contextlib.suppress(OSError):
                os.close(fd)


def trimmed_length(row: torch.Tensor, pad_row: torch.Tensor | None) -> int:
    """Leading-dim length of ``row`` without its trailing rows equal to ``pad_row`` (bitwise)."""
    if pad_row is None:
        return int(row.shape[0])
    # Bitwise, not ==: -0.0 == 0.0 and NaN != NaN would make the round trip inexact. numpy: a per-clip
    # op this small costs more in torch's thread pool hand-off than in the comparison itself.
    bits = row.contiguous().numpy().view(np.int32).reshape(row.shape[0], -1)
    pad_bits = pad_row.to(row.dtype).contiguous().numpy().view(np.int32).reshape(-1)
    keep = np.flatnonzero(~(bits == pad_bits).all(axis=1))
    return int(keep[-1]) + 1 if len(keep) else 0


_MALLOC_PINNED = False


def _keep_batches_in_mmap() -> None:
    """Pin glibc's mmap threshold at its default (128 KiB).

    glibc raises the threshold to the size of the largest freed mmapped block (up to 32 MiB); after the
    first freed batch every per-batch tensor (rows read from the store, backbone temporaries: a few
    MiB each) comes from the heap instead, whose freed memory fragments and stays resident: +1.4 GiB
    of RSS over a 105k-clip run, against a flat RSS with the threshold pinned.
    """
    global _MALLOC_PINNED
    if _MALLOC_PINNED:
        return
    _MALLOC_PINNED = True
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD; not glibc: no-op


class FeatureStore:
    def __init__(self, root: str | Path):
        _keep_batches_in_mmap()
        self.root = Path(root) / "features"
        self.computed = 0  # entries this process computed (single-flight: once per study)
        self.opened = 0

    def paths(self, key: str) -> tuple[Path, Path]:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.root / f"{digest}.rows", self.root / f"{digest}.json"

    def open(self, key: str) -> StoredFeatures | None:
        data, index = self.paths(key)
        if not index.is_file():
            return None
        try:
            meta = json.loads(index.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"feature store index {index} is unreadable ({exc}); delete it to recompute") from exc
        if meta.get("format") != FORMAT:
            raise StoreError(f"feature store entry {index} has format {meta.get('format')!r}, this pace reads "
                             f"format {FORMAT}; delete {index} and {data} to recompute")
        if meta.get("key") != key:
            raise StoreError(f"feature store entry {index} belongs to another key (hash collision or a "
                             "hand-edited file); delete it to recompute")
        row_shape = tuple(meta["row_shape"])
        offsets = np.asarray(meta["offsets"], dtype=np.int64)
        dtype = np.dtype(DTYPES[meta["dtype"]])
        tail = row_shape[1:]
        expected = int(offsets[-1]) * int(np.prod(tail, dtype=np.int64)) * dtype.itemsize
        size = data.stat().st_size if data.is_file() else -1
        if size != expected:
            raise StoreError(f"feature store data {data} has {size} bytes, its index says {expected}; "
                             f"delete {index} to recompute")
        self.opened += 1
        return StoredFeatures(data, key, row_shape, offsets, torch.tensor(meta["pad_row"], dtype=torch.float32),
                              list(meta["kept"]), [tuple(b) for b in meta["bad"]], meta["checksum"], dtype)

    def write(self, key: str, rows: Iterable[tuple[int, torch.Tensor]], row_shape: Sequence[int],
              pad_row: torch.Tensor | None, dtype: str = "float32",
              bad: Callable[[], list[tuple[str, str]]] = list) -> StoredFeatures:
        """Stream ``(item index, frontend output)`` pairs into a new entry; returns it opened."""
        if dtype not in DTYPES:
            raise ValueError(f"feature store dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        row_shape = tuple(int(s) for s in row_shape)
        tail = row_shape[1:]
        pad = (pad_row.to(torch.float32).reshape(tail) if pad_row is not None
               else torch.full(tail, float("nan")))  # NaN never matches: nothing is trimmed
        np_dtype = DTYPES[dtype]
        data, index = self.paths(key)
        self.root.mkdir(parents=True, exist_ok=True)
        offsets, kept = [0], []
        h = hashlib.blake2b(digest_size=16)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".rows.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                for i, row in rows:
                    row = row.detach().to("cpu", torch.float32).contiguous()
                    if tuple(row.shape) != row_shape:
                        raise ValueError(f"frontend output {tuple(row.shape)} differs from its shape {row_shape}")
                    n = trimmed_length(row, pad if pad_row is not None else None)
                    raw = row[:n].numpy().astype(np_dtype, copy=False).tobytes()
                    f.write(raw)
                    h.update(raw)
                    offsets.append(offsets[-1] + n)
                    kept.append(int(i))
            meta = {"format": FORMAT, "key": key, "row_shape": list(row_shape), "dtype": dtype,
                    "pad_row": pad.tolist(), "offsets": offsets, "kept": kept, "bad": [list(b) for b in bad()],
                    "checksum": h.hexdigest()}
            os.replace(tmp, data)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _atomic_write_text(index, json.dumps(meta))
        self.computed += 1
        out = self.open(key)
        assert out is not None
        return out

    def get_or_create(self, key: str, create: Callable[["FeatureStore"], StoredFeatures]) -> StoredFeatures:
        """Open ``key``, or create it under a cross-process lock so one process computes it."""
        hit = self.open(key)
        if hit is not None:
            return hit
        data, index = self.paths(key)
        with file_lock(index.with_suffix(".lock")):
            hit = self.open(key)  # finished by the previous holder while we waited
            if hit is not None:
                return hit
            return create(self)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class LazyRows:
    """Rows ``index`` of a stored entry, indexed like a tensor and loaded only when indexed.

    ``x[i]``, ``x[a:b]``, ``x[idx]`` read just those rows. Anything else (``torch.cat([x, ...])``,
    ``x.to(device)``, ``x.transpose(...)``, pickling) first loads this view's rows (never the whole
    store) and acts on that tensor, so methods written for a tensor keep working. ``isinstance(x,
    torch.Tensor)`` is True on purpose: helpers such as ``collect_input_covariances`` batch a tensor
    but iterate any other object row by row, which would change batch composition and results.
    """

    def __init__(self, store: StoredFeatures, index: np.ndarray | Sequence[int]):
        self._store = store
        self._index = np.asarray(index, dtype=np.int64).reshape(-1)

    @property
    def __class__(self):  # noqa: D105 (see the class docstring)
        return torch.Tensor

    def __len__(self) -> int:
        return len(self._index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self._index), *self._store.row_shape))

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def dim(self) -> int:
        return len(self.shape)

    def __getitem__(self, item):
        if isinstance(item, tuple):
            return self[item[0]][(slice(None), *item[1:])]
        if isinstance(item, int):
            return self._store.rows(self._index[[item]])[0]
        if isinstance(item, slice):
            return self._store.rows(self._index[item])
        sel = torch.as_tensor(item)
        if sel.dim() == 0 and not sel.dtype.is_floating_point and sel.dtype != torch.bool:
            return self[int(sel)]  # a numpy / 0-d tensor integer: one row, no batch dim (as a tensor does)
        if sel.dtype == torch.bool:
            sel = torch.nonzero(sel).reshape(-1)
        return self._store.rows(self._index[sel.numpy()])

    def take(self, idx) -> "LazyRows":
        """A sub-view (nothing loaded)."""
        return LazyRows(self._store, self._index[np.asarray(idx, dtype=np.int64)])

    def load(self) -> torch.Tensor:
        return self._store.rows(self._index)

    def __iter__(self):
        return iter(self.load())

    def __reduce_ex__(self, protocol):  # checkpoints hold the rows as a plain tensor
        return self.load().__reduce_ex__(protocol)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.load(), name)

    def __repr__(self) -> str:
        return f"LazyRows({len(self)} of {len(self._store)} rows, {self._store.path.name})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def load(a):
            if type(a) is LazyRows:
                return a.load()
            if isinstance(a, (list, tuple)):
                return type(a)(load(b) for b in a)
            return a

        return func(*load(args), **{k: load(v) for k, v in (kwargs or {}).items()})
