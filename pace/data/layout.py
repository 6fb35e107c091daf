"""Small helpers shared by the benchmark loaders: checked CSV reading and case-tolerant folder lookup.

Every error names the file (and row/column where there is one) and says what was expected, because a
half-copied or re-packed data set is the usual reason a loader fails.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path


class LayoutError(ValueError):
    """A data set root that does not have the expected layout or metadata."""


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a folder")
    return path


def read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header, as (line number, row); missing columns are an error."""
    if not path.is_file():
        raise FileNotFoundError(f"metadata file not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in cols]
        if missing:
            raise LayoutError(f"{path}: missing column(s) {missing}; found {cols}, expected {','.join(required)}")
        reader.fieldnames = cols  # tolerate stray spaces in the header
        rows = [(lineno, {k: (v or "").strip() for k, v in row.items() if k is not None})
                for lineno, row in enumerate(reader, start=2)]
    if not rows:
        raise LayoutError(f"{path}: no rows")
    return rows


def int_field(path: Path, lineno: int, row: dict[str, str], col: str, lo: int | None = None,
              hi: int | None = None) -> int:
    text = row.get(col, "")
    try:
        value = int(text)
    except ValueError:
        raise LayoutError(f"{path}:{lineno}: column {col!r} must be an integer, got {text!r}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise LayoutError(f"{path}:{lineno}: column {col!r} = {value} is outside {lo}..{hi}")
    return value


def files_in(folder: Path) -> set[str]:
    """Names of the plain files in a folder (one listing instead of one stat per metadata row)."""
    try:
        return {e.name for e in os.scandir(folder) if e.is_file()}
    except FileNotFoundError:
        return set()


def child(folder: Path, name: str) -> Path | None:
    """``folder/name`` matched case-insensitively (copies of TIMIT differ in case), or None."""
    exact = folder / name
    if exact.exists():
        return exact
    low = name.lower()
    for p in folder.iterdir():
        if p.name.lower() == low:
            return p
    return None


def visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders, without hidden ones and macOS archive debris (``__MACOSX``)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
