"""ESC-50: 2,000 five-second clips of environmental sound, 50 classes x 40 (CC BY-NC 3.0).

Layout (the official repository): ``meta/esc50.csv`` with columns
``filename,fold,target,category,esc10,src_file,take`` and ``audio/{fold}-{src}-{take}-{target}.wav``.
Label: ``category``. ``subset="esc10"`` keeps the ESC-10 rows (``esc10`` column True; 10 classes x 40,
CC BY). The five folds are cross-validation folds, not a train/test split, and the paper uses a
seeded 8:2 split instead, so items carry no official split.

Checks: every listed file exists, ``target`` is 0..49, each target maps to one category (and back),
and the target in the file name equals the ``target`` column.
"""

from __future__ import annotations

from pathlib import Path

from pace.data.datasets import AudioDataset, Item, dataset
from pace.data.presets import Preset
from pace.data.layout import LayoutError, files_in, int_field, read_csv, require_dir

COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
SUBSETS = (None, "esc10")


def load_esc50(root: str | Path, subset: str | None = None) -> AudioDataset:
    if subset not in SUBSETS:
        raise ValueError(f"ESC-50 subset must be one of {SUBSETS}, got {subset!r}")
    root = Path(root)
    require_dir(root, "ESC-50 root (expected meta/esc50.csv and audio/)")
    csv_path = root / "meta" / "esc50.csv"
    audio = require_dir(root / "audio", "ESC-50 audio folder")
    present = files_in(audio)
    items, cat_of, target_of = [], {}, {}
    for lineno, row in read_csv(csv_path, COLUMNS):
        name = row["filename"]
        target = int_field(csv_path, lineno, row, "target", 0, 49)
        int_field(csv_path, lineno, row, "fold", 1, 5)
        category = row["category"]
        if not category:
            raise LayoutError(f"{csv_path}:{lineno}: empty 'category'")
        stem_target = name.rsplit(".", 1)[0].rsplit("-", 1)[-1]
        if stem_target != str(target):
            raise LayoutError(f"{csv_path}:{lineno}: file name {name!r} says target {stem_target!r} "
                              f"but column 'target' is {target}")
        if cat_of.setdefault(target, category) != category:
            raise LayoutError(f"{csv_path}:{lineno}: target {target} is {category!r} here but "
                              f"{cat_of[target]!r} earlier")
        if target_of.setdefault(category, target) != target:
            raise LayoutError(f"{csv_path}:{lineno}: category {category!r} has target {target} here "
                              f"but {target_of[category]} earlier")
        esc10 = row["esc10"].lower()
        if esc10 not in ("true", "false"):
            raise LayoutError(f"{csv_path}:{lineno}: column 'esc10' must be True or False, got {row['esc10']!r}")
        if subset == "esc10" and esc10 != "true":
            continue
        if name not in present:
            raise FileNotFoundError(f"{csv_path}:{lineno}: audio file {audio / name} is missing")
        items.append(Item(key=name, label=category, path=audio / name))
    if not items:
        raise LayoutError(f"{csv_path}: no rows for subset {subset!r}")
    tag = "esc10" if subset == "esc10" else "esc50"
    return AudioDataset(tag, items, description=f"ESC-50 at {root}" + (" (ESC-10 subset)" if subset else ""))


_HINT = "ESC-50 repo: meta/esc50.csv, audio/"


@dataset("esc50", summary="ESC-50 environmental sounds: 2,000 clips of 5 s, 50 classes (subset esc10)",
         subsets=True, presets=(
             Preset("esc50", "ESC-50 environmental sounds; 50 classes in 10 sessions of 5 (paper)",
                    {}, {"num_sessions": 10}, 50, 40, True, _HINT),
             Preset("esc10", "ESC-10 subset of ESC-50; 10 classes in 5 sessions of 2",
                    {"subset": "esc10"}, {"num_sessions": 5}, 10, 40, True, _HINT)))
def _from_config(cfg) -> AudioDataset:
    return load_esc50(cfg.root, subset=cfg.subset)
