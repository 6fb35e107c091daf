"""A data set is a list of labelled items plus a way to get each item's 16 kHz waveform.

Items carry a stable key (used by caches and split files), a label name, an optional file path and
an optional official split. Loaders for particular data sets live in their own modules and return
an AudioDataset and register it with ``dataset``; ``build_dataset`` picks one from the run config.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pace.data.audio import AudioError, read_audio
from pace.registry import DATASETS

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".sph", ".aiff", ".aif")


@dataclass(frozen=True)
class Item:
    key: str
    label: str
    path: Path | None = None
    split: str | None = None  # official split ("train", "test", "val") when the data set has one


class AudioDataset:
    def __init__(self, name: str, items: list[Item],
                 loader: Callable[[Item], torch.Tensor] | None = None, description: str = "",
                 sources: dict[str, str] | None = None):
        if not items:
            raise ValueError(f"data set {name!r} has no items")
        keys = [it.key for it in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"data set {name!r} has duplicate item keys")
        self.name = name
        self.items = items
        self.description = description
        self._loader = loader
        #: item key -> where the item was listed (e.g. a manifest line), added to its read errors
        self.sources = sources or {}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[str]:
        return sorted({it.label for it in self.items})

    def waveform(self, item: Item, use_samples: int | None = None) -> torch.Tensor:
        """The item's 16 kHz waveform; ``use_samples``: how much of it the caller uses (see read_audio)."""
        try:
            if self._loader is not None:
                return self._loader(item)
            assert item.path is not None, item
            return read_audio(item.path, use_samples=use_samples)
        except AudioError as exc:
            where = self.sources.get(item.key)
            if where is None:
                raise
            raise AudioError(exc.path, f"{exc.reason} ({where})") from None

    def fingerprint(self) -> str:
        """Content identity for caches: keys, labels and file sizes/mtimes (cheap, no decoding)."""
        h = hashlib.sha256(self.name.encode())
        for it in self.items:
            h.update(f"{it.key}\0{it.label}\0".encode())
            if it.path is not None:
                try:
                    st = it.path.stat()
                except OSError:  # missing: reading it fails (or, with skip_bad, skips it) later
                    h.update(b"missing")
                    continue
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for it in self.items:
            counts[it.label] = counts.get(it.label, 0) + 1
        return dict(sorted(counts.items()))


def default_fsdd_root() -> Path:
    """$PACE_FSDD_ROOT, else ``../shared/datasets/fsdd`` beside the repository checkout."""
    env = os.environ.get("PACE_FSDD_ROOT")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "datasets" / "fsdd"


@dataclass(frozen=True)
class DatasetSpec:
    """What a data set module registers: how to load it from a DataConfig, and what it accepts."""

    name: str
    load: Callable  # (DataConfig) -> AudioDataset; data.label is already filled with the default
    summary: str
    labels: tuple[str, ...] = ()  # data.label values; the first is the default; () = no label choice
    root: str = "required"  # "required" | "optional" (the loader has a default) | "unused"
    subsets: bool = False  # takes data.subset
    parts: bool = False  # takes data.parts (a cross-dataset sequence)
    presets: tuple = ()  # pace.data.presets.Preset: benchmarks built on this data set


def dataset(name: str, *, summary: str, labels: tuple[str, ...] = (), root: str = "required",
            subsets: bool = False, parts: bool = False, presets: tuple = ()) -> Callable:
    """Decorator: ``load(cfg) -> AudioDataset`` joins the data-set registry as ``data.dataset: name``.

    One module per data set declares its loader and its benchmark presets this way (docs/data.md);
    ``pace.registry.DATASETS`` imports every module of ``pace.data`` the first time a name is asked for.
    """
    if root not in ("required", "optional", "unused"):
        raise ValueError(f"data set {name!r}: root must be required, optional or unused, not {root!r}")

    def deco(load: Callable) -> Callable:
        DATASETS.add(name, DatasetSpec(name, load, summary, tuple(labels), root, subsets, parts, tuple(presets)))
        return load

    return deco


def build_dataset(cfg) -> AudioDataset:
    """Build the data set named by a DataConfig (optionally capped to N clips per class)."""
    ds = _build(cfg)
    if cfg.max_per_class is None:
        return ds
    kept: dict[str, int] = {}
    items = []
    # hash order: a deterministic subset that still spreads over speakers/folders
    for it in sorted(ds.items, key=lambda it: hashlib.sha1(it.key.encode()).hexdigest()):
        if kept.get(it.label, 0) < cfg.max_per_class:
            kept[it.label] = kept.get(it.label, 0) + 1
            items.append(it)
    return AudioDataset(f"{ds.name}-max{cfg.max_per_class}", items, ds._loader, ds.description, ds.sources)


def _build(cfg) -> AudioDataset:
    spec: DatasetSpec = DATASETS.get(cfg.dataset)
    if cfg.parts and not spec.parts:
        raise ValueError(f"data.parts is only used with data.dataset=sequence, not {cfg.dataset!r}")
    if cfg.subset is not None and not spec.subsets:
        with_subsets = [n for n, s in DATASETS.items() if s.subsets]
        raise ValueError(f"data.subset is only used with {', '.join(with_subsets)}, not {cfg.dataset!r}")
    if spec.root == "required" and not cfg.root:
        raise ValueError(f"data.root is required for data.dataset={cfg.dataset!r}")
    if spec.labels and cfg.label is None:
        cfg = cfg.model_copy(update={"label": spec.labels[0]})
    return spec.load(cfg)
