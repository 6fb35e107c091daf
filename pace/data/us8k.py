"""UrbanSound8K: 8,732 slices of up to 4 s, 10 urban sound classes (CC BY-NC 3.0).

Layout: ``metadata/UrbanSound8K.csv`` with columns
``slice_file_name,fsID,start,end,salience,fold,classID,class`` and
``audio/fold{1..10}/{fsID}-{classID}-{occurrenceID}-{sliceID}.wav``. Label: ``class``. Sample rates,
bit depths and channel counts vary; ``read_audio`` resamples and downmixes. The ten folds are
cross-validation folds and the paper uses a seeded 8:2 split, so items carry no official split.

Checks: ``classID`` is 0..9 and maps to one class name (and back), the class id in the file name
equals ``classID``, ``fold`` is 1..10 and the file is in that fold's folder.
"""

from __future__ import annotations

from pathlib import Path

from pace.data.datasets import AudioDataset, Item, dataset
from pace.data.presets import Preset
from pace.data.layout import LayoutError, files_in, int_field, read_csv, require_dir

COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")


def load_us8k(root: str | Path) -> AudioDataset:
    root = Path(root)
    require_dir(root, "UrbanSound8K root (expected metadata/UrbanSound8K.csv and audio/fold1..10/)")
    csv_path = root / "metadata" / "UrbanSound8K.csv"
    audio = require_dir(root / "audio", "UrbanSound8K audio folder")
    present: dict[int, set[str]] = {}
    items, name_of, id_of = [], {}, {}
    for lineno, row in read_csv(csv_path, COLUMNS):
        name, label = row["slice_file_name"], row["class"]
        fold = int_field(csv_path, lineno, row, "fold", 1, 10)
        cid = int_field(csv_path, lineno, row, "classID", 0, 9)
        if not label:
            raise LayoutError(f"{csv_path}:{lineno}: empty 'class'")
        parts = name.rsplit(".", 1)[0].split("-")
        if len(parts) != 4 or parts[1] != str(cid):
            raise LayoutError(f"{csv_path}:{lineno}: file name {name!r} does not match "
                              f"{{fsID}}-{{classID}}-{{occurrence}}-{{slice}}.wav with classID {cid}")
        if name_of.setdefault(cid, label) != label:
            raise LayoutError(f"{csv_path}:{lineno}: classID {cid} is {label!r} here but {name_of[cid]!r} earlier")
        if id_of.setdefault(label, cid) != cid:
            raise LayoutError(f"{csv_path}:{lineno}: class {label!r} has classID {cid} here but {id_of[label]} earlier")
        folder = audio / f"fold{fold}"
        if fold not in present:
            present[fold] = files_in(folder)
        if name not in present[fold]:
            raise FileNotFoundError(f"{csv_path}:{lineno}: audio file {folder / name} is missing")
        items.append(Item(key=f"fold{fold}/{name}", label=label, path=folder / name))
    return AudioDataset("us8k", items, description=f"UrbanSound8K at {root}")


@dataset("us8k", summary="UrbanSound8K: 8,732 urban sound clips, 10 classes, 10 folds", presets=(
    Preset("us8k", "UrbanSound8K urban sounds; 10 classes in 5 sessions of 2 (paper)",
           {}, {"num_sessions": 5}, 10, 8732 / 10, False,
           "UrbanSound8K: metadata/UrbanSound8K.csv, audio/fold1..10/"),))
def _from_config(cfg) -> AudioDataset:
    return load_us8k(cfg.root)
