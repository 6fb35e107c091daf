"""Class-incremental scenarios: class order, sessions and the train/val/test split.

Three independent seeds: the class order, the split, and (elsewhere) model init. The split is drawn
per class in sorted label order, so changing the class-order seed never changes which clips are test
clips. Global class ids are positions in the class order, so session t's classes are contiguous ids
and the classes seen after session t are 0..K_t-1. In a cross-dataset sequence (items that carry a
``part``, pace/data/sequence.py) each part's classes fill its own sessions, in order, shuffled within
the part only.
"""

from __future__ import annotations

import csv
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pace.data.datasets import Item


@dataclass
class SessionSpec:
    index: int
    classes: list[int]
    train: list[int]  # row indices into the feature table
    val: list[int]
    test: list[int]


@dataclass
class Scenario:
    class_order: list[str]
    sessions: list[SessionSpec]

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    def write(self, out_dir: str | Path, items: list[Item]) -> None:
        """``out_dir/class_order.json`` and one CSV per session listing every clip and its split."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "class_order.json").write_text(json.dumps(
            {"class_order": self.class_order,
             "sessions": [{"index": s.index + 1, "classes": [self.class_order[c] for c in s.classes],
                           "train": len(s.train), "val": len(s.val), "test": len(s.test)}
                          for s in self.sessions]}, indent=1))
        for s in self.sessions:
            with (out / f"session_{s.index + 1:02d}.csv").open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["split", "key", "label", "class_id", "path"])
                for split in ("train", "val", "test"):
                    for i in getattr(s, split):
                        it = items[i]
                        w.writerow([split, it.key, it.label, self.class_order.index(it.label),
                                    "" if it.path is None else str(it.path)])

    def to_dict(self) -> dict:
        return {"class_order": self.class_order, "sessions": [asdict(s) for s in self.sessions]}


def session_sizes(num_classes: int, num_sessions: int, first: int | None) -> list[int]:
    """Classes per session: equal sizes, or ``first`` then equal sizes. Errors say what does not fit."""
    if first is None:
        if num_classes % num_sessions:
            raise ValueError(f"{num_classes} classes do not split into {num_sessions} equal sessions; "
                             "change scenario.num_sessions, scenario.max_classes or set "
                             "scenario.first_session_classes")
        return [num_classes // num_sessions] * num_sessions
    if num_sessions > 1 and first >= num_classes:
        raise ValueError(f"scenario.first_session_classes={first} leaves no classes for the other "
                         f"{num_sessions - 1} session(s): the run has {num_classes} classes; set it below "
                         f"{num_classes} (or scenario.num_sessions: 1)")
    if num_sessions == 1:
        if first != num_classes:
            raise ValueError(f"one session must hold all {num_classes} classes, not {first}")
        return [first]
    rest = num_classes - first
    if rest <= 0 or rest % (num_sessions - 1):
        raise ValueError(f"after a first session of {first} classes, {rest} classes do not split into "
                         f"{num_sessions - 1} equal sessions")
    return [first] + [rest // (num_sessions - 1)] * (num_sessions - 1)


def _split_class(rows: list[int], rng: np.random.Generator, test_fraction: float,
                 val_fraction: float, label: str) -> tuple[list[int], list[int], list[int]]:
    if len(rows) < 2:
        raise ValueError(f"class {label!r} has {len(rows)} clip(s); a train/test split needs at least 2")
    perm = [rows[i] for i in rng.permutation(len(rows))]
    n_test = min(max(1, round(test_fraction * len(rows))), len(rows) - 1)
    test, train = perm[:n_test], perm[n_test:]
    n_val = 0 if val_fraction == 0 else min(max(1, round(val_fraction * len(train))), len(train) - 1)
    return sorted(train[n_val:]), sorted(train[:n_val]), sorted(test)


def build_scenario(items: list[Item], cfg, seeds) -> Scenario:
    """Sessions from items (aligned with feature rows), a ScenarioConfig and Seeds."""
    if any(getattr(it, "part", None) is not None for it in items):
        order, sizes = _sequence_order(items, cfg, seeds)
    else:
        labels = sorted({it.label for it in items})
        order = [labels[i] for i in np.random.default_rng(seeds.class_order).permutation(len(labels))]
        if cfg.max_classes is not None:
            if cfg.max_classes > len(order):
                raise ValueError(f"scenario.max_classes={cfg.max_classes} but the data set has {len(order)} classes")
            order = order[: cfg.max_classes]
        sizes = session_sizes(len(order), cfg.num_sessions, cfg.first_session_classes)

    rows_by_label: dict[str, list[int]] = {lab: [] for lab in order}
    for i, it in enumerate(items):
        if it.label in rows_by_label:
            rows_by_label[it.label].append(i)

    split_rng = np.random.default_rng(seeds.split)
    parts: dict[str, tuple[list[int], list[int], list[int]]] = {}
    for lab in sorted(rows_by_label):  # sorted: the split must not depend on the class order
        rows = rows_by_label[lab]
        if cfg.official_split:
            parts[lab] = _official(rows, items, lab, split_rng, cfg.val_fraction)
        else:
            parts[lab] = _split_class(rows, split_rng, cfg.test_fraction, cfg.val_fraction, lab)

    sessions, start = [], 0
    for t, size in enumerate(sizes):
        cls = list(range(start, start + size))
        start += size
        tr, va, te = [], [], []
        for c in cls:
            a, b, d = parts[order[c]]
            tr += a
            va += b
            te += d
        sessions.append(SessionSpec(t, cls, sorted(tr), sorted(va), sorted(te)))
    return Scenario(order, sessions)


def _sequence_order(items: list[Item], cfg, seeds) -> tuple[list[str], list[int]]:
    """Class order and session sizes of a cross-dataset sequence (items carry a ``part``, see
    pace/data/sequence.py): each part's classes fill its own sessions, parts in their given order, and
    the class order is shuffled within a part only."""
    if cfg.first_session_classes is not None or cfg.max_classes is not None:
        raise ValueError("scenario.first_session_classes and scenario.max_classes do not apply to a sequence; "
                         "set data.parts[i].num_sessions and data.parts[i].max_classes instead")
    parts, labels = {}, {}
    for it in items:
        p = getattr(it, "part", None)
        if p is None:
            raise ValueError(f"item {it.key!r} belongs to no sequence part; a sequence cannot mix in plain items")
        parts[p.index] = p
        labels.setdefault(p.index, set()).add(it.label)
    total = sum(p.num_sessions for p in parts.values())
    if cfg.num_sessions != total:
        detail = " + ".join(f"{p.name} {p.num_sessions}" for _, p in sorted(parts.items()))
        raise ValueError(f"scenario.num_sessions={cfg.num_sessions} but the sequence parts give {total} "
                         f"sessions ({detail}); set scenario.num_sessions: {total}")
    order, sizes = [], []
    for idx in sorted(parts):
        p, labs = parts[idx], sorted(labels[idx])
        # seeded by the part's name as well: adding or reordering parts leaves a part's own order alone
        rng = np.random.default_rng([seeds.class_order, zlib.crc32(p.name.encode())])
        part_order = [labs[i] for i in rng.permutation(len(labs))]
        if p.max_classes is not None:
            if p.max_classes > len(part_order):
                raise ValueError(f"data.parts[{idx}] ({p.name!r}): max_classes={p.max_classes} but the part "
                                 f"has {len(part_order)} classes")
            part_order = part_order[: p.max_classes]
        if len(part_order) % p.num_sessions:
            raise ValueError(f"data.parts[{idx}] ({p.name!r}): {len(part_order)} classes do not split into "
                             f"{p.num_sessions} equal sessions; change its num_sessions or max_classes")
        order += part_order
        sizes += [len(part_order) // p.num_sessions] * p.num_sessions
    return order, sizes


def _official(rows, items, lab, rng, val_fraction):
    test = [i for i in rows if items[i].split == "test"]
    val = [i for i in rows if items[i].split == "val"]
    train = [i for i in rows if items[i].split not in ("test", "val")]
    if not test or not train:
        raise ValueError(f"class {lab!r}: the official split has {len(train)} train and {len(test)} test "
                         "clips; both must be non-empty (or set scenario.official_split: false)")
    if not val and val_fraction > 0:
        perm = [train[i] for i in rng.permutation(len(train))]
        n_val = min(max(1, round(val_fraction * len(train))), len(train) - 1)
        val, train = perm[:n_val], perm[n_val:]
    return sorted(train), sorted(val), sorted(test)
