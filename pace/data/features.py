"""Frontend features for a whole data set, computed once per clip and reused.

With a cache, features live in the memory-mapped feature store (``pace.store``): one entry per
(data set fingerprint, frontend settings, storage dtype), computed by one process while concurrent
trials wait for it, and read per batch, so a trial never holds the whole data set. Without a cache
they are computed into memory (``FeatureTable.x`` is then a tensor). Bad files either stop the run
with an error naming the file, or, with ``skip_bad``, are listed and left out.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from pace.cache import TensorCache, write_error
from pace.data.audio import AudioError, samples_used_by
from pace.data.datasets import AudioDataset, Item
from pace.store import FeatureStore, LazyRows, StoredFeatures


@dataclass
class FeatureTable:
    x: torch.Tensor | LazyRows  # (N, *frontend.shape), one row per kept item
    items: list[Item]  # the kept items, aligned with x
    bad: list[tuple[str, str]] = field(default_factory=list)  # (item key, reason) of skipped files


def _rows(dataset: AudioDataset, frontend, skip_bad: bool, bad: list[tuple[str, str]],
          progress: bool) -> Iterator[tuple[int, torch.Tensor]]:
    any_row = False
    used = samples_used_by(frontend)  # a very long clip is read only in part
    for i, item in enumerate(tqdm(dataset.items, desc=f"features {dataset.name}", unit="clip",
                                  disable=not progress, leave=False)):
        try:
            row = frontend(dataset.waveform(item, use_samples=used))
        except AudioError as exc:
            if not skip_bad:
                raise
            bad.append((item.key, exc.reason))
            continue
        any_row = True
        yield i, row
    if not any_row:
        raise AudioError(dataset.name, "no readable clips")


def features_identity(dataset: AudioDataset, frontend, skip_bad: bool) -> str:
    """What decides a data set's frontend features. The store key adds the storage dtype; cache entries
    of the format before the store (one safetensors table) were saved under exactly this key."""
    return f"features|{dataset.name}|{dataset.fingerprint()}|{frontend.key()}|skip_bad={skip_bad}"


def _from_legacy(cache: TensorCache, key: str) -> tuple[Iterator[tuple[int, torch.Tensor]], list] | None:
    """Rows of an old cache entry, streamed slice by slice (never loaded whole), or None."""
    path = cache.path(key)
    if not path.is_file():
        return None
    from safetensors import safe_open

    f = safe_open(str(path), framework="pt")
    meta = dict(f.metadata() or {})
    if meta.get("pace_key") != key:
        return None
    kept = f.get_tensor("kept").tolist()
    x = f.get_slice("x")
    print(f"pace: converting the old feature cache entry {path} into the feature store (once)", file=sys.stderr)
    return ((i, x[j:j + 1][0]) for j, i in enumerate(kept)), [tuple(b) for b in json.loads(meta.get("bad", "[]"))]


def store_key(dataset: AudioDataset, frontend, skip_bad: bool = False, dtype: str = "float32") -> str:
    """The feature store key: everything that decides the stored rows."""
    return f"{features_identity(dataset, frontend, skip_bad)}|store|dtype={dtype}"


def extract_features(dataset: AudioDataset, frontend, cache: TensorCache | None = None,
                     skip_bad: bool = False, progress: bool = True, dtype: str = "float32") -> FeatureTable:
    if cache is None:
        if dtype != "float32":
            raise ValueError(f"runtime.feature_dtype={dtype!r} needs the feature store (runtime.use_cache: true)")
        bad: list[tuple[str, str]] = []
        kept, rows = [], []
        for i, row in _rows(dataset, frontend, skip_bad, bad, progress):
            kept.append(i)
            rows.append(row)
        return FeatureTable(x=torch.stack(rows), items=[dataset.items[i] for i in kept], bad=bad)

    store = FeatureStore(cache.root)
    legacy = features_identity(dataset, frontend, skip_bad)
    key = store_key(dataset, frontend, skip_bad, dtype)
    pad_row = frontend.pad_row() if hasattr(frontend, "pad_row") else None
    shape = tuple(frontend.shape)

    def create(st: FeatureStore) -> StoredFeatures:
        old = _from_legacy(cache, legacy)
        if old is not None:
            rows, old_bad = old
            return st.write(key, rows, shape, pad_row, dtype, bad=lambda: old_bad)
        bad: list[tuple[str, str]] = []
        # often the first long stage of a run: say so on stdout before its bar starts
        if progress:
            print(f"featurising {len(dataset.items)} clips of {dataset.name} (once: cached for later runs)",
                  flush=True)
        return st.write(key, _rows(dataset, frontend, skip_bad, bad, progress), shape, pad_row, dtype,
                        bad=lambda: bad)

    before = store.computed
    try:
        entry = store.get_or_create(key, create)
    except OSError as exc:  # the store's folder, lock or files cannot be written (audio errors pass)
        if isinstance(exc, AudioError) or (exc.filename and not str(exc.filename).startswith(str(cache.root))):
            raise
        raise write_error(cache.root, exc) from None
    if store.computed > before:
        cache.misses += 1
    else:
        cache.hits += 1
    items = [dataset.items[i] for i in entry.kept]
    return FeatureTable(x=LazyRows(entry, np.arange(len(entry))), items=items, bad=entry.bad)
