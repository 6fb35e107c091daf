"""A data set is a list of labelled items plus a way to get each item's 16 kHz waveform.

Items carry a stable key (used by caches and split files), a label name, an optional file path and
an optional official split. Loaders for particular data sets live in their own modules and return
an AudioDataset; ``build_dataset`` picks one from the run config.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pace.data.audio import AudioError, read_audio

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
    if cfg.parts and cfg.dataset != "sequence":
        raise ValueError(f"data.parts is only used with data.dataset=sequence, not {cfg.dataset!r}")
    if cfg.subset is not None and cfg.dataset not in ("esc50", "nsynth"):
        raise ValueError(f"data.subset is only used with esc50 (esc10) and nsynth, not {cfg.dataset!r}")
    if cfg.dataset == "fsdd":
        from pace.data.fsdd import load_fsdd

        return load_fsdd(cfg.root or default_fsdd_root(), label=cfg.label or "digit")
    if cfg.dataset == "folder":
        from pace.data.folder import load_folder

        return load_folder(_required_root(cfg))
    if cfg.dataset == "manifest":
        from pace.data.folder import load_manifest

        return load_manifest(_required_root(cfg))
    if cfg.dataset == "esc50":
        from pace.data.esc50 import load_esc50

        return load_esc50(_required_root(cfg), subset=cfg.subset)
    if cfg.dataset == "us8k":
        from pace.data.us8k import load_us8k

        return load_us8k(_required_root(cfg))
    if cfg.dataset == "speechcommands":
        from pace.data.speechcommands import load_speechcommands

        return load_speechcommands(_required_root(cfg))
    if cfg.dataset == "timit":
        from pace.data.timit import load_timit

        return load_timit(_required_root(cfg), label=cfg.label or "speaker")
    if cfg.dataset == "vocalset":
        from pace.data.vocalset import load_vocalset

        return load_vocalset(_required_root(cfg), label=cfg.label or "technique")
    if cfg.dataset == "nsynth":
        from pace.data.nsynth import load_nsynth

        return load_nsynth(_required_root(cfg), label=cfg.label or "family", subset=cfg.subset)
    if cfg.dataset == "drumkits":  # Debian hydrogen-drumkits; root defaults to the installed package
        from pace.data.drumkits import load_drumkits

        return load_drumkits(cfg.root, label=cfg.label or "kit_instrument")
    if cfg.dataset == "sequence":
        from pace.data.sequence import load_sequence

        return load_sequence(cfg)
    if cfg.dataset == "synthetic":
        from pace.data.synthetic import make_synthetic

        return make_synthetic(num_classes=cfg.synthetic_classes,
                              clips_per_class=cfg.synthetic_clips_per_class,
                              seconds=cfg.synthetic_seconds, variant=cfg.label or "coarse",
                              seed=cfg.synthetic_seed)
    raise ValueError(f"unknown data.dataset {cfg.dataset!r}")


def _required_root(cfg) -> str:
    if not cfg.root:
        raise ValueError(f"data.root is required for data.dataset={cfg.dataset!r}")
    return cfg.root
