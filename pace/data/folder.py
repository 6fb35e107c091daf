"""Users' own audio: a folder per class, or a CSV manifest with columns path,label[,split]."""

from __future__ import annotations

import csv
from pathlib import Path

from pace.data.datasets import AUDIO_EXTENSIONS, AudioDataset, Item, dataset

SPLITS = ("train", "test", "val")


def load_folder(root: str | Path) -> AudioDataset:
    """``root/<class name>/**/<clip>.<wav|flac|ogg|...>``; the class is the first folder level."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} is not a folder")
    items = []
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(cls_dir.rglob("*")):
            if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
                items.append(Item(key=str(path.relative_to(root)), label=cls_dir.name, path=path))
    if not items:
        raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in class folders under {root}")
    return AudioDataset(f"folder-{root.name}", items, description=f"class folders under {root}")


def load_manifest(csv_path: str | Path) -> AudioDataset:
    """CSV with a header; ``path`` (relative to the CSV's folder or absolute), ``label``, optional
    ``split`` in {train, test, val}. Errors name the file, the row and the column."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"manifest {csv_path} not found")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in ("path", "label") if c not in cols]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing}; found {cols}, expected path,label[,split]")
        items, sources = [], {}
        for lineno, row in enumerate(reader, start=2):
            rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not rel or not label:
                raise ValueError(f"{csv_path}:{lineno}: empty path or label")
            path = Path(rel) if Path(rel).is_absolute() else csv_path.parent / rel
            split = (row.get("split") or "").strip() or None
            if split is not None and split not in SPLITS:
                raise ValueError(f"{csv_path}:{lineno}: split {split!r} not one of {SPLITS}")
            items.append(Item(key=rel, label=label, path=path, split=split))
            sources[rel] = f"listed at {csv_path}:{lineno}"
    if not items:
        raise ValueError(f"{csv_path}: no rows")
    return AudioDataset(f"manifest-{csv_path.stem}", items, description=f"manifest {csv_path}", sources=sources)


@dataset("folder", summary="your audio: data.root/<class>/**/<clip> (wav, flac, ogg, mp3, ...)")
def _folder_from_config(cfg) -> AudioDataset:
    return load_folder(cfg.root)


@dataset("manifest", summary="your audio listed in a CSV (data.root): path,label[,split]")
def _manifest_from_config(cfg) -> AudioDataset:
    return load_manifest(cfg.root)
